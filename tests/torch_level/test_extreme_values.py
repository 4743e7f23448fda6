"""NaN and Inf at the tails: rnnkern.RNN / LSTM / GRU against torch.nn's, element by element.

Extreme values (±1e3, the float32 exp overflow and underflow region ±88 … ±104, ±inf, NaN) go
into the input, h0 / c0, the weights or the biases, and every output and gradient element must
be NaN, +Inf, -Inf or finite exactly where torch's is (masks, not values: the finite values
next to an overflow are not comparable). mask_mismatches is also the fuzz suite's oracle
(test_fuzz.py draws the places and values at random).

torch is matched as its composite autograd cells compute (torch.sigmoid, torch.tanh and
autograd's products: torch.nn.GRU and RNN always, LSTM in float64). Two cases cannot match, and
are not tested:
- torch.nn.LSTM in float32 runs oneDNN's fused cell by default, whose σ differs from
  torch.sigmoid at the tails (0 from a <= -86.99 where torch.sigmoid is positive down to
  -88.72, and below 1 up to a = 17.33 where torch.sigmoid is 1 from 16.64 on) and which
  multiplies a zero gradient by NaN where autograd forms no product. torch's own float32 and
  float64 LSTMs disagree there; rnnkern follows the float64 / composite one. The float32 LSTM
  is compared with torch's composite cell (oneDNN off), and with oneDNN away from those bands
  (test_float32_lstm_against_onednn).
- rnnkern's autograd is handed zeros for an unused output, so "no gradient reaches h_t" (a loss
  on c_n alone) and "a gradient of exactly 0 reaches h_t" (say (0 * y).sum() + c_n.sum()) look
  the same to the kernels. Both are taken as no gradient (as torch does the first); with a NaN
  c_t or o, torch gives NaN in the second and rnnkern 0. The losses here weigh every element
  by a factor in [0.5, 1.5), never 0.

A test that takes ``cell`` runs for the drop-in cells of the registry (the cell fixture of
conftest.py), the Elman RNN's relu in a test of its own.
"""

import contextlib
import math
import warnings

import numpy as np
import pytest
import torch

import rnnkern
from rnnkern import cells

INF, NAN = math.inf, math.nan
# Around float32's exp overflow (88.72) and underflow to 0 (-103.97; denormals from -87.34).
EXTREMES = [1e3, -1e3, 88.0, -88.0, 88.5, -88.5, 88.8, -88.8, 90.0, -90.0, 100.0, -100.0,
            104.0, -104.0, INF, -INF, NAN]



def variant(cell, nonlinearity="tanh"):
    """The key of CELLS of a drop-in cell: its name, or the Elman RNN's "rnn_tanh" / "rnn_relu"."""
    return f"{cell}_{nonlinearity}" if cells.get(cell).nonlinearity else cell


# variant -> (torch class, rnnkern class, constructor arguments), for each drop-in cell:
# "rnn_tanh", "rnn_relu", "lstm", "gru".
CELLS = {variant(spec.name, nl): (spec.torch_type(), spec.module_type(),
                                  dict(nonlinearity=nl) if spec.nonlinearity else {})
         for spec in cells.CELLS if spec.drop_in
         for nl in (("tanh", "relu") if spec.nonlinearity else ("tanh",))}


def mask(t):
    """0 finite, 1 NaN, 2 +Inf, 3 -Inf, per element (None: no gradient, i.e. zeros)."""
    a = t.detach().to(torch.float64).numpy()
    m = np.zeros(a.shape, dtype=np.int8)
    m[np.isnan(a)] = 1
    m[a == np.inf] = 2
    m[a == -np.inf] = 3
    return m


def forward_backward(module, x, hx, loss_on, seed):
    """Masks of the outputs and of every gradient (inputs, states, parameters) of a loss that
    weighs each output element by a random finite factor; loss_on names the outputs it uses
    ("y", "h_n", "c_n")."""
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(h.detach().clone().requires_grad_() for h in hx)
    state = None if hx is None else (hx if len(hx) == 2 else hx[0])
    y, h = module(x, state)
    outs = {"y": y}
    if isinstance(h, tuple):
        outs["h_n"], outs["c_n"] = h
    else:
        outs["h_n"] = h
    gen = torch.Generator().manual_seed(seed)
    loss = sum((outs[n] * (torch.rand(outs[n].shape, generator=gen, dtype=y.dtype) + 0.5)).sum()
               for n in loss_on if n in outs)
    module.zero_grad(set_to_none=True)
    loss.backward()
    masks = {n: mask(o) for n, o in outs.items()}
    leaves = {"x": x}
    if hx is not None:
        leaves.update(zip(("h0", "c0"), hx))
    leaves.update(module.named_parameters())
    for n, t in leaves.items():
        masks[f"grad {n}"] = mask(t.grad if t.grad is not None else torch.zeros_like(t))
    return masks


