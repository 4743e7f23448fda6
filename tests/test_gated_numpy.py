"""The LSTM and GRU kernels through the NumPy-level API against rnnkern.reference: float64 to
1e-10, float32 within a multiple of torch's own float32 error, odd shapes, packed, reverse."""

import itertools

import numpy as np
import pytest
import torch

import rnnkern
from rnnkern import numpy_api as na
from rnnkern import reference

from conftest import SHAPES, assert_f32_close, assert_f64_close, random_batch_sizes

GATES = {"lstm": 4, "gru": 3}


def make_gated(cell, T, B, I, H, dtype=np.float64, seed=0, bias=True, packed=False):
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    G = GATES[cell]
    bs = random_batch_sizes(rng, T, B) if packed else None
    N = int(bs.sum()) if packed else None
    lead = (N,) if packed else (T, B)
    p = dict(x=rng.standard_normal((*lead, I)), h0=rng.standard_normal((B, H)) * 0.5,
             c0=rng.standard_normal((B, H)) if cell == "lstm" else None,
             w_ih=rng.uniform(-k, k, (G * H, I)), w_hh=rng.uniform(-k, k, (G * H, H)),
             b_ih=rng.uniform(-k, k, G * H) if bias else None,
             b_hh=rng.uniform(-k, k, G * H) if bias else None)
    p = {n: None if a is None else a.astype(dtype) for n, a in p.items()}
    grads = dict(grad_y=rng.standard_normal((*lead, H)).astype(dtype),
                 grad_hn=rng.standard_normal((B, H)).astype(dtype),
                 grad_cn=rng.standard_normal((B, H)).astype(dtype) if cell == "lstm" else None)
    return p, bs, grads


ORDER = ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"]


def reference_run(cell, p, bs, grads, reverse, dtype=torch.float64):
    """(y, h_n, c_n, {name: gradient}) from the autograd reference."""
    t = {n: None if a is None else torch.tensor(a, dtype=dtype, requires_grad=True)
         for n, a in p.items()}
    kw = dict(batch_sizes=None if bs is None else [int(v) for v in bs], reverse=reverse)
    if cell == "lstm":
        y, (h_n, c_n) = reference.lstm(t["x"], (t["h0"], t["c0"]), t["w_ih"], t["w_hh"],
                                       t["b_ih"], t["b_hh"], **kw)
    else:
        y, h_n = reference.gru(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                               **kw)
        c_n = None
    loss = (y * torch.tensor(grads["grad_y"], dtype=dtype)).sum() + \
        (h_n * torch.tensor(grads["grad_hn"], dtype=dtype)).sum()
    if c_n is not None:
        loss = loss + (c_n * torch.tensor(grads["grad_cn"], dtype=dtype)).sum()
    names = [n for n in ORDER if t.get(n) is not None]
    found = torch.autograd.grad(loss, [t[n] for n in names])
    return (y.detach().numpy(), h_n.detach().numpy(),
            None if c_n is None else c_n.detach().numpy(),
            {n: g.numpy() for n, g in zip(names, found)})


def last_rows(bs, B, T, reverse):
    """Index of each sequence's last row in the flattened (N, ·) layout."""
    if reverse:
        return np.arange(B)
    if bs is None:
        return (T - 1) * B + np.arange(B)
    lengths = (np.asarray(bs)[None, :] > np.arange(B)[:, None]).sum(1)
    offsets = np.cumsum(bs) - bs
    return offsets[lengths - 1] + np.arange(B)


def kernel_run(cell, p, bs, grads, reverse):
    B, H = p["h0"].shape
    T = len(bs) if bs is not None else p["x"].shape[0]
    rows = last_rows(bs, B, T, reverse)
    if cell == "lstm":
        out = na.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"],
                              p["b_hh"], batch_sizes=bs, reverse=reverse)
        g = na.lstm_backward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], out,
                             grads["grad_y"], grads["grad_hn"], grads["grad_cn"],
                             batch_sizes=bs, reverse=reverse)
        c_n = out.c.reshape(-1, H)[rows]
    else:
        out = na.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                             batch_sizes=bs, reverse=reverse)
        g = na.gru_backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], out, grads["grad_y"],
                            grads["grad_hn"], batch_sizes=bs, reverse=reverse)
        c_n = None
    h_n = out.y.reshape(-1, H)[rows]
    return out.y, h_n, c_n, g._asdict()


CASES = list(itertools.product(["lstm", "gru"], range(len(SHAPES)), [False, True],
                               [False, True]))


