"""torch-level API: one Elman RNN layer (:func:`rnn`) and a stack of them (:func:`rnn_layers`);
the same for the LSTM and GRU (:func:`lstm`, :func:`gru`, :func:`lstm_layers`, :func:`gru_layers`,
on the ops ``rnnkern::gated_forward`` / ``rnnkern::gated_backward``).

``rnnkern::rnn_forward`` and ``rnnkern::rnn_backward`` are ``torch.library.custom_op``s with
fake (meta) implementations and a registered autograd formula, so :func:`rnn` works under
``torch.library.opcheck`` and inside ``torch.compile(fullgraph=True)``. In eager mode the same
kernels run through a plain ``torch.autograd.Function``, which skips the op dispatch. CPU
tensors go to the C++ core (``rnnkern._core``), CUDA tensors to :mod:`rnnkern.gpu`.

What the kernels cannot do runs on the autograd loop of :mod:`rnnkern.reference` instead, with
the same results: second derivatives (``create_graph=True``), forward-mode AD, ``torch.func``
transforms, and tensors on the meta device.
"""

from __future__ import annotations

import functools
from typing import Callable, List, Optional, Tuple

import torch
import torch.autograd.forward_ad
from torch import Tensor

from . import _core, gpu, reference
from .numpy_api import _flag

__all__ = ["rnn", "rnn_layers", "rnn_forward", "rnn_backward", "lstm", "gru", "lstm_layers",
           "gru_layers", "gated_forward", "gated_backward"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


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
    """h_n: each sequence's state at its own last step; a view of y unless ``own``."""
    if batch_sizes is None:
        h = y[0] if reverse else y[-1]
        return h.clone() if own else h
    if reverse:
        return y[:batch].clone() if own else y[:batch]
    return y[_last_rows(batch_sizes)]


# Up to this many elements of y, _forward and _backward pass data_ptr()s instead of NumPy views
# (see _backward_small for the weight gradients' own limit).
_SMALL_OUTPUT = 1 << 14


def _small_sizes(x, h0, w_ih, w_hh, *others) -> Optional[Tuple[int, int, int, int]]:
    """(T, B, I, H) when a time-major call is small and all its tensors are C-contiguous CPU
    tensors of x's kernel dtype with consistent shapes (``others``: (H,), (B, H) or (T, B, H)
    tensors, or None), so that their data_ptr()s can go to the core; else None."""
    if x.dim() != 3:
        return None
    steps, batch, features = x.shape
    hidden = w_hh.shape[0]
    dtype = x.dtype
    if (not 0 < steps * batch * hidden <= _SMALL_OUTPUT or dtype not in _FLOAT_DTYPES
            or w_hh.shape != (hidden, hidden) or w_ih.shape != (hidden, features)
            or h0.shape != (batch, hidden)):
        return None
    others = [t for t in others if t is not None]
    for t in (x, h0, w_ih, w_hh, *others):
        if (t.dtype is not dtype or not t.is_cpu or not t.is_contiguous()
                or t.is_neg()):
            return None
    for t in others:
        if t.shape not in ((hidden,), (batch, hidden), (steps, batch, hidden)):
            return None
    return steps, batch, features, hidden


def _forward_small(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse) -> Optional[Tensor]:
    """y for a call that _small_sizes accepts, else None."""
    if b_ih is not None and b_ih.dim() != 1 or b_hh is not None and b_hh.dim() != 1:
        return None
    sizes = _small_sizes(x, h0, w_ih, w_hh, b_ih, b_hh)
    if sizes is None:
        return None
    steps, batch, features, hidden = sizes
    dtype = x.dtype
    y = torch.empty(steps, batch, hidden, dtype=dtype)
    _core.layer_forward_pointers("rnn", dtype is torch.float64, steps, batch, features, hidden,
                                 x.data_ptr(), h0.data_ptr(), 0, w_ih.data_ptr(),
                                 w_hh.data_ptr(), 0 if b_ih is None else b_ih.data_ptr(),
                                 0 if b_hh is None else b_hh.data_ptr(), y.data_ptr(), (),
                                 nonlinearity, reverse)
    return y


def _on_gpu(x: Tensor) -> bool:
    """Whether a call goes to the CUDA loops of rnnkern.gpu (which check its arguments): x is
    not a CPU tensor. (tests/test_cuda_on_cpu.py sends CPU tensors there too.)"""
    return x.device.type != "cpu"


def _forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes, reverse, own=True):
    if _on_gpu(x):
        y = gpu.forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes, reverse)
        return y, _final_state(y, h0.shape[0], batch_sizes, reverse, own)
    if batch_sizes is None:
        y = _forward_small(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse)
        if y is not None:
            return y, _final_state(y, h0.shape[0], None, reverse, own)
    y = torch.from_numpy(_core.layer_forward(
        "rnn", _numpy("input", x), _numpy("hx", h0), None, _numpy("w_ih", w_ih),
        _numpy("w_hh", w_hh), _numpy("b_ih", b_ih), _numpy("b_hh", b_hh), None, nonlinearity,
        _batch_sizes_numpy(batch_sizes), reverse, x_name="input", h0_name="hx")[0])
    return y, _final_state(y, h0.shape[0], batch_sizes, reverse, own)


