"""An independent NumPy oracle: one sequence at a time, hand-written backward.

It shares nothing with the kernel or with rnnkern.reference: packed input is split into
sequences, each run on its own with matrix-vector products.
"""

import numpy as np


def _layout(x, batch_sizes):
    if batch_sizes is None:
        T, B = x.shape[:2]
        batch_sizes = [B] * T
        rows = x.reshape(T * B, -1)
    else:
        rows = x
    sizes = [int(n) for n in batch_sizes]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    lengths = [sum(1 for n in sizes if n > b) for b in range(sizes[0])]
    return rows, offsets, lengths


def _steps(length, reverse):
    return list(range(length - 1, -1, -1)) if reverse else list(range(length))


def _phi(a, nonlinearity):
    return np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0)


def _dphi(h, nonlinearity):
    return 1 - h * h if nonlinearity == "tanh" else (h > 0).astype(h.dtype)


def forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", batch_sizes=None,
            reverse=False):
    """Returns (y, h_n) in the layout of rnnkern.forward, plus h_n (B, H)."""
    rows, offsets, lengths = _layout(x, batch_sizes)
    H = w_hh.shape[0]
    bias = np.zeros(H, x.dtype)
    for b in (b_ih, b_hh):
        if b is not None:
            bias = bias + b
    y = np.zeros((rows.shape[0], H), x.dtype)
    h_n = np.zeros((len(lengths), H), x.dtype)
    for s, length in enumerate(lengths):
        h = h0[s]
        for t in _steps(length, reverse):
            r = offsets[t] + s
            h = _phi(w_ih @ rows[r] + w_hh @ h + bias, nonlinearity)
            y[r] = h
        h_n[s] = h
    if batch_sizes is None:
        y = y.reshape(x.shape[0], x.shape[1], H)
    return y, h_n


def backward(x, h0, w_ih, w_hh, y, grad_y, grad_hn=None, nonlinearity="tanh",
             batch_sizes=None, reverse=False):
    """Returns (gx, gh0, gw_ih, gw_hh, gb) for L with ∂L/∂y = grad_y, ∂L/∂h_n = grad_hn."""
    rows, offsets, lengths = _layout(x, batch_sizes)
    H = w_hh.shape[0]
    yr = y.reshape(-1, H)
    gyr = grad_y.reshape(-1, H)
    gx = np.zeros_like(rows)
    gh0 = np.zeros_like(h0)
    gw_ih = np.zeros_like(w_ih)
    gw_hh = np.zeros_like(w_hh)
    gb = np.zeros(H, x.dtype)
    for s, length in enumerate(lengths):
        steps = _steps(length, reverse)
        g = grad_hn[s].copy() if grad_hn is not None else np.zeros(H, x.dtype)
        for i in range(len(steps) - 1, -1, -1):
            r = offsets[steps[i]] + s
            prev = yr[offsets[steps[i - 1]] + s] if i > 0 else h0[s]
            delta = (gyr[r] + g) * _dphi(yr[r], nonlinearity)
            gw_hh += np.outer(delta, prev)
            gw_ih += np.outer(delta, rows[r])
            gb += delta
            gx[r] = w_ih.T @ delta
            g = w_hh.T @ delta
        gh0[s] = g
    return gx.reshape(x.shape), gh0, gw_ih, gw_hh, gb
