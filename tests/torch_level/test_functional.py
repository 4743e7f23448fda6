"""rnnkern.functional (rnn, lstm, gru) and the ops under it (rnnkern::layer_forward and
layer_backward): functional.rnn against the reference and torch.nn.RNN; for every drop-in cell
(the cell fixture of conftest.py) gradcheck and gradgradcheck, opcheck, gradcheck through the op
and compile. The Elman RNN's relu and the LSTM's proj_size have tests of their own. (The modules
over these: test_modules.py.)"""

import numpy as np
import pytest
import torch

from rnnkern import cells, functional, reference

from conftest import SHAPES, assert_f32_close, assert_f64_close, make_problem

ARGS = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")


def tensors(p, dtype=torch.float64, requires_grad=True):
    return {n: None if a is None else torch.tensor(a, dtype=dtype, requires_grad=requires_grad)
            for n, a in p.items()}


def run(fn, t, bs, nl, reverse, gy, ghn):
    kwargs = {}
    if bs is not None:
        kwargs["batch_sizes"] = torch.as_tensor(bs)
    if reverse:
        kwargs["reverse"] = True
    out, h_n = fn(*(t[n] for n in ARGS), nl, **kwargs)
    ((out * gy).sum() + (h_n * ghn).sum()).backward()
    grads = {n: t[n].grad for n in ARGS if t[n] is not None}
    return out.detach(), h_n.detach(), grads


CASES = [(shape, nl, bias, packed, reverse)
         for shape in SHAPES[::2] for nl in ("tanh", "relu") for bias in (True, False)
         for packed in (False, True) for reverse in (False, True)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_float64(case):
    shape, nl, bias, packed, reverse = case
    p, bs, g = make_problem(*shape, bias=bias, packed=packed)
    gy, ghn = torch.tensor(g["grad_y"]), torch.tensor(g["grad_hn"])
    ours = run(functional.rnn, tensors(p), bs, nl, reverse, gy, ghn)
    ref = run(reference.rnn, tensors(p), bs, nl, reverse, gy, ghn)
    assert_f64_close(ours[0], ref[0], "output")
    assert_f64_close(ours[1], ref[1], "h_n")
    assert ours[2].keys() == ref[2].keys()
    for name in ref[2]:
        assert_f64_close(ours[2][name], ref[2][name], f"grad {name}")


@pytest.mark.parametrize("case", CASES[::4], ids=str)
def test_float32_within_torch_float32_error(case):
    shape, nl, bias, packed, reverse = case
    p, bs, g = make_problem(*shape, bias=bias, packed=packed, dtype=np.float32)
    gy, ghn = torch.tensor(g["grad_y"]), torch.tensor(g["grad_hn"])
    ours = run(functional.rnn, tensors(p, torch.float32), bs, nl, reverse, gy, ghn)
    mine32 = run(reference.rnn, tensors(p, torch.float32), bs, nl, reverse, gy, ghn)
    exact = run(reference.rnn, tensors(p, torch.float64), bs, nl, reverse, gy.double(),
                ghn.double())
    assert ours[0].dtype == torch.float32
    for i, what in ((0, "output"), (1, "h_n")):
        assert_f32_close(ours[i], mine32[i], exact[i], what)
    for name in exact[2]:
        assert ours[2][name].dtype == torch.float32
        assert_f32_close(ours[2][name], mine32[2][name], exact[2][name], f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_nn_rnn(dtype, nonlinearity, bias):
    T, B, I, H = 9, 4, 6, 17
    module = torch.nn.RNN(I, H, nonlinearity=nonlinearity, bias=bias, dtype=dtype)
    weights = [p.detach().clone().requires_grad_() for p in module.parameters()]
    if not bias:
        weights += [None, None]
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=dtype, requires_grad=True)
    gy, ghn = torch.randn(T, B, H, dtype=dtype), torch.randn(B, H, dtype=dtype)

    out_t, hn_t = module(x, h0)
    ((out_t * gy).sum() + (hn_t[0] * ghn).sum()).backward()
    torch_grads = [x.grad, h0.grad[0]] + [p.grad for p in module.parameters()]

    x2 = x.detach().clone().requires_grad_()
    h02 = h0.detach()[0].clone().requires_grad_()
    out, hn = functional.rnn(x2, h02, *weights, nonlinearity=nonlinearity)
    ((out * gy).sum() + (hn * ghn).sum()).backward()
    our_grads = [x2.grad, h02.grad] + [w.grad for w in weights if w is not None]

    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, out_t.detach(), **tol)
    torch.testing.assert_close(hn, hn_t.detach()[0], **tol)
    assert len(our_grads) == len(torch_grads)
    for ours, theirs in zip(our_grads, torch_grads):
        torch.testing.assert_close(ours, theirs, **tol)


