"""One Elman layer-direction on CUDA tensors (docs/design.md section 4).

The one-shot products (the input projection before the loop; ∂W_ih, ∂W_hh, ∂x and the bias
sum after it) are torch ops, i.e. cuBLAS through torch. The two sequential loops are the
kernels of ``rnnkern._cuda``, which take device pointers and the current stream: they never
allocate (every buffer here comes from torch's caching allocator) and never synchronise.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["available", "extension", "check_arguments", "forward", "backward"]

_NO_CUDA = (
    "rnnkern was built without CUDA support (the module rnnkern._cuda is missing), so it "
    "cannot run on {device}. Reinstall it from source on a machine where nvcc (CUDA 12.8 or "
    "newer) is on PATH: pip install --force-reinstall --no-binary rnnkern rnnkern, or "
    "pip install . in a clone; add -Ccmake.define.RNNKERN_CUDA=ON to make a missing nvcc an "
    "error instead of a build without CUDA.")


def extension(device="cuda"):
    """The ``rnnkern._cuda`` module, or a RuntimeError that says how to build it."""
    try:
        from . import _cuda
    except ImportError as error:
        raise RuntimeError(_NO_CUDA.format(device=device)) from error
    return _cuda


def available() -> bool:
    """Whether rnnkern was built with CUDA and a GPU is visible."""
    try:
        ext = extension()
    except RuntimeError:
        return False
    return ext.device_count() > 0


def _stream(device: torch.device) -> Tuple[int, int]:
    """(device index, stream handle) for a launch. Host tensors get the null stream: they
    reach the kernels only when they run on the CPU under HIP-CPU (tests/cuda/cuda_on_cpu)."""
    if device.type == "cuda":
        return device.index, torch.cuda.current_stream(device).cuda_stream
    return 0, 0


def _wait_on_host(ext, device: torch.device) -> None:
    """Under HIP-CPU a launch returns before the kernel ends; the torch ops that follow read
    its output on the host, so wait there. On a GPU, stream order does this."""
    if device.type != "cuda":
        ext.stream_synchronize(0, 0)


def _batch_sizes_on(batch_sizes: Optional[Tensor], device: torch.device) -> Optional[Tensor]:
    if batch_sizes is None:
        return None
    if batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        raise TypeError("batch_sizes must be an int64 CPU tensor, got "
                        f"{batch_sizes.dtype} on {batch_sizes.device}")
    return batch_sizes.to(device)


_FLOAT_DTYPES = (torch.float32, torch.float64)


def _shape(shape) -> str:
    return str(tuple(shape))


def check_arguments(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
                    batch_sizes: Optional[Tensor], **others: Optional[Tensor]) -> None:
    """What rnnkern._cuda cannot check: devices, dtypes and shapes, with errors that name the
    argument (input and hx as in torch.nn.RNN). ``others``: b_ih, b_hh (H,), y, grad_y
    (shaped like the output) and grad_hn (B, H), each may be None."""
    if x.device.type not in ("cuda", "cpu"):
        raise RuntimeError(f"rnnkern runs on CPU and CUDA tensors, got input on {x.device}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"input must have dtype torch.float32 or torch.float64, got {x.dtype}")
    named = {"hx": h0, "w_ih": w_ih, "w_hh": w_hh, **others}
    for name, t in named.items():
        if t is None:
            continue
        if t.device != x.device:
            raise RuntimeError(f"{name} must be on {x.device} like input, got device {t.device}")
        if t.dtype is not x.dtype:
            raise TypeError(f"{name} must have input's dtype {x.dtype}, got {t.dtype}")
    if batch_sizes is None:
        if x.dim() != 3:
            raise ValueError(f"input must have 3 dimensions (T, B, I), got shape {_shape(x.shape)}")
        steps, batch, features = x.shape
        if steps < 1 or features < 1:
            raise ValueError("input must have at least one step and one feature, got shape "
                             f"{_shape(x.shape)}")
    else:
        if batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
            raise TypeError("batch_sizes must be an int64 CPU tensor, got "
                            f"{batch_sizes.dtype} on {batch_sizes.device}")
        if batch_sizes.dim() != 1 or batch_sizes.shape[0] < 1:
            raise ValueError("batch_sizes must have 1 dimension and at least one entry, got "
                             f"shape {_shape(batch_sizes.shape)}")
        if bool((batch_sizes < 1).any()) or bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
            raise ValueError("batch_sizes must be positive and non-increasing, got "
                             f"{batch_sizes.tolist()}")
        total = int(batch_sizes.sum())
        if x.dim() != 2 or x.shape[0] != total or x.shape[1] < 1:
            raise ValueError(f"input must have shape (sum(batch_sizes) = {total}, I) when "
                             f"batch_sizes is given, got {_shape(x.shape)}")
        batch, features = int(batch_sizes[0]), x.shape[1]
    if w_ih.dim() != 2 or w_ih.shape[1] != features or w_ih.shape[0] < 1:
        raise ValueError(f"w_ih must have shape (hidden_size, {features}), got "
                         f"{_shape(w_ih.shape)}")
    hidden = w_ih.shape[0]
    output = (*x.shape[:-1], hidden)
    expected = {"w_hh": (hidden, hidden), "hx": (batch, hidden), "b_ih": (hidden,),
                "b_hh": (hidden,), "y": output, "grad_y": output, "grad_hn": (batch, hidden)}
    for name, t in named.items():
        if t is not None and name in expected and tuple(t.shape) != expected[name]:
            raise ValueError(f"{name} must have shape {_shape(expected[name])}, got "
                             f"{_shape(t.shape)}")


def _pointer(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def forward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
            b_hh: Optional[Tensor], nonlinearity: str, batch_sizes: Optional[Tensor],
            reverse: bool) -> Tensor:
    """y of one layer-direction, shaped like x with H features (checked arguments)."""
    check_arguments(x, h0, w_ih, w_hh, batch_sizes, b_ih=b_ih, b_hh=b_hh)
    ext = extension(x.device)
    hidden = w_hh.shape[0]
    rows = x.reshape(-1, x.shape[-1])
    bias = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
    # y = x W_ihᵀ + b_ih + b_hh, which the loop then turns into the hidden states in place
    y = rows @ w_ih.t() if bias is None else torch.addmm(bias, rows, w_ih.t())
    steps = x.shape[0] if batch_sizes is None else batch_sizes.shape[0]
    batch = h0.shape[0]
    sizes = _batch_sizes_on(batch_sizes, x.device)
    w_hh_t = w_hh.t().contiguous()
    h0 = h0.contiguous()
    device, stream = _stream(x.device)
    ext.forward_loop(x.dtype is torch.float64, device, stream, steps, batch, hidden,
                     rows.shape[0], _pointer(sizes), reverse, nonlinearity, w_hh_t.data_ptr(),
                     h0.data_ptr(), y.data_ptr())
    _wait_on_host(ext, x.device)
    return y.view(*x.shape[:-1], hidden)


def _previous_rows(batch_sizes: Tensor, reverse: bool) -> Tensor:
    """For each packed row, the row of cat(h0, y) that holds its previous state (CPU)."""
    sizes = batch_sizes
    steps, batch = sizes.shape[0], int(sizes[0])
    offsets = torch.cumsum(sizes, 0) - sizes
    step = torch.repeat_interleave(torch.arange(steps), sizes)
    row = torch.arange(int(sizes.sum())) - offsets[step]
    if not reverse:  # step t continues from step t-1; step 0 from h0
        earlier = offsets[(step - 1).clamp(min=0)] + batch + row
        return torch.where(step == 0, row, earlier)
    later_step = (step + 1).clamp(max=steps - 1)  # reverse: from step t+1, or h0 where new
    continues = (step + 1 < steps) & (row < sizes[later_step])
    return torch.where(continues, offsets[later_step] + batch + row, row)


def backward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, y: Tensor,
             grad_y: Optional[Tensor], grad_hn: Optional[Tensor], nonlinearity: str,
             batch_sizes: Optional[Tensor], reverse: bool, output_mask: List[bool],
             grad_norms: bool = False
             ) -> Tuple[Tuple[Optional[Tensor], ...], Optional[Tensor]]:
    """(x, h0, w_ih, w_hh, bias) gradients, None where output_mask is False, and the (N,)
    float64 norms of ∂L/∂h_t per row when grad_norms (checked arguments)."""
    check_arguments(x, h0, w_ih, w_hh, batch_sizes, y=y, grad_y=grad_y, grad_hn=grad_hn)
    ext = extension(x.device)
    hidden = w_hh.shape[0]
    batch = h0.shape[0]
    rows = x.reshape(-1, x.shape[-1])
    total = rows.shape[0]
    steps = x.shape[0] if batch_sizes is None else batch_sizes.shape[0]
    states = y.reshape(total, hidden).contiguous()
    grad_y = None if grad_y is None else grad_y.reshape(total, hidden).contiguous()
    grad_hn = None if grad_hn is None else grad_hn.contiguous()
    delta = torch.empty_like(states)
    grad_h0 = torch.empty_like(h0, memory_format=torch.contiguous_format) \
        if output_mask[1] else None
    norms = (torch.empty(total, dtype=torch.float64, device=x.device)
             if grad_norms else None)
    sizes = _batch_sizes_on(batch_sizes, x.device)
    w_hh_c = w_hh.contiguous()
    device, stream = _stream(x.device)
    ext.backward_loop(x.dtype is torch.float64, device, stream, steps, batch, hidden, total,
                      _pointer(sizes), reverse, nonlinearity, w_hh_c.data_ptr(),
                      states.data_ptr(), _pointer(grad_y), _pointer(grad_hn), delta.data_ptr(),
                      _pointer(grad_h0), _pointer(norms))
    _wait_on_host(ext, x.device)

    grad_x = (delta @ w_ih).view(x.shape) if output_mask[0] else None
    grad_w_ih = delta.t() @ rows if output_mask[2] else None
    grad_w_hh = None
    if output_mask[3]:
        h0_rows = h0.reshape(batch, hidden)
        if batch_sizes is None:
            # previous states: h0, then y shifted by one step (two GEMMs, no gather)
            first = slice((steps - 1) * batch, total) if reverse else slice(0, batch)
            rest_delta = delta[:total - batch] if reverse else delta[batch:]
            rest_prev = states[batch:] if reverse else states[:total - batch]
            grad_w_hh = delta[first].t() @ h0_rows
            if steps > 1:
                grad_w_hh.addmm_(rest_delta.t(), rest_prev)
        else:
            previous = torch.cat([h0_rows, states])[
                _previous_rows(batch_sizes, reverse).to(x.device)]
            grad_w_hh = delta.t() @ previous
    grad_b = delta.sum(0) if output_mask[4] else None
    return (grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b), norms
