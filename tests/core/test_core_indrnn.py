"""The IndRNN cell of the C++ core (csrc/core/cells/indrnn.h) against a plain NumPy loop.

h_t = φ(x_t W_ihᵀ + b_ih + u ⊙ h_{t-1} + b_hh), u = w_hh of shape (H,), φ = tanh or relu.
The reference below is written out by hand, row by row and step by step (forward and
backward), and shares nothing with the core: it walks packed rows itself. Every path of
_core.layer_forward / layer_backward("indrnn", ...) is checked against it: both
nonlinearities, with and without biases, reverse, packed batch_sizes, the gradient norms,
every need_* mask, the pointer variant, every instruction set (a subprocess each) and 1 to 3
threads; then a finite-difference check of the backward and the input checks.
"""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkern import _core

import numpy_loop

CELL = "indrnn"
HERE = Path(__file__).parent
ISAS = ["generic", "avx2", "avx512"]
F64_TOL = 1e-10
F32_TOL = 1e-5
GRAD_NAMES = ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "norm_h", "norm_c"]


# ---------------------------------------------------------------------------------------------
# The reference: float64, one row at a time.

def _packed_layout(x, batch_sizes):
    """(rows (N, I), batch_sizes as a list, offset of each step's first row)."""
    rows, offsets, _ = numpy_loop._layout(x, batch_sizes)
    bs = [x.shape[1]] * x.shape[0] if batch_sizes is None else [int(n) for n in batch_sizes]
    return rows, bs, [int(o) for o in offsets]


def _order(T, reverse):
    """The steps in the order forward visits them."""
    return list(range(T - 1, -1, -1)) if reverse else list(range(T))


def _previous_step(t, b, bs, reverse):
    """The step whose h row b of step t continues from, or None (h0)."""
    if not reverse:
        return t - 1 if t > 0 else None
    return t + 1 if t + 1 < len(bs) and b < bs[t + 1] else None


def _last_step(b, bs, reverse):
    """Row b's last step in forward order (where grad_hn reaches it)."""
    if reverse:
        return 0
    return max(t for t in range(len(bs)) if b < bs[t])


def _phi(a, nonlinearity):
    return np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0.0)


def _phi_prime(a, nonlinearity):
    return 1.0 - np.tanh(a) ** 2 if nonlinearity == "tanh" else (a > 0).astype(np.float64)


def reference_forward(x, h0, w_ih, u, b_ih, b_hh, nonlinearity, batch_sizes, reverse):
    """y shaped like x (width H), and the pre-activations a of every row."""
    x, h0, w_ih, u = (np.asarray(v, np.float64) for v in (x, h0, w_ih, u))
    rows, bs, offsets = _packed_layout(x, batch_sizes)
    H = w_ih.shape[0]
    b = np.zeros(H)
    if b_ih is not None:
        b = b + np.asarray(b_ih, np.float64)
    if b_hh is not None:
        b = b + np.asarray(b_hh, np.float64)
    y = np.zeros((rows.shape[0], H))
    a = np.zeros_like(y)
    for t in _order(len(bs), reverse):
        for r in range(bs[t]):
            pt = _previous_step(t, r, bs, reverse)
            h_prev = h0[r] if pt is None else y[offsets[pt] + r]
            row = offsets[t] + r
            a[row] = w_ih @ rows[row] + b + u * h_prev
            y[row] = _phi(a[row], nonlinearity)
    return y.reshape(x.shape[:-1] + (H,)), a