def _backward_small(x, h0, w_ih, w_hh, y, grad_y, grad_hn, nonlinearity, reverse, output_mask,
                    grad_norms):
    """_backward for a call that _small_sizes accepts (grad_y and grad_hn made contiguous),
    else None."""
    if grad_y.shape != y.shape or grad_hn is not None and grad_hn.shape != h0.shape:
        return None
    grad_y = grad_y.contiguous()
    grad_hn = None if grad_hn is None else grad_hn.contiguous()
    if _small_sizes(x, h0, w_ih, w_hh, y, grad_y, grad_hn) is None or y.dim() != 3:
        return None
    steps, batch, features = x.shape
    hidden = w_hh.shape[0]
    # weight gradients of up to 256 KiB (float32) from torch's allocator, larger ones from the
    # core's block cache (fresh large allocations are page-faulted in at every call)
    if hidden * max(hidden, features) > 4 * _SMALL_OUTPUT:
        return None
    shapes = (x.shape, h0.shape, w_ih.shape, w_hh.shape, (hidden,))
    grads = [torch.empty(shape, dtype=x.dtype) if wanted else None
             for shape, wanted in zip(shapes, output_mask)]
    norms = torch.empty(steps * batch, dtype=torch.float64) if grad_norms else None
    gx, gh0, gw_ih, gw_hh, gb = (0 if g is None else g.data_ptr() for g in grads)
    _core.layer_backward_pointers("rnn", x.dtype is torch.float64, steps, batch, features,
                                  hidden, x.data_ptr(), h0.data_ptr(), 0, w_ih.data_ptr(),
                                  w_hh.data_ptr(), y.data_ptr(), (), grad_y.data_ptr(),
                                  0 if grad_hn is None else grad_hn.data_ptr(), 0, gx, gh0, 0,
                                  gw_ih, gw_hh, gb, 0, 0 if norms is None else norms.data_ptr(),
                                  0, nonlinearity, reverse)
    return tuple(grads), norms


def _backward(x, h0, w_ih, w_hh, y, grad_y, grad_hn, nonlinearity, batch_sizes, reverse,
              output_mask, grad_norms=False):
    """(x, h0, w_ih, w_hh, bias) gradients, None where output_mask is False, and the (N,)
    float64 norms of the whole gradient reaching each row's h_t (None unless grad_norms)."""
    if _on_gpu(x):
        return gpu.backward(x, h0, w_ih, w_hh, y, grad_y, grad_hn, nonlinearity, batch_sizes,
                            reverse, output_mask, grad_norms)
    if batch_sizes is None and grad_y is not None:
        small = _backward_small(x, h0, w_ih, w_hh, y, grad_y, grad_hn, nonlinearity, reverse,
                                output_mask, grad_norms)
        if small is not None:
            return small
    need_x, need_h0, need_w_ih, need_w_hh, need_bias = output_mask
    gx, gh0, _, gw_ih, gw_hh, gb, _, _, norms, _ = _core.layer_backward(
        "rnn", _numpy("input", x), _numpy("hx", h0), None, _numpy("w_ih", w_ih),
        _numpy("w_hh", w_hh), None, _numpy("y", y), (), _numpy("grad_y", grad_y),
        _numpy("grad_hn", grad_hn), None, nonlinearity, _batch_sizes_numpy(batch_sizes),
        reverse, need_x=need_x, need_h0=need_h0, need_c0=False, need_w_ih=need_w_ih,
        need_w_hh=need_w_hh, need_bias=need_bias, need_w_hr=False, grad_norms=grad_norms,
        x_name="input", h0_name="hx")
    grads = tuple(None if g is None else torch.from_numpy(g)
                  for g in (gx, gh0, gw_ih, gw_hh, gb))
    return grads, None if norms is None else torch.from_numpy(norms)


def _output_mask(needs_input_grad) -> List[bool]:
    need = needs_input_grad
    return [need[0], need[1], need[2], need[3], need[4] or need[5]]


