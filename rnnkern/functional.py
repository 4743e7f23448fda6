"""torch-level API: one layer-direction of any cell of :mod:`rnnkern.cells` (:func:`layer`) and
a stack of them (:func:`layers`), with today's per-cell forms as thin wrappers: :func:`rnn`,
:func:`lstm`, :func:`gru` and :func:`rnn_layers`, :func:`lstm_layers`, :func:`gru_layers`.

``rnnkern::layer_forward`` and ``rnnkern::layer_backward`` are ``torch.library.custom_op``s
with fake (meta) implementations and a registered autograd formula, so every cell works under
``torch.library.opcheck`` and inside ``torch.compile(fullgraph=True)``. In eager mode the same
kernels run through a plain ``torch.autograd.Function``, which skips the op dispatch. CPU
tensors go to the C++ core (``rnnkern._core``), CUDA tensors to :mod:`rnnkern.gpu` (for the
cells whose spec lists the cuda backend).

What the kernels cannot do runs on the cell's autograd loop (its spec's reference, e.g.
:mod:`rnnkern.reference`) instead, with the same results: second derivatives
(``create_graph=True``), forward-mode AD, ``torch.func`` transforms, and tensors on the meta
device.

A layer's states are a tuple: ``(h0,)``, or the LSTM's ``(h0, c0)``; its weights are
``w_ih, w_hh, b_ih, b_hh`` and, for a cell with a projection, ``w_hr`` (each bias and w_hr may
be None).
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.autograd.forward_ad
from torch import Tensor

from . import _core, cells, gpu
from .numpy_api import _flag

__all__ = ["layer", "layers", "layer_forward", "layer_backward", "rnn", "rnn_layers", "lstm",
           "gru", "lstm_layers", "gru_layers"]

_FLOAT_DTYPES = (torch.float32, torch.float64)
_STATE_NAMES = ("hx", "cx")  # what the torch classes call h0 and c0
_GRAD_NAMES = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


def _numpy(name: str, t: Optional[Tensor]):
    """A NumPy view of t, with t's strides (the core copies only if they are not contiguous)."""
    if t is None:
        return None
    if t.dtype in _FLOAT_DTYPES and t.is_cpu:
        if t.is_neg():  # e.g. z.conj().imag: NumPy cannot view it, so resolve it (a copy)
            t = t.resolve_neg()
        return t.detach().numpy()
    if t.device.type != "cpu":
        raise RuntimeError(f"{name} must be on the CPU, got device {t.device}")
    raise TypeError(f"{name} must have dtype torch.float32 or torch.float64, got {t.dtype}")


def _batch_sizes_numpy(batch_sizes: Optional[Tensor]):
    if batch_sizes is None:
        return None
    if batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        raise TypeError("batch_sizes must be an int64 CPU tensor, got "
                        f"{batch_sizes.dtype} on {batch_sizes.device}")
    return batch_sizes.contiguous().numpy()


def _last_rows(batch_sizes: Tensor) -> Tensor:
    """Packed row index of each sequence's last step (forward direction)."""
    batch = int(batch_sizes[0])
    rows = torch.arange(batch)
    lengths = (batch_sizes.unsqueeze(0) > rows.unsqueeze(1)).sum(1)
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
    return offsets[lengths - 1] + rows


def _final_state(y: Tensor, batch: int, batch_sizes: Optional[Tensor], reverse: bool,
                 own: bool = True) -> Tensor:
    """Each sequence's row of y at its own last step; a view of y unless ``own``."""
    if batch_sizes is None:
        h = y[0] if reverse else y[-1]
        return h.clone() if own else h
    if reverse:
        return y[:batch].clone() if own else y[:batch]
    return y[_last_rows(batch_sizes)]


# ------------------------------------------------------------------------------ the kernels

# Up to this many elements of y times the gate count, a call passes data_ptr()s instead of
# NumPy views (see _backward_small for the weight gradients' own limit).
_SMALL_OUTPUT = 1 << 14


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _raw(dtype: torch.dtype, *tensors: Optional[Tensor]) -> bool:
    """Whether these tensors (None skipped) can go to the core as data_ptr()s: C-contiguous
    CPU tensors of ``dtype``."""
    for t in tensors:  # a loop, not all(...): this path is timed in microseconds
        if t is not None and (t.dtype is not dtype or not t.is_cpu or not t.is_contiguous()
                              or t.is_neg()):
            return False
    return True


def _small_sizes(facts: _Facts, x, states, w_ih, w_hh, w_hr
                 ) -> Optional[Tuple[int, int, int, int]]:
    """(T, B, I, H) when a time-major call without projection is small and its weights and
    states have the cell's shapes, so that data_ptr()s can go to the core; else None. x (T, B,
    I), or (B, I) for one step (the one-step cells)."""
    if w_hr is not None or x.dtype not in _FLOAT_DTYPES or w_ih.dim() != 2:
        return None
    if x.dim() == 3:
        steps, batch, features = x.shape
    elif x.dim() == 2:
        steps, (batch, features) = 1, x.shape
    else:
        return None
    rows = w_ih.shape[0]
    hidden = rows // facts.gates
    if (not 0 < steps * batch * rows <= _SMALL_OUTPUT or rows != hidden * facts.gates
            or w_ih.shape[1] != features
            or w_hh.shape != ((rows, hidden) if facts.dense else (rows,))):
        return None
    for h in states:
        if h.shape != (batch, hidden):
            return None
    return steps, batch, features, hidden


def _forward_small(facts, x, states, w_ih, w_hh, b_ih, b_hh, w_hr, nonlinearity, reverse
                   ) -> Optional[Tuple[Tensor, Tuple[Tensor, ...]]]:
    """(y, saved) of a call that _small_sizes accepts with raw tensors, else None."""
    sizes = _small_sizes(facts, x, states, w_ih, w_hh, w_hr)
    if sizes is None or not _raw(x.dtype, x, *states, w_ih, w_hh, b_ih, b_hh):
        return None
    for b in (b_ih, b_hh):
        if b is not None and b.shape != (w_ih.shape[0],):
            return None
    steps, batch, features, hidden = sizes
    empty, dtype = torch.empty, x.dtype
    if x.dim() == 3:
        y = empty(steps, batch, hidden, dtype=dtype)
        saved = tuple(empty(steps, batch, width * hidden, dtype=dtype)
                      for width in facts.saved[False])
    else:  # one step, (B, I)
        y = empty(batch, hidden, dtype=dtype)
        saved = tuple(empty(batch, width * hidden, dtype=dtype) for width in facts.saved[False])
    _core.layer_forward_pointers(
        facts.spec.name, x.dtype is torch.float64, steps, batch, features, hidden, x.data_ptr(),
        states[0].data_ptr(), _ptr(states[1]) if len(states) > 1 else 0, w_ih.data_ptr(),
        w_hh.data_ptr(), _ptr(b_ih), _ptr(b_hh), y.data_ptr(),
        tuple(s.data_ptr() for s in saved) if saved else (),
        nonlinearity, reverse)
    return y, saved


