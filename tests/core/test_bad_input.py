"""Bad input raises TypeError/ValueError naming the argument, the expected and the received."""

import numpy as np
import pytest
import torch

import rnnkern
from rnnkern import functional

from conftest import make_problem

T, B, I, H = 4, 3, 5, 6


@pytest.fixture
def p():
    return make_problem(T, B, I, H, dtype=np.float32)[0]


def call_forward(p, **changes):
    args = dict(p, **changes)
    return rnnkern.forward(args["x"], args["h0"], args["w_ih"], args["w_hh"], args["b_ih"],
                           args["b_hh"], **{k: v for k, v in changes.items() if k not in p})


SHAPE_CASES = [
    ("w_hh", np.zeros((H, H - 1), np.float32), ValueError, "w_hh must have shape (6, 6), got (6, 5)"),
    ("w_hh", np.zeros((H,), np.float32), ValueError, "w_hh must have shape (6, 6), got (6,)"),
    ("w_ih", np.zeros((H, I + 1), np.float32), ValueError, "w_ih must have shape (hidden_size, 5), got (6, 6)"),
    ("h0", np.zeros((B + 1, H), np.float32), ValueError, "h0 must have shape (3, 6), got (4, 6)"),
    ("h0", np.zeros((1, B, H), np.float32), ValueError, "h0 must have shape (3, 6), got (1, 3, 6)"),
    ("b_ih", np.zeros((H + 2,), np.float32), ValueError, "b_ih must have shape (6,), got (8,)"),
    ("b_hh", np.zeros((1, H), np.float32), ValueError, "b_hh must have shape (6,), got (1, 6)"),
    ("x", np.zeros((T, I), np.float32), ValueError, "x must have 3 dimensions (T, B, I), got shape (4, 5)"),
    ("x", np.zeros((0, B, I), np.float32), ValueError, "x must have at least one step"),
    ("x", np.zeros((T, B, 0), np.float32), ValueError, "got shape (4, 3, 0)"),
    ("w_hh", np.zeros((H, H), np.float64), TypeError, "w_hh must have dtype float32 (the dtype of x), got float64"),
    ("b_ih", np.zeros((H,), np.float16), TypeError, "b_ih must have dtype float32 (the dtype of x), got float16"),
    ("x", np.zeros((T, B, I), np.int64), TypeError, "x must have dtype float32 or float64, got int64"),
    ("x", np.zeros((T, B, I), np.complex64), TypeError, "x must have dtype float32 or float64, got complex64"),
    ("h0", [[0.0] * H] * B, TypeError, "h0 must be a numpy.ndarray, got list"),
    ("w_ih", None, TypeError, "w_ih must be a numpy.ndarray, got NoneType"),
]


@pytest.mark.parametrize("name,value,exc,message", SHAPE_CASES,
                         ids=[f"{c[0]}-{c[3][:40]}" for c in SHAPE_CASES])
def test_forward_rejects(p, name, value, exc, message):
    with pytest.raises(exc) as info:
        call_forward(p, **{name: value})
    assert message in str(info.value)


def test_bad_nonlinearity(p):
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        call_forward(p, nonlinearity="sigmoid")


@pytest.mark.parametrize("sizes,exc,message", [
    ([3, 4, 2], ValueError, "batch_sizes must be non-increasing, got batch_sizes[1] = 4 after 3"),
    ([3, 0, 0], ValueError, "batch_sizes must be positive, got batch_sizes[1] = 0"),
    ([3, -1, 2], ValueError, "batch_sizes must be positive, got batch_sizes[1] = -1"),
    ([3, 2, 1], ValueError, "x must have sum(batch_sizes) = 6 rows, got shape (7, 5)"),
    (np.array([], np.int64), ValueError, "batch_sizes must have at least one entry, got 0"),
    ([[3, 2, 2]], ValueError, "batch_sizes must have 1 dimension, got shape (1, 3)"),
    ([3.0, 2.0, 2.0], TypeError, "batch_sizes must hold integers, got dtype float64"),
])
def test_bad_batch_sizes(p, sizes, exc, message):
    x = np.zeros((7, I), np.float32)
    with pytest.raises(exc) as info:
        rnnkern.forward(x, p["h0"], p["w_ih"], p["w_hh"], batch_sizes=np.array(sizes))
    assert message in str(info.value)


