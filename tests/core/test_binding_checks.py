"""Argument checks of the compiled core that once let bad input through or rejected good input
(issue 10: dtype by identity, overflowing sizes, misaligned arrays, loose argument types)."""

import pickle

import numpy as np
import pytest
import torch

import rnnkern
from rnnkern import cells
from rnnkern import functional

from conftest import F64_TOL, rel_err


def problem(T=3, B=2, I=4, H=5, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    w_ih = rng.standard_normal((H, I)).astype(dtype)
    w_hh = (0.3 * rng.standard_normal((H, H))).astype(dtype)
    return x, h0, w_ih, w_hh


def test_arrays_that_went_through_pickle_are_accepted():
    arrays = problem()
    expected = rnnkern.forward(*arrays)
    unpickled = [pickle.loads(pickle.dumps(a)) for a in arrays]
    assert rel_err(rnnkern.forward(*unpickled), expected) == 0
    y = rnnkern.forward(*unpickled)
    grads = rnnkern.backward(*unpickled, y, pickle.loads(pickle.dumps(np.ones_like(y))))
    assert grads.x.shape == unpickled[0].shape


def test_big_endian_arrays_are_rejected_not_misread():
    x, h0, w_ih, w_hh = problem()
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got >f8"):
        rnnkern.forward(x.astype(">f8"), h0, w_ih, w_hh)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_misaligned_arrays_give_the_aligned_result(dtype):
    arrays = problem(dtype=dtype)
    expected = rnnkern.forward(*arrays)
    size = np.dtype(dtype).itemsize
    shifted = []
    for a in arrays:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        view = np.frombuffer(buf.data, dtype=dtype, offset=1, count=a.size).reshape(a.shape)
        view[...] = a
        assert view.ctypes.data % size != 0 and view.flags.c_contiguous
        shifted.append(view)
    assert rel_err(rnnkern.forward(*shifted), expected) == 0
    y = rnnkern.forward(*arrays)
    g = rnnkern.backward(*arrays, y, np.ones_like(y))
    buf = np.zeros(y.nbytes + 1, np.uint8)
    gy = np.frombuffer(buf.data, dtype=dtype, offset=1, count=y.size).reshape(y.shape)
    gy[...] = 1
    g2 = rnnkern.backward(*shifted, y, gy)
    for a, b in zip(g, g2):
        assert rel_err(b, a) == 0


def test_overflowing_hidden_size_is_an_error_not_a_huge_copy():
    H = 2 ** 32
    x = np.zeros((3, 0, 1), np.float32)
    w_ih = np.broadcast_to(np.float32(0), (H, 1))
    with pytest.raises(ValueError, match="w_ih has 4294967296 elements, more than the 32-bit"):
        rnnkern.forward(x, np.zeros((0, H), np.float32), w_ih, w_ih)


def test_overflowing_batch_sizes_are_an_error():
    x, h0, w_ih, w_hh = problem()
    sizes = [2 ** 59] * 32 + [3, 3]
    with pytest.raises(ValueError, match="batch_sizes must sum to less than 2\\*\\*63"):
        rnnkern.forward(x.reshape(6, 4), h0, w_ih, w_hh, batch_sizes=sizes)


def test_batch_sizes_must_be_a_sequence_of_int64_range():
    x, h0, w_ih, w_hh = problem()
    with pytest.raises(ValueError, match="batch_sizes must have 1 dimension, got shape \\(\\)"):
        rnnkern.forward(x.reshape(6, 4), h0, w_ih, w_hh, batch_sizes=3)
    with pytest.raises(ValueError, match="batch_sizes must be below 2\\*\\*63, got 9223372036854775808"):
        rnnkern.forward(x.reshape(6, 4), h0, w_ih, w_hh,
                        batch_sizes=np.array([2 ** 63, 2], np.uint64))


@pytest.mark.parametrize("bad", [None, b"tanh", 3, "sigmoid"])
def test_nonlinearity_must_be_the_string_tanh_or_relu(bad):
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got ") as info:
        rnnkern.forward(*problem(), nonlinearity=bad)
    assert len(str(info.value)) < 100  # names the value, does not dump the arrays


def test_torch_level_errors_name_input_and_hx():
    x = torch.randn(3, 2, 4)
    w_ih, w_hh = torch.randn(5, 4), torch.randn(5, 5)
    with pytest.raises(ValueError, match="hx must have shape \\(2, 5\\), got \\(3, 5\\)"):
        functional.rnn(x, torch.randn(3, 5), w_ih, w_hh)
    with pytest.raises(TypeError, match="input must have dtype torch.float32 or torch.float64"):
        functional.rnn(x.long(), None, w_ih, w_hh)


def _small_problem(cell, seed, T=4, B=3, I=5, H=6):
    """A small time-major problem of ``cell``: (x, states, w_ih, w_hh, b_ih, b_hh)."""
    spec = cells.get(cell)
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=gen)  # noqa: E731
    rows = spec.gate_count * H
    w_hh = r(*spec.parameter_shape("weight_hh", I, H)) * 0.4
    states = tuple(r(B, H) for _ in spec.states)
    return r(T, B, I), states, r(rows, I) * 0.4, w_hh, r(rows) * 0.4, r(rows) * 0.4


