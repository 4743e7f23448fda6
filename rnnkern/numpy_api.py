"""NumPy-level forward and backward of one layer in one direction: of any cell of
:mod:`rnnkern.cells` (:func:`layer_forward`, :func:`layer_backward`), and in today's per-cell
forms for the Elman RNN (:func:`forward`), the LSTM and the GRU.

No torch needed. See docs/design.md section 1 for the math and the packed layout.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from . import _core

__all__ = ["layer_forward", "layer_backward", "Gradients", "forward", "backward", "LSTMOutput", "LSTMGradients", "lstm_forward",
           "lstm_backward", "GRUOutput", "GRUGradients", "gru_forward", "gru_backward"]


class Gradients(NamedTuple):
    """Gradients of the loss with respect to each input of :func:`forward`."""

    x: np.ndarray
    h0: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray


def _flag(name: str, value) -> bool:
    """A real boolean (Python's or NumPy's): bool("False") is True, so nothing else passes."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def _output(output, cls, forward: str, lengths: Sequence[int]):
    """``output``, what ``forward`` returned: a cls, or a plain tuple of one of these lengths."""
    if isinstance(output, cls) or (type(output) is tuple and len(output) in lengths):
        for field, value in zip(cls._fields, output):
            if value is not None and not isinstance(value, np.ndarray):
                raise TypeError(f"output.{field} must be a numpy.ndarray, got "
                                f"{type(value).__name__}")
        return cls(*output)
    raise TypeError(f"output must be the {cls.__name__} that {forward} returned "
                    f"({', '.join(cls._fields)}), got {type(output).__name__}")


def _batch_sizes(batch_sizes):
    if batch_sizes is None:
        return None
    a = np.asarray(batch_sizes)
    if a.size == 0:
        raise ValueError("batch_sizes must have at least one entry, got 0")
    if a.dtype.kind not in "iu":
        raise TypeError(f"batch_sizes must hold integers, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"batch_sizes must have 1 dimension, got shape {a.shape}")
    if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"batch_sizes must be below 2**63, got {int(a.max())}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _zeros_h0(x, w_ih, batch_sizes):
    """The zero initial state (B, H) that h0=None stands for, as torch.nn.RNN's missing hx.

    When x or w_ih is malformed the shape is a guess; the core then reports the bad argument.
    """
    shape_x = getattr(x, "shape", ())
    shape_w = getattr(w_ih, "shape", ())
    if batch_sizes is not None:
        batch = int(batch_sizes[0]) if len(batch_sizes) else 0
    else:
        batch = shape_x[1] if len(shape_x) == 3 else 0
    hidden = shape_w[0] if len(shape_w) == 2 else 0
    dtype = getattr(x, "dtype", np.float64)
    return np.zeros((batch, hidden), dtype=dtype if dtype in (np.float32, np.float64)
                    else np.float64)


@functools.lru_cache(maxsize=None)
def _cell_info(cell: str) -> dict:
    return _core.cell_info(cell)


def _nonlinearity(cell: str, nonlinearity: Optional[str]) -> Optional[str]:
    """None stands for "tanh" for a cell that takes a nonlinearity (the documented default)."""
    if nonlinearity is None and _cell_info(cell)["takes_nonlinearity"]:
        return "tanh"
    return nonlinearity


def _states(cell, x, w_ih, batch_sizes, h0, c0, w_hr=None):
    """h0 and (for a cell of two states) c0, the zero states (B, H) that None stands for,
    (B, P) for h0 with w_hr (P, H); c0 stays None for a cell of one state."""
    info = _cell_info(cell)
    if h0 is not None and (c0 is not None or info["states"] == 1):
        return h0, c0
    zeros = _zeros_h0(x, w_ih, batch_sizes)
    batch, hidden = zeros.shape[0], zeros.shape[1] // info["gates"]
    shape_hr = getattr(w_hr, "shape", ())
    width = shape_hr[0] if w_hr is not None and len(shape_hr) == 2 else hidden
    if h0 is None:
        h0 = np.zeros((batch, width), dtype=zeros.dtype)
    if c0 is None and info["states"] == 2:
        c0 = np.zeros((batch, hidden), dtype=zeros.dtype)
    return h0, c0


ArrayOrNone = Optional[np.ndarray]
BatchSizes = Optional[Union[np.ndarray, Sequence[int]]]


def _cell_states(cell: str, x, w_ih, batch_sizes, hx, w_hr) -> tuple:
    """hx (None, an array, or a tuple of the cell's states) as a tuple (h0, c0), c0 None for a
    cell of one state, zeros for None."""
    count = _cell_info(cell)["states"]
    if hx is None:
        return _states(cell, x, w_ih, batch_sizes, None, None, w_hr)
    if count == 1:
        return _states(cell, x, w_ih, batch_sizes, hx, None, w_hr)
    if not isinstance(hx, (tuple, list)) or len(hx) != count:
        raise TypeError(f"hx must be None or a tuple of {count} arrays for cell {cell!r}, got "
                        f"{type(hx).__name__}")
    return _states(cell, x, w_ih, batch_sizes, *hx, w_hr)


def layer_forward(cell: str, x: np.ndarray, hx, w_ih: np.ndarray, w_hh: np.ndarray,
                  b_ih: ArrayOrNone = None, b_hh: ArrayOrNone = None, w_hr: ArrayOrNone = None,
                  nonlinearity: Optional[str] = None, batch_sizes: BatchSizes = None,
                  reverse: bool = False) -> tuple:
    """One layer-direction of ``cell`` (a name of ``rnnkern._core.cells()``) forward.

    Args:
        x: (T, B, I), or packed (N, I) rows with ``batch_sizes``.
        hx: the initial state (B, H), for a cell with two states the tuple (h0, c0), or None
            for zeros.
        w_ih, w_hh, b_ih, b_hh, w_hr: the weights as the cell's torch class holds them
            (biases None for none; w_hr the LSTM's proj_size, else None).
        nonlinearity: "tanh" (None: the default) or "relu", for the cells that take one.
        batch_sizes, reverse: as for :func:`forward`.

    Returns:
        (y, saved): y (T, B, H) or (N, H), every h_t; saved the tuple of arrays
        :func:`layer_backward` reads (``rnnkern._core.cell_info(cell)["saved"]``).
    """
    batch_sizes = _batch_sizes(batch_sizes)
    h0, c0 = _cell_states(cell, x, w_ih, batch_sizes, hx, w_hr)
    return _core.layer_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                               _nonlinearity(cell, nonlinearity), batch_sizes,
                               _flag("reverse", reverse))