def _backward_small(facts, x, states, w_ih, w_hh, w_hr, y, saved, grad_y, grad_finals,
                    nonlinearity, reverse, output_mask, grad_norms, weight_norms=False):
    """_backward for a call that _small_sizes accepts (the incoming gradients made
    contiguous), else None."""
    sizes = _small_sizes(facts, x, states, w_ih, w_hh, w_hr)
    if sizes is None or grad_y.shape != y.shape:
        return None
    steps, batch, features, hidden = sizes
    rows = w_ih.shape[0]
    # weight gradients of up to 4 MiB (float32) from torch's allocator (glibc's heap reuses
    # them once its dynamic mmap threshold has risen to their size), larger ones from the
    # core's block cache
    if y.shape != (*x.shape[:-1], hidden) or rows * max(hidden, features) > 64 * _SMALL_OUTPUT:
        return None
    two = len(states) > 1
    grad_hn = grad_finals[0]
    grad_cn = grad_finals[1] if two else None
    for g in (grad_hn, grad_cn):
        if g is not None and g.shape != (batch, hidden):
            return None
    grad_y = grad_y.contiguous()
    grad_hn = None if grad_hn is None else grad_hn.contiguous()
    grad_cn = None if grad_cn is None else grad_cn.contiguous()
    dtype = x.dtype
    if not (_raw(dtype, x, *states, w_ih, w_hh, y, grad_y, grad_hn, grad_cn)
            and (not saved or _raw(dtype, *saved))):
        return None
    # straight-line code: this path is timed in microseconds
    empty = torch.empty
    # sizes unpacked: torch.empty parses them faster than a tuple
    gx = empty(*x.shape, dtype=dtype) if output_mask[0] else None
    gh0 = empty(batch, hidden, dtype=dtype) if output_mask[1] else None
    gc0 = empty(batch, hidden, dtype=dtype) if two and output_mask[2] else None
    gw_ih = empty(rows, features, dtype=dtype) if output_mask[3] else None
    gw_hh = (empty(rows, hidden, dtype=dtype) if facts.dense else empty(rows, dtype=dtype)) \
        if output_mask[4] else None
    gb_ih = empty(rows, dtype=dtype) if output_mask[5] else None
    gb_hh = empty(rows, dtype=dtype) if output_mask[6] else None
    norm_h = empty(steps * batch, dtype=torch.float64) if grad_norms else None
    norm_c = empty(steps * batch, dtype=torch.float64) if grad_norms and two else None
    norm_w = empty(steps, dtype=torch.float64) if weight_norms else None
    _core.layer_backward_pointers(
        facts.spec.name, dtype is torch.float64, steps, batch, features, hidden, x.data_ptr(),
        states[0].data_ptr(), _ptr(states[1]) if two else 0, w_ih.data_ptr(), w_hh.data_ptr(),
        y.data_ptr(), tuple(s.data_ptr() for s in saved) if saved else (), grad_y.data_ptr(),
        _ptr(grad_hn), _ptr(grad_cn), _ptr(gx), _ptr(gh0), _ptr(gc0), _ptr(gw_ih), _ptr(gw_hh),
        _ptr(gb_ih), _ptr(gb_hh), _ptr(norm_h), _ptr(norm_c), _ptr(norm_w), nonlinearity,
        reverse)
    return (gx, gh0, gc0, gw_ih, gw_hh, gb_ih, gb_hh, None), (norm_h, norm_c, norm_w)


def _on_gpu(x: Tensor) -> bool:
    """Whether a call goes to the CUDA loops of rnnkern.gpu (which check its arguments): x is
    not a CPU tensor. (tests/cuda/test_cuda_on_cpu.py sends CPU tensors there too.)"""
    return x.device.type != "cpu"


class _Facts(NamedTuple):
    """What the kernels' wrappers read of a cell at every call, looked up once."""

    spec: cells.Cell
    gates: int
    dense: bool  # W_hh a matrix (else a vector)
    saved: Tuple[Tuple[int, ...], Tuple[int, ...]]  # [projection]: widths (units of H) saved
    states_at: Tuple[Tuple[int, ...], Tuple[int, ...]]  # [projection]: c_t etc. in saved


_FACTS: Dict[str, _Facts] = {}


def _facts(cell: str) -> _Facts:
    facts = _FACTS.get(cell)
    if facts is None:
        spec = cells.get(cell)  # a ValueError naming the cells for an unknown one
        saved, states_at = [], []
        for projection in (False, True):
            kept = [(name, width) for name, width, projection_only in
                    _core.cell_info(cell)["saved"] if projection or not projection_only]
            names = [name for name, _ in kept]
            saved.append(tuple(width for _, width in kept))
            states_at.append(tuple(names.index(state) for state in spec.states[1:]))
        facts = _FACTS[cell] = _Facts(spec, spec.gate_count, spec.recurrent == "dense",
                                      tuple(saved), tuple(states_at))
    return facts


def _finals(facts: _Facts, y: Tensor, saved, batch: int, batch_sizes, reverse: bool,
            own: bool, projection: bool) -> Tuple[Tensor, ...]:
    """Each sequence's last states: h_n from the rows of y (a view unless ``own``), then the
    other states (the LSTM's c_n) from the saved arrays that hold them."""
    h_n = _final_state(y, batch, batch_sizes, reverse, own)
    at = facts.states_at[projection]
    if not at:
        return (h_n,)
    return (h_n, *(_final_state(saved[i], batch, batch_sizes, reverse) for i in at))


