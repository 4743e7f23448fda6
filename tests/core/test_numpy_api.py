"""The compiled core through the NumPy-level API: the Elman cell's rnnkern.forward /
rnnkern.backward, the LSTM's and GRU's lstm_forward / gru_forward and their backward, and the
generic layer_forward / layer_backward of every cell, against rnnkern.reference (float64 to
1e-10, float32 within a multiple of torch's own float32 error; odd shapes, packed, reverse)
and, for the Elman cell, an independent NumPy loop (numpy_loop.py); then strides, optional
gradients, untouched inputs, the output cache, projections and bad input. (The IndRNN's core:
test_core_indrnn.py.)"""

import os

import numpy as np
import pytest
import torch

import rnnkern
from rnnkern import cells, reference
from rnnkern import numpy_api as na

import numpy_loop
from conftest import (SHAPES, assert_f32_close, assert_f64_close, make_problem,
                      random_batch_sizes, rel_err)

NAMES = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")

# The cells with a NumPy API of their own (rnnkern.forward / backward for the Elman cell,
# lstm_* and gru_*): those of a dense W_hh. The IndRNN's is test_core_indrnn.py's.
API_CELLS = [spec for spec in cells.CELLS if spec.recurrent == "dense"]


def make(cell, T, B, I, H, dtype=np.float64, seed=0, bias=True, packed=False):
    """Random inputs of ``cell`` with torch's weight scale: (p, batch_sizes, grads), p the
    arrays x, h0, c0 (None but for the LSTM), w_ih, w_hh, b_ih, b_hh, grads grad_y, grad_hn
    and grad_cn (None but for the LSTM). For the Elman cell the draws of conftest's
    make_problem."""
    spec = cells.get(cell)
    lstm = "c" in spec.states
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    G = spec.gate_count
    bs = random_batch_sizes(rng, T, B) if packed else None
    N = int(bs.sum()) if packed else None
    lead = (N,) if packed else (T, B)
    p = dict(x=rng.standard_normal((*lead, I)), h0=rng.standard_normal((B, H)) * 0.5,
             c0=rng.standard_normal((B, H)) if lstm else None,
             w_ih=rng.uniform(-k, k, (G * H, I)), w_hh=rng.uniform(-k, k, (G * H, H)),
             b_ih=rng.uniform(-k, k, G * H) if bias else None,
             b_hh=rng.uniform(-k, k, G * H) if bias else None)
    p = {n: None if a is None else a.astype(dtype) for n, a in p.items()}
    grads = dict(grad_y=rng.standard_normal((*lead, H)).astype(dtype),
                 grad_hn=rng.standard_normal((B, H)).astype(dtype),
                 grad_cn=rng.standard_normal((B, H)).astype(dtype) if lstm else None)
    return p, bs, grads


def forward(cell, p, nonlinearity="tanh", **kw):
    """The cell's own NumPy forward: y (the Elman cell), or its LSTMOutput / GRUOutput."""
    if cell == "rnn":
        return rnnkern.forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                               nonlinearity, **kw)
    if cell == "lstm":
        return na.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"],
                               p["b_hh"], **kw)
    return na.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], **kw)


def backward(cell, p, out, grad_y, grad_hn=None, grad_cn=None, nonlinearity="tanh", **kw):
    """The cell's own NumPy backward of what :func:`forward` returned: its gradients tuple."""
    if cell == "rnn":
        return rnnkern.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], out, grad_y, grad_hn,
                                nonlinearity, **kw)
    if cell == "lstm":
        return na.lstm_backward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], out, grad_y,
                                grad_hn, grad_cn, **kw)
    return na.gru_backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], out, grad_y, grad_hn, **kw)


def output_y(cell, out):
    return out if cell == "rnn" else out.y


def arrays_of(cell, out):
    """Every array :func:`forward` returned (y, and what the gated cells save)."""
    return [out] if cell == "rnn" else [a for a in out if a is not None]


def assert_same_gradients(a, b):
    """Two gradient tuples of the same call, bit for bit (a None field in both)."""
    assert a._fields == b._fields
    for name, x, y in zip(a._fields, a, b):
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)