def layer_backward(cell: str, x: np.ndarray, hx, w_ih: np.ndarray, w_hh: np.ndarray,
                   y: np.ndarray, saved: tuple, grad_y: np.ndarray, grad_finals=None,
                   w_hr: ArrayOrNone = None, nonlinearity: Optional[str] = None,
                   batch_sizes: BatchSizes = None, reverse: bool = False) -> dict:
    """Backpropagate through time for :func:`layer_forward`.

    ``y, saved`` are what :func:`layer_forward` returned, grad_y = ∂L/∂y, grad_finals ∂L/∂ of
    the final states (like hx; None, or None entries, for zero); the rest as given to it.

    Returns:
        A dict of the gradients with respect to x, h0, [c0,] w_ih, w_hh, b_ih, b_hh, [w_hr]
        (c0 for a cell with two states, w_hr when given).
    """
    batch_sizes = _batch_sizes(batch_sizes)
    h0, c0 = _cell_states(cell, x, w_ih, batch_sizes, hx, w_hr)
    two = c0 is not None
    grads = tuple(grad_finals) if isinstance(grad_finals, (tuple, list)) else (grad_finals,)
    if len(grads) > (2 if two else 1):
        raise TypeError(f"grad_finals must be None, an array or a tuple of one per state of "
                        f"cell {cell!r}, got a tuple of {len(grads)}")
    grads += (None,) * (2 - len(grads))
    result = _core.layer_backward(cell, x, h0, c0, w_ih, w_hh, w_hr, y, tuple(saved), grad_y,
                                  grads[0], grads[1], _nonlinearity(cell, nonlinearity),
                                  batch_sizes,
                                  _flag("reverse", reverse), need_c0=two,
                                  need_w_hr=w_hr is not None)
    names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
    return {name: g for name, g in zip(names, result[:8])
            if g is not None or name not in ("c0", "w_hr")}