def reference_backward(x, h0, w_ih, u, b_ih, b_hh, nonlinearity, batch_sizes, reverse, grad_y,
                       grad_hn):
    """Every gradient of L = Σ grad_y ⊙ y + Σ grad_hn ⊙ h_n, and ‖∂L/∂h_t‖₂ of every row."""
    x, h0, w_ih, u = (np.asarray(v, np.float64) for v in (x, h0, w_ih, u))
    y, a = reference_forward(x, h0, w_ih, u, b_ih, b_hh, nonlinearity, batch_sizes, reverse)
    rows, bs, offsets = _packed_layout(x, batch_sizes)
    H = w_ih.shape[0]
    y = y.reshape(-1, H)
    dh = np.array(np.asarray(grad_y, np.float64).reshape(-1, H))  # the whole ∂L/∂h_t, so far
    if grad_hn is not None:
        for r in range(bs[0]):
            dh[offsets[_last_step(r, bs, reverse)] + r] += grad_hn[r]
    gx = np.zeros_like(rows)
    gh0 = np.zeros_like(h0)
    gw_ih = np.zeros_like(w_ih)
    gu = np.zeros(H)
    gb = np.zeros(H)
    norms = np.zeros(rows.shape[0])
    for t in reversed(_order(len(bs), reverse)):
        for r in range(bs[t]):
            row = offsets[t] + r
            pt = _previous_step(t, r, bs, reverse)
            h_prev = h0[r] if pt is None else y[offsets[pt] + r]
            norms[row] = np.sqrt(np.sum(dh[row] ** 2))
            delta = dh[row] * _phi_prime(a[row], nonlinearity)
            if pt is None:
                gh0[r] = delta * u
            else:
                dh[offsets[pt] + r] += delta * u
            gu += delta * h_prev
            gb += delta
            gw_ih += np.outer(delta, rows[row])
            gx[row] = delta @ w_ih
    return {"x": gx.reshape(x.shape), "h0": gh0, "w_ih": gw_ih, "w_hh": gu, "b_ih": gb,
            "b_hh": gb.copy(), "norm_h": norms}


# ---------------------------------------------------------------------------------------------
# Problems and the core's calls.

def make_inputs(T, B, I, H, seed=0, bias=True, batch_sizes=None, dtype=np.float64):
    rng = np.random.default_rng(seed)
    N = T * B if batch_sizes is None else int(np.sum(batch_sizes))
    B = B if batch_sizes is None else int(batch_sizes[0])
    x_shape = (T, B, I) if batch_sizes is None else (N, I)
    p = {
        "x": rng.standard_normal(x_shape),
        "h0": rng.standard_normal((B, H)) * 0.5,
        "w_ih": rng.uniform(-0.5, 0.5, (H, I)),
        # |u| < 1, some negative: the recurrence neither explodes nor hides sign errors
        "w_hh": rng.uniform(-0.95, 0.95, H),
        "b_ih": rng.uniform(-0.3, 0.3, H) if bias else None,
        "b_hh": rng.uniform(-0.3, 0.3, H) if bias else None,
        "grad_y": rng.standard_normal(x_shape[:-1] + (H,)),
        "grad_hn": rng.standard_normal((B, H)),
        "batch_sizes": None if batch_sizes is None else np.asarray(batch_sizes, np.int64),
    }
    return {k: v if v is None or k == "batch_sizes" else np.ascontiguousarray(v, dtype)
            for k, v in p.items()}


def core_forward(p, nonlinearity, reverse):
    y, saved = _core.layer_forward(CELL, p["x"], p["h0"], None, p["w_ih"], p["w_hh"],
                                   p["b_ih"], p["b_hh"], None, nonlinearity, p["batch_sizes"],
                                   reverse)
    assert saved == ()
    return y


def core_backward(p, y, nonlinearity, reverse, grad_hn=True, grad_norms=True, **need):
    out = _core.layer_backward(CELL, p["x"], p["h0"], None, p["w_ih"], p["w_hh"], None, y, (),
                               p["grad_y"], p["grad_hn"] if grad_hn else None, None,
                               nonlinearity, p["batch_sizes"], reverse, grad_norms=grad_norms,
                               **need)
    return dict(zip(GRAD_NAMES, out))


def rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.abs(a - b).max(initial=0.0) / max(np.abs(b).max(initial=0.0), 1e-30))


def assert_matches_reference(p, nonlinearity, reverse, tol, grad_hn=True):
    y = core_forward(p, nonlinearity, reverse)
    args = (p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], nonlinearity,
            p["batch_sizes"], reverse)
    y_ref, _ = reference_forward(*args)
    assert y.dtype == p["x"].dtype and y.shape == y_ref.shape
    assert rel_err(y, y_ref) <= tol, f"y: {rel_err(y, y_ref):.3e}"
    got = core_backward(p, y, nonlinearity, reverse, grad_hn=grad_hn)
    want = reference_backward(*args, p["grad_y"], p["grad_hn"] if grad_hn else None)
    for name in ["c0", "w_hr", "norm_c"]:
        assert got[name] is None, name
    for name, w in want.items():
        g = got[name]
        assert g is not None and g.shape == w.shape, name
        assert g.dtype == (np.float64 if name == "norm_h" else p["x"].dtype), name
        assert rel_err(g, w) <= tol, f"{name}: relative error {rel_err(g, w):.3e} > {tol}"
    return y, got