def _input_grads(needs_input_grad, grads):
    """Gradients for the nine inputs of rnn_forward from the five backward results."""
    need = needs_input_grad
    gx, gh0, gw_ih, gw_hh, gb = grads
    return (gx if need[0] else None, gh0 if need[1] else None, gw_ih if need[2] else None,
            gw_hh if need[3] else None, gb if need[4] else None,
            (gb.clone() if need[4] else gb) if need[5] else None, None, None, None)


# The custom ops: what torch.compile, opcheck and the dispatcher see.

@torch.library.custom_op("rnnkern::rnn_forward", mutates_args=())
def rnn_forward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                b_hh: Optional[Tensor], nonlinearity: str, batch_sizes: Optional[Tensor],
                reverse: bool) -> Tuple[Tensor, Tensor]:
    """(y, h_n) of one layer-direction: every hidden state, and each sequence's last one."""
    return _forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes, reverse)


@rnn_forward.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes, reverse):
    return x.new_empty((*x.shape[:-1], w_hh.shape[0])), h0.new_empty(h0.shape)


@torch.library.custom_op("rnnkern::rnn_backward", mutates_args=())
def rnn_backward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, y: Tensor, grad_y: Tensor,
                 grad_hn: Tensor, nonlinearity: str, batch_sizes: Optional[Tensor],
                 reverse: bool, output_mask: List[bool]
                 ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, h0, w_ih, w_hh, bias) of one layer-direction given ∂L/∂y and ∂L/∂h_n.

    ``output_mask`` says which of the five to compute; the others come back empty.
    """
    grads, _ = _backward(x, h0, w_ih, w_hh, y, grad_y, grad_hn, nonlinearity, batch_sizes,
                         reverse, output_mask)
    return tuple(x.new_empty(0) if g is None else g for g in grads)


@rnn_backward.register_fake
def _(x, h0, w_ih, w_hh, y, grad_y, grad_hn, nonlinearity, batch_sizes, reverse, output_mask):
    shapes = (x.shape, h0.shape, w_ih.shape, w_hh.shape, (w_hh.shape[0],))
    return tuple(x.new_empty(shape if wanted else (0,))
                 for shape, wanted in zip(shapes, output_mask))


def _setup_context(ctx, inputs, output):
    x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes, reverse = inputs
    ctx.save_for_backward(x, h0, w_ih, w_hh, output[0], batch_sizes)
    ctx.nonlinearity = nonlinearity
    ctx.reverse = reverse


def _op_backward(ctx, grad_y, grad_hn):
    x, h0, w_ih, w_hh, y, batch_sizes = ctx.saved_tensors
    grads = rnn_backward(x, h0, w_ih, w_hh, y, grad_y, grad_hn, ctx.nonlinearity, batch_sizes,
                         ctx.reverse, _output_mask(ctx.needs_input_grad))
    return _input_grads(ctx.needs_input_grad, grads)


rnn_forward.register_autograd(_op_backward, setup_context=_setup_context)


def _reference_grads(ctx, grad_y, grad_hn):
    """The backward as autograd ops on the reference loop: differentiable again
    (``create_graph=True``), at the reference's speed."""
    x, h0, w_ih, w_hh, b_ih, b_hh, _, batch_sizes = ctx.saved_tensors
    inputs = (x, h0, w_ih, w_hh, b_ih, b_hh)
    wanted = [i for i, need in enumerate(ctx.needs_input_grad[:6]) if need]
    with torch.enable_grad():
        y, h_n = reference.rnn(x, h0, w_ih, w_hh, b_ih, b_hh, ctx.nonlinearity,
                               batch_sizes=batch_sizes, reverse=ctx.reverse)
        found = torch.autograd.grad((y, h_n), [inputs[i] for i in wanted], (grad_y, grad_hn),
                                    create_graph=True, allow_unused=True)
    grads = [None] * 6
    for i, g in zip(wanted, found):
        grads[i] = torch.zeros_like(inputs[i]) if g is None else g
    return (*grads, None, None, None, None)