def forward(x: np.ndarray, h0: ArrayOrNone, w_ih: np.ndarray, w_hh: np.ndarray,
            b_ih: ArrayOrNone = None, b_hh: ArrayOrNone = None, nonlinearity: str = "tanh",
            batch_sizes: BatchSizes = None, reverse: bool = False) -> np.ndarray:
    """Run one Elman RNN layer forward and return every hidden state.

    ``h_t = φ(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh)`` with ``h_{-1} = h0`` and φ = tanh or relu.

    Args:
        x: (T, B, I) time-major input; with ``batch_sizes``, the packed (N, I) rows of all
            steps, N = sum(batch_sizes), as in ``torch.nn.utils.rnn.PackedSequence.data``.
        h0: (B, H) initial state, or None for zeros (as torch.nn.RNN without hx).
        w_ih: (H, I). w_hh: (H, H). b_ih, b_hh: (H,) or None.
        nonlinearity: "tanh" or "relu".
        batch_sizes: optional (T,) non-increasing integers: rows live at each step.
        reverse: walk the sequence from its last step to its first.

    All arrays must share one dtype, float32 or float64; nothing is converted. Arrays
    with other strides than C-contiguous are accepted and copied to contiguous memory
    after every check has passed (the result does not depend on strides).

    Returns:
        y: (T, B, H), or (N, H) with ``batch_sizes``: the state of every row at every step.
    """
    batch_sizes = _batch_sizes(batch_sizes)
    h0, _ = _states("rnn", x, w_ih, batch_sizes, h0, None)
    y, _ = _core.layer_forward("rnn", x, h0, None, w_ih, w_hh, b_ih, b_hh, None, nonlinearity,
                               batch_sizes, _flag("reverse", reverse))
    return y


def backward(x: np.ndarray, h0: ArrayOrNone, w_ih: np.ndarray, w_hh: np.ndarray,
             y: np.ndarray, grad_y: np.ndarray, grad_hn: ArrayOrNone = None,
             nonlinearity: str = "tanh", batch_sizes: BatchSizes = None,
             reverse: bool = False) -> Gradients:
    """Backpropagate through time for :func:`forward`.

    Args:
        x, h0, w_ih, w_hh, nonlinearity, batch_sizes, reverse: as given to :func:`forward`
            (h0=None: zeros; the gradient with respect to that zero state is still returned).
        y: what :func:`forward` returned.
        grad_y: ∂L/∂y, same shape as y.
        grad_hn: optional (B, H) ∂L/∂h_n, where h_n holds each sequence's state at its own
            last step (step 0 when ``reverse``).

    Arrays that are not C-contiguous are copied to contiguous memory, as in :func:`forward`,
    except grad_y when its rows are evenly spaced (a broadcast such as
    ``np.broadcast_to(1.0, y.shape)``, a column slice): it is read where it is.

    Returns:
        :class:`Gradients` with fields x, h0, w_ih, w_hh, b_ih, b_hh. The two bias
        gradients are equal (and separate arrays); they are returned whether or not the
        forward pass used biases.
    """
    batch_sizes = _batch_sizes(batch_sizes)
    h0, _ = _states("rnn", x, w_ih, batch_sizes, h0, None)
    gx, gh0, _, gw_ih, gw_hh, gb_ih, gb_hh, *_ = _core.layer_backward(
        "rnn", x, h0, None, w_ih, w_hh, None, y, (), grad_y, grad_hn, None, nonlinearity,
        batch_sizes, _flag("reverse", reverse))
    return Gradients(gx, gh0, gw_ih, gw_hh, gb_ih, gb_hh)


# The gated cells (docs/design.md, 1b). Weights in torch's layout: w_ih (G·H, I), w_hh (G·H, H),
# b_ih, b_hh (G·H,), G = 4 blocks i, f, g, o (LSTM) or 3 blocks r, z, n (GRU).

class LSTMOutput(NamedTuple):
    """What :func:`lstm_forward` returns: y and c, (T, B, H) or packed (N, H), every h_t and
    c_t; gates (T, B, 4H) or (N, 4H), the activated gates i, f, g, o that backward reads."""

    y: np.ndarray
    c: np.ndarray
    gates: np.ndarray
    m: Optional[np.ndarray] = None  # with w_hr (proj_size): o ⊙ tanh(c_t), (…, H)


class LSTMGradients(NamedTuple):
    """Gradients of the loss with respect to each input of :func:`lstm_forward`."""

    x: np.ndarray
    h0: np.ndarray
    c0: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    w_hr: Optional[np.ndarray] = None


class GRUOutput(NamedTuple):
    """What :func:`gru_forward` returns: y, every h_t; gates (…, 3H), the activated r, z, n;
    hidden_n (…, H), h_{t-1} W_hnᵀ + b_hn, the part of n inside the reset gate."""

    y: np.ndarray
    gates: np.ndarray
    hidden_n: np.ndarray


class GRUGradients(NamedTuple):
    """Gradients of the loss with respect to each input of :func:`gru_forward`."""

    x: np.ndarray
    h0: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray




