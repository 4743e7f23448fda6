"""rnnkern._core's one binding pair for every cell: the cell list and its facts, the cell-name
and nonlinearity checks, and the pointer variant against the array path for every cell."""

import re

import numpy as np
import pytest

from rnnkern import _core, cells

CELLS = _core.cells()


def test_cells_and_their_facts():
    assert CELLS == ["rnn", "lstm", "gru", "indrnn"]
    facts = {name: _core.cell_info(name) for name in CELLS}
    assert {n: (f["gates"], f["states"]) for n, f in facts.items()} == \
        {"rnn": (1, 1), "lstm": (4, 2), "gru": (3, 1), "indrnn": (1, 1)}
    assert [n for n, f in facts.items() if f["takes_nonlinearity"]] == ["rnn", "indrnn"]
    assert [n for n, f in facts.items() if f["projection"]] == ["lstm"]
    assert facts["rnn"]["saved"] == []
    assert facts["lstm"]["saved"] == [("gates", 4, False), ("c", 1, False), ("m", 1, True)]
    assert facts["gru"]["saved"] == [("gates", 3, False), ("hidden_n", 1, False)]
    assert facts["indrnn"]["saved"] == []
    assert facts["gru"]["w_hh_shape"] == ("3 * hidden_size", "hidden_size")
    assert facts["rnn"]["w_hh_shape"] == ("hidden_size", "hidden_size")
    assert facts["lstm"]["w_hh_shape"] == ("4 * hidden_size", "hidden_size")
    assert facts["indrnn"]["w_hh_shape"] == ("hidden_size",)
    assert all(f["name"] == n for n, f in facts.items())
    # The registry's cells are the core's (the tests below take theirs from the registry).
    assert CELLS == list(cells.NAMES)
    assert all(f["takes_nonlinearity"] == cells.get(n).nonlinearity for n, f in facts.items())


def _size(expr, H):
    """A cell_info size ("hidden_size", "3 * hidden_size") for this hidden size."""
    n = 1
    for factor in expr.split(" * "):
        n *= H if factor == "hidden_size" else int(factor)
    return n


def _w_hh_shape(cell, H):
    return tuple(_size(e, H) for e in _core.cell_info(cell)["w_hh_shape"])


def _problem(cell, T=4, B=3, I=5, H=6, seed=0, dtype=np.float64):
    info = _core.cell_info(cell)
    G, two = info["gates"], info["states"] == 2
    rng = np.random.default_rng(seed)
    a = {"x": rng.standard_normal((T, B, I)), "h0": rng.standard_normal((B, H)),
         "c0": rng.standard_normal((B, H)) if two else None,
         "w_ih": rng.uniform(-0.4, 0.4, (G * H, I)),
         "w_hh": rng.uniform(-0.4, 0.4, _w_hh_shape(cell, H)),
         "b_ih": rng.uniform(-0.4, 0.4, G * H), "b_hh": rng.uniform(-0.4, 0.4, G * H),
         "grad_y": rng.standard_normal((T, B, H)), "grad_hn": rng.standard_normal((B, H)),
         "grad_cn": rng.standard_normal((B, H)) if two else None}
    return {k: None if v is None else np.ascontiguousarray(v, dtype) for k, v in a.items()}


def _nonlinearity(cell):
    return "tanh" if _core.cell_info(cell)["takes_nonlinearity"] else None


def test_unknown_cell_names_the_known_ones():
    p = _problem("rnn")
    with pytest.raises(ValueError, match="cell must be one of 'rnn', 'lstm', 'gru', 'indrnn', got 'cnn'"):
        _core.layer_backward("cnn", p["x"], p["h0"], None, p["w_ih"], p["w_hh"], None, p["x"],
                             (), p["grad_y"], None, None, "tanh", None, False)
    with pytest.raises(ValueError, match="got 'LSTM'"):
        _core.cell_info("LSTM")


@pytest.mark.cells(nonlinearity=False)
def test_a_cell_without_nonlinearity_takes_only_tanh_or_none(cell):
    p = _problem(cell)
    args = (p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], None)
    y_none, _ = _core.layer_forward(cell, *args, None, None, False)
    y_tanh, _ = _core.layer_forward(cell, *args, "tanh", None, False)
    assert np.array_equal(y_none, y_tanh)
    with pytest.raises(ValueError, match=f"the {cell} takes no nonlinearity: it must be None "
                                         "or 'tanh', got 'relu'"):
        _core.layer_forward(cell, *args, "relu", None, False)


@pytest.mark.cells(nonlinearity=True)
def test_a_cell_with_a_nonlinearity_needs_it(cell):
    p = _problem(cell)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got None"):
        _core.layer_forward(cell, p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], None, None,
                            None, None, None, False)


