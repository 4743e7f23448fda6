"""The forward's ways of reading W_hh as it is, against rnnkern.reference (float64 to 1e-10,
float32 within torch's own error) and on 1 and 2 threads (bitwise):

- one step of three rows or more: GEMMs on W_hh (no packing), the gated cells' gate blocks in
  one GEMM, and a GEMM large enough to be split in parts over the threads; from eight rows to 64
  the rows packed in panels (all rows, or a few panels and a part of one), and from 8 rows and
  4096 values the pointwise pass split over two threads;
- a row or two for a few steps: dot products, the gated cells' gate blocks in one call, split
  over the threads by W_hh's rows once W_hh reaches 512 KiB;
- the backward of up to four rows in all: the weight gradients as sums of outer products (split
  over the threads by rows from 64 KiB), ∂L/∂x and ∂L/∂h0 as rows times a matrix (no BLAS).

Each is checked through the layer (forward, then backward from what the forward saved) and
through the modules' inference path (the whole stack in one call: two layers, bidirectional).
"""
import copy

import pytest
import torch

import rnnkern
from rnnkern import cells, reference
from rnnkern import functional as F

from conftest import assert_f32_close, assert_f64_close

# (T, B, I, H): the path each takes.
SHAPES = [
    pytest.param((1, 3, 5, 7), id="one-step-3-rows"),
    pytest.param((1, 32, 24, 40), id="one-step-32-rows"),
    pytest.param((1, 9, 16, 256), id="one-step-split-gemm"),
    pytest.param((1, 45, 33, 50), id="one-step-45-rows-in-panels"),
    pytest.param((12, 1, 20, 64), id="twelve-rows-projection-in-panels"),
    pytest.param((1, 17, 8, 256), id="one-step-pass-in-two-halves"),
    pytest.param((4, 1, 16, 256), id="one-row-whole-w"),
    pytest.param((3, 2, 8, 384), id="two-rows-whole-w"),
    pytest.param((1, 1, 128, 256), id="one-row-split-outer-products"),
    pytest.param((1, 4, 64, 96), id="four-rows-outer-products"),
]

DENSE = [spec.name for spec in cells.CELLS if spec.recurrent == "dense"]


def _weights(cell, I, H, dtype, gen):
    G = cells.get(cell).gate_count
    scale = H ** -0.5
    w = [torch.empty(G * H, I, dtype=dtype).uniform_(-scale, scale, generator=gen),
         torch.empty(G * H, H, dtype=dtype).uniform_(-scale, scale, generator=gen),
         torch.empty(G * H, dtype=dtype).uniform_(-scale, scale, generator=gen),
         torch.empty(G * H, dtype=dtype).uniform_(-scale, scale, generator=gen)]
    return [t.requires_grad_() for t in w]


def _states(cell, B, H, dtype, gen):
    n = len(cells.get(cell).states)
    return tuple(torch.randn(B, H, dtype=dtype, generator=gen).requires_grad_()
                 for _ in range(n))


def _run(fn, cell, x, states, weights):
    """(outputs, gradients) of a loss weighting every output element differently."""
    hx = states if len(states) > 1 else states[0]
    y, hn = fn(x, hx, *weights)
    outs = [y] + (list(hn) if isinstance(hn, tuple) else [hn])
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, dtype=o.dtype, generator=gen)).sum() for o in outs)
    leaves = [x, *states, *weights]
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outs], list(grads)


def _layer(cell, reverse):
    nonlinearity = "tanh" if cells.get(cell).nonlinearity else None

    def ours(x, hx, w_ih, w_hh, b_ih, b_hh):
        return F.layer(cell, x, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity=nonlinearity,
                       reverse=reverse)

    def theirs(x, hx, w_ih, w_hh, b_ih, b_hh):
        return getattr(reference, cell)(x, hx, w_ih, w_hh, b_ih, b_hh, reverse=reverse)

    return ours, theirs


def _problem(cell, shape, dtype, seed=0):
    T, B, I, H = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, dtype=dtype, generator=gen).requires_grad_()
    return x, _states(cell, B, H, dtype, gen), _weights(cell, I, H, dtype, gen)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", DENSE)
def test_layer_float64_matches_the_reference(cell, shape, reverse):
    x, states, weights = _problem(cell, shape, torch.float64)
    ours, theirs = _layer(cell, reverse)
    got_out, got_grad = _run(ours, cell, x, states, weights)
    want_out, want_grad = _run(theirs, cell, x, states, weights)
    for i, (a, b) in enumerate(zip(got_out, want_out)):
        assert_f64_close(a, b, f"output {i}")
    for i, (a, b) in enumerate(zip(got_grad, want_grad)):
        assert_f64_close(a, b, f"gradient {i}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", DENSE)
def test_layer_float32_within_torchs_error(cell, shape):
    x, states, weights = _problem(cell, shape, torch.float64)
    ours, theirs = _layer(cell, False)
    exact, _ = _run(theirs, cell, x, states, weights)
    to32 = lambda ts: [t.detach().float().requires_grad_() for t in ts]  # noqa: E731
    x32, states32, weights32 = to32([x])[0], tuple(to32(states)), to32(weights)
    got, _ = _run(ours, cell, x32, states32, weights32)
    torch32, _ = _run(theirs, cell, x32, states32, weights32)
    for i, (a, t, e) in enumerate(zip(got, torch32, exact)):
        assert_f32_close(a, t, e, f"output {i}")


def _on_threads(n, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", DENSE)
def test_layer_is_thread_independent(cell, shape, dtype):
    x, states, weights = _problem(cell, shape, dtype)
    ours, _ = _layer(cell, False)
    one = _on_threads(1, lambda: _run(ours, cell, x, states, weights))
    two = _on_threads(2, lambda: _run(ours, cell, x, states, weights))
    for i, (a, b) in enumerate(zip(one[0] + one[1], two[0] + two[1])):
        assert torch.equal(a, b), f"tensor {i} differs between 1 and 2 threads"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", DENSE)
def test_inference_of_a_stack_matches_torch(cell, shape):
    """The no-grad path (the whole stack in one kernel call) against torch.nn in float64, on
    1 and 2 threads, with hx given and omitted."""
    T, B, I, H = shape
    torch.manual_seed(3)
    theirs = cells.get(cell).torch_type()(I, H, num_layers=2, bidirectional=True).double()
    assert type(theirs).__module__.startswith("torch")
    ours = rnnkern.convert(copy.deepcopy(theirs))
    assert type(ours).__module__.startswith("rnnkern")
    x = torch.randn(T, B, I, dtype=torch.float64)
    h = torch.randn(4, B, H, dtype=torch.float64)
    hx = (h, torch.randn(4, B, H, dtype=torch.float64)) if cell == "lstm" else h
    with torch.no_grad():
        for state in (hx, None):
            want_y, want_h = theirs(x, state)
            for n in (1, 2):
                got_y, got_h = _on_threads(n, lambda: ours(x, state))
                assert_f64_close(got_y, want_y, f"y, {n} threads")
                for g, w in zip(got_h if cell == "lstm" else (got_h,),
                                want_h if cell == "lstm" else (want_h,)):
                    assert_f64_close(g, w, f"final state, {n} threads")