def lstm_forward(x: np.ndarray, h0: ArrayOrNone, c0: ArrayOrNone, w_ih: np.ndarray,
                 w_hh: np.ndarray, b_ih: ArrayOrNone = None, b_hh: ArrayOrNone = None,
                 batch_sizes: BatchSizes = None, reverse: bool = False,
                 w_hr: ArrayOrNone = None) -> LSTMOutput:
    """Run one LSTM layer forward (torch.nn.LSTM's math, gate order i, f, g, o).

    x, batch_sizes and reverse as for :func:`forward`; h0, c0 (B, H) or None for zeros;
    w_ih (4H, I), w_hh (4H, H), b_ih, b_hh (4H,) or None; w_hr (P, H) with proj_size P
    (then h0, w_hh and y have P columns). One dtype, float32 or float64.
    """
    batch_sizes = _batch_sizes(batch_sizes)
    h0, c0 = _states("lstm", x, w_ih, batch_sizes, h0, c0, w_hr)
    y, (gates, c, *m) = _core.layer_forward("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                            None, batch_sizes, _flag("reverse", reverse))
    return LSTMOutput(y, c, gates, m[0] if m else None)


def lstm_backward(x: np.ndarray, h0: ArrayOrNone, c0: ArrayOrNone, w_ih: np.ndarray,
                  w_hh: np.ndarray, output: LSTMOutput, grad_y: np.ndarray,
                  grad_hn: ArrayOrNone = None, grad_cn: ArrayOrNone = None,
                  batch_sizes: BatchSizes = None, reverse: bool = False,
                  w_hr: ArrayOrNone = None) -> LSTMGradients:
    """Backpropagate through time for :func:`lstm_forward`.

    ``output`` is what :func:`lstm_forward` returned; grad_y = ∂L/∂y; grad_hn, grad_cn (B, H)
    ∂L/∂h_n and ∂L/∂c_n at each sequence's last step, or None. b_ih and b_hh get the same
    gradient (separate arrays).
    """
    batch_sizes = _batch_sizes(batch_sizes)
    h0, c0 = _states("lstm", x, w_ih, batch_sizes, h0, c0, w_hr)
    y, c, gates, m = _output(output, LSTMOutput, "lstm_forward", (3, 4))
    saved = (gates, c) if w_hr is None else (gates, c, m)
    gx, gh0, gc0, gw_ih, gw_hh, gb_ih, gb_hh, gw_hr, *_ = _core.layer_backward(
        "lstm", x, h0, c0, w_ih, w_hh, w_hr, y, saved, grad_y, grad_hn, grad_cn, None,
        batch_sizes, _flag("reverse", reverse))
    return LSTMGradients(gx, gh0, gc0, gw_ih, gw_hh, gb_ih, gb_hh, gw_hr)


def gru_forward(x: np.ndarray, h0: ArrayOrNone, w_ih: np.ndarray, w_hh: np.ndarray,
                b_ih: ArrayOrNone = None, b_hh: ArrayOrNone = None,
                batch_sizes: BatchSizes = None, reverse: bool = False) -> GRUOutput:
    """Run one GRU layer forward (torch.nn.GRU's math, gate order r, z, n); arguments as
    :func:`lstm_forward` with w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,)."""
    batch_sizes = _batch_sizes(batch_sizes)
    h0, _ = _states("gru", x, w_ih, batch_sizes, h0, None)
    y, (gates, hidden_n) = _core.layer_forward("gru", x, h0, None, w_ih, w_hh, b_ih, b_hh,
                                               None, None, batch_sizes,
                                               _flag("reverse", reverse))
    return GRUOutput(y, gates, hidden_n)


def gru_backward(x: np.ndarray, h0: ArrayOrNone, w_ih: np.ndarray, w_hh: np.ndarray,
                 output: GRUOutput, grad_y: np.ndarray, grad_hn: ArrayOrNone = None,
                 batch_sizes: BatchSizes = None, reverse: bool = False) -> GRUGradients:
    """Backpropagate through time for :func:`gru_forward` (see :func:`lstm_backward`)."""
    batch_sizes = _batch_sizes(batch_sizes)
    h0, _ = _states("gru", x, w_ih, batch_sizes, h0, None)
    y, gates, hidden_n = _output(output, GRUOutput, "gru_forward", (3,))
    gx, gh0, _, gw_ih, gw_hh, gb_ih, gb_hh, *_ = _core.layer_backward(
        "gru", x, h0, None, w_ih, w_hh, None, y, (gates, hidden_n), grad_y, grad_hn, None, None,
        batch_sizes, _flag("reverse", reverse))
    return GRUGradients(gx, gh0, gw_ih, gw_hh, gb_ih, gb_hh)