def test_packed_h0_must_match_first_batch_size(p):
    x = np.zeros((7, I), np.float32)
    with pytest.raises(ValueError, match=r"h0 must have shape \(4, 6\), got \(3, 6\)"):
        rnnkern.forward(x, p["h0"], p["w_ih"], p["w_hh"], batch_sizes=np.array([4, 2, 1]))


def test_packed_x_must_be_2d(p):
    with pytest.raises(ValueError, match=r"x must have 2 dimensions \(N, I\) when batch_sizes"):
        rnnkern.forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], batch_sizes=np.array([3, 3, 3, 3]))


def test_absurd_sizes_are_rejected_before_any_copy():
    # Zero-stride views: checking their sizes must not materialise them.
    huge = np.broadcast_to(np.float32(0), (1 << 16, 1 << 16, 1))
    h0 = np.zeros((1 << 16, 1), np.float32)
    w = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match="more than the 32-bit BLAS limit"):
        rnnkern.forward(huge, h0, w, w)
    big_h = 1 << 16
    w_hh = np.broadcast_to(np.float32(0), (big_h, big_h))
    with pytest.raises(ValueError, match="w_hh has 4294967296 elements"):
        rnnkern.forward(np.zeros((1, 1, 1), np.float32), np.zeros((1, big_h), np.float32),
                        np.zeros((big_h, 1), np.float32), w_hh)


@pytest.mark.parametrize("name,value,exc,message", [
    ("y", np.zeros((T, B, H + 1), np.float32), ValueError, "y must have shape (4, 3, 6), got (4, 3, 7)"),
    ("grad_y", np.zeros((T, B, H), np.float64), TypeError, "grad_y must have dtype float32"),
    ("grad_hn", np.zeros((B, H, 1), np.float32), ValueError, "grad_hn must have shape (3, 6), got (3, 6, 1)"),
    ("grad_y", None, TypeError, "grad_y must be a numpy.ndarray, got NoneType"),
])
def test_backward_rejects(p, name, value, exc, message):
    y = rnnkern.forward(*p.values())
    args = dict(x=p["x"], h0=p["h0"], w_ih=p["w_ih"], w_hh=p["w_hh"], y=y, grad_y=np.ones_like(y))
    args[name] = value
    with pytest.raises(exc) as info:
        rnnkern.backward(**args)
    assert message in str(info.value)


def test_torch_bad_dtype_and_mixed_dtypes(p):
    t = {n: torch.tensor(a) for n, a in p.items()}
    with pytest.raises(TypeError, match="input must have dtype torch.float32 or torch.float64, got torch.int32"):
        functional.rnn(t["x"].int(), t["h0"], t["w_ih"], t["w_hh"])
    with pytest.raises(TypeError, match="hx must have dtype torch.float32 or torch.float64, got torch.bfloat16"):
        functional.rnn(t["x"], t["h0"].bfloat16(), t["w_ih"], t["w_hh"])
    with pytest.raises(TypeError, match=r"w_hh must have dtype float32 \(the dtype of x\), got float64"):
        functional.rnn(t["x"], t["h0"], t["w_ih"], t["w_hh"].double())
    with pytest.raises(ValueError, match=r"w_hh must have shape \(6, 6\), got \(6, 5\)"):
        functional.rnn(t["x"], t["h0"], t["w_ih"], t["w_hh"][:, :5])
    with pytest.raises(TypeError, match="w_ih must be a torch.Tensor, got ndarray"):
        functional.rnn(t["x"], t["h0"], p["w_ih"], t["w_hh"])


def test_tensor_off_the_cpu_is_rejected():
    # Meta tensors dispatch to the fake kernel, so call the conversion the CPU kernel uses.
    x_meta = torch.empty(T, B, I, device="meta")
    with pytest.raises(RuntimeError, match="input must be on the CPU, got device meta"):
        functional._numpy("input", x_meta)