def last_rows(bs, B, T, reverse):
    """Index of each sequence's last row in the flattened (N, ·) layout."""
    if reverse:
        return np.arange(B)
    if bs is None:
        return (T - 1) * B + np.arange(B)
    lengths = (np.asarray(bs)[None, :] > np.arange(B)[:, None]).sum(1)
    offsets = np.cumsum(bs) - bs
    return offsets[lengths - 1] + np.arange(B)


ORDER = ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"]


def reference_run(cell, p, bs, grads, reverse, nonlinearity="tanh", dtype=torch.float64):
    """(y, h_n, c_n, {name: gradient}) from the autograd reference, as NumPy arrays."""
    t = {n: None if a is None else torch.tensor(a, dtype=dtype, requires_grad=True)
         for n, a in p.items()}
    kw = dict(batch_sizes=None if bs is None else [int(v) for v in bs], reverse=reverse)
    c_n = None
    if cell == "lstm":
        y, (h_n, c_n) = reference.lstm(t["x"], (t["h0"], t["c0"]), t["w_ih"], t["w_hh"],
                                       t["b_ih"], t["b_hh"], **kw)
    elif cell == "gru":
        y, h_n = reference.gru(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                               **kw)
    else:
        y, h_n = reference.rnn(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                               nonlinearity, **kw)
    loss = (y * torch.tensor(grads["grad_y"], dtype=dtype)).sum() + \
        (h_n * torch.tensor(grads["grad_hn"], dtype=dtype)).sum()
    if c_n is not None:
        loss = loss + (c_n * torch.tensor(grads["grad_cn"], dtype=dtype)).sum()
    names = [n for n in ORDER if t.get(n) is not None]
    found = torch.autograd.grad(loss, [t[n] for n in names])
    return (y.detach().double().numpy(), h_n.detach().double().numpy(),
            None if c_n is None else c_n.detach().double().numpy(),
            {n: g.double().numpy() for n, g in zip(names, found)})


def kernel_run(cell, p, bs, grads, reverse, nonlinearity="tanh"):
    """(y, h_n, c_n, {name: gradient}) from the cell's own NumPy forward and backward."""
    B, H = p["h0"].shape
    T = len(bs) if bs is not None else p["x"].shape[0]
    rows = last_rows(bs, B, T, reverse)
    out = forward(cell, p, nonlinearity, batch_sizes=bs, reverse=reverse)
    g = backward(cell, p, out, grads["grad_y"], grads["grad_hn"], grads["grad_cn"],
                 nonlinearity, batch_sizes=bs, reverse=reverse)
    y = output_y(cell, out)
    c_n = out.c.reshape(-1, H)[rows] if cell == "lstm" else None
    return y, y.reshape(-1, H)[rows], c_n, {n: a for n, a in g._asdict().items() if a is not None}


def cases_of(spec):
    """(shape index, nonlinearity, bias, packed, reverse): both nonlinearities for a cell
    that takes one."""
    return [(s, nl, bias, packed, reverse)
            for s in range(len(SHAPES)) for nl in (("tanh", "relu") if spec.nonlinearity else
                                                  ("tanh",))
            for bias in (True, False) for packed in (False, True) for reverse in (False, True)]


def case_id(cell, c):
    s, nl, bias, packed, reverse = c
    T, B, I, H = SHAPES[s]
    return (f"{cell}-T{T}B{B}I{I}H{H}" + (f"-{nl}" if cells.get(cell).nonlinearity else "") +
            ("-bias" if bias else "-nobias") + ("-packed" if packed else "") +
            ("-reverse" if reverse else ""))


CASES = [pytest.param(spec.name, c, id=case_id(spec.name, c))
         for spec in API_CELLS for c in cases_of(spec)]
# float32: every third case of a cell, and every case of every other shape with biases.
F32_CASES = [pytest.param(spec.name, c, id=case_id(spec.name, c))
             for spec in API_CELLS for i, c in enumerate(cases_of(spec))
             if i % 3 == 0 or (c[0] % 2 == 0 and c[2])]


def compare(cell, ours, exact, check):
    y, h_n, c_n, grads = ours
    y_r, h_n_r, c_n_r, grads_r = exact
    check(y, y_r, "y")
    check(h_n, h_n_r, "h_n")
    if cell == "lstm":
        check(c_n, c_n_r, "c_n")
    for name, g in grads_r.items():
        check(grads[name], g, f"grad {name}")
    if "b_ih" not in grads_r:  # no bias in the forward pass: its gradient still comes back
        assert grads["b_ih"].shape == (cells.get(cell).gate_count * h_n.shape[1],)