def _forward(cell, x, states, w_ih, w_hh, b_ih, b_hh, w_hr, nonlinearity, batch_sizes,
             reverse, own=True):
    """(y, final states, saved): every h_t, each sequence's last states (views of the rows
    of y unless ``own``) and what the cell's backward reads."""
    facts = _facts(cell)
    batch = states[0].shape[0]
    if _on_gpu(x) and "cuda" in facts.spec.backends:
        y = gpu.forward(x, states[0], w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes,
                        reverse)
        return y, (_final_state(y, batch, batch_sizes, reverse, own),), ()
    small = None if batch_sizes is not None else _forward_small(
        facts, x, states, w_ih, w_hh, b_ih, b_hh, w_hr, nonlinearity, reverse)
    if small is not None:
        y, saved = small
        return y, _finals(facts, y, saved, batch, None, reverse, own, False), saved
    c0 = states[1] if len(states) > 1 else None
    y, saved = _core.layer_forward(
        cell, _numpy("input", x), _numpy("hx", states[0]), _numpy("cx", c0),
        _numpy("w_ih", w_ih), _numpy("w_hh", w_hh), _numpy("b_ih", b_ih), _numpy("b_hh", b_hh),
        _numpy("w_hr", w_hr), nonlinearity, _batch_sizes_numpy(batch_sizes), reverse,
        x_name="input", h0_name="hx", c0_name="cx")
    y = torch.from_numpy(y)
    saved = tuple(torch.from_numpy(a) for a in saved)
    finals = _finals(facts, y, saved, batch, batch_sizes, reverse, own, w_hr is not None)
    return y, finals, saved


def _backward(cell, x, states, w_ih, w_hh, w_hr, y, saved, grad_y, grad_finals, nonlinearity,
              batch_sizes, reverse, output_mask, grad_norms=False, weight_norms=False):
    """Gradients (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), None where output_mask (the same
    eight) is False or the cell has no such input (every path honours the mask), and the norms
    (norm_h, norm_c, norm_w): the (N,) float64 norms of ∂L/∂h_t and (the LSTM) ∂L/∂c_t unless
    grad_norms is False, and the (T,) norms of each step's term δ_tᵀ h_{t-1} of ∂L/∂W_hh, in
    time order, when weight_norms (None where not computed)."""
    facts = _facts(cell)
    if _on_gpu(x) and "cuda" in facts.spec.backends:
        if weight_norms:
            raise RuntimeError("recording each step's term of ∂L/∂W_hh runs on the CPU "
                               "kernels only, not on a GPU")
        (gx, gh0, gw_ih, gw_hh, gb), norms = gpu.backward(
            x, states[0], w_ih, w_hh, y, grad_y, grad_finals[0], nonlinearity, batch_sizes,
            reverse, [output_mask[i] for i in (0, 1, 3, 4)] + [output_mask[5] or output_mask[6]],
            grad_norms)
        gb_ih = gb if output_mask[5] else None
        gb_hh = (gb.clone() if output_mask[5] else gb) if output_mask[6] else None
        return (gx, gh0, None, gw_ih, gw_hh, gb_ih, gb_hh, None), (norms, None, None)
    if batch_sizes is None and grad_y is not None:
        small = _backward_small(facts, x, states, w_ih, w_hh, w_hr, y, saved, grad_y,
                                grad_finals, nonlinearity, reverse, output_mask, grad_norms,
                                weight_norms)
        if small is not None:
            return small
    c0 = states[1] if len(states) > 1 else None
    grad_cn = grad_finals[1] if len(grad_finals) > 1 else None
    *grads, norm_h, norm_c, norm_w = _core.layer_backward(
        cell, _numpy("input", x), _numpy("hx", states[0]), _numpy("cx", c0),
        _numpy("w_ih", w_ih), _numpy("w_hh", w_hh), _numpy("w_hr", w_hr), _numpy("y", y),
        tuple(_numpy("saved", s) for s in saved), _numpy("grad_y", grad_y),
        _numpy("grad_hn", grad_finals[0]), _numpy("grad_cn", grad_cn), nonlinearity,
        _batch_sizes_numpy(batch_sizes), reverse, need_x=output_mask[0],
        need_h0=output_mask[1], need_c0=output_mask[2], need_w_ih=output_mask[3],
        need_w_hh=output_mask[4], need_bias=output_mask[5] or output_mask[6],
        need_w_hr=output_mask[7], grad_norms=grad_norms, weight_norms=weight_norms,
        x_name="input", h0_name="hx", c0_name="cx")
    grads = [torch.from_numpy(g) if g is not None and want else None
             for g, want in zip(grads, output_mask)]
    norms = tuple(None if n is None else torch.from_numpy(n) for n in (norm_h, norm_c, norm_w))
    return tuple(grads), norms


# ------------------------------------------------------------------------------ the custom ops
# What torch.compile, opcheck and the dispatcher see. Absent outputs (c_n of a cell with
# one state, an unwanted gradient) are empty tensors at the op boundary.

def _none_if_empty(t):
    return None if t is None or t.numel() == 0 else t


def _saved_shapes(cell: str, lead, hidden: int, projection: bool) -> List[Tuple[int, ...]]:
    return [(*lead, width * hidden) for width in _facts(cell).saved[projection]]


@torch.library.custom_op("rnnkern::layer_forward", mutates_args=())
def layer_forward(cell: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor,
                  w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                  w_hr: Optional[Tensor], nonlinearity: Optional[str],
                  batch_sizes: Optional[Tensor],
                  reverse: bool) -> Tuple[Tensor, Tensor, Tensor, List[Tensor]]:
    """(y, h_n, c_n, saved) of one layer-direction of ``cell``: every h_t, each sequence's
    last states (c_n empty for a cell without c), and what its backward reads."""
    states = (h0,) if c0 is None else (h0, c0)
    y, finals, saved = _forward(cell, x, states, w_ih, w_hh, b_ih, b_hh, w_hr, nonlinearity,
                                batch_sizes, reverse)
    return y, finals[0], finals[1] if len(finals) > 1 else x.new_empty(0), list(saved)


@layer_forward.register_fake
def _(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, nonlinearity, batch_sizes, reverse):
    spec = cells.get(cell)
    hidden = w_ih.shape[0] // spec.gate_count
    lead = x.shape[:-1]
    y = x.new_empty((*lead, h0.shape[-1]))
    c_n = x.new_empty(0) if c0 is None else c0.new_empty(c0.shape)
    saved = [x.new_empty(s) for s in _saved_shapes(cell, lead, hidden, w_hr is not None)]
    return y, h0.new_empty(h0.shape), c_n, saved