def _nonlinearity(cell):
    return "tanh" if cells.get(cell).nonlinearity else None


def test_small_calls_on_pointers_match_the_array_path(cell):
    # calls with small outputs pass data_ptr()s; views and odd strides take the array path
    facts = functional._facts(cell)
    x, states, w_ih, w_hh, b_ih, b_hh = _small_problem(cell, 0)
    nl = _nonlinearity(cell)
    small = functional._forward_small(facts, x, states, w_ih, w_hh, b_ih, b_hh, None, nl, False)
    assert small is not None
    c0 = states[1].numpy() if len(states) > 1 else None
    y, saved = rnnkern._core.layer_forward(cell, x.numpy(), states[0].numpy(), c0, w_ih.numpy(),
                                           w_hh.numpy(), b_ih.numpy(), b_hh.numpy(), None, nl,
                                           None, False)
    assert rel_err(small[0].numpy(), y) <= F64_TOL
    assert len(small[1]) == len(saved)
    for got, want in zip(small[1], saved):
        assert rel_err(got.numpy(), want) <= F64_TOL
    strided = torch.randn(w_ih.shape[0], 10, dtype=torch.float64)[:, ::2]
    assert functional._forward_small(facts, x, states, strided, w_hh, b_ih, b_hh, None, nl,
                                     False) is None
    out, _ = functional.layer(cell, x, states if len(states) > 1 else states[0], strided, w_hh,
                              b_ih, b_hh, None, nl)
    y2, _ = rnnkern._core.layer_forward(cell, x.numpy(), states[0].numpy(), c0,
                                        strided.numpy(), w_hh.numpy(), b_ih.numpy(),
                                        b_hh.numpy(), None, nl, None, False)
    assert rel_err(out.numpy(), y2) <= F64_TOL


@pytest.mark.parametrize("reverse", [False, True])
def test_small_backward_on_pointers_matches_the_array_path(cell, reverse):
    x, states, w_ih, w_hh, b_ih, b_hh = _small_problem(cell, 1)
    nl = _nonlinearity(cell)
    y, _, saved = functional._forward(cell, x, states, w_ih, w_hh, None, None, None, nl, None,
                                      reverse)
    T, B, H = y.shape
    grad_y = torch.ones(1, 1, 1, dtype=torch.float64).expand(T, B, H)  # as from y.sum()
    grad_finals = tuple(torch.randn(B, H, dtype=torch.float64) for _ in states)
    mask = [True, True, len(states) > 1, True, True, True, True, False]
    small = functional._backward_small(functional._facts(cell), x, states, w_ih, w_hh, None, y,
                                       saved, grad_y, grad_finals, nl, reverse, mask, True)
    assert small is not None
    two = len(states) > 1
    result = rnnkern._core.layer_backward(
        cell, x.numpy(), states[0].numpy(), states[1].numpy() if two else None, w_ih.numpy(),
        w_hh.numpy(), None, y.numpy(), tuple(s.numpy() for s in saved), grad_y.numpy(),
        grad_finals[0].numpy(), grad_finals[1].numpy() if two else None, nl, None, reverse,
        need_c0=two, grad_norms=True)
    for got, want in zip((*small[0], *small[1]), result):
        assert (got is None) == (want is None)
        if got is not None:
            assert rel_err(got.numpy(), want) <= F64_TOL