# ---------------------------------------------------------------------------------------------
# Against the reference.

SHAPES = [
    pytest.param((5, 3, 4, 17), id="T5-B3-I4-H17"),  # a vector tail in every row
    pytest.param((1, 1, 1, 1), id="all-one"),
    pytest.param((6, 4, 3, 16), id="T6-B4-I3-H16"),  # whole vectors only
    pytest.param((3, 2, 5, 33), id="T3-B2-I5-H33"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("shape", SHAPES)
def test_time_major_matches_reference(shape, nonlinearity, bias, reverse, dtype):
    p = make_inputs(*shape, seed=1, bias=bias, dtype=dtype)
    assert_matches_reference(p, nonlinearity, reverse, F64_TOL if dtype == np.float64 else F32_TOL)


PACKED = [
    pytest.param([3, 3, 2, 1], id="3-3-2-1"),
    pytest.param([4, 2, 2, 1, 1], id="4-2-2-1-1"),
    pytest.param([2, 2, 2], id="uniform-2-2-2"),
    pytest.param([5], id="one-step"),
    pytest.param([1, 1, 1], id="one-row"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("batch_sizes", PACKED)
def test_packed_matches_reference(batch_sizes, nonlinearity, bias, reverse, dtype):
    p = make_inputs(len(batch_sizes), batch_sizes[0], 3, 9, seed=2, bias=bias,
                    batch_sizes=batch_sizes, dtype=dtype)
    assert_matches_reference(p, nonlinearity, reverse, F64_TOL if dtype == np.float64 else F32_TOL)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["time-major", "packed"])
def test_without_grad_hn(packed, reverse):
    p = make_inputs(4, 3, 2, 7, seed=3, batch_sizes=[3, 3, 2, 1] if packed else None)
    assert_matches_reference(p, "tanh", reverse, F64_TOL, grad_hn=False)


def test_packed_equals_time_major_when_uniform():
    """batch_sizes [B] * T is the time-major problem: bitwise the same results."""
    p = make_inputs(4, 3, 2, 7, seed=4)
    q = dict(p, x=p["x"].reshape(12, 2), grad_y=p["grad_y"].reshape(12, 7),
             batch_sizes=np.array([3, 3, 3, 3], np.int64))
    for reverse in (False, True):
        y = core_forward(p, "relu", reverse)
        yq = core_forward(q, "relu", reverse)
        assert np.array_equal(y.reshape(12, 7), yq)
        g = core_backward(p, y, "relu", reverse)
        gq = core_backward(q, yq, "relu", reverse)
        for name in GRAD_NAMES:
            if g[name] is not None:
                assert np.array_equal(g[name].reshape(gq[name].shape), gq[name]), name


def test_grad_y_broadcast_is_read_in_place():
    """grad_y of L = y.sum() is a broadcast view (strides 0): the same as the full array."""
    p = make_inputs(4, 3, 2, 7, seed=5)
    y = core_forward(p, "tanh", False)
    ones = dict(p, grad_y=np.ones_like(p["grad_y"]))
    view = dict(p, grad_y=np.broadcast_to(np.float64(1.0), p["grad_y"].shape))
    a = core_backward(ones, y, "tanh", False)
    b = core_backward(view, y, "tanh", False)
    for name in GRAD_NAMES:
        assert (a[name] is None) == (b[name] is None)
        if a[name] is not None:
            assert np.array_equal(a[name], b[name]), name


def test_saturated_relu_passes_no_gradient():
    """Units whose pre-activation is negative at every step get no gradient at all."""
    p = make_inputs(3, 2, 2, 5, seed=6)
    p["b_ih"][:2] = -100.0  # units 0 and 1: always relu(a) = 0
    y = core_forward(p, "relu", False)
    assert np.all(y[..., :2] == 0)
    g = core_backward(p, y, "relu", False)
    assert np.all(g["w_hh"][:2] == 0) and np.all(g["b_ih"][:2] == 0)
    assert np.all(g["h0"][:, :2] == 0) and np.all(g["w_ih"][:2] == 0)


# ---------------------------------------------------------------------------------------------
# The need_* masks and the gradient norms.

@pytest.mark.parametrize("packed", [False, True], ids=["time-major", "packed"])
def test_every_need_mask(packed):
    """Each combination computes exactly what it asks for, bitwise what the full call does;
    need_c0 and need_w_hr ask for nothing the indrnn has."""
    p = make_inputs(4, 3, 3, 10, seed=7, batch_sizes=[3, 3, 2, 1] if packed else None)
    for reverse in (False, True):
        y = core_forward(p, "tanh", reverse)
        full = core_backward(p, y, "tanh", reverse)
        flags = ["need_x", "need_h0", "need_w_ih", "need_w_hh", "need_bias", "grad_norms"]
        for values in itertools.product([False, True], repeat=len(flags)):
            want = dict(zip(flags, values))
            extra = {"need_c0": True, "need_w_hr": True}
            got = core_backward(p, y, "tanh", reverse, **want, **extra)
            wanted = {"x": want["need_x"], "h0": want["need_h0"], "w_ih": want["need_w_ih"],
                      "w_hh": want["need_w_hh"], "b_ih": want["need_bias"],
                      "b_hh": want["need_bias"], "norm_h": want["grad_norms"],
                      "c0": False, "w_hr": False, "norm_c": False}
            for name in GRAD_NAMES:
                if wanted[name]:
                    assert got[name] is not None, (name, want)
                    assert np.array_equal(got[name], full[name]), (name, want)
                else:
                    assert got[name] is None, (name, want)


def test_grad_norms_are_the_whole_gradient_reaching_h():
    """norm_h is ‖∂L/∂h_t‖₂ of the whole gradient (grad_y, grad_hn and the later steps'), not
    of δ_t: with tanh saturated everywhere (δ = 0) the norms are those of grad_y and grad_hn."""
    p = make_inputs(3, 2, 2, 4, seed=8)
    p["b_ih"][:] = 50.0  # tanh(a) = 1: φ' = 0 in float64
    y = core_forward(p, "tanh", False)
    g = core_backward(p, y, "tanh", False)
    dy = p["grad_y"].reshape(6, 4).copy()
    dy[4:] += p["grad_hn"]
    assert np.allclose(g["norm_h"], np.linalg.norm(dy, axis=1), rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------------------------
# The pointer variant against the array path.

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_pointer_variant_matches_the_array_path(nonlinearity, bias, reverse, dtype):
    T, B, I, H = 5, 3, 4, 17
    p = make_inputs(T, B, I, H, seed=9, bias=bias, dtype=dtype)
    y = core_forward(p, nonlinearity, reverse)
    grads = core_backward(p, y, nonlinearity, reverse)

    def ptr(a):
        return 0 if a is None else a.ctypes.data

    y2 = np.full_like(y, np.nan)
    _core.layer_forward_pointers(CELL, dtype == np.float64, T, B, I, H, ptr(p["x"]),
                                 ptr(p["h0"]), 0, ptr(p["w_ih"]), ptr(p["w_hh"]),
                                 ptr(p["b_ih"]), ptr(p["b_hh"]), ptr(y2), [], nonlinearity,
                                 reverse)
    assert np.array_equal(y, y2)
    out = {n: None if g is None else np.full_like(g, np.nan) for n, g in grads.items()}
    _core.layer_backward_pointers(CELL, dtype == np.float64, T, B, I, H, ptr(p["x"]),
                                  ptr(p["h0"]), 0, ptr(p["w_ih"]), ptr(p["w_hh"]), ptr(y2), [],
                                  ptr(p["grad_y"]), ptr(p["grad_hn"]), 0, ptr(out["x"]),
                                  ptr(out["h0"]), 0, ptr(out["w_ih"]), ptr(out["w_hh"]),
                                  ptr(out["b_ih"]), ptr(out["b_hh"]), ptr(out["norm_h"]), 0,
                                  0, nonlinearity, reverse)
    for name in GRAD_NAMES:
        assert (grads[name] is None) == (out[name] is None), name
        if grads[name] is not None:
            assert np.array_equal(grads[name], out[name]), name

    # Only some gradients (the others' pointers 0), no grad_hn: as the array path's.
    part = core_backward(p, y, nonlinearity, reverse, grad_hn=False, grad_norms=False,
                         need_x=False, need_h0=True, need_w_ih=False, need_w_hh=True,
                         need_bias=False)
    gh0 = np.full_like(p["h0"], np.nan)
    gu = np.full_like(p["w_hh"], np.nan)
    _core.layer_backward_pointers(CELL, dtype == np.float64, T, B, I, H, ptr(p["x"]),
                                  ptr(p["h0"]), 0, ptr(p["w_ih"]), ptr(p["w_hh"]), ptr(y2), [],
                                  ptr(p["grad_y"]), 0, 0, 0, ptr(gh0), 0, 0, ptr(gu), 0, 0, 0, 0,
                                  0, nonlinearity, reverse)
    assert np.array_equal(gh0, part["h0"]) and np.array_equal(gu, part["w_hh"])


def test_pointer_variant_checks_its_arguments():
    with pytest.raises(ValueError, match="saved must hold 0 pointers for the indrnn, got 1"):
        _core.layer_forward_pointers(CELL, False, 2, 1, 1, 1, 8, 8, 0, 8, 8, 0, 0, 8, [8],
                                     "tanh", False)
    with pytest.raises(ValueError, match="sizes must be positive and pointers set"):
        _core.layer_forward_pointers(CELL, False, 2, 1, 1, 1, 8, 8, 0, 8, 0, 0, 0, 8, [],
                                     "tanh", False)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got None"):
        _core.layer_forward_pointers(CELL, False, 2, 1, 1, 1, 8, 8, 0, 8, 8, 0, 0, 8, [],
                                     None, False)


# ---------------------------------------------------------------------------------------------
# Threads and instruction sets.

def test_isa_is_the_one_asked_for():
    """In the subprocesses below: RNNKERN_ISA picks the kernels these tests ran on."""
    want = os.environ.get("RNNKERN_ISA")
    if want:
        assert _core.isa() == want


# Shapes that take the row-split time loop (B ≥ 8 and N·H² ≥ 2^20, H ≤ 512) and one that
# does not; the packed one leaves the last steps' rows to one thread.
THREAD_SHAPES = [
    pytest.param((20, 16, 8, 64, None), id="row-split"),
    pytest.param((9, 13, 5, 129, None), id="row-split-odd"),
    pytest.param((12, 12, 3, 128, [12, 12, 11, 10, 9, 9, 8, 5, 3, 2, 1, 1]), id="packed"),
    pytest.param((5, 3, 4, 17, None), id="single-thread"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", THREAD_SHAPES)
def test_one_to_three_threads(shape, dtype):
    """1, 2 and 3 threads: bitwise the same results, and the reference's."""
    T, B, I, H, bs = shape
    p = make_inputs(T, B, I, H, seed=10, batch_sizes=bs, dtype=dtype)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)  # the OpenMP runtime rnnkern shares with torch
            for reverse in (False, True):
                y = core_forward(p, "tanh", reverse)
                g = core_backward(p, y, "tanh", reverse)
                results.append((n, reverse, y, g))
    finally:
        torch.set_num_threads(before)
    for n, reverse, y, g in results:
        _, _, y1, g1 = next(r for r in results if r[0] == 1 and r[1] == reverse)
        assert np.array_equal(y, y1), (n, reverse, "y")
        for name in GRAD_NAMES:
            if g[name] is not None:
                assert np.array_equal(g[name], g1[name]), (n, reverse, name)
    tol = F64_TOL if dtype == np.float64 else F32_TOL
    for reverse in (False, True):
        assert_matches_reference(p, "tanh", reverse, tol)


@pytest.mark.parametrize("isa", ISAS)
def test_every_instruction_set(isa):
    """This file's tests in a fresh process on each instruction set's kernels this CPU runs,
    and with OMP_NUM_THREADS=3 on the best one."""
    best = _core.isa()
    if ISAS.index(isa) > ISAS.index(best):
        pytest.skip(f"this CPU runs {best} at best")
    envs = [{"RNNKERN_ISA": isa}]
    if isa == best:
        envs.append({"RNNKERN_ISA": isa, "OMP_NUM_THREADS": "3"})
    for extra in envs:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
             "-k", "not test_every_instruction_set", str(Path(__file__))],
            cwd=HERE, env=dict(os.environ, **extra), capture_output=True, text=True,
            timeout=600)
        assert proc.returncode == 0, str(extra) + proc.stdout[-3000:] + proc.stderr[-3000:]
        assert " passed" in proc.stdout and " failed" not in proc.stdout


# ---------------------------------------------------------------------------------------------
# Finite differences.

@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["time-major", "packed"])
def test_backward_matches_finite_differences(packed, reverse, nonlinearity):
    """Central differences of L = Σ grad_y ⊙ y + Σ grad_hn ⊙ h_n, through the core's forward
    alone, against the core's backward."""
    bs = [3, 2, 2, 1] if packed else None
    p = make_inputs(4, 3, 2, 3, seed=11, batch_sizes=bs)
    rows, sizes, offsets = _packed_layout(p["x"], bs)
    last = [offsets[_last_step(r, sizes, reverse)] + r for r in range(sizes[0])]

    def loss(q):
        y = core_forward(q, nonlinearity, reverse)
        flat = y.reshape(-1, y.shape[-1])
        return float(np.sum(q["grad_y"] * y) + np.sum(q["grad_hn"] * flat[last]))

    y = core_forward(p, nonlinearity, reverse)
    g = core_backward(p, y, nonlinearity, reverse)
    eps = 1e-6
    for name in ["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"]:
        numeric = np.zeros_like(p[name])
        for i in np.ndindex(p[name].shape):
            plus, minus = dict(p), dict(p)
            plus[name] = p[name].copy()
            minus[name] = p[name].copy()
            plus[name][i] += eps
            minus[name][i] -= eps
            numeric[i] = (loss(plus) - loss(minus)) / (2 * eps)
        assert rel_err(g[name], numeric) <= 1e-7, f"{name}: {rel_err(g[name], numeric):.3e}"


# ---------------------------------------------------------------------------------------------
# Bad input.

def _args(p):
    return (p["x"], p["h0"], None, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], None)


@pytest.mark.parametrize("shape", [(6, 6), (6, 1), (7,), (1, 6), ()],
                         ids=["square", "column", "too-long", "row", "scalar"])
def test_w_hh_of_another_shape_is_refused(shape):
    p = make_inputs(3, 2, 4, 6, seed=12)
    bad = np.zeros(shape)
    want = "(6,)"
    got = "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
    msg = f"w_hh must have shape {want}, got {got}".replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=msg):
        _core.layer_forward(CELL, *_args(dict(p, w_hh=bad)), "tanh", None, False)
    y = core_forward(p, "tanh", False)
    with pytest.raises(ValueError, match=msg):
        _core.layer_backward(CELL, p["x"], p["h0"], None, p["w_ih"], bad, None, y, (),
                             p["grad_y"], None, None, "tanh", None, False)