def test_hx_none_means_zeros():
    p, _, _ = make_problem(4, 2, 3, 5)
    t = tensors(p, requires_grad=False)
    out, h_n = functional.rnn(t["x"], None, t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"])
    ref, ref_hn = reference.rnn(t["x"], torch.zeros(2, 5, dtype=torch.float64), t["w_ih"],
                                t["w_hh"], t["b_ih"], t["b_hh"])
    assert_f64_close(out, ref, "output")
    assert_f64_close(h_n, ref_hn, "h_n")


def test_non_contiguous_tensors():
    p, _, _ = make_problem(5, 3, 4, 6)
    t = tensors(p, requires_grad=False)
    x_nc = t["x"].transpose(0, 1).contiguous().transpose(0, 1)
    w_hh_nc = t["w_hh"].t().contiguous().t()
    assert not x_nc.is_contiguous() and not w_hh_nc.is_contiguous()
    out, _ = functional.rnn(x_nc, t["h0"], t["w_ih"], w_hh_nc, t["b_ih"], t["b_hh"])
    ref, _ = functional.rnn(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"])
    torch.testing.assert_close(out, ref, rtol=0, atol=0)




# Every drop-in cell: functional.rnn / lstm / gru and the ops, on the arguments of one layer.

def layer_args(cell, packed, reverse, bias, seed=0, sizes=(4, 3, 5, 6), proj=0,
               nonlinearity="tanh"):
    """The arguments of rnnkern::layer_forward, (cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
    nonlinearity, batch_sizes, reverse): c0 for the LSTM (else None), w_hr (proj, H) with
    proj > 0, the nonlinearity for a cell that takes one (else None)."""
    spec = cells.get(cell)
    g = torch.Generator().manual_seed(seed)
    T, B, I, H = sizes
    G = spec.gate_count
    P = proj or H
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    bs = torch.tensor([B] + [max(B - t, 1) for t in range(1, T)]) if packed else None
    x = r(int(bs.sum()), I) if packed else r(T, B, I)
    c0 = r(B, H) if len(spec.states) > 1 else None
    b = (r(G * H) * 0.3, r(G * H) * 0.3) if bias else (None, None)
    w_hr = r(P, H) * 0.3 if proj else None
    return (cell, x, r(B, P), c0, r(G * H, I) * 0.3, r(G * H, P) * 0.3, *b, w_hr,
            nonlinearity if spec.nonlinearity else None, bs, reverse)


def call_functional(cell, x, states, weights, nonlinearity="tanh", **kwargs):
    """functional.<cell>(x, hx, *weights, **kwargs), its final states flattened:
    (output, h_n) or the LSTM's (output, h_n, c_n)."""
    if cells.get(cell).nonlinearity:
        kwargs["nonlinearity"] = nonlinearity
    hx = tuple(states) if len(states) > 1 else states[0]
    y, final = getattr(functional, cell)(x, hx, *weights, **kwargs)
    return (y, *final) if isinstance(final, tuple) else (y, final)


def check_gradients(cell, packed, reverse, seed, sizes, nonlinearity="tanh", second=False):
    """gradcheck of functional.<cell> in every input (and gradgradcheck with ``second``)."""
    _, x, h0, c0, w_ih, w_hh, b_ih, b_hh, _, _, bs, _ = layer_args(
        cell, packed, reverse, True, seed=seed, sizes=sizes, nonlinearity=nonlinearity)
    count = len(cells.get(cell).states)
    inputs = [t.requires_grad_() for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh) if t is not None]

    def fn(x, *rest):
        return call_functional(cell, x, rest[:count], rest[count:], nonlinearity,
                               batch_sizes=bs, reverse=reverse)

    assert torch.autograd.gradcheck(fn, inputs)
    if second:  # create_graph=True: the backward runs on the reference loop
        assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck(cell, packed, reverse):
    check_gradients(cell, packed, reverse, seed=1, sizes=(5, 3, 4, 5))


@pytest.mark.cells(drop_in=True, nonlinearity=True)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_relu(cell, packed, reverse):
    check_gradients(cell, packed, reverse, seed=1, sizes=(5, 3, 4, 5), nonlinearity="relu")


@pytest.mark.cells(drop_in=True)
def test_functional_gradcheck_and_second_derivatives(cell):
    check_gradients(cell, True, True, seed=2, sizes=(4, 3, 5, 6))
    check_gradients(cell, True, True, seed=2, sizes=(2, 2, 2, 2), second=True)


# (packed, reverse, bias); the LSTM's proj_size adds (packed, reverse, bias, proj_size)
OPCHECK = [(False, False, True), (False, True, False), (True, False, True), (True, True, False)]
OPCHECK_PROJ = [(False, True, True, 4), (True, False, False, 2)]


def check_opcheck(cell, packed, reverse, bias, proj=0, nonlinearity="tanh"):
    """opcheck of layer_forward (inputs that require grad) and of layer_backward."""
    fwd = list(layer_args(cell, packed, reverse, bias, proj=proj, nonlinearity=nonlinearity))
    for i in range(1, 9):
        if fwd[i] is not None:
            fwd[i] = fwd[i].requires_grad_()
    torch.library.opcheck(torch.ops.rnnkern.layer_forward.default, tuple(fwd))
    fwd = [t.detach() if isinstance(t, torch.Tensor) else t for t in fwd]
    with torch.no_grad():
        y, h_n, c_n, saved = torch.ops.rnnkern.layer_forward(*fwd)
    _, x, h0, c0, w_ih, w_hh, _, _, w_hr, nl, bs, _ = fwd
    lstm = c0 is not None
    gen = torch.Generator().manual_seed(9)
    gy = torch.randn(y.shape, dtype=y.dtype, generator=gen)
    ghn = torch.randn(h_n.shape, dtype=y.dtype, generator=gen)
    gcn = torch.randn(c_n.shape, dtype=y.dtype, generator=gen) if lstm else None
    # (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    mask = ([True, True, lstm, True, True, True, True, bool(proj)] if bias
            else [False, True, lstm, True, False, True, False, False])
    bwd = (cell, x, h0, c0, w_ih, w_hh, w_hr, y, saved, gy, ghn, gcn, nl, bs, reverse, mask)
    torch.library.opcheck(torch.ops.rnnkern.layer_backward.default, bwd)


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("packed,reverse,bias", OPCHECK)
def test_opcheck(cell, packed, reverse, bias):
    check_opcheck(cell, packed, reverse, bias)