def test_w_hh_must_have_the_shape_of_cell_info(cell):
    """w_hh of the other number of dimensions (a matrix for a vector cell, a vector for a
    matrix cell) is a ValueError naming w_hh, the shape wanted and the shape given."""
    p = _problem(cell)
    want = _w_hh_shape(cell, 6)
    wrong = (want[0], 6) if len(want) == 1 else (want[0],)

    def text(shape):
        return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"

    msg = re.escape(f"w_hh must have shape {text(want)}, got {text(wrong)}")
    nl = _nonlinearity(cell)
    with pytest.raises(ValueError, match=msg):
        _core.layer_forward(cell, p["x"], p["h0"], p["c0"], p["w_ih"], np.zeros(wrong), None,
                            None, None, nl, None, False)
    y, saved = _core.layer_forward(cell, p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], None,
                                   None, None, nl, None, False)
    with pytest.raises(ValueError, match=msg):
        _core.layer_backward(cell, p["x"], p["h0"], p["c0"], p["w_ih"], np.zeros(wrong), None,
                             y, saved, p["grad_y"], None, None, nl, None, False)


def test_saved_must_be_what_forward_returned(cell):
    p = _problem(cell)
    nl = _nonlinearity(cell)
    y, saved = _core.layer_forward(cell, p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"],
                                   p["b_ih"], p["b_hh"], None, nl, None, False)
    assert len(saved) == sum(1 for s in _core.cell_info(cell)["saved"] if not s[2])
    with pytest.raises(TypeError, match="saved must be the tuple of"):
        _core.layer_backward(cell, p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], None, y,
                             (*saved, y), p["grad_y"], None, None, nl, None, False)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointer_variant_matches_the_array_path(cell, dtype, reverse):
    p = _problem(cell, dtype=dtype, seed=3)
    nl = _nonlinearity(cell)
    T, B, I = p["x"].shape
    H = p["h0"].shape[1]
    y, saved = _core.layer_forward(cell, p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"],
                                   p["b_ih"], p["b_hh"], None, nl, None, reverse)
    grads = _core.layer_backward(cell, p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], None, y,
                                 saved, p["grad_y"], p["grad_hn"], p["grad_cn"], nl, None,
                                 reverse, grad_norms=True, weight_norms=True)

    def ptr(a):
        return 0 if a is None else a.ctypes.data

    y2 = np.empty_like(y)
    saved2 = tuple(np.empty_like(s) for s in saved)
    _core.layer_forward_pointers(cell, dtype is np.float64, T, B, I, H, ptr(p["x"]),
                                 ptr(p["h0"]), ptr(p["c0"]), ptr(p["w_ih"]), ptr(p["w_hh"]),
                                 ptr(p["b_ih"]), ptr(p["b_hh"]), ptr(y2),
                                 [ptr(s) for s in saved2], nl, reverse)
    assert np.array_equal(y, y2)
    for s, s2 in zip(saved, saved2):
        assert np.array_equal(s, s2)
    out = [None if g is None else np.empty_like(g) for g in grads]
    gx, gh0, gc0, gwi, gwh, gbi, gbh, _, nh, nc, nw = out
    _core.layer_backward_pointers(cell, dtype is np.float64, T, B, I, H, ptr(p["x"]),
                                  ptr(p["h0"]), ptr(p["c0"]), ptr(p["w_ih"]), ptr(p["w_hh"]),
                                  ptr(y2), [ptr(s) for s in saved2], ptr(p["grad_y"]),
                                  ptr(p["grad_hn"]), ptr(p["grad_cn"]), ptr(gx), ptr(gh0),
                                  ptr(gc0), ptr(gwi), ptr(gwh), ptr(gbi), ptr(gbh), ptr(nh),
                                  ptr(nc), ptr(nw), nl, reverse)
    for name, want, got in zip(["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr",
                                "norm_h", "norm_c", "norm_w"], grads, out):
        assert (want is None) == (got is None), name
        if want is not None:
            assert np.array_equal(want, got), name


def test_pointer_variant_checks_sizes_and_saved():
    with pytest.raises(ValueError, match="sizes must be positive and pointers set"):
        _core.layer_forward_pointers("gru", False, 2, 1, 1, 1, 8, 8, 0, 8, 8, 0, 0, 8, [0, 0],
                                     None, False)
    with pytest.raises(ValueError, match="saved must hold 2 pointers for the lstm, got 0"):
        _core.layer_forward_pointers("lstm", False, 2, 1, 1, 1, 8, 8, 8, 8, 8, 0, 0, 8, [],
                                     None, False)