class _EagerRNN(torch.autograd.Function):
    """The same forward and backward without the custom-op dispatch, for eager mode, where
    the op machinery would cost more than the kernel at small sizes. It can also hand the
    per-row gradient norms of each backward to a callback (gradient-flow recording).
    A backward that must itself be differentiable runs on the reference loop."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes, reverse,
                on_grad_norms):
        y, h_n = _forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes, reverse)
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, y, batch_sizes)
        ctx.nonlinearity = nonlinearity
        ctx.reverse = reverse
        ctx.on_grad_norms = on_grad_norms
        return y, h_n

    @staticmethod
    def backward(ctx, grad_y, grad_hn):
        if torch.is_grad_enabled():  # create_graph=True
            return _reference_grads(ctx, grad_y, grad_hn)
        x, h0, w_ih, w_hh, _, _, y, batch_sizes = ctx.saved_tensors
        record = ctx.on_grad_norms is not None
        grads, norms = _backward(x, h0, w_ih, w_hh, y, grad_y, grad_hn, ctx.nonlinearity,
                                 batch_sizes, ctx.reverse, _output_mask(ctx.needs_input_grad),
                                 record)
        if record:
            ctx.on_grad_norms(norms)
        return (*_input_grads(ctx.needs_input_grad, grads), None)


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
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _layer(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes, reverse,
           on_grad_norms=None, own=True) -> Tuple[Tensor, Tensor]:
    """(y, h_n) of one layer-direction: the custom op under torch.compile, the reference loop
    where the kernels cannot serve, else eager. Without autograd, h_n is a view of y unless
    ``own``."""
    args = (x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes, reverse)
    if torch.compiler.is_compiling() or _traced(x):
        _refuse_recording(on_grad_norms)
        return rnn_forward(*args)
    if _on_reference(x):
        return reference.rnn(*args[:6], nonlinearity, batch_sizes=batch_sizes, reverse=reverse)
    if _tracked(x, h0, w_ih, w_hh, b_ih, b_hh):
        return _EagerRNN.apply(*args, on_grad_norms)
    return _forward(*args, own=own)


def rnn(input: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
        b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
        nonlinearity: str = "tanh", *, batch_sizes: Optional[Tensor] = None,
        reverse: bool = False, on_grad_norms: Optional[Callable[[Tensor], None]] = None
        ) -> Tuple[Tensor, Tensor]:
    """One Elman RNN layer in one direction, differentiable in every tensor argument.

    Args:
        input: (T, B, I) time-major; with ``batch_sizes``, the packed (N, I) rows
            (``PackedSequence.data``).
        hx: (B, H) initial state, or None for zeros.
        w_ih: (H, I). w_hh: (H, H). b_ih, b_hh: (H,) or None.
        nonlinearity: "tanh" or "relu".
        batch_sizes: optional int64 CPU tensor (T,), non-increasing (``PackedSequence.batch_sizes``).
        reverse: run from the last step to the first.
        on_grad_norms: eager mode only; called at each backward with the (N,) float64 norms
            ‖∂L/∂h_t‖₂ of every row, in the layout of output (see rnnkern.diagnostics).

    Returns:
        (output, h_n): output (T, B, H), or (N, H) packed; h_n (B, H), each sequence's state
        at its own last step. float32 and float64; all tensors of one dtype, on the CPU or
        on one CUDA device (batch_sizes always on the CPU).
    """
    _check_tensors(input=input, hx=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                   batch_sizes=batch_sizes)
    _check_layout(input, batch_sizes, reverse)
    if hx is None:
        batch = input.shape[1] if batch_sizes is None else int(batch_sizes[0])
        hx = input.new_zeros(batch, w_hh.shape[0])
    return _layer(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes, reverse,
                  on_grad_norms)


def rnn_layers(input: Tensor, hx: Tensor, weights: List[Tensor], num_layers: int,
               bidirectional: bool, nonlinearity: str = "tanh", dropout: float = 0.0,
               training: bool = False, batch_first: bool = False,
               batch_sizes: Optional[Tensor] = None,
               on_grad_norms: Optional[Callable[[int, Tensor], None]] = None
               ) -> Tuple[Tensor, Tensor]:
    """A stack of Elman layers, as ``torch._VF.rnn_tanh`` / ``rnn_relu`` compute it.

    Args:
        input: (T, B, I), (B, T, I) with ``batch_first``, or packed (N, I) with ``batch_sizes``.
        hx: (num_layers · D, B, H), D = 2 if bidirectional else 1.
        weights: ``torch.nn.RNN._flat_weights`` order: per layer, per direction,
            w_ih, w_hh and, if present, b_ih, b_hh.
        dropout, training: dropout on each layer's output but the last, in training only,
            drawn from torch's generator in the same order as torch.nn.RNN.
        on_grad_norms: called as on_grad_norms(layer · D + direction, norms) at backward;
            see :func:`rnn`. A layer-direction whose backward will not run (autograd does not
            record it: frozen weights and an input that needs no gradient) is reported at
            forward time as on_grad_norms(index, None).

    Returns:
        (output, h_n): output like input with H · D features; h_n (num_layers · D, B, H).
    """
    directions = 2 if bidirectional else 1
    per_direction = len(weights) // (num_layers * directions)
    if num_layers == 1 and directions == 1 and on_grad_norms is None:  # the shortest way
        transpose = batch_first and batch_sizes is None
        b_ih, b_hh = (weights[2], weights[3]) if per_direction == 4 else (None, None)
        output, h = _layer(input.transpose(0, 1) if transpose else input, hx[0], weights[0],
                           weights[1], b_ih, b_hh, nonlinearity, batch_sizes, False)
        return output.transpose(0, 1) if transpose else output, h.unsqueeze(0)

    def run(layer_input, index, w, reverse, record):
        b_ih, b_hh = (w[2], w[3]) if per_direction == 4 else (None, None)
        return _layer(layer_input, hx[index], w[0], w[1], b_ih, b_hh, nonlinearity,
                      batch_sizes, reverse, record, own=False)

    output, finals = _layer_stack(input, weights, num_layers, directions, dropout, training,
                                  batch_first, batch_sizes, on_grad_norms, (None,),
                                  lambda index: (hx[index],), run)
    return output, torch.stack([h for h, in finals])


def _layer_stack(input, weights, num_layers, directions, dropout, training, batch_first,
                 batch_sizes, on_grad_norms, no_norms, initial, run):
    """torch's stack of layer-directions (as _VF.rnn_tanh, _VF.lstm and _VF.gru compute it):
    layer k+1 reads layer k's output, its directions concatenated, with dropout between layers
    in training only.

    ``run(layer_input, index, w, reverse, record)`` runs layer-direction ``index`` on its slice
    ``w`` of ``weights`` and returns (output, *final states); ``record`` is its on_grad_norms
    callback or None. ``initial(index)``: its initial states. A layer-direction whose backward
    will not run is reported at once as on_grad_norms(index, *no_norms).

    Returns (output, finals): finals[index] holds the final states of that layer-direction.
    """
    per_direction = len(weights) // (num_layers * directions)
    transpose = batch_first and batch_sizes is None
    layer_input = input.transpose(0, 1) if transpose else input
    finals = []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            w = weights[index * per_direction:(index + 1) * per_direction]
            record = None
            if on_grad_norms is not None:
                if _tracked(layer_input, *initial(index), *w):
                    record = functools.partial(on_grad_norms, index)
                else:
                    on_grad_norms(index, *no_norms)
            out, *states = run(layer_input, index, w, direction == 1, record)
            outputs.append(out)
            finals.append(states)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, -1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = torch.nn.functional.dropout(layer_input, dropout, True)
    return (layer_input.transpose(0, 1) if transpose else layer_input), finals



# The gated cells (DESIGN.md section 1b): one op set parametrised by cell, "lstm" or "gru".
# The LSTM's c0 / c_n / grad_cn are None (empty for the ops) for the GRU.

_GATES = {"lstm": 4, "gru": 3}


def _gated_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
                   own=True):
    """(y, h_n, c_n, state, gates, m): state, gates and m (the LSTM's o ⊙ tanh(c_t) with
    proj_size, else None) are what backward reads (see rnnkern.numpy_api); c_n is None for
    the GRU."""
    y, saved = _core.layer_forward(
        cell, _numpy("input", x), _numpy("hx", h0), _numpy("cx", c0), _numpy("w_ih", w_ih),
        _numpy("w_hh", w_hh), _numpy("b_ih", b_ih), _numpy("b_hh", b_hh), _numpy("w_hr", w_hr),
        None, _batch_sizes_numpy(batch_sizes), reverse, x_name="input", h0_name="hx",
        c0_name="cx")
    y = torch.from_numpy(y)
    gates, state, *m = (torch.from_numpy(a) for a in saved)
    batch = h0.shape[0]
    h_n = _final_state(y, batch, batch_sizes, reverse, own)
    c_n = _final_state(state, batch, batch_sizes, reverse) if cell == "lstm" else None
    return y, h_n, c_n, state, gates, m[0] if m else None


def _gated_backward(cell, x, h0, c0, w_ih, w_hh, w_hr, y, state, gates, m, grad_y, grad_hn,
                    grad_cn, batch_sizes, reverse, output_mask, grad_norms=False):
    """Gradients (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), None where output_mask (x, h0,
    c0, w_ih, w_hh, bias, w_hr) is False, and the (N,) float64 norms of ∂L/∂h_t and (LSTM)
    ∂L/∂c_t."""
    saved = (_numpy("gates", gates), _numpy("state", state))
    if w_hr is not None:
        saved += (_numpy("m", m),)
    *grads, norm_h, norm_c = _core.layer_backward(
        cell, _numpy("input", x), _numpy("hx", h0), _numpy("cx", c0), _numpy("w_ih", w_ih),
        _numpy("w_hh", w_hh), _numpy("w_hr", w_hr), _numpy("y", y), saved,
        _numpy("grad_y", grad_y), _numpy("grad_hn", grad_hn), _numpy("grad_cn", grad_cn), None,
        _batch_sizes_numpy(batch_sizes), reverse, *output_mask, grad_norms,
        x_name="input", h0_name="hx", c0_name="cx")
    grads = tuple(None if g is None else torch.from_numpy(g) for g in grads)
    norms = tuple(None if n is None else torch.from_numpy(n) for n in (norm_h, norm_c))
    return grads, norms


def _gated_mask(needs):
    """output_mask for the inputs (cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, …)."""
    return [needs[1], needs[2], needs[3], needs[4], needs[5], needs[6] or needs[7], needs[8]]


def _gated_input_grads(needs, grads):
    return (None, *(g if need else None for g, need in zip(grads, needs[1:9])), None, None)


def _empty_if_none(t, like):
    return like.new_empty(0) if t is None else t


def _none_if_empty(t):
    return None if t is None or t.numel() == 0 else t


@torch.library.custom_op("rnnkern::gated_forward", mutates_args=())
def gated_forward(cell: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor,
                  w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                  w_hr: Optional[Tensor], batch_sizes: Optional[Tensor], reverse: bool
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, h_n, c_n, state, gates, m) of one LSTM or GRU layer-direction; c_n is empty for
    the GRU, m without w_hr (the LSTM's proj_size); state, gates and m are saved for
    backward."""
    y, h_n, c_n, state, gates, m = _gated_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                  w_hr, batch_sizes, reverse)
    return y, h_n, _empty_if_none(c_n, x), state, gates, _empty_if_none(m, x)


