"""rnnkern.IndRNN and the IndRNN's functional level against its reference loop: parity in
float64, gradcheck, opcheck, torch.compile, packed input, gradient flow, dtypes and errors.
(The core's own tests of the cell, every ISA and thread count: tests/core/test_core_indrnn.py.)"""

import io

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkern
from rnnkern import cells, functional, testing
from rnnkern.diagnostics import record_gradient_flow
from rnnkern.indrnn import IndRNN, indrnn, reference

from conftest import rel_err

F64 = 1e-10


def _stack(module, x, hx=None, batch_sizes=None):
    """The module's stack of layers on indrnn.reference (time-major or packed rows)."""
    D = 2 if module.bidirectional else 1
    batch = x.shape[1] if batch_sizes is None else int(batch_sizes[0])
    if hx is None:
        hx = x.new_zeros(module.num_layers * D, batch, module.hidden_size)
    layer_input, finals = x, []
    for layer in range(module.num_layers):
        outs = []
        for direction in range(D):
            suffix = f"l{layer}" + ("_reverse" if direction else "")
            b = [getattr(module, f"bias_{k}_{suffix}") if module.bias else None
                 for k in ("ih", "hh")]
            out, h_n = reference(layer_input, hx[layer * D + direction],
                                 getattr(module, f"weight_ih_{suffix}"),
                                 getattr(module, f"weight_hh_{suffix}"), *b,
                                 nonlinearity=module.nonlinearity, batch_sizes=batch_sizes,
                                 reverse=direction == 1)
            outs.append(out)
            finals.append(h_n)
        layer_input = torch.cat(outs, -1)
    return layer_input, torch.stack(finals)


CASES = [(1, False, "tanh", True), (2, True, "relu", True), (3, False, "relu", False),
         (2, True, "tanh", False)]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("layers,bidirectional,nonlinearity,bias", CASES)
def test_module_matches_its_reference_in_float64(layers, bidirectional, nonlinearity, bias,
                                                 packed):
    torch.manual_seed(0)
    T, B, I, H = 7, 4, 5, 6
    m = IndRNN(I, H, num_layers=layers, nonlinearity=nonlinearity, bias=bias,
               bidirectional=bidirectional).double()
    assert m.weight_hh_l0.shape == (H,)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    D = 2 if bidirectional else 1
    h0 = torch.randn(layers * D, B, H, dtype=torch.float64, requires_grad=True)
    bs = None
    if packed:
        lengths = torch.tensor([7, 5, 5, 2])
        inp = pack_padded_sequence(x, lengths)
        bs = inp.batch_sizes
        y, h_n = m(inp, h0)
        y = y.data
        y_ref, h_ref = _stack(m, inp.data, h0, bs)
    else:
        y, h_n = m(x, h0)
        y_ref, h_ref = _stack(m, x, h0)
    assert rel_err(y.detach().numpy(), y_ref.detach().numpy()) <= F64
    assert rel_err(h_n.detach().numpy(), h_ref.detach().numpy()) <= F64
    gy, gh = torch.randn_like(y), torch.randn_like(h_n)
    params = [x, h0, *m.parameters()]
    ours = torch.autograd.grad((y, h_n), params, (gy, gh), retain_graph=True)
    theirs = torch.autograd.grad((y_ref, h_ref), params, (gy, gh))
    for name, a, b in zip(["x", "h0", *dict(m.named_parameters())], ours, theirs):
        assert rel_err(a.numpy(), b.numpy()) <= F64, name


def test_module_matches_its_reference_through_rnnkern_testing():
    testing.assert_gradients_close(IndRNN, cell="indrnn", size=(6, 3, 4, 5), num_layers=2,
                                   bidirectional=True, packed=True, nonlinearity="relu")
    testing.assert_gradients_close(IndRNN, cell="indrnn", dtype="float32", size=(9, 3, 4, 7))


def test_batch_first_unbatched_and_no_hx():
    torch.manual_seed(1)
    m = IndRNN(3, 4, num_layers=2, batch_first=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    y, h = m(x)
    y_ref, h_ref = _stack(m, x.transpose(0, 1))
    assert rel_err(y.transpose(0, 1).detach().numpy(), y_ref.detach().numpy()) <= F64
    assert rel_err(h.detach().numpy(), h_ref.detach().numpy()) <= F64
    y1, h1 = m(x[0])  # unbatched (T, I)
    assert y1.shape == (5, 4) and h1.shape == (2, 4)
    assert rel_err(y1.detach().numpy(), y[0].detach().numpy()) <= F64


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_functional_gradcheck(packed, reverse, nonlinearity):
    gen = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=gen)  # noqa: E731
    bs = torch.tensor([3, 3, 2, 1]) if packed else None
    x = r(9, 3) if packed else r(4, 3, 3)
    args = [x, r(3, 4), r(4, 3) * 0.5, r(4) * 0.5, r(4) * 0.3, r(4) * 0.3]
    if nonlinearity == "relu":
        args[4] = args[4].abs() + 0.5  # away from the kink, where finite differences fail
    for a in args:
        a.requires_grad_()

    def fn(*a):
        return indrnn(*a, nonlinearity, batch_sizes=bs, reverse=reverse)

    assert torch.autograd.gradcheck(fn, args)
    if nonlinearity == "tanh":
        assert torch.autograd.gradgradcheck(fn, args)  # second derivatives: the reference