@pytest.mark.parametrize("cell,case", CASES)
def test_float64_matches_reference(cell, case):
    """Every output and gradient to 1e-10 of autograd through the reference; the Elman cell's
    also to 1e-10 of the independent NumPy loop."""
    s, nl, bias, packed, reverse = case
    p, bs, grads = make(cell, *SHAPES[s], seed=s, bias=bias, packed=packed)
    ours = kernel_run(cell, p, bs, grads, reverse, nl)
    y, h_n, _, g = ours
    assert y.dtype == np.float64 and all(a.dtype == np.float64 for a in g.values())
    compare(cell, ours, reference_run(cell, p, bs, grads, reverse, nl), assert_f64_close)
    if cell != "rnn":
        return
    # The NumPy loop, written for the Elman cell only.
    loop_y, loop_hn = numpy_loop.forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"],
                                         p["b_hh"], nl, bs, reverse)
    loop_g = numpy_loop.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], loop_y,
                                 grads["grad_y"], grads["grad_hn"], nl, bs, reverse)
    loop_g = dict(zip(("x", "h0", "w_ih", "w_hh", "b_ih"), loop_g), b_hh=loop_g[4])
    assert_f64_close(y, loop_y, "y vs numpy loop")
    assert_f64_close(h_n, loop_hn, "h_n vs numpy loop")
    for name in NAMES:
        assert g[name].shape == loop_g[name].shape
        assert_f64_close(g[name], loop_g[name], f"grad {name} vs numpy loop")


@pytest.mark.parametrize("cell,case", F32_CASES)
def test_float32_within_torch_float32_error(cell, case):
    """float32 outputs and gradients within F32_FACTOR times torch's own float32 error,
    against float64 on the float32-rounded inputs (the kernel's own error) and on the float64
    inputs (the error a float32 caller sees)."""
    s, nl, bias, packed, reverse = case
    p64, bs, grads64 = make(cell, *SHAPES[s], seed=s, bias=bias, packed=packed)
    cast = lambda d, t: {n: None if a is None else a.astype(t) for n, a in d.items()}  # noqa: E731
    p32, grads32 = cast(p64, np.float32), cast(grads64, np.float32)
    ours = kernel_run(cell, p32, bs, grads32, reverse, nl)
    assert ours[0].dtype == np.float32 and all(a.dtype == np.float32 for a in ours[3].values())
    theirs = reference_run(cell, p32, bs, grads32, reverse, nl, torch.float32)
    for p, grads in ((cast(p32, np.float64), cast(grads32, np.float64)), (p64, grads64)):
        exact = reference_run(cell, p, bs, grads, reverse, nl)
        for i, name in enumerate(["y", "h_n"] + (["c_n"] if cell == "lstm" else [])):
            assert_f32_close(ours[i], theirs[i], exact[i], name)
        for name, e in exact[3].items():
            assert_f32_close(ours[3][name], theirs[3][name], e, f"grad {name}")


@pytest.mark.cells(recurrent="dense")
def test_grad_hn_and_grad_y_are_optional_parts_of_the_loss(cell):
    p, _, grads = make(cell, 6, 3, 4, 5)
    out = forward(cell, p)
    y = output_y(cell, out)
    only_y = backward(cell, p, out, grads["grad_y"])
    zero_hn = backward(cell, p, out, grads["grad_y"], np.zeros_like(grads["grad_hn"]))
    assert_same_gradients(only_y, zero_hn)
    # grad_hn of the forward direction is grad_y at the last step.
    gy_last = np.zeros_like(grads["grad_y"])
    gy_last[-1] = grads["grad_hn"]
    via_y = backward(cell, p, out, gy_last)
    via_hn = backward(cell, p, out, np.zeros_like(gy_last), grads["grad_hn"])
    for name, a, b in zip(via_y._fields, via_hn, via_y):
        if b is not None:
            assert_f64_close(a, b, name)
    # No grad_hn and a broadcast grad_y (the gradient of y.sum()): as the reference's.
    ones = np.broadcast_to(np.float64(1.0), y.shape)
    ours = backward(cell, p, out, ones)
    zeros = np.zeros(p["h0"].shape)
    exact = reference_run(cell, p, None, dict(grad_y=np.ones(y.shape), grad_hn=zeros,
                                              grad_cn=zeros), False)[3]
    for name, g in exact.items():
        assert_f64_close(getattr(ours, name), g, name)