def case_id(c):
    cell, s, packed, reverse = c
    return f"{cell}-{'x'.join(map(str, SHAPES[s]))}" + ("-packed" if packed else "") + \
        ("-reverse" if reverse else "")


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
        assert grads["b_ih"].shape == (GATES[cell] * h_n.shape[1],)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_float64_matches_reference(case):
    cell, s, packed, reverse = case
    p, bs, grads = make_gated(cell, *SHAPES[s], seed=s, packed=packed, bias=s % 3 != 1)
    compare(cell, kernel_run(cell, p, bs, grads, reverse),
            reference_run(cell, p, bs, grads, reverse), assert_f64_close)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] % 2 == 0], ids=case_id)
def test_float32_within_torch_float32_error(case):
    cell, s, packed, reverse = case
    p, bs, grads = make_gated(cell, *SHAPES[s], seed=s, packed=packed)
    exact = reference_run(cell, p, bs, grads, reverse)
    p32 = {n: None if a is None else a.astype(np.float32) for n, a in p.items()}
    g32 = {n: None if a is None else a.astype(np.float32) for n, a in grads.items()}
    theirs = reference_run(cell, p32, bs, g32, reverse, torch.float32)
    ours = kernel_run(cell, p32, bs, g32, reverse)
    assert ours[0].dtype == np.float32
    flat = lambda r: [r[0], r[1]] + ([r[2]] if cell == "lstm" else []) + list(r[3].values())
    for name, a, b, e in zip(["y", "h_n", "c_n", *exact[3]], flat(ours), flat(theirs),
                             flat(exact)):
        assert_f32_close(a, b, e, name)


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


@pytest.mark.parametrize("cell,reverse,shape", list(itertools.product(
    ["lstm", "gru"], [False, True], [(6, 3, 4, 5), (4, 9, 3, 33)])))
def test_gradient_norms_match_autograd(cell, reverse, shape):
    p, _, grads = make_gated(cell, *shape, seed=3)
    out = (na.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                           reverse=reverse) if cell == "lstm" else
           na.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                          reverse=reverse))
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


def test_backward_without_grad_hn_and_grad_y_broadcast():
    p, bs, grads = make_gated("gru", 5, 4, 3, 6, seed=1)
    out = na.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
    ones = np.broadcast_to(np.float64(1.0), out.y.shape)
    ours = na.gru_backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], out, ones)
    exact = reference_run("gru", p, None, dict(grad_y=np.ones(out.y.shape),
                                               grad_hn=np.zeros((4, 6))), False)[3]
    for name, g in exact.items():
        assert_f64_close(getattr(ours, name), g, name)


def test_zero_initial_state_when_none():
    p, _, grads = make_gated("lstm", 3, 2, 4, 5)
    a = na.lstm_forward(p["x"], None, None, p["w_ih"], p["w_hh"])
    b = na.lstm_forward(p["x"], np.zeros((2, 5)), np.zeros((2, 5)), p["w_ih"], p["w_hh"])
    assert np.array_equal(a.y, b.y) and np.array_equal(a.c, b.c)
    g = na.lstm_backward(p["x"], None, None, p["w_ih"], p["w_hh"], a, grads["grad_y"])
    assert g.h0.shape == (2, 5) and g.c0.shape == (2, 5)


def test_inputs_are_not_modified():
    p, _, grads = make_gated("lstm", 4, 3, 2, 5)
    before = {n: a.copy() for n, a in {**p, **grads}.items()}
    out = na.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
    saved = [a.copy() for a in out if a is not None]
    na.lstm_backward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], out, grads["grad_y"],
                     grads["grad_hn"], grads["grad_cn"])
    for n, a in {**p, **grads}.items():
        assert np.array_equal(a, before[n]), n
    for a, b in zip([a for a in out if a is not None], saved):
        assert np.array_equal(a, b)


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
def test_bad_input_names_the_argument(change, error, message):
    p, _, _ = make_gated("lstm", 4, 3, 4, 5)
    p.update(change)
    with pytest.raises(error) as info:
        na.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
    assert message in str(info.value)


def test_bad_saved_arrays_and_cell_name():
    p, _, grads = make_gated("gru", 4, 3, 4, 5)
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
    p, bs, grads = make_gated("lstm", T, B, I, H, seed=4, packed=packed)
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
    p, _, _ = make_gated("lstm", 3, 2, 4, 5)
    with pytest.raises(ValueError, match=r"w_hr must have shape \(proj_size, 5\) with "
                                         r"0 < proj_size < 5, got \(5, 5\)"):
        na.lstm_forward(p["x"], None, None, p["w_ih"], p["w_hh"], w_hr=np.zeros((5, 5)))
    with pytest.raises(ValueError, match=r"w_hh must have shape \(20, 2\), got \(20, 5\)"):
        na.lstm_forward(p["x"], None, None, p["w_ih"], p["w_hh"], w_hr=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="w_hr \\(proj_size\\) is for the lstm only"):
        rnnkern._core.layer_forward("gru", p["x"], np.zeros((2, 5)), None,
                                    p["w_ih"][:15], p["w_hh"][:15], None, None,
                                    np.zeros((2, 5)), None, None, False)