@torch.library.custom_op("rnnkern::layer_backward", mutates_args=())
def layer_backward(cell: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor,
                   w_hh: Tensor, w_hr: Optional[Tensor], y: Tensor, saved: List[Tensor],
                   grad_y: Tensor, grad_hn: Tensor, grad_cn: Optional[Tensor],
                   nonlinearity: Optional[str], batch_sizes: Optional[Tensor], reverse: bool,
                   output_mask: List[bool]) -> List[Tensor]:
    """Gradients (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) of one layer-direction of ``cell``
    given ∂L/∂y and ∂L/∂ of its last states; ``output_mask`` (the same eight) says which to
    compute, the others come back empty."""
    states = (h0,) if c0 is None else (h0, c0)
    grad_finals = (grad_hn,) if c0 is None else (grad_hn, grad_cn)
    grads, _ = _backward(cell, x, states, w_ih, w_hh, w_hr, y, tuple(saved), grad_y,
                         grad_finals, nonlinearity, batch_sizes, reverse, output_mask)
    return [x.new_empty(0) if g is None else g for g in grads]


@layer_backward.register_fake
def _(cell, x, h0, c0, w_ih, w_hh, w_hr, y, saved, grad_y, grad_hn, grad_cn, nonlinearity,
      batch_sizes, reverse, output_mask):
    rows = (w_ih.shape[0],)
    shapes = (x.shape, h0.shape, None if c0 is None else c0.shape, w_ih.shape, w_hh.shape,
              rows, rows, None if w_hr is None else w_hr.shape)
    return [x.new_empty(shape if want and shape is not None else (0,))
            for shape, want in zip(shapes, output_mask)]


def _output_mask(needs) -> List[bool]:
    """layer_backward's output_mask from needs_input_grad of (cell, x, h0, c0, w_ih, w_hh,
    b_ih, b_hh, w_hr, …)."""
    return list(needs[1:9])


def _input_grads(needs, grads):
    """Gradients for layer_forward's twelve inputs."""
    return (None, *(g if need else None for g, need in zip(grads, needs[1:9])), None, None,
            None)


def _setup_context(ctx, inputs, output):
    cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, nonlinearity, batch_sizes, reverse = inputs
    y, _, _, saved = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, y, batch_sizes, *saved)
    ctx.cell, ctx.nonlinearity, ctx.reverse = cell, nonlinearity, reverse


def _op_backward(ctx, grad_y, grad_hn, grad_cn, _grad_saved):
    x, h0, c0, w_ih, w_hh, w_hr, y, batch_sizes, *saved = ctx.saved_tensors
    grads = layer_backward(ctx.cell, x, h0, c0, w_ih, w_hh, w_hr, y, saved, grad_y, grad_hn,
                           None if c0 is None else grad_cn, ctx.nonlinearity, batch_sizes,
                           ctx.reverse, _output_mask(ctx.needs_input_grad))
    return _input_grads(ctx.needs_input_grad, [_none_if_empty(g) for g in grads])


layer_forward.register_autograd(_op_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------ eager mode

def _reference(cell, x, states, w_ih, w_hh, b_ih, b_hh, w_hr, nonlinearity, batch_sizes,
               reverse):
    """(y, final states) on the cell's reference loop."""
    return cells.get(cell).reference_layer(x, states, [w_ih, w_hh, b_ih, b_hh, w_hr],
                                           nonlinearity, batch_sizes, reverse)


def _differentiable_grads(outputs: Callable[[], Tuple[Tensor, ...]], inputs, needs,
                          grad_outputs) -> List[Optional[Tensor]]:
    """A backward with create_graph=True, on the reference loop: the gradients of outputs()
    (the loop's outputs, in the order of grad_outputs; None grads skipped) with respect to each
    input that needs one, themselves differentiable (zeros for an unused input, None where
    not needed)."""
    wanted = [i for i, need in enumerate(needs[:len(inputs)]) if need]
    with torch.enable_grad():
        pairs = [(o, g) for o, g in zip(outputs(), grad_outputs) if g is not None]
        found = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted],
                                    [g for _, g in pairs], create_graph=True, allow_unused=True)
    grads: List[Optional[Tensor]] = [None] * len(inputs)
    for i, g in zip(wanted, found):
        grads[i] = torch.zeros_like(inputs[i]) if g is None else g
    return grads


class _EagerLayer(torch.autograd.Function):
    """layer_forward without the custom-op dispatch, for eager mode, where the op machinery
    would cost more than the kernel at small sizes. It can also hand the per-row gradient
    norms of each backward to a callback (gradient-flow recording). A backward that must
    itself be differentiable runs on the reference loop."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, options):
        # options: (cell, nonlinearity, reverse, on_grad_norms, weight_norms), one argument
        cell, nonlinearity, reverse, on_grad_norms, weight_norms = options
        states = (h0,) if c0 is None else (h0, c0)
        y, finals, saved = _forward(cell, x, states, w_ih, w_hh, b_ih, b_hh, w_hr,
                                    nonlinearity, batch_sizes, reverse)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, batch_sizes, *saved)
        ctx.cell, ctx.nonlinearity, ctx.reverse = cell, nonlinearity, reverse
        ctx.on_grad_norms, ctx.weight_norms = on_grad_norms, weight_norms
        return y, finals[0], finals[1] if len(finals) > 1 else None

    @staticmethod
    def backward(ctx, grad_y, grad_hn, grad_cn):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, batch_sizes, *saved = ctx.saved_tensors
        states = (h0,) if c0 is None else (h0, c0)
        grad_finals = (grad_hn,) if c0 is None else (grad_hn, grad_cn)
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: the reference, differentiable again
            def outputs():
                y_ref, finals = _reference(ctx.cell, x, states, w_ih, w_hh, b_ih, b_hh, w_hr,
                                           ctx.nonlinearity, batch_sizes, ctx.reverse)
                return (y_ref, *finals)

            grads = _differentiable_grads(outputs, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr),
                                          needs, (grad_y, *grad_finals))
            return (*grads, None, None)
        record = ctx.on_grad_norms is not None
        grads, norms = _backward(ctx.cell, x, states, w_ih, w_hh, w_hr, y, tuple(saved),
                                 grad_y, grad_finals, ctx.nonlinearity, batch_sizes,
                                 ctx.reverse, list(needs[:8]), record, ctx.weight_norms)
        if record:
            ctx.on_grad_norms(*(norms if ctx.weight_norms else norms[:2]))
        return (*grads, None, None)  # _backward honours the mask


def _on_reference(x: Tensor) -> bool:
    """Whether this call runs on the reference loop: forward-mode AD, a torch.func
    transform, or the meta device, none of which the kernels can serve."""
    return (torch.autograd.forward_ad._current_level >= 0
            or torch._C._are_functorch_transforms_active() or x.device.type == "meta")


def _traced(x: Tensor) -> bool:
    """Whether a tracer or a dispatch mode sees this call (torch.jit.trace, make_fx,
    FakeTensorMode, a tensor subclass): the kernels' eager path works on raw memory that
    these cannot see, so the custom op (with its fake kernel) runs instead."""
    return (torch.jit.is_tracing() or torch._C._len_torch_dispatch_stack() > 0
            or (type(x) is not Tensor and type(x) is not torch.nn.Parameter))


def _refuse_recording(on_grad_norms) -> None:
    if on_grad_norms is not None:
        raise RuntimeError("gradient-flow recording runs in eager mode only, not under "
                           "torch.compile, a tracer or a dispatch mode")


def _tracked(*tensors) -> bool:
    """Whether autograd records an operation on these tensors."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:  # a loop, not any(...): this path is timed in microseconds
        if t is not None and t.requires_grad:
            return True
    return False