@gated_forward.register_fake
def _(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse):
    hidden = w_hh.shape[0] // _GATES[cell]
    lead = x.shape[:-1]
    y = x.new_empty((*lead, w_hh.shape[1]))
    c_n = x.new_empty(0) if c0 is None else c0.new_empty(c0.shape)
    m = x.new_empty(0) if w_hr is None else x.new_empty((*lead, hidden))
    return (y, h0.new_empty(h0.shape), c_n, x.new_empty((*lead, hidden)),
            x.new_empty((*lead, w_hh.shape[0])), m)


@torch.library.custom_op("rnnkern::gated_backward", mutates_args=())
def gated_backward(cell: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor,
                   w_hh: Tensor, w_hr: Optional[Tensor], y: Tensor, state: Tensor,
                   gates: Tensor, m: Optional[Tensor], grad_y: Tensor, grad_hn: Tensor,
                   grad_cn: Optional[Tensor], batch_sizes: Optional[Tensor], reverse: bool,
                   output_mask: List[bool]
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) of one layer-direction;
    ``output_mask`` (x, h0, c0, w_ih, w_hh, bias, w_hr) says which to compute, the others
    come back empty."""
    grads, _ = _gated_backward(cell, x, h0, c0, w_ih, w_hh, w_hr, y, state, gates, m, grad_y,
                               grad_hn, grad_cn, batch_sizes, reverse, output_mask)
    return tuple(x.new_empty(0) if g is None else g for g in grads)


@gated_backward.register_fake
def _(cell, x, h0, c0, w_ih, w_hh, w_hr, y, state, gates, m, grad_y, grad_hn, grad_cn,
      batch_sizes, reverse, output_mask):
    wanted = [*output_mask[:5], output_mask[5], output_mask[5], output_mask[6]]
    wanted[2] = wanted[2] and c0 is not None
    wanted[7] = wanted[7] and w_hr is not None
    shapes = (x.shape, h0.shape, () if c0 is None else c0.shape, w_ih.shape, w_hh.shape,
              (w_hh.shape[0],), (w_hh.shape[0],), () if w_hr is None else w_hr.shape)
    return tuple(x.new_empty(shape if want else (0,)) for shape, want in zip(shapes, wanted))


def _gated_setup_context(ctx, inputs, output):
    cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse = inputs
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, output[0], output[3], output[4],
                          output[5], batch_sizes)
    ctx.cell = cell
    ctx.reverse = reverse


def _gated_op_backward(ctx, grad_y, grad_hn, grad_cn, _grad_state, _grad_gates, _grad_m):
    x, h0, c0, w_ih, w_hh, w_hr, y, state, gates, m, batch_sizes = ctx.saved_tensors
    grads = gated_backward(ctx.cell, x, h0, c0, w_ih, w_hh, w_hr, y, state, gates,
                           None if w_hr is None else m, grad_y, grad_hn,
                           grad_cn if ctx.cell == "lstm" else None, batch_sizes, ctx.reverse,
                           _gated_mask(ctx.needs_input_grad))
    return _gated_input_grads(ctx.needs_input_grad, grads)


gated_forward.register_autograd(_gated_op_backward, setup_context=_gated_setup_context)


def _gated_reference(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse):
    """(y, h_n, c_n) on the reference loop (c_n None for the GRU)."""
    if cell == "lstm":
        y, (h_n, c_n) = reference.lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, w_hr,
                                       batch_sizes=batch_sizes, reverse=reverse)
        return y, h_n, c_n
    y, h_n = reference.gru(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes=batch_sizes,
                           reverse=reverse)
    return y, h_n, None


class _EagerGated(torch.autograd.Function):
    """The gated op without the custom-op dispatch, for eager mode (see _EagerRNN). The
    GRU's c0 and c_n are None. on_grad_norms gets (norm_h, norm_c) at each backward."""

    @staticmethod
    def forward(ctx, cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
                on_grad_norms):
        y, h_n, c_n, state, gates, m = _gated_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                      w_hr, batch_sizes, reverse)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, state, gates, m,
                              batch_sizes)
        ctx.cell, ctx.reverse, ctx.on_grad_norms = cell, reverse, on_grad_norms
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, grad_y, grad_hn, grad_cn):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, state, gates, m, batch_sizes = \
            ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference, differentiable again
            inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
            wanted = [i for i, need in enumerate(ctx.needs_input_grad[1:9]) if need]
            with torch.enable_grad():
                out = _gated_reference(ctx.cell, *inputs, batch_sizes, ctx.reverse)
                pairs = [(o, g) for o, g in zip(out, (grad_y, grad_hn, grad_cn)) if o is not None]
                found = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted],
                                            [g for _, g in pairs], create_graph=True,
                                            allow_unused=True)
            grads = [None] * 8
            for i, g in zip(wanted, found):
                grads[i] = torch.zeros_like(inputs[i]) if g is None else g
            return (None, *grads, None, None, None)
        record = ctx.on_grad_norms is not None
        grads, norms = _gated_backward(ctx.cell, x, h0, c0, w_ih, w_hh, w_hr, y, state, gates,
                                       m, grad_y, grad_hn, grad_cn, batch_sizes, ctx.reverse,
                                       _gated_mask(ctx.needs_input_grad), record)
        if record:
            ctx.on_grad_norms(*norms)
        return (*_gated_input_grads(ctx.needs_input_grad, grads), None)