@pytest.mark.cells(recurrent="dense")
def test_strided_inputs_give_the_same_result(cell):
    p, _, grads = make(cell, 5, 3, 4, 6)
    out = forward(cell, p)
    # Same values, other memory layouts: Fortran order and a strided slice.
    x_f = np.asfortranarray(p["x"])
    w_hh_t = np.ascontiguousarray(p["w_hh"].T).T
    strided = lambda a: None if a is None else np.repeat(a, 2, axis=0)[::2]  # noqa: E731
    h0_s, c0_s = strided(p["h0"]), strided(p["c0"])
    assert not x_f.flags.c_contiguous and not w_hh_t.flags.c_contiguous
    assert not h0_s.flags.c_contiguous
    other = dict(p, x=x_f, h0=h0_s, c0=c0_s, w_hh=w_hh_t)
    out2 = forward(cell, other)
    for a, b in zip(arrays_of(cell, out), arrays_of(cell, out2)):
        np.testing.assert_array_equal(a, b)
    g = backward(cell, p, out, grads["grad_y"])
    g2 = backward(cell, other, out, np.asfortranarray(grads["grad_y"]))
    assert_same_gradients(g, g2)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.cells(recurrent="dense")
def test_grad_y_with_other_strides_gives_the_same_gradients(cell, packed):
    p, bs, grads = make(cell, 6, 4, 3, 20, packed=packed)
    out = forward(cell, p, batch_sizes=bs)
    y = output_y(cell, out)
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
        g = backward(cell, p, out, view, batch_sizes=bs)
        g_copy = backward(cell, p, out, np.ascontiguousarray(view), batch_sizes=bs)
        assert_same_gradients(g, g_copy)


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


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.cells(recurrent="dense")
def test_inputs_are_not_modified(cell, packed):
    p, bs, grads = make(cell, 4, 3, 5, 7, packed=packed)
    before = {n: a.copy() for n, a in {**p, **grads}.items() if a is not None}
    out = forward(cell, p, batch_sizes=bs)
    saved = [a.copy() for a in arrays_of(cell, out)]
    backward(cell, p, out, grads["grad_y"], grads["grad_hn"], grads["grad_cn"], batch_sizes=bs)
    for n, a in before.items():
        np.testing.assert_array_equal({**p, **grads}[n], a, err_msg=n)
    for a, b in zip(arrays_of(cell, out), saved):
        np.testing.assert_array_equal(a, b)


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
    y, saved = na.layer_forward(**arrays, b_ih=w[2], b_hh=w[3], nonlinearity=nl,
                                batch_sizes=None if bs is None else bs.numpy(), reverse=True)
    assert rel_err(y, y_ref.detach().numpy()) <= 1e-12
    grads = na.layer_backward(
        **arrays, y=y, saved=saved, grad_y=grad_y.numpy(),
        grad_finals=tuple(g.numpy() for g in grad_finals), nonlinearity=nl,
        batch_sizes=None if bs is None else bs.numpy(), reverse=True)
    assert list(grads) == [*spec.bptt_arguments]
    for name, want in zip(spec.bptt_arguments, expected):
        assert rel_err(grads[name], want.numpy()) <= 1e-10, name