def _layer(cell, x, states, w_ih, w_hh, b_ih, b_hh, w_hr, nonlinearity, batch_sizes, reverse,
           on_grad_norms=None, own=True, weight_norms=False
           ) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """(y, final states) of one layer-direction: the custom op under torch.compile or a
    tracer, the reference loop where the kernels cannot serve, else eager. Without autograd,
    h_n is a view of y unless ``own``."""
    h0 = states[0]
    c0 = states[1] if len(states) > 1 else None
    if torch.compiler.is_compiling() or _traced(x):
        _refuse_recording(on_grad_norms)
        y, h_n, c_n, _ = layer_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                       nonlinearity, batch_sizes, reverse)
        return y, (h_n,) if c0 is None else (h_n, c_n)
    if _on_reference(x):
        return _reference(cell, x, states, w_ih, w_hh, b_ih, b_hh, w_hr, nonlinearity,
                          batch_sizes, reverse)
    if _tracked(x, *states, w_ih, w_hh, b_ih, b_hh, w_hr):
        y, h_n, c_n = _EagerLayer.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                        (cell, nonlinearity, reverse, on_grad_norms,
                                         weight_norms and on_grad_norms is not None))
        return y, (h_n,) if c0 is None else (h_n, c_n)
    y, finals, _ = _forward(cell, x, states, w_ih, w_hh, b_ih, b_hh, w_hr, nonlinearity,
                            batch_sizes, reverse, own)
    return y, finals