def build(cell, dtype, I, H, layers=1, bidirectional=False, seed=0):
    theirs_cls, ours_cls, kw = CELLS[cell]
    torch.manual_seed(seed)
    theirs = theirs_cls(I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype, **kw)
    ours = ours_cls(I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@contextlib.contextmanager
def without_onednn():
    """torch's own (composite autograd) cells in float32 too: torch.nn.LSTM runs oneDNN's
    fused cell for float32 on the CPU by default, float64 and the GRU and RNN never."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a note about TF32 on Intel GPUs
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def mask_mismatches(cell, dtype, T, B, I, H, places, layers=1, bidirectional=False,
                    loss_on=("y", "h_n", "c_n"), seed=0, onednn=False):
    """The names of the outputs and gradients whose NaN/Inf masks differ from torch's, with
    places = [(tensor, flat index, value)] written into the input ("x"), "h0", "c0" or a
    parameter (by its name, e.g. "bias_ih_l0"; the index wraps around its size). torch runs
    its composite cells unless onednn (its float32 LSTM default, see the module's note)."""
    theirs, ours = build(cell, dtype, I, H, layers, bidirectional, seed)
    gen = torch.Generator().manual_seed(seed)
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I, generator=gen, dtype=dtype)
    hx = [torch.randn(layers * D, B, H, generator=gen, dtype=dtype) * 0.5]
    if cell == "lstm":
        hx.append(torch.randn(layers * D, B, H, generator=gen, dtype=dtype) * 0.5)
    tensors = {"x": x, "h0": hx[0], "c0": hx[-1] if cell == "lstm" else None}
    with torch.no_grad():
        for name, index, value in places:
            if name in tensors:
                t = tensors[name]
                if t is None:
                    continue
            else:
                t = getattr(theirs, name)
            t.view(-1)[index % t.numel()] = value
        ours.load_state_dict(theirs.state_dict())
    with contextlib.nullcontext() if onednn else without_onednn():
        expected = forward_backward(theirs, x, tuple(hx), loss_on, seed)
    actual = forward_backward(ours, x, tuple(hx), loss_on, seed)
    assert expected.keys() == actual.keys()
    return [n for n in expected if not np.array_equal(expected[n], actual[n])]


def describe(cell, dtype, places, bad):
    return f"{cell} {dtype} {places}: masks differ from torch in {bad}"


DTYPES = [torch.float32, torch.float64]
PLACES = ["x", "h0", "c0", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]


def check_one_extreme_value_anywhere(cell, dtype):
    """``cell`` a key of CELLS."""
    failures = []
    for place in PLACES:
        if place == "c0" and cell != "lstm":
            continue
        for k, value in enumerate(EXTREMES):
            places = [(place, 5 * k + 1, value)]
            bad = mask_mismatches(cell, dtype, 2, 2, 3, 4, places)
            if bad:
                failures.append(describe(cell, dtype, places, bad))
    assert not failures, "\n".join(failures[:20]) + f"\n({len(failures)} cases)"


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_one_extreme_value_anywhere(cell, dtype):
    """One extreme element in each tensor, at a position that moves with the value (through
    every gate block's rows)."""
    check_one_extreme_value_anywhere(variant(cell), dtype)


@pytest.mark.cells(drop_in=True, nonlinearity=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_one_extreme_value_anywhere_relu(cell, dtype):
    """test_one_extreme_value_anywhere with the relu nonlinearity."""
    check_one_extreme_value_anywhere(variant(cell, "relu"), dtype)


@pytest.mark.cells("lstm", "gru")  # the cells with σ gates
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_saturated_gate_meets_infinite_state(cell, dtype):
    """A gate pushed into σ's tails by its bias (every bias row of a block at once) with an
    extreme state: σ must reach exactly 0 and 1 where torch's does, since 0 · Inf is NaN and a
    denormal · Inf is not (the issue: c0 = +Inf and a forget pre-activation of -1000)."""
    H = 3
    gates = cells.get(cell).gate_count
    state = "c0" if cell == "lstm" else "h0"
    failures = []
    for block in range(gates):
        for bias in (-1e3, -104.0, -100.0, -90.0, -88.8, -88.5, -88.0, 88.0, 90.0, 1e3,
                     -INF, INF):
            for value in (INF, -INF, NAN, 1e3):
                places = [("bias_ih_l0", block * H + j, bias) for j in range(H)]
                places += [(state, j, value) for j in range(H)]
                bad = mask_mismatches(cell, dtype, 2, 2, 3, H, places)
                if bad:
                    failures.append(describe(cell, dtype, places[::H], bad))
    assert not failures, "\n".join(failures[:20]) + f"\n({len(failures)} cases)"


def test_issue_example_forget_gate_closes_on_infinite_c0():
    """c0 = +Inf and a forget pre-activation of -1000: f = 0 exactly, f · c0 = NaN, as in
    torch float32 and float64 (rnnkern float32 had a finite h_1 = 0.269)."""
    for dtype in DTYPES:
        theirs, ours = build("lstm", dtype, 1, 1)
        with torch.no_grad():
            for m in (theirs, ours):
                m.weight_ih_l0.zero_()
                m.weight_hh_l0.zero_()
                m.bias_ih_l0.copy_(torch.tensor([0.0, -1000.0, 0.0, 0.0]))
                m.bias_hh_l0.zero_()
        x = torch.zeros(1, 1, 1, dtype=dtype)
        hx = (torch.zeros(1, 1, 1, dtype=dtype), torch.full((1, 1, 1), INF, dtype=dtype))
        h_theirs = theirs(x, hx)[0]
        h_ours = ours(x, hx)[0]
        assert torch.isnan(h_theirs).all(), dtype
        assert torch.isnan(h_ours).all(), (dtype, h_ours)


TAILS = [-1e3, -104.0, -103.9, -100.0, -90.0, -88.8, -88.73, -88.72, -88.7, -88.5, -88.0,
         -87.5, -87.3, -87.0, -20.0, -17.0, 16.0, 17.0, 20.0, 87.0, 88.0, 88.8, 1e3, -INF, INF,
         NAN]


@pytest.mark.parametrize("H", [len(TAILS), 32 + len(TAILS)], ids=["tail", "vector"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_gate_activations_at_the_tails(dtype, H):
    """σ and tanh of the tail values as an LSTM's gates (x = 1, the values in W_ih's rows):
    exactly 0, exactly 1, NaN where torch.sigmoid / torch.tanh are; the scalar tail of a row
    and its vector part (H > the vector's lanes) both."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    a = np.resize(np.array(TAILS), H).astype(np_dtype)
    w_ih = np.tile(a, 4).reshape(4 * H, 1)
    out = rnnkern.numpy_api.lstm_forward(np.ones((1, 1, 1), np_dtype), None, None, w_ih,
                                         np.zeros((4 * H, H), np_dtype))
    gates = out.gates.reshape(4, H)
    t = torch.from_numpy(a)
    for name, ours, theirs in [("sigmoid", gates[0], torch.sigmoid(t)),
                               ("tanh", gates[2], torch.tanh(t))]:
        theirs = theirs.numpy()
        for what, f in [("NaN", np.isnan), ("0", lambda v: v == 0), ("1", lambda v: v == 1),
                        ("-1", lambda v: v == -1), ("denormal", lambda v: (v != 0) &
                                                     (np.abs(v) < np.finfo(np_dtype).tiny))]:
            wrong = a[f(ours) != f(theirs)]
            assert wrong.size == 0, f"{name} is {what} differently from torch at {wrong}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("shape", [dict(T=1), dict(T=3), dict(T=2, layers=2, bidirectional=True)],
                         ids=["T1", "T3", "2-layer-bidirectional"])
def test_lstm_loss_on_c_n_only(dtype, shape):
    """A loss on c_n alone: at each sequence's last step no gradient reaches h_t, and torch's
    autograd forms no product with the o gate or with tanh(c_t) there; the zero gradient
    rnnkern gets instead must not turn a NaN τ or o into NaN gradients (0 · NaN)."""
    failures = []
    for place in ("x", "h0", "c0", "weight_ih_l0", "bias_ih_l0"):
        for k, value in enumerate([NAN, INF, -INF, 1e3, -1e3, -100.0]):
            places = [(place, 3 * k, value)]
            bad = mask_mismatches("lstm", dtype, shape["T"], 2, 3, 4, places,
                                  layers=shape.get("layers", 1),
                                  bidirectional=shape.get("bidirectional", False),
                                  loss_on=("c_n",))
            if bad:
                failures.append(describe("lstm", dtype, places, bad))
    assert not failures, "\n".join(failures[:20]) + f"\n({len(failures)} cases)"


def test_float32_lstm_against_onednn():
    """torch.nn.LSTM's own float32 default (oneDNN's fused cell) on the saturated gates away
    from the bands where oneDNN's σ differs from torch.sigmoid (see the module's note)."""
    H = 3
    failures = []
    for block in (0, 1):
        for bias in (-1e3, -90.0, -INF, 1e3):
            for value in (INF, NAN):
                places = [("bias_ih_l0", block * H + j, bias) for j in range(H)]
                places += [("c0", j, value) for j in range(H)]
                bad = mask_mismatches("lstm", torch.float32, 2, 2, 3, H, places, onednn=True)
                if bad:
                    failures.append(describe("lstm", torch.float32, places[::H], bad))
    assert not failures, "\n".join(failures)