def test_nonlinearity_none_is_tanh(cell):
    """layer_forward and layer_backward's documented default: None is "tanh" for a cell that
    takes a nonlinearity (and the only value for one that does not)."""
    spec = cells.get(cell)
    rng = np.random.default_rng(5)
    I, H = 4, 6
    w = [rng.standard_normal(spec.parameter_shape(k, I, H)) * 0.4
         for k in ("weight_ih", "weight_hh")]
    x = rng.standard_normal((3, 2, I))
    tanh = "tanh" if spec.nonlinearity else None
    y, saved = na.layer_forward(cell, x, None, *w, nonlinearity=None)
    y_tanh, _ = na.layer_forward(cell, x, None, *w, nonlinearity=tanh)
    assert np.array_equal(y, y_tanh)
    grad_y = rng.standard_normal(y.shape)
    got = na.layer_backward(cell, x, None, *w, y, saved, grad_y, nonlinearity=None)
    want = na.layer_backward(cell, x, None, *w, y, saved, grad_y, nonlinearity=tanh)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def step_norms(cell, p, grads, reverse):
    """‖∂L/∂h_t‖ (and ‖∂L/∂c_t‖) per row from an autograd loop that keeps every state."""
    t = {n: None if a is None else torch.tensor(a, requires_grad=True) for n, a in p.items()}
    T = p["x"].shape[0]
    H = p["h0"].shape[1]
    h, c = t["h0"], t["c0"]
    hs, cs = [None] * T, [None] * T
    for step in (range(T - 1, -1, -1) if reverse else range(T)):
        if cell == "lstm":  # written out: c_t must be the tensor that h_t is computed from
            a = t["x"][step] @ t["w_ih"].T + t["b_ih"] + h @ t["w_hh"].T + t["b_hh"]
            i, f, g, o = a.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            c.retain_grad()
            h = torch.sigmoid(o) * torch.tanh(c)
            cs[step] = c
        else:
            _, h = reference.gru(t["x"][step:step + 1], h, t["w_ih"], t["w_hh"], t["b_ih"],
                                 t["b_hh"])
        h.retain_grad()
        hs[step] = h
    gy = torch.tensor(grads["grad_y"])
    loss = sum((hs[s] * gy[s]).sum() for s in range(T)) + (h * torch.tensor(grads["grad_hn"])).sum()
    if cell == "lstm":
        loss = loss + (c * torch.tensor(grads["grad_cn"])).sum()
    loss.backward()
    def norm(states):
        return torch.stack([s.grad for s in states]).reshape(-1, H).norm(dim=1)

    return norm(hs).numpy(), norm(cs).numpy() if cell == "lstm" else None


@pytest.mark.parametrize("shape", [(6, 3, 4, 5), (4, 9, 3, 33)], ids=["T6B3I4H5", "T4B9I3H33"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.cells("lstm", "gru")
def test_gradient_norms_match_autograd(cell, reverse, shape):
    p, _, grads = make(cell, *shape, seed=3)
    out = forward(cell, p, reverse=reverse)
    state = out.c if cell == "lstm" else out.hidden_n
    result = rnnkern._core.layer_backward(
        cell, p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], None, out.y, (out.gates, state),
        grads["grad_y"], grads["grad_hn"], grads["grad_cn"], None, None, reverse,
        grad_norms=True)
    norm_h, norm_c = result[8], result[9]
    exact_h, exact_c = step_norms(cell, p, grads, reverse)
    assert_f64_close(norm_h, exact_h, "norm h")
    if cell == "lstm":
        assert_f64_close(norm_c, exact_c, "norm c")
    else:
        assert norm_c is None


@pytest.mark.cells(recurrent="dense")
def test_zero_initial_state_when_none(cell):
    p, _, grads = make(cell, 3, 2, 4, 5)
    none = dict(p, h0=None, c0=None)
    zeros = dict(p, h0=np.zeros((2, 5)), c0=None if p["c0"] is None else np.zeros((2, 5)))
    a, b = forward(cell, none), forward(cell, zeros)
    for x, y in zip(arrays_of(cell, a), arrays_of(cell, b)):
        assert np.array_equal(x, y)
    g = backward(cell, none, a, grads["grad_y"])
    assert g.h0.shape == (2, 5)
    if cell == "lstm":
        assert g.c0.shape == (2, 5)


BAD = [
    (dict(w_ih=np.zeros((10, 4))), ValueError, "w_ih must have shape (4 * hidden_size, 4) for "
     "the lstm, got (10, 4)"),
    (dict(w_hh=np.zeros((20, 4))), ValueError, "w_hh must have shape (20, 5), got (20, 4)"),
    (dict(c0=np.zeros((3, 5), dtype=np.float32)), TypeError,
     "c0 must have dtype float64 (the dtype of x), got float32"),
    (dict(c0=np.zeros((2, 5))), ValueError, "c0 must have shape (3, 5), got (2, 5)"),
    (dict(b_hh=np.zeros(5)), ValueError, "b_hh must have shape (20,), got (5,)"),
    (dict(x=np.zeros((4, 3, 4), dtype=np.int32)), TypeError,
     "x must have dtype float32 or float64, got int32"),
]


@pytest.mark.parametrize("change,error,message", BAD)
@pytest.mark.cells("lstm")
def test_bad_input_names_the_argument(cell, change, error, message):
    p, _, _ = make(cell, 4, 3, 4, 5)
    p.update(change)
    with pytest.raises(error) as info:
        forward(cell, p)
    assert message in str(info.value)


@pytest.mark.cells("gru")
def test_bad_saved_arrays_and_cell_name(cell):
    p, _, grads = make(cell, 4, 3, 4, 5)
    out = na.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"])
    with pytest.raises(ValueError, match=r"gates must have shape \(4, 3, 15\), got \(4, 3, 5\)"):
        na.gru_backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], out._replace(gates=out.y),
                        grads["grad_y"])
    # The list itself is pinned in test_core_cells.py.
    known = ", ".join(f"'{c}'" for c in rnnkern._core.cells())
    with pytest.raises(ValueError, match=f"cell must be one of {known}, got 'cnn'"):
        rnnkern._core.layer_forward("cnn", p["x"], p["h0"], None, p["w_ih"], p["w_hh"], None,
                                    None, None, None, None, False)
    with pytest.raises(ValueError, match=r"w_ih must have shape \(3 \* hidden_size, 4\)"):
        na.gru_forward(p["x"], p["h0"], p["w_ih"][:14], p["w_hh"])