class _EagerStep(torch.autograd.Function):
    """One step of a cell (x (B, I), the states (B, H); no projection) for the one-step
    modules: the new states are the step's own outputs (no copies, no gradient of an unused
    y), forward one kernel call, backward one. A backward that must itself be differentiable
    runs on the reference loop."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, options):
        cell, nonlinearity = options
        facts = _facts(cell)
        states = (h0,) if c0 is None else (h0, c0)
        # x (B, I) is one step: y (B, H) and the saved arrays (B, ·) come as one step's rows
        small = _forward_small(facts, x, states, w_ih, w_hh, b_ih, b_hh, None, nonlinearity,
                               False)
        if small is None:  # larger sizes or other layouts: the general path, one step
            y, _, saved = _forward(cell, x.unsqueeze(0), states, w_ih, w_hh, b_ih, b_hh, None,
                                   nonlinearity, None, False)
            y, saved = y[0], tuple(a[0] for a in saved)
        else:
            y, saved = small
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, *saved)
        ctx.cell, ctx.nonlinearity = cell, nonlinearity
        ctx.set_materialize_grads(False)
        if c0 is None:
            return y, None
        return y, saved[facts.states_at[False][0]]

    @staticmethod
    def backward(ctx, grad_h, grad_c):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, *saved = ctx.saved_tensors
        states = (h0,) if c0 is None else (h0, c0)
        needs = ctx.needs_input_grad
        if grad_h is None and grad_c is None:
            return (None,) * 8
        if torch.is_grad_enabled():  # create_graph=True: the reference, differentiable again
            def outputs():
                return _reference(ctx.cell, x.unsqueeze(0), states, w_ih, w_hh, b_ih, b_hh, None,
                                  ctx.nonlinearity, None, False)[1]

            grads = _differentiable_grads(outputs, (x, h0, c0, w_ih, w_hh, b_ih, b_hh), needs,
                                          (grad_h, grad_c))
            return (*grads, None)
        grad_y = torch.zeros_like(y) if grad_h is None else grad_h
        grad_finals = (None,) if c0 is None else (None, grad_c)
        mask = [needs[0], needs[1], needs[2], needs[3], needs[4], needs[5], needs[6], False]
        small = _backward_small(_facts(ctx.cell), x, states, w_ih, w_hh, None, y,
                                tuple(saved), grad_y, grad_finals, ctx.nonlinearity, False,
                                mask, False)
        if small is None:  # the general path, one step
            small = _backward(ctx.cell, x.unsqueeze(0), states, w_ih, w_hh, None, y.unsqueeze(0),
                              tuple(a.unsqueeze(0) for a in saved), grad_y.unsqueeze(0),
                              grad_finals, ctx.nonlinearity, None, False, mask)
            gx = small[0][0]
            return (None if gx is None else gx[0], *small[0][1:7], None)
        return (*small[0][:7], None)


# Function.apply without its Python wrapper (which binds default arguments, there are none, and
# unwraps dead torch.func wrappers, which a call made outside any transform does not get).
_STEP_APPLY = torch._C._FunctionBase.__dict__["apply"].__get__(None, _EagerStep)


def step(cell: str, x: Tensor, states: Tuple[Tensor, ...], w_ih: Tensor, w_hh: Tensor,
         b_ih: Optional[Tensor], b_hh: Optional[Tensor], nonlinearity: Optional[str]
         ) -> Tuple[Tensor, ...]:
    """One step of ``cell`` for the one-step modules: x (B, I), states (B, H) each, weights
    as the torch cell holds them; the new states as a tuple. In eager mode with autograd on
    CPU tensors, one _EagerStep, and without autograd one kernel call; else :func:`layer`'s
    path on one step."""
    eager = x.is_cpu and _plain_eager()
    if eager and _tracked(x, *states, w_ih, w_hh, b_ih, b_hh):
        h, c = _STEP_APPLY(x, states[0], states[1] if len(states) > 1 else None,
                           w_ih, w_hh, b_ih, b_hh, (cell, nonlinearity))
        return (h,) if c is None else (h, c)
    if eager:
        facts = _facts(cell)
        small = _forward_small(facts, x, states, w_ih, w_hh, b_ih, b_hh, None, nonlinearity,
                               False)
        if small is not None:
            y, saved = small
            return (y,) if len(states) == 1 else (y, saved[facts.states_at[False][0]])
    _, finals = _layer(cell, x.unsqueeze(0), states, w_ih, w_hh, b_ih, b_hh, None, nonlinearity,
                       None, False)
    return finals


def _plain_eager() -> bool:
    """Whether a call now runs eagerly on raw memory: no compiler, tracer, dispatch mode,
    torch.func transform or forward-mode AD level (the raw C checks, for the inference path)."""
    return not (torch.compiler.is_compiling() or torch._C._is_tracing()
                or torch._C._len_torch_dispatch_stack() or _C_FUNCTORCH()
                or torch.autograd.forward_ad._current_level >= 0)


_C_FUNCTORCH = torch._C._are_functorch_transforms_active
_PARAMETER = torch.nn.Parameter


def stack_inference(cell: str, input: Tensor, states: Tuple[Tensor, ...], weights: List[Tensor],
                    num_layers: int, bidirectional: bool, nonlinearity: Optional[str]
                    ) -> Optional[Tuple[Tensor, Tuple[Tensor, ...]]]:
    """:func:`layers` for a call that needs no gradient, in one call of the kernels for all
    layers and directions: input (T, B, I) time-major (any strides), states each
    (layers · D, B, H), weights the torch class's ``_flat_weights`` without projection, of
    input's dtype. Returns (output (T, B, D·H), final states), or None where this path does
    not apply (a gradient, a tracer, a transform; other dtypes, devices or shapes), for the
    caller to take the general one."""
    if type(input) is not Tensor or not _plain_eager():
        return None
    return _stack_inference_eager(cell, input, states, weights, num_layers, bidirectional,
                                  nonlinearity)


def _stack_inference_eager(cell: str, input: Tensor, states: Tuple[Tensor, ...],
                           weights: List[Tensor], num_layers: int, bidirectional: bool,
                           nonlinearity: Optional[str]
                           ) -> Optional[Tuple[Tensor, Tuple[Tensor, ...]]]:
    """:func:`stack_inference` for a caller that has found ``_plain_eager()`` true and input a
    Tensor (the modules, whose every call pays each check)."""
    # straight-line code with each check made once: this path is timed in microseconds
    dtype = input.dtype
    if (dtype is not torch.float32 and dtype is not torch.float64) or input.dim() != 3 \
            or not input.is_cpu or input.is_neg():
        return None
    facts = _FACTS.get(cell) or _facts(cell)
    grad = torch.is_grad_enabled()
    if grad and input.requires_grad:
        return None
    directions = 2 if bidirectional else 1
    count = num_layers * directions
    per_direction = len(weights) // count
    if per_direction not in (2, 4) or per_direction * count != len(weights):
        return None
    steps, batch, features = input.shape
    rows = weights[0].shape[0]
    hidden = rows // facts.gates
    if steps * batch == 0 or rows != hidden * facts.gates:
        return None
    state_shape = (count, batch, hidden)
    for t in states:
        if (type(t) is not Tensor or t.shape != state_shape or t.dtype is not dtype
                or not t.is_cpu or not t.is_contiguous() or t.is_neg()
                or grad and t.requires_grad):
            return None
    shapes = ((rows, features), (rows, hidden) if facts.dense else (rows,), (rows,), (rows,))
    pointers = []
    for index in range(count):
        if index == directions:
            shapes = ((rows, directions * hidden),) + shapes[1:]
        for j in range(per_direction):
            t = weights[index * per_direction + j]
            if ((type(t) is not _PARAMETER and type(t) is not Tensor) or t.shape != shapes[j]
                    or t.dtype is not dtype or not t.is_cpu or not t.is_contiguous()
                    or t.is_neg() or grad and t.requires_grad):
                return None
            pointers.append(t.data_ptr())
        if per_direction == 2:  # no biases
            pointers += (0, 0)
    x = input if input.is_contiguous() else input.contiguous()
    empty = torch.empty
    # sizes unpacked: torch.empty parses them faster than a tuple
    y = empty(steps, batch, directions * hidden, dtype=dtype)
    h_n = empty(count, batch, hidden, dtype=dtype)
    c_n = empty(count, batch, hidden, dtype=dtype) if len(states) > 1 else None
    _core.stack_forward_pointers(
        cell, dtype is torch.float64, steps, batch, features, hidden, num_layers, directions,
        x.data_ptr(), states[0].data_ptr(), states[1].data_ptr() if c_n is not None else 0,
        pointers, y.data_ptr(), h_n.data_ptr(), c_n.data_ptr() if c_n is not None else 0,
        nonlinearity)
    return y, ((h_n,) if c_n is None else (h_n, c_n))


# ------------------------------------------------------------------------------ the public API

def _check_tensors(**named):
    for name, t in named.items():
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_layout(input: Tensor, batch_sizes: Optional[Tensor], reverse) -> None:
    """input's dimensions for its layout, and reverse a real bool."""
    dims = 3 if batch_sizes is None else 2
    if input.dim() != dims:
        layout = "(T, B, I)" if batch_sizes is None else "packed (N, I) with batch_sizes"
        raise ValueError(f"input must have {dims} dimensions, {layout}; got shape "
                         f"{tuple(input.shape)}")
    _flag("reverse", reverse)


_WORDS = {2: "two", 3: "three"}


def _initial_states(spec: cells.Cell, input, hx, w_ih, w_hh, w_hr, batch_sizes):
    """hx as a tuple of the cell's states, zeros for None; a TypeError for a wrong kind."""
    count = len(spec.states)
    if hx is None:
        batch = input.shape[1] if batch_sizes is None else int(batch_sizes[0])
        hidden = w_ih.shape[0] // spec.gate_count
        width = w_hr.shape[0] if w_hr is not None else hidden
        return (input.new_zeros(batch, width),) + tuple(
            input.new_zeros(batch, hidden) for _ in spec.states[1:])
    if count == 1:
        _check_tensors(hx=hx)
        return (hx,)
    if (not isinstance(hx, (tuple, list)) or len(hx) != count
            or not all(isinstance(h, Tensor) for h in hx)):
        got = (f"({', '.join(type(h).__name__ for h in hx)})" if isinstance(hx, (tuple, list))
               else type(hx).__name__)
        names = ", ".join(f"{s}0" for s in spec.states)
        raise TypeError(f"hx must be None or a tuple ({names}) of {_WORDS.get(count, count)} "
                        f"torch.Tensors, got {got}")
    return tuple(hx)


