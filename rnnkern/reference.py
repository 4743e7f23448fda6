"""The oracle: a plain PyTorch autograd loop, written line by line from DESIGN.md section 1.

Slow on purpose. Every kernel result in the tests is checked against it.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["rnn"]


def rnn(input: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
        b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
        nonlinearity: str = "tanh", *, batch_sizes: Optional[Sequence[int]] = None,
        reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """One Elman RNN layer in one direction; same arguments as :func:`rnnkern.functional.rnn`.

    Returns (output, h_n): output (T, B, H), or packed (N, H) with ``batch_sizes``; h_n (B, H)
    holds each sequence's state at its own last step (step 0 when ``reverse``).
    """
    phi = {"tanh": torch.tanh, "relu": torch.relu}[nonlinearity]
    H = w_hh.shape[0]
    if batch_sizes is None:
        T, B = input.shape[0], input.shape[1]
        sizes = [B] * T
        rows = input.reshape(T * B, -1)
    else:
        sizes = [int(n) for n in batch_sizes]
        rows = input
    B, T = sizes[0], len(sizes)
    if hx is None:
        hx = input.new_zeros(B, H)
    offsets = [sum(sizes[:t]) for t in range(T)]

    def cell(x_t: Tensor, h_prev: Tensor) -> Tensor:
        a = x_t @ w_ih.T + h_prev @ w_hh.T
        if b_ih is not None:
            a = a + b_ih
        if b_hh is not None:
            a = a + b_hh
        return phi(a)

    outputs = [None] * T
    last = [None] * B  # each sequence's state at its own last step
    order = range(T - 1, -1, -1) if reverse else range(T)
    h = None
    for t in order:
        n = sizes[t]
        x_t = rows[offsets[t]:offsets[t] + n]
        if h is None:
            h_prev = hx[:n]
        elif reverse:
            # rows [len(h), n) start at this step from hx
            h_prev = torch.cat([h, hx[h.shape[0]:n]])
        else:
            h_prev = h[:n]
        if not reverse and h is not None:
            for b in range(n, h.shape[0]):
                last[b] = h[b]
        h = cell(x_t, h_prev)
        outputs[t] = h
    for b in range(h.shape[0]):
        last[b] = h[b]
    output = torch.cat(outputs)
    if batch_sizes is None:
        output = output.reshape(T, B, H)
    return output, torch.stack(last)
