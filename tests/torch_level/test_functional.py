"""rnnkern.functional.rnn: against the reference and torch.nn.RNN, gradcheck, opcheck, compile."""

import numpy as np
import pytest
import torch

from rnnkern import functional, reference

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


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_gradcheck(packed, reverse, nonlinearity):
    p, bs, _ = make_problem(5, 3, 4, 5, packed=packed, seed=1)
    t = tensors(p)
    kwargs = dict(batch_sizes=None if bs is None else torch.as_tensor(bs), reverse=reverse)

    def fn(*args):
        return functional.rnn(*args, nonlinearity=nonlinearity, **kwargs)

    assert torch.autograd.gradcheck(fn, [t[n] for n in ARGS])


def opcheck_samples():
    p, bs, g = make_problem(4, 3, 5, 6)
    pp, pbs, pg = make_problem(4, 3, 5, 6, packed=True)
    samples = []
    for prob, sizes, grads in ((p, None, g), (pp, pbs, pg)):
        t = tensors(prob)
        bs_t = None if sizes is None else torch.as_tensor(sizes)
        for nl, reverse, bias in (("tanh", False, True), ("relu", True, False)):
            b_ih, b_hh = (t["b_ih"], t["b_hh"]) if bias else (None, None)
            fwd = ("rnn", t["x"], t["h0"], None, t["w_ih"], t["w_hh"], b_ih, b_hh, None, nl,
                   bs_t, reverse)
            y, _, _, saved = torch.ops.rnnkern.layer_forward(*fwd)
            # (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
            mask = ([True, True, False, True, True, True, True, False] if bias
                    else [False, True, False, True, False, True, False, False])
            bwd = ("rnn", t["x"].detach(), t["h0"].detach(), None, t["w_ih"].detach(),
                   t["w_hh"].detach(), None, y.detach(), saved, torch.tensor(grads["grad_y"]),
                   torch.tensor(grads["grad_hn"]), None, nl, bs_t, reverse, mask)
            samples.append((fwd, bwd))
    return samples


@pytest.mark.parametrize("index", range(4))
def test_opcheck(index):
    fwd, bwd = opcheck_samples()[index]
    torch.library.opcheck(torch.ops.rnnkern.layer_forward.default, fwd)
    torch.library.opcheck(torch.ops.rnnkern.layer_backward.default, bwd)


def test_torch_compile_fullgraph_forward_and_backward():
    p, _, g = make_problem(6, 3, 4, 5)
    gy = torch.tensor(g["grad_y"])

    def loss_fn(x, h0, w_ih, w_hh, b_ih, b_hh):
        out, h_n = functional.rnn(x, h0, w_ih, w_hh, b_ih, b_hh)
        return (out * gy).sum() + h_n.square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True)
    t_eager, t_comp = tensors(p), tensors(p)
    loss_eager = loss_fn(*(t_eager[n] for n in ARGS))
    loss_eager.backward()
    loss_comp = compiled(*(t_comp[n] for n in ARGS))
    loss_comp.backward()
    assert_f64_close(loss_comp.detach(), loss_eager.detach(), "loss")
    for n in ARGS:
        assert t_comp[n].grad is not None
        assert_f64_close(t_comp[n].grad, t_eager[n].grad, f"grad {n}")


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


@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_through_the_custom_op(packed):
    p, bs, _ = make_problem(4, 3, 3, 4, packed=packed, seed=2)
    t = tensors(p)
    bs_t = None if bs is None else torch.as_tensor(bs)

    def fn(x, h0, w_ih, w_hh, b_ih, b_hh):
        return torch.ops.rnnkern.layer_forward("rnn", x, h0, None, w_ih, w_hh, b_ih, b_hh, None,
                                               "tanh", bs_t, packed)[:2]

    assert torch.autograd.gradcheck(fn, [t[n] for n in ARGS])