def _gated_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
                 on_grad_norms=None, own=True):
    """(y, h_n, c_n) of one layer-direction, chosen as _layer chooses (c_n None for the GRU;
    w_hr: the LSTM's proj_size, or None)."""
    args = (cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse)
    if torch.compiler.is_compiling() or _traced(x):
        _refuse_recording(on_grad_norms)
        y, h_n, c_n, _, _, _ = gated_forward(*args)
        return y, h_n, c_n if cell == "lstm" else None
    if _on_reference(x):
        return _gated_reference(*args[:9], batch_sizes, reverse)
    if _tracked(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        return _EagerGated.apply(*args, on_grad_norms)
    y, h_n, c_n, _, _, _ = _gated_forward(*args, own=own)
    return y, h_n, c_n


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


def lstm(input: Tensor, hx: Optional[Tuple[Tensor, Tensor]], w_ih: Tensor, w_hh: Tensor,
         b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
         w_hr: Optional[Tensor] = None, *, batch_sizes: Optional[Tensor] = None,
         reverse: bool = False,
         on_grad_norms: Optional[Callable[[Tensor, Tensor], None]] = None
         ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One LSTM layer in one direction (torch.nn.LSTM's math), differentiable in every tensor.

    Arguments as :func:`rnn`, with hx = (h0, c0) (B, H) each or None for zeros, w_ih (4H, I),
    w_hh (4H, H), b_ih, b_hh (4H,); w_hr (P, H) for proj_size P (then h0, w_hh and the output
    have P columns). on_grad_norms gets (‖∂L/∂h_t‖₂, ‖∂L/∂c_t‖₂) per row.

    Returns:
        (output, (h_n, c_n)), output (T, B, H) or packed (N, H).
    """
    _check_tensors(input=input, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr,
                   batch_sizes=batch_sizes)
    _check_layout(input, batch_sizes, reverse)
    batch = input.shape[1] if batch_sizes is None else int(batch_sizes[0])
    if hx is None:
        hx = (input.new_zeros(batch, w_hh.shape[1]), input.new_zeros(batch, w_hh.shape[0] // 4))
    elif (not isinstance(hx, (tuple, list)) or len(hx) != 2
          or not all(isinstance(h, Tensor) for h in hx)):
        got = (f"({', '.join(type(h).__name__ for h in hx)})" if isinstance(hx, (tuple, list))
               else type(hx).__name__)
        raise TypeError(f"hx must be None or a tuple (h0, c0) of two torch.Tensors, got {got}")
    y, h_n, c_n = _gated_layer("lstm", input, hx[0], hx[1], w_ih, w_hh, b_ih, b_hh, w_hr,
                               batch_sizes, reverse, on_grad_norms)
    return y, (h_n, c_n)


def gru(input: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
        b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None, *,
        batch_sizes: Optional[Tensor] = None, reverse: bool = False,
        on_grad_norms: Optional[Callable[[Tensor, None], None]] = None
        ) -> Tuple[Tensor, Tensor]:
    """One GRU layer in one direction (torch.nn.GRU's math), differentiable in every tensor.

    Arguments as :func:`rnn`, with w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,).
    on_grad_norms gets (‖∂L/∂h_t‖₂ per row, None).

    Returns:
        (output, h_n), output (T, B, H) or packed (N, H).
    """
    _check_tensors(input=input, hx=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                   batch_sizes=batch_sizes)
    _check_layout(input, batch_sizes, reverse)
    if hx is None:
        batch = input.shape[1] if batch_sizes is None else int(batch_sizes[0])
        hx = input.new_zeros(batch, w_hh.shape[1])
    y, h_n, _ = _gated_layer("gru", input, hx, None, w_ih, w_hh, b_ih, b_hh, None, batch_sizes,
                             reverse, on_grad_norms)
    return y, h_n


def _gated_layers(cell, input, h0, c0, weights, num_layers, bidirectional, dropout, training,
                  batch_first, batch_sizes, on_grad_norms):
    """The stack of _gated_layer as torch's _VF.lstm / _VF.gru compute it; (output, h_n,
    c_n) with c_n None for the GRU."""
    directions = 2 if bidirectional else 1
    per_direction = len(weights) // (num_layers * directions)
    # LSTM weights per direction: w_ih, w_hh, [b_ih, b_hh], [w_hr]
    has_bias = per_direction >= 4
    has_proj = cell == "lstm" and per_direction in (3, 5)

    def initial(index):
        return h0[index], (c0[index] if c0 is not None else None)

    def run(layer_input, index, w, reverse, record):
        b_ih, b_hh = (w[2], w[3]) if has_bias else (None, None)
        w_hr = w[-1] if has_proj else None
        return _gated_layer(cell, layer_input, *initial(index), w[0], w[1], b_ih, b_hh, w_hr,
                            batch_sizes, reverse, record, own=False)

    output, finals = _layer_stack(input, weights, num_layers, directions, dropout, training,
                                  batch_first, batch_sizes, on_grad_norms, (None, None),
                                  initial, run)
    h_n = torch.stack([h for h, _ in finals])
    return output, h_n, torch.stack([c for _, c in finals]) if cell == "lstm" else None


def lstm_layers(input: Tensor, hx: Tuple[Tensor, Tensor], weights: List[Tensor],
                num_layers: int, bidirectional: bool, dropout: float = 0.0,
                training: bool = False, batch_first: bool = False,
                batch_sizes: Optional[Tensor] = None,
                on_grad_norms: Optional[Callable[[int, Optional[Tensor], Optional[Tensor]],
                                                 None]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """A stack of LSTM layers, as ``torch._VF.lstm`` computes it; see :func:`rnn_layers`.

    hx = (h0, c0), (num_layers · D, B, P) and (num_layers · D, B, H); weights in
    ``torch.nn.LSTM._flat_weights`` order (w_ih, w_hh, [b_ih, b_hh], [w_hr] per layer and
    direction). on_grad_norms(index, norm_h, norm_c) as in :func:`rnn_layers`.
    Returns (output, (h_n, c_n)).
    """
    output, h_n, c_n = _gated_layers("lstm", input, hx[0], hx[1], weights, num_layers,
                                     bidirectional, dropout, training, batch_first,
                                     batch_sizes, on_grad_norms)
    return output, (h_n, c_n)


def gru_layers(input: Tensor, hx: Tensor, weights: List[Tensor], num_layers: int,
               bidirectional: bool, dropout: float = 0.0, training: bool = False,
               batch_first: bool = False, batch_sizes: Optional[Tensor] = None,
               on_grad_norms: Optional[Callable[[int, Optional[Tensor], None], None]] = None
               ) -> Tuple[Tensor, Tensor]:
    """A stack of GRU layers, as ``torch._VF.gru`` computes it; see :func:`lstm_layers`."""
    output, h_n, _ = _gated_layers("gru", input, hx, None, weights, num_layers, bidirectional,
                                   dropout, training, batch_first, batch_sizes, on_grad_norms)
    return output, h_n
