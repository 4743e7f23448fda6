"""rnnkern.forward / rnnkern.backward against rnnkern.reference and an independent NumPy loop."""

import os

import numpy as np
import pytest
import torch

import rnnkern
from rnnkern import cells, numpy_api, reference

import numpy_loop
from conftest import SHAPES, assert_f32_close, assert_f64_close, make_problem, rel_err

NAMES = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")


def reference_run(p, bs, grads, nonlinearity, reverse, dtype):
    """Output, h_n and the six gradients from the autograd reference, as float64 NumPy."""
    t = {n: (None if a is None else torch.tensor(a, dtype=dtype, requires_grad=True))
         for n, a in p.items()}
    out, h_n = reference.rnn(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                             nonlinearity, batch_sizes=bs, reverse=reverse)
    loss = (out * torch.tensor(grads["grad_y"], dtype=dtype)).sum() + \
        (h_n * torch.tensor(grads["grad_hn"], dtype=dtype)).sum()
    loss.backward()
    g = {n: t[n].grad.double().numpy() for n in NAMES if t[n] is not None}
    return out.detach().double().numpy(), h_n.detach().double().numpy(), g


def kernel_run(p, bs, grads, nonlinearity, reverse):
    y = rnnkern.forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                        nonlinearity, batch_sizes=bs, reverse=reverse)
    g = rnnkern.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], y, grads["grad_y"],
                         grads["grad_hn"], nonlinearity, batch_sizes=bs, reverse=reverse)
    return y, g


CASES = [(shape, nl, bias, packed, reverse)
         for shape in SHAPES for nl in ("tanh", "relu") for bias in (True, False)
         for packed in (False, True) for reverse in (False, True)]


def case_id(c):
    (T, B, I, H), nl, bias, packed, reverse = c
    return (f"T{T}B{B}I{I}H{H}-{nl}" + ("-bias" if bias else "-nobias") +
            ("-packed" if packed else "") + ("-reverse" if reverse else ""))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_float64_matches_reference_and_numpy_loop(case):
    shape, nl, bias, packed, reverse = case
    p, bs, grads = make_problem(*shape, bias=bias, packed=packed)
    y, g = kernel_run(p, bs, grads, nl, reverse)
    assert y.dtype == np.float64 and all(a.dtype == np.float64 for a in g)

    ref_y, _, ref_g = reference_run(p, bs, grads, nl, reverse, torch.float64)
    loop_y, _ = numpy_loop.forward(*p.values(), nl, bs, reverse)
    loop_g = numpy_loop.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], loop_y,
                                 grads["grad_y"], grads["grad_hn"], nl, bs, reverse)
    loop_g = dict(zip(("x", "h0", "w_ih", "w_hh", "b_ih"), loop_g), b_hh=loop_g[4])

    assert_f64_close(y, ref_y, "y vs reference")
    assert_f64_close(y, loop_y, "y vs numpy loop")
    for name in NAMES:
        assert getattr(g, name).shape == loop_g[name].shape
        assert_f64_close(getattr(g, name), loop_g[name], f"grad {name} vs numpy loop")
        if name in ref_g:
            assert_f64_close(getattr(g, name), ref_g[name], f"grad {name} vs reference")


@pytest.mark.parametrize("case", CASES[::3], ids=case_id)
def test_float32_within_torch_float32_error(case):
    shape, nl, bias, packed, reverse = case
    p64, bs, grads64 = make_problem(*shape, bias=bias, packed=packed)
    p32 = {n: None if a is None else a.astype(np.float32) for n, a in p64.items()}
    grads32 = {n: a.astype(np.float32) for n, a in grads64.items()}
    y, g = kernel_run(p32, bs, grads32, nl, reverse)
    assert y.dtype == np.float32 and all(a.dtype == np.float32 for a in g)
    # The exact answer from float64 on the float32-rounded inputs.
    p32_as64 = {n: None if a is None else a.astype(np.float64) for n, a in p32.items()}
    grads32_as64 = {n: a.astype(np.float64) for n, a in grads32.items()}
    exact_y, _, exact_g = reference_run(p32_as64, bs, grads32_as64, nl, reverse, torch.float64)
    torch_y, _, torch_g = reference_run(p32, bs, grads32, nl, reverse, torch.float32)
    assert_f32_close(y, torch_y, exact_y, "y")
    for name in exact_g:
        assert_f32_close(getattr(g, name), torch_g[name], exact_g[name], f"grad {name}")


def test_grad_hn_and_grad_y_are_optional_parts_of_the_loss():
    p, bs, grads = make_problem(6, 3, 4, 5)
    y = rnnkern.forward(*p.values())
    only_y = rnnkern.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], y, grads["grad_y"])
    zero_hn = rnnkern.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], y, grads["grad_y"],
                               np.zeros_like(grads["grad_hn"]))
    for a, b in zip(only_y, zero_hn):
        np.testing.assert_array_equal(a, b)
    # grad_hn of the forward direction is grad_y at the last step.
    gy_last = np.zeros_like(grads["grad_y"])
    gy_last[-1] = grads["grad_hn"]
    via_y = rnnkern.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], y, gy_last)
    via_hn = rnnkern.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], y,
                              np.zeros_like(gy_last), grads["grad_hn"])
    for name in NAMES:
        assert_f64_close(getattr(via_hn, name), getattr(via_y, name), name)


