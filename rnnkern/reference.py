"""The oracle: plain PyTorch autograd loops, written line by line from docs/design.md, 1 and 1b.

Slow on purpose. Every kernel result in the tests is checked against it.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["rnn", "lstm", "gru"]


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


# The gated cells (docs/design.md section 1b).

def _scan(rows: Tensor, sizes: List[int], reverse: bool, state0: Tuple[Tensor, ...],
          cell: Callable[..., Tuple[Tensor, ...]]) -> Tuple[List[Tensor], List[Tensor]]:
    """Runs ``cell(x_t, *state_prev) -> state_t`` over packed rows (as :func:`rnn` does) and
    returns (each step's state tuple, in step order; each sequence's state at its last step)."""
    T = len(sizes)
    offsets = [sum(sizes[:t]) for t in range(T)]
    states: List[Optional[Tuple[Tensor, ...]]] = [None] * T
    last: List[List[Optional[Tensor]]] = [[None] * sizes[0] for _ in state0]
    order = range(T - 1, -1, -1) if reverse else range(T)
    state = None
    for t in order:
        n = sizes[t]
        x_t = rows[offsets[t]:offsets[t] + n]
        if state is None:
            prev = tuple(s0[:n] for s0 in state0)
        elif reverse:  # rows [len, n) start at this step from the initial state
            prev = tuple(torch.cat([s, s0[s.shape[0]:n]]) for s, s0 in zip(state, state0))
        else:
            for k, s in enumerate(state):
                for b in range(n, s.shape[0]):
                    last[k][b] = s[b]
            prev = tuple(s[:n] for s in state)
        state = cell(x_t, *prev)
        states[t] = state
    for k, s in enumerate(state):
        for b in range(s.shape[0]):
            last[k][b] = s[b]
    return states, [torch.stack(column) for column in last]


def _packed_rows(input: Tensor, batch_sizes: Optional[Sequence[int]]):
    if batch_sizes is None:
        T, B = input.shape[0], input.shape[1]
        return [B] * T, input.reshape(T * B, -1)
    return [int(n) for n in batch_sizes], input


def lstm(input: Tensor, hx: Optional[Tuple[Tensor, Tensor]], w_ih: Tensor, w_hh: Tensor,
         b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
         w_hr: Optional[Tensor] = None, *, batch_sizes: Optional[Sequence[int]] = None,
         reverse: bool = False) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One LSTM layer in one direction, torch's gate order i, f, g, o.

    w_ih (4H, I), w_hh (4H, P), b_ih, b_hh (4H,) or None, w_hr (P, H) or None (P = H without
    it); hx = (h0 (B, P), c0 (B, H)) or None for zeros. Returns (output, (h_n, c_n)) with
    output (T, B, P), or packed (N, P) with ``batch_sizes``.
    """
    H = w_hh.shape[0] // 4
    P = w_hr.shape[0] if w_hr is not None else H
    sizes, rows = _packed_rows(input, batch_sizes)
    B = sizes[0]
    if hx is None:
        hx = (input.new_zeros(B, P), input.new_zeros(B, H))

    def cell(x_t: Tensor, h_prev: Tensor, c_prev: Tensor) -> Tuple[Tensor, Tensor]:
        a = x_t @ w_ih.T + h_prev @ w_hh.T
        if b_ih is not None:
            a = a + b_ih
        if b_hh is not None:
            a = a + b_hh
        a_i, a_f, a_g, a_o = a.chunk(4, 1)
        i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
        c = f * c_prev + i * g
        h = o * torch.tanh(c)
        if w_hr is not None:
            h = h @ w_hr.T
        return h, c

    states, (h_n, c_n) = _scan(rows, sizes, reverse, tuple(hx), cell)
    output = torch.cat([s[0] for s in states])
    if batch_sizes is None:
        output = output.reshape(len(sizes), B, P)
    return output, (h_n, c_n)


def gru(input: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
        b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None, *,
        batch_sizes: Optional[Sequence[int]] = None, reverse: bool = False
        ) -> Tuple[Tensor, Tensor]:
    """One GRU layer in one direction, torch's gate order r, z, n; arguments as :func:`rnn`
    with w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,). Returns (output, h_n)."""
    H = w_hh.shape[0] // 3
    sizes, rows = _packed_rows(input, batch_sizes)
    B = sizes[0]
    if hx is None:
        hx = input.new_zeros(B, H)

    def cell(x_t: Tensor, h_prev: Tensor) -> Tuple[Tensor]:
        gx = x_t @ w_ih.T
        gh = h_prev @ w_hh.T
        if b_ih is not None:
            gx = gx + b_ih
        if b_hh is not None:
            gh = gh + b_hh
        x_r, x_z, x_n = gx.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return ((1 - z) * n + z * h_prev,)

    states, (h_n,) = _scan(rows, sizes, reverse, (hx,), cell)
    output = torch.cat([s[0] for s in states])
    if batch_sizes is None:
        output = output.reshape(len(sizes), B, H)
    return output, h_n