@pytest.mark.parametrize("packed,reverse,bias", [(False, False, True), (True, True, False)])
def test_opcheck(packed, reverse, bias):
    gen = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=gen)  # noqa: E731
    bs = torch.tensor([3, 2, 2, 1]) if packed else None
    x = r(8, 5) if packed else r(4, 3, 5)
    b = (r(6), r(6)) if bias else (None, None)
    fwd = ("indrnn", x, r(3, 6), None, r(6, 5), r(6), *b, None, "relu", bs, reverse)
    torch.library.opcheck(torch.ops.rnnkern.layer_forward.default, fwd)
    y, h_n, _, saved = torch.ops.rnnkern.layer_forward(*fwd)
    mask = [True, True, False, True, True, bias, bias, False]
    bwd = ("indrnn", x, fwd[2], None, fwd[4], fwd[5], None, y, saved, torch.randn_like(y),
           torch.randn_like(h_n), None, "relu", bs, reverse, mask)
    torch.library.opcheck(torch.ops.rnnkern.layer_backward.default, bwd)


def test_torch_compile_fullgraph_forward_and_backward():
    torch.manual_seed(4)
    m = IndRNN(4, 5, num_layers=2, bidirectional=True).double()
    x = torch.randn(6, 3, 4, dtype=torch.float64)

    def loss(module, x):
        y, h = module(x)
        return y.square().sum() + h.sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True)
    eager_loss = loss(m, x)
    eager = torch.autograd.grad(eager_loss, list(m.parameters()))
    comp_loss = compiled(m, x)
    comp = torch.autograd.grad(comp_loss, list(m.parameters()))
    assert rel_err(comp_loss.detach().numpy(), eager_loss.detach().numpy()) <= F64
    for a, b in zip(comp, eager):
        assert rel_err(a.numpy(), b.numpy()) <= F64


def test_gradient_flow_is_the_per_unit_recursion():
    """‖∂L/∂h_t‖ recorded by the kernel against d_t = ∂L/∂y_t + d_{t+1} ⊙ φ'(a_{t+1}) ⊙ u."""
    torch.manual_seed(5)
    T, B, H = 12, 3, 6
    m = IndRNN(4, H).double()
    x = torch.randn(T, B, 4, dtype=torch.float64)
    with record_gradient_flow(m) as flow:
        y, _ = m(x)
        gy = torch.randn_like(y)
        y.backward(gy)
    u = m.weight_hh_l0.detach().numpy()
    yn, g = y.detach().numpy(), gy.numpy()
    d = np.zeros_like(yn)
    d[-1] = g[-1]
    for t in range(T - 2, -1, -1):
        d[t] = g[t] + d[t + 1] * (1 - yn[t + 1] ** 2) * u
    expected = np.linalg.norm(d, axis=-1)
    assert flow.norms.shape == (1, T, B)
    assert rel_err(flow.norms[0].numpy(), expected) <= F64


def test_half_precision_is_computed_in_float32():
    torch.manual_seed(6)
    m = IndRNN(3, 4)
    x = torch.randn(5, 2, 3)
    y32, _ = m(x)
    y16, h16 = m.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert y16.dtype == h16.dtype == torch.bfloat16
    assert (y16.float() - y32).abs().max() < 0.05


def test_meta_device_gives_shapes():
    m = IndRNN(3, 4, num_layers=2, device="meta")
    y, h = m(torch.empty(5, 2, 3, device="meta"))
    assert y.shape == (5, 2, 4) and h.shape == (2, 2, 4) and y.is_meta


def test_initialisation_and_saving():
    torch.manual_seed(7)
    m = IndRNN(3, 50, num_layers=2, bidirectional=True)
    for name, p in m.named_parameters():
        if name.startswith("weight_hh"):
            assert p.shape == (50,) and p.abs().max() <= 1 and p.abs().max() > 0.5, name
    buffer = io.BytesIO()
    torch.save(m, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert type(loaded) is IndRNN
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(loaded(x)[0], m(x)[0], rtol=0, atol=0)


def test_registry_and_package_names():
    spec = cells.get("indrnn")
    assert rnnkern.IndRNN is IndRNN and spec.module_type() is IndRNN
    assert not spec.drop_in and spec.recurrent == "diagonal"
    rnn = torch.nn.RNN(3, 4)
    assert type(rnnkern.convert(rnn)) is rnnkern.RNN  # convert never makes an IndRNN


def test_bad_input_names_the_argument():
    x, h0 = torch.randn(4, 2, 3), torch.zeros(2, 5)
    with pytest.raises(ValueError, match="w_hh"):
        functional.layer("indrnn", x, h0, torch.randn(5, 3), torch.randn(5, 5))
    with pytest.raises(ValueError, match="nonlinearity"):
        indrnn(x, h0, torch.randn(5, 3), torch.randn(5), nonlinearity="sigmoid")
    m = IndRNN(3, 5)
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        m(x, torch.zeros(1, 3, 5))


def test_packed_unsorted_sequences_keep_their_order():
    torch.manual_seed(8)
    m = IndRNN(3, 4).double()
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([2, 6, 4])
    y, h = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
    out, _ = pad_packed_sequence(y)
    for b, n in enumerate(lengths.tolist()):
        alone, h_b = m(x[:n, b:b + 1])
        assert rel_err(out[:n, b].detach().numpy(), alone[:, 0].detach().numpy()) <= F64
        assert rel_err(h[:, b].detach().numpy(), h_b[:, 0].detach().numpy()) <= F64