@pytest.mark.parametrize("packed,reverse", [(False, False), (True, True), (True, False)])
def test_lstm_proj_size_matches_reference(packed, reverse):
    """proj_size P: h_t = (o ⊙ tanh(c_t)) W_hrᵀ, W_hh (4H, P); every gradient to 1e-10."""
    T, B, I, H, P = 6, 4, 3, 9, 5
    p, bs, grads = make("lstm", T, B, I, H, seed=4, packed=packed)
    rng = np.random.default_rng(5)
    p["h0"] = p["h0"][:, :P].copy()
    p["w_hh"] = p["w_hh"][:, :P].copy()
    p["w_hr"] = rng.uniform(-0.3, 0.3, (P, H))
    grads["grad_y"] = grads["grad_y"][..., :P].copy()
    grads["grad_hn"] = grads["grad_hn"][:, :P].copy()
    out = na.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                          batch_sizes=bs, reverse=reverse, w_hr=p["w_hr"])
    g = na.lstm_backward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], out, grads["grad_y"],
                         grads["grad_hn"], grads["grad_cn"], batch_sizes=bs, reverse=reverse,
                         w_hr=p["w_hr"])
    t = {n: torch.tensor(a, requires_grad=True) for n, a in p.items()}
    y, (h_n, c_n) = reference.lstm(t["x"], (t["h0"], t["c0"]), t["w_ih"], t["w_hh"], t["b_ih"],
                                   t["b_hh"], t["w_hr"], reverse=reverse,
                                   batch_sizes=None if bs is None else [int(v) for v in bs])
    loss = (y * torch.tensor(grads["grad_y"])).sum() + \
        (h_n * torch.tensor(grads["grad_hn"])).sum() + (c_n * torch.tensor(grads["grad_cn"])).sum()
    names = ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"]
    exact = torch.autograd.grad(loss, [t[n] for n in names])
    assert_f64_close(out.y, y.detach(), "y")
    for name, e in zip(names, exact):
        assert_f64_close(getattr(g, name), e, f"grad {name}")


def test_proj_size_bad_input():
    p, _, _ = make("lstm", 3, 2, 4, 5)
    with pytest.raises(ValueError, match=r"w_hr must have shape \(proj_size, 5\) with "
                                         r"0 < proj_size < 5, got \(5, 5\)"):
        na.lstm_forward(p["x"], None, None, p["w_ih"], p["w_hh"], w_hr=np.zeros((5, 5)))
    with pytest.raises(ValueError, match=r"w_hh must have shape \(20, 2\), got \(20, 5\)"):
        na.lstm_forward(p["x"], None, None, p["w_ih"], p["w_hh"], w_hr=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="w_hr \\(proj_size\\) is for the lstm only"):
        rnnkern._core.layer_forward("gru", p["x"], np.zeros((2, 5)), None,
                                    p["w_ih"][:15], p["w_hh"][:15], None, None,
                                    np.zeros((2, 5)), None, None, False)