@pytest.mark.cells(drop_in=True, nonlinearity=True)
@pytest.mark.parametrize("packed,reverse,bias", OPCHECK)
def test_opcheck_relu(cell, packed, reverse, bias):
    check_opcheck(cell, packed, reverse, bias, nonlinearity="relu")


@pytest.mark.cells("lstm")
@pytest.mark.parametrize("packed,reverse,bias,proj", OPCHECK_PROJ)
def test_opcheck_proj_size(cell, packed, reverse, bias, proj):
    check_opcheck(cell, packed, reverse, bias, proj=proj)


def check_gradcheck_through_the_op(cell, packed, reverse, bias, proj=0):
    args = list(layer_args(cell, packed, reverse, bias, seed=1, proj=proj))
    index = [i for i in range(1, 9) if args[i] is not None]
    for i in index:
        args[i] = args[i].requires_grad_()
    count = len(cells.get(cell).states)

    def fn(*tensors):
        a = list(args)
        for i, t in zip(index, tensors):
            a[i] = t
        y, h_n, c_n, _ = torch.ops.rnnkern.layer_forward(*a)
        return (y, h_n, c_n)[:1 + count]

    assert torch.autograd.gradcheck(fn, [args[i] for i in index])


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("packed,reverse,bias", [(False, False, True), (True, True, True),
                                                 (True, True, False), (True, False, True)])
def test_gradcheck_through_the_custom_op(cell, packed, reverse, bias):
    check_gradcheck_through_the_op(cell, packed, reverse, bias)


@pytest.mark.cells("lstm")
@pytest.mark.parametrize("packed,reverse,bias,proj", OPCHECK_PROJ)
def test_gradcheck_through_the_custom_op_proj_size(cell, packed, reverse, bias, proj):
    check_gradcheck_through_the_op(cell, packed, reverse, bias, proj=proj)


@pytest.mark.cells(drop_in=True)
def test_torch_compile_fullgraph_forward_and_backward(cell):
    torch._dynamo.reset()
    _, x, h0, c0, w_ih, w_hh, b_ih, b_hh, *_ = layer_args(cell, False, False, True, seed=3)
    states = [t for t in (h0, c0) if t is not None]
    gy = torch.randn(x.shape[:2] + h0.shape[1:], dtype=x.dtype,
                     generator=torch.Generator().manual_seed(4))

    def loss_fn(x, *rest):
        y, *finals = call_functional(cell, x, rest[:len(states)], rest[len(states):])
        return (y * gy).sum() + y.sin().sum() + sum(s.square().sum() for s in finals)

    args = (x, *states, w_ih, w_hh, b_ih, b_hh)
    eager = [t.clone().requires_grad_() for t in args]
    comp = [t.clone().requires_grad_() for t in args]
    loss_e = loss_fn(*eager)
    loss_e.backward()
    loss_c = torch.compile(loss_fn, fullgraph=True)(*comp)
    loss_c.backward()
    assert_f64_close(loss_c.detach(), loss_e.detach(), "loss")
    for name, a, b in zip(("x", *cells.get(cell).state_keys, "w_ih", "w_hh", "b_ih", "b_hh"),
                          comp, eager):
        assert a.grad is not None, name
        assert_f64_close(a.grad, b.grad, f"grad {name}")


def test_functional_errors_name_the_argument():
    _, x, h0, c0, w_ih, w_hh, b_ih, b_hh, *_ = layer_args("lstm", False, False, True)
    with pytest.raises(TypeError, match="cx must have dtype float64"):
        functional.lstm(x, (h0, c0.float()), w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match=r"w_hh must have shape \(24, 6\), got \(24, 5\)"):
        functional.lstm(x, (h0, c0), w_ih, w_hh[:, :5], b_ih, b_hh)
    with pytest.raises(TypeError, match="hx must be a torch.Tensor, got list"):
        functional.gru(x, [1.0], w_ih[:18], w_hh[:18])