def _nonlinearity(spec: cells.Cell, nonlinearity: Optional[str]) -> Optional[str]:
    """The core's nonlinearity argument: "tanh" by default for a cell that takes one (the core
    checks the name), None for the others."""
    if spec.nonlinearity:
        return "tanh" if nonlinearity is None else nonlinearity
    if nonlinearity is not None:
        raise ValueError(f"nonlinearity must be None for cell {spec.name!r}, which takes none, "
                         f"got {nonlinearity!r}")
    return None


# A cell's states: one tensor, or a tuple of them for a cell with several (the LSTM's (h, c)).
States = Union[Tensor, Tuple[Tensor, ...]]


def layer(cell: str, input: Tensor, hx: Optional[States], w_ih: Tensor, w_hh: Tensor,
          b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
          w_hr: Optional[Tensor] = None, nonlinearity: Optional[str] = None, *,
          batch_sizes: Optional[Tensor] = None, reverse: bool = False,
          on_grad_norms: Optional[Callable[..., None]] = None,
          weight_norms: bool = False) -> Tuple[Tensor, States]:
    """One layer-direction of ``cell`` (a name of :mod:`rnnkern.cells`), differentiable in
    every tensor argument.

    Args:
        input: (T, B, I) time-major; with ``batch_sizes``, the packed (N, I) rows
            (``PackedSequence.data``).
        hx: the initial state (B, H), for a cell with two states the tuple (h0, c0), or None
            for zeros.
        w_ih, w_hh, b_ih, b_hh: the layer's weights as its torch class holds them (biases may
            be None); w_hr: the projection of a cell that has one (the LSTM's proj_size).
        nonlinearity: "tanh" (None: the default) or "relu", for the cells that take one;
            None for the others.
        batch_sizes: optional int64 CPU tensor (T,), non-increasing (``PackedSequence.batch_sizes``).
        reverse: run from the last step to the first.
        on_grad_norms: eager mode only; called at each backward with the (N,) float64 norms
            ‖∂L/∂h_t‖₂ of every row, in the layout of output, and ‖∂L/∂c_t‖₂ (None for a cell
            with one state) (see rnnkern.diagnostics).
        weight_norms: with on_grad_norms, pass it a third argument too: the (T,) float64
            norms ‖δ_tᵀ h_{t-1}‖_F of each step's term of ∂L/∂W_hh (the gradient of step t's
            own copy of W_hh, were the steps untied), in time order. CPU only.

    Returns:
        (output, h_n), or for a cell with two states (output, (h_n, c_n)): output (T, B, H)
        or packed (N, H); the final states (B, H) hold each sequence's state at its own last
        step.
    """
    spec = cells.get(cell)
    _check_tensors(input=input, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr,
                   batch_sizes=batch_sizes)
    _check_layout(input, batch_sizes, reverse)
    if w_hr is not None and not spec.projection:
        raise ValueError(f"w_hr must be None for cell {spec.name!r}, which has no projection, "
                         f"got a tensor of shape {tuple(w_hr.shape)}")
    nonlinearity = _nonlinearity(spec, nonlinearity)
    states = _initial_states(spec, input, hx, w_ih, w_hh, w_hr, batch_sizes)
    y, finals = _layer(cell, input, states, w_ih, w_hh, b_ih, b_hh, w_hr, nonlinearity,
                       batch_sizes, reverse, on_grad_norms, weight_norms=weight_norms)
    return y, finals[0] if len(finals) == 1 else tuple(finals)


def layers(cell: str, input: Tensor, hx: States, weights: List[Tensor], num_layers: int,
           bidirectional: bool, nonlinearity: Optional[str] = None, dropout: float = 0.0,
           training: bool = False, batch_first: bool = False,
           batch_sizes: Optional[Tensor] = None,
           on_grad_norms: Optional[Callable[..., None]] = None,
           weight_norms: bool = False) -> Tuple[Tensor, States]:
    """A stack of layers of ``cell``, as ``torch._VF.rnn_tanh``, ``lstm`` and ``gru`` compute
    it: layer k+1 reads layer k's output, its directions concatenated, with dropout between
    layers in training only (drawn from torch's generator in the same order as torch).

    Args:
        input: (T, B, I), (B, T, I) with ``batch_first``, or packed (N, I) with ``batch_sizes``.
        hx: (num_layers · D, B, H), D = 2 if bidirectional else 1; for a cell with two states
            the tuple (h0, c0) of such tensors (h0 with P columns with a projection).
        weights: the torch class's ``_flat_weights`` order: per layer, per direction, w_ih,
            w_hh and, if present, b_ih, b_hh and w_hr.
        on_grad_norms: called as on_grad_norms(layer · D + direction, norm_h, norm_c) at
            backward; see :func:`layer`. A layer-direction whose backward will not run
            (autograd does not record it: frozen weights and an input that needs no gradient)
            is reported at forward time as on_grad_norms(index, None, None).
        weight_norms: with on_grad_norms, call it as on_grad_norms(index, norm_h, norm_c,
            norm_w), norm_w as :func:`layer` gives it (None at forward time as above).

    Returns:
        (output, h_n) or (output, (h_n, c_n)): output like input with H · D features; the
        final states (num_layers · D, B, H).
    """
    spec = _facts(cell).spec
    nonlinearity = _nonlinearity(spec, nonlinearity)
    one = len(spec.states) == 1
    hx = (hx,) if one else tuple(hx)
    directions = 2 if bidirectional else 1
    per_direction = len(weights) // (num_layers * directions)
    has_bias = per_direction >= 4
    has_proj = spec.projection and per_direction in (3, 5)
    transpose = batch_first and batch_sizes is None
    layer_input = input.transpose(0, 1) if transpose else input
    if num_layers == 1 and directions == 1 and on_grad_norms is None:  # the shortest way
        w = weights
        output, finals = _layer(cell, layer_input, (hx[0][0],) if one else
                                tuple(h[0] for h in hx), w[0], w[1],
                                w[2] if has_bias else None, w[3] if has_bias else None,
                                w[-1] if has_proj else None, nonlinearity, batch_sizes, False)
        output = output.transpose(0, 1) if transpose else output
        if one:
            return output, finals[0].unsqueeze(0)
        return output, tuple(f.unsqueeze(0) for f in finals)
    finals = []
    for layer_index in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer_index * directions + direction
            w = weights[index * per_direction:(index + 1) * per_direction]
            states = tuple(h[index] for h in hx)
            record = None
            if on_grad_norms is not None:
                if _tracked(layer_input, *states, *w):
                    record = functools.partial(on_grad_norms, index)
                else:
                    on_grad_norms(index, None, None, *((None,) if weight_norms else ()))
            out, final = _layer(cell, layer_input, states, w[0], w[1],
                                w[2] if has_bias else None, w[3] if has_bias else None,
                                w[-1] if has_proj else None, nonlinearity, batch_sizes,
                                direction == 1, record, own=False, weight_norms=weight_norms)
            outputs.append(out)
            finals.append(final)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, -1)
        if dropout > 0 and training and layer_index < num_layers - 1:
            layer_input = torch.nn.functional.dropout(layer_input, dropout, True)
    output = layer_input.transpose(0, 1) if transpose else layer_input
    stacked = tuple(torch.stack(column) for column in zip(*finals))
    return output, stacked[0] if len(stacked) == 1 else stacked


