"""The public API as help() and a type checker see it: docstrings, signatures, type hints;
and the NumPy API's missing initial state (h0=None), as torch.nn.RNN's missing hx."""

import inspect
import pydoc
import typing

import numpy as np
import pytest
import torch

import rnnkern

# torch.nn.RNN's constructor arguments and defaults, as its documentation lists them
# (torch.nn.RNN itself has the signature (*args, **kwargs)).
RNN_ARGUMENTS = {"input_size": inspect.Parameter.empty, "hidden_size": inspect.Parameter.empty,
                 "num_layers": 1, "nonlinearity": "tanh", "bias": True, "batch_first": False,
                 "dropout": 0.0, "bidirectional": False, "device": None, "dtype": None}


def public_objects():
    """(qualified name, object) for every name in rnnkern.__all__ and in the __all__ of the
    public modules among them."""
    found = []
    for name in rnnkern.__all__:
        obj = getattr(rnnkern, name)
        found.append((f"rnnkern.{name}", obj))
        if inspect.ismodule(obj):
            found += [(f"rnnkern.{name}.{inner}", getattr(obj, inner))
                      for inner in getattr(obj, "__all__", ())]
    return found


PUBLIC = public_objects()


def own_doc(obj) -> str:
    """The object's own docstring (inspect.getdoc would inherit torch.nn.RNN's)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    return (doc or "").strip()


@pytest.mark.parametrize("name, obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_public_object_has_a_docstring(name, obj):
    assert own_doc(obj), f"{name} has no docstring of its own"


@pytest.mark.parametrize("name, obj", [(n, o) for n, o in PUBLIC if inspect.isfunction(o)],
                         ids=[n for n, o in PUBLIC if inspect.isfunction(o)])
def test_public_function_has_type_hints(name, obj):
    hints = typing.get_type_hints(obj)
    signature = inspect.signature(obj)
    missing = [p.name for p in signature.parameters.values()
               if p.name not in hints and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not missing, f"{name}: parameters without a type hint: {missing}"
    assert "return" in hints, f"{name}: no return type hint"


def test_rnn_help_shows_its_docstring():
    assert own_doc(rnnkern.RNN), "rnnkern.RNN.__doc__ is empty: help(rnnkern.RNN) shows nothing"
    text = pydoc.render_doc(rnnkern.RNN, renderer=pydoc.plaintext)
    assert own_doc(rnnkern.RNN).splitlines()[0] in text


def test_rnn_signature_is_torch_nn_rnn_constructor():
    """inspect.signature(rnnkern.RNN) (what help() and IDEs show) lists torch.nn.RNN's
    constructor arguments with their defaults, not (*args, **kwargs)."""
    for name in RNN_ARGUMENTS:  # the list above is torch's
        assert name in torch.nn.RNN.__doc__
    parameters = inspect.signature(rnnkern.RNN).parameters
    assert list(parameters) == list(RNN_ARGUMENTS), list(parameters)
    for name, default in RNN_ARGUMENTS.items():
        assert parameters[name].default == default, (name, parameters[name].default)
    annotated = {name for name, p in parameters.items() if p.annotation is not p.empty}
    assert {"input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first",
            "dropout", "bidirectional"} <= annotated, annotated
    assert {"input", "hx", "return"} <= set(typing.get_type_hints(rnnkern.RNN.forward))


def test_package_ships_the_typing_marker():
    from pathlib import Path

    assert (Path(rnnkern.__file__).parent / "py.typed").exists()


def _problem(dtype=np.float64, T=5, B=3, I=4, H=6, seed=0):
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    return (rng.standard_normal((T, B, I)).astype(dtype),
            rng.uniform(-k, k, (H, I)).astype(dtype), rng.uniform(-k, k, (H, H)).astype(dtype),
            rng.uniform(-k, k, H).astype(dtype), rng.uniform(-k, k, H).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_numpy_h0_none_is_zeros(dtype, reverse):
    x, w_ih, w_hh, b_ih, b_hh = _problem(dtype)
    zeros = np.zeros((x.shape[1], w_ih.shape[0]), dtype)
    y = rnnkern.forward(x, None, w_ih, w_hh, b_ih, b_hh, reverse=reverse)
    np.testing.assert_array_equal(y, rnnkern.forward(x, zeros, w_ih, w_hh, b_ih, b_hh,
                                                     reverse=reverse))
    grad_y = np.ones_like(y)
    got = rnnkern.backward(x, None, w_ih, w_hh, y, grad_y, reverse=reverse)
    want = rnnkern.backward(x, zeros, w_ih, w_hh, y, grad_y, reverse=reverse)
    for field, a, b in zip(want._fields, got, want):
        np.testing.assert_array_equal(a, b, err_msg=field)
    assert got.h0.shape == zeros.shape  # the gradient for the zero state is still returned


def test_numpy_h0_none_matches_torch_without_hx():
    x, w_ih, w_hh, b_ih, b_hh = _problem()
    rnn = torch.nn.RNN(4, 6, dtype=torch.float64)
    with torch.no_grad():
        for p, a in zip(rnn._flat_weights, (w_ih, w_hh, b_ih, b_hh)):
            p.copy_(torch.from_numpy(a))
        out, _ = rnn(torch.from_numpy(x))
    np.testing.assert_allclose(rnnkern.forward(x, None, w_ih, w_hh, b_ih, b_hh), out.numpy(),
                               rtol=1e-12, atol=1e-12)


def test_numpy_h0_none_packed():
    rng = np.random.default_rng(1)
    batch_sizes = np.array([3, 2, 2, 1])
    x = rng.standard_normal((int(batch_sizes.sum()), 4))
    _, w_ih, w_hh, _, _ = _problem()
    y = rnnkern.forward(x, None, w_ih, w_hh, batch_sizes=batch_sizes)
    np.testing.assert_array_equal(
        y, rnnkern.forward(x, np.zeros((3, 6)), w_ih, w_hh, batch_sizes=batch_sizes))
    g = rnnkern.backward(x, None, w_ih, w_hh, y, np.ones_like(y), batch_sizes=batch_sizes)
    assert g.h0.shape == (3, 6)


def test_numpy_h0_none_still_names_bad_arguments():
    x, w_ih, w_hh, _, _ = _problem()
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        rnnkern.forward(x[0], None, w_ih, w_hh)
    with pytest.raises(TypeError, match="w_ih must have dtype float32"):
        rnnkern.forward(x.astype(np.float32), None, w_ih, w_hh)