def test_other_bad_input():
    p = make_inputs(3, 2, 4, 6, seed=13)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got None"):
        _core.layer_forward(CELL, *_args(p), None, None, False)
    with pytest.raises(ValueError, match=r"w_hr \(proj_size\) is for the lstm only"):
        _core.layer_forward(CELL, *_args(p)[:7], np.zeros((3, 6)), "tanh", None, False)
    with pytest.raises(TypeError, match="w_hh must have dtype float64"):
        _core.layer_forward(CELL, *_args(dict(p, w_hh=p["w_hh"].astype(np.float32))), "tanh",
                            None, False)
    with pytest.raises(ValueError, match=r"b_hh must have shape \(6,\), got \(6, 1\)"):
        _core.layer_forward(CELL, *_args(dict(p, b_hh=p["b_hh"][:, None])), "tanh", None,
                            False)
    y = core_forward(p, "tanh", False)
    with pytest.raises(TypeError, match="saved must be the tuple of 0 arrays"):
        _core.layer_backward(CELL, p["x"], p["h0"], None, p["w_ih"], p["w_hh"], None, y, (y,),
                             p["grad_y"], None, None, "tanh", None, False)


def test_a_vector_w_hh_is_not_held_to_the_square_blas_limit():
    """H = 50000: H × H would pass the 32-bit BLAS limit, but u is a vector of H."""
    H = 50000
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 1, 1))
    h0 = rng.standard_normal((1, H))
    w_ih = rng.uniform(-1, 1, (H, 1))
    u = rng.uniform(-1, 1, H)
    y, _ = _core.layer_forward(CELL, x, h0, None, w_ih, u, None, None, None, "tanh", None,
                               False)
    h1 = np.tanh(w_ih[:, 0] * x[0, 0, 0] + u * h0[0])
    assert rel_err(y[0, 0], h1) <= F64_TOL
    assert rel_err(y[1, 0], np.tanh(w_ih[:, 0] * x[1, 0, 0] + u * h1)) <= F64_TOL
    g = _core.layer_backward(CELL, x, h0, None, w_ih, u, None, y, (), np.ones_like(y), None,
                             None, "tanh", None, False)
    assert g[4].shape == (H,)
    with pytest.raises(ValueError, match="w_hh has 2500000000 elements, more than the 32-bit"):
        _core.layer_forward("rnn", x, h0, None, w_ih, np.zeros((1, 1)), None, None, None,
                            "tanh", None, False)