# The per-cell forms (today's signatures).

def _norms_h(on_grad_norms):
    """A callback for (norm_h, norm_c) that passes norm_h alone (the Elman forms)."""
    return None if on_grad_norms is None else (lambda norm_h, norm_c=None: on_grad_norms(norm_h))


def rnn(input: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
        b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
        nonlinearity: str = "tanh", *, batch_sizes: Optional[Tensor] = None,
        reverse: bool = False, on_grad_norms: Optional[Callable[[Tensor], None]] = None
        ) -> Tuple[Tensor, Tensor]:
    """One Elman RNN layer in one direction: :func:`layer` with cell "rnn"; w_ih (H, I),
    w_hh (H, H), b_ih, b_hh (H,) or None; on_grad_norms gets the (N,) norms ‖∂L/∂h_t‖₂.

    Returns:
        (output, h_n): output (T, B, H), or (N, H) packed; h_n (B, H), each sequence's state
        at its own last step. float32 and float64; all tensors of one dtype, on the CPU or
        on one CUDA device (batch_sizes always on the CPU).
    """
    return layer("rnn", input, hx, w_ih, w_hh, b_ih, b_hh, None, nonlinearity,
                 batch_sizes=batch_sizes, reverse=reverse, on_grad_norms=_norms_h(on_grad_norms))


def rnn_layers(input: Tensor, hx: Tensor, weights: List[Tensor], num_layers: int,
               bidirectional: bool, nonlinearity: Optional[str] = None, dropout: float = 0.0,
               training: bool = False, batch_first: bool = False,
               batch_sizes: Optional[Tensor] = None,
               on_grad_norms: Optional[Callable[[int, Tensor], None]] = None
               ) -> Tuple[Tensor, Tensor]:
    """A stack of Elman layers, as ``torch._VF.rnn_tanh`` / ``rnn_relu`` compute it:
    :func:`layers` with cell "rnn"; on_grad_norms(index, norms)."""
    record = None if on_grad_norms is None else (
        lambda index, norm_h, norm_c=None: on_grad_norms(index, norm_h))
    return layers("rnn", input, hx, weights, num_layers, bidirectional, nonlinearity, dropout,
                  training, batch_first, batch_sizes, record)


def lstm(input: Tensor, hx: Optional[Tuple[Tensor, Tensor]], w_ih: Tensor, w_hh: Tensor,
         b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
         w_hr: Optional[Tensor] = None, *, batch_sizes: Optional[Tensor] = None,
         reverse: bool = False,
         on_grad_norms: Optional[Callable[[Tensor, Tensor], None]] = None
         ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One LSTM layer in one direction (torch.nn.LSTM's math): :func:`layer` with cell
    "lstm"; hx = (h0, c0) (B, H) each or None for zeros, w_ih (4H, I), w_hh (4H, H), b_ih,
    b_hh (4H,); w_hr (P, H) for proj_size P (then h0, w_hh and the output have P columns).
    on_grad_norms gets (‖∂L/∂h_t‖₂, ‖∂L/∂c_t‖₂) per row. Returns (output, (h_n, c_n))."""
    return layer("lstm", input, hx, w_ih, w_hh, b_ih, b_hh, w_hr, None,
                 batch_sizes=batch_sizes, reverse=reverse, on_grad_norms=on_grad_norms)


def gru(input: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
        b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None, *,
        batch_sizes: Optional[Tensor] = None, reverse: bool = False,
        on_grad_norms: Optional[Callable[[Tensor, None], None]] = None
        ) -> Tuple[Tensor, Tensor]:
    """One GRU layer in one direction (torch.nn.GRU's math): :func:`layer` with cell "gru";
    w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,). on_grad_norms gets (‖∂L/∂h_t‖₂ per row,
    None). Returns (output, h_n)."""
    return layer("gru", input, hx, w_ih, w_hh, b_ih, b_hh, None, batch_sizes=batch_sizes,
                 reverse=reverse, on_grad_norms=on_grad_norms)


def lstm_layers(input: Tensor, hx: Tuple[Tensor, Tensor], weights: List[Tensor],
                num_layers: int, bidirectional: bool, dropout: float = 0.0,
                training: bool = False, batch_first: bool = False,
                batch_sizes: Optional[Tensor] = None,
                on_grad_norms: Optional[Callable[[int, Optional[Tensor], Optional[Tensor]],
                                                 None]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """A stack of LSTM layers, as ``torch._VF.lstm`` computes it: :func:`layers` with cell
    "lstm"; hx = (h0, c0), (num_layers · D, B, P) and (num_layers · D, B, H)."""
    return layers("lstm", input, hx, weights, num_layers, bidirectional, None, dropout,
                  training, batch_first, batch_sizes, on_grad_norms)


def gru_layers(input: Tensor, hx: Tensor, weights: List[Tensor], num_layers: int,
               bidirectional: bool, dropout: float = 0.0, training: bool = False,
               batch_first: bool = False, batch_sizes: Optional[Tensor] = None,
               on_grad_norms: Optional[Callable[[int, Optional[Tensor], None], None]] = None
               ) -> Tuple[Tensor, Tensor]:
    """A stack of GRU layers, as ``torch._VF.gru`` computes it: :func:`layers` with cell
    "gru"."""
    return layers("gru", input, hx, weights, num_layers, bidirectional, None, dropout,
                  training, batch_first, batch_sizes, on_grad_norms)