def test_strided_inputs_give_the_same_result():
    p, _, grads = make_problem(5, 3, 4, 6)
    y = rnnkern.forward(*p.values())
    # Same values, other memory layouts: Fortran order and a strided slice.
    x_f = np.asfortranarray(p["x"])
    w_hh_t = np.ascontiguousarray(p["w_hh"].T).T
    h0_s = np.repeat(p["h0"], 2, axis=0)[::2]
    assert not x_f.flags.c_contiguous and not w_hh_t.flags.c_contiguous
    assert not h0_s.flags.c_contiguous
    y2 = rnnkern.forward(x_f, h0_s, p["w_ih"], w_hh_t, p["b_ih"], p["b_hh"])
    np.testing.assert_array_equal(y, y2)
    g = rnnkern.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], y, grads["grad_y"])
    g2 = rnnkern.backward(x_f, h0_s, p["w_ih"], w_hh_t, y, np.asfortranarray(grads["grad_y"]))
    for a, b in zip(g, g2):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("packed", [False, True])
def test_grad_y_with_other_strides_gives_the_same_gradients(packed):
    p, bs, grads = make_problem(6, 4, 3, 20, packed=packed)
    y = rnnkern.forward(*p.values(), batch_sizes=bs)
    rng = np.random.default_rng(1)
    row = rng.standard_normal(20)
    wide = rng.standard_normal(y.shape[:-1] + (40,))
    views = [np.broadcast_to(np.float64(0.5), y.shape),  # the gradient of 0.5 * y.sum()
             np.broadcast_to(row, y.shape),  # one row for all
             wide[..., ::2],  # every other column
             wide[::-1, ..., 1::2],  # rows in reverse order
             np.asfortranarray(wide[..., :20])]
    for view in views:
        assert not view.flags.c_contiguous
        g = rnnkern.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], y, view, batch_sizes=bs)
        g_copy = rnnkern.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], y,
                                  np.ascontiguousarray(view), batch_sizes=bs)
        for a, b in zip(g, g_copy):
            np.testing.assert_array_equal(a, b)


def test_large_outputs_are_separate_and_reused_after_release():
    p, _, _ = make_problem(50, 8, 16, 64)  # y: 204,800 bytes, from the block cache
    rnnkern.empty_cache()
    y1 = rnnkern.forward(*p.values())
    expected, block = y1.copy(), y1.ctypes.data
    del y1
    y2 = rnnkern.forward(*p.values())
    assert y2.ctypes.data == block  # the released block, handed out again
    np.testing.assert_array_equal(y2, expected)
    y3 = rnnkern.forward(*p.values())
    assert y3.ctypes.data != block
    y3[...] = 0
    np.testing.assert_array_equal(y2, expected)
    del y2, y3
    assert rnnkern.empty_cache() >= 2 * expected.nbytes
    assert rnnkern.empty_cache() == 0


def test_inputs_are_not_modified():
    p, bs, grads = make_problem(4, 3, 5, 7, packed=True)
    before = {n: a.copy() for n, a in p.items()}
    gy = grads["grad_y"].copy()
    y = rnnkern.forward(*p.values(), batch_sizes=bs)
    y_before = y.copy()
    rnnkern.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], y, gy, batch_sizes=bs)
    for n in p:
        np.testing.assert_array_equal(p[n], before[n])
    np.testing.assert_array_equal(gy, grads["grad_y"])
    np.testing.assert_array_equal(y, y_before)


def test_bias_gradients_are_separate_arrays():
    p, _, grads = make_problem(3, 2, 3, 4)
    y = rnnkern.forward(*p.values())
    g = rnnkern.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], y, grads["grad_y"])
    np.testing.assert_array_equal(g.b_ih, g.b_hh)
    assert not np.shares_memory(g.b_ih, g.b_hh)


def test_isa_is_reported():
    assert rnnkern.isa() in ("avx512", "avx2", "generic")
    if os.environ.get("RNNKERN_ISA"):
        assert rnnkern.isa() == os.environ["RNNKERN_ISA"]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("cell", cells.NAMES)
def test_layer_forward_and_backward_of_every_cell_match_its_reference(cell, packed):
    """The generic NumPy level against autograd through the cell's reference loop."""
    spec = cells.get(cell)
    T, B, I, H = 5, 3, 4, 6
    gen = torch.Generator().manual_seed(4)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=gen)  # noqa: E731
    bs = torch.tensor([3, 3, 2, 2, 1]) if packed else None
    x = r(int(bs.sum()), I) if packed else r(T, B, I)
    states = tuple(r(B, H) for _ in spec.states)
    weights = [r(*spec.parameter_shape(k, I, H)) * 0.4
               for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    nl = "relu" if spec.nonlinearity else None
    inputs = [x, *states, *weights]
    for t in inputs:
        t.requires_grad_()
    y_ref, finals = spec.reference_layer(x, states, weights, nl or "tanh", bs, True)
    grad_y = r(*y_ref.shape)
    grad_finals = tuple(r(B, H) for _ in spec.states)
    expected = torch.autograd.grad((y_ref, *finals), inputs, (grad_y, *grad_finals))
    hx = tuple(s.detach().numpy() for s in states)
    w = [t.detach().numpy() for t in weights]
    arrays = dict(cell=cell, x=x.detach().numpy(), hx=hx if len(hx) > 1 else hx[0],
                  w_ih=w[0], w_hh=w[1])
    y, saved = numpy_api.layer_forward(**arrays, b_ih=w[2], b_hh=w[3], nonlinearity=nl,
                                       batch_sizes=None if bs is None else bs.numpy(),
                                       reverse=True)
    assert rel_err(y, y_ref.detach().numpy()) <= 1e-12
    grads = numpy_api.layer_backward(
        **arrays, y=y, saved=saved, grad_y=grad_y.numpy(),
        grad_finals=tuple(g.numpy() for g in grad_finals), nonlinearity=nl,
        batch_sizes=None if bs is None else bs.numpy(), reverse=True)
    assert list(grads) == [*spec.bptt_arguments]
    for name, want in zip(spec.bptt_arguments, expected):
        assert rel_err(grads[name], want.numpy()) <= 1e-10, name
