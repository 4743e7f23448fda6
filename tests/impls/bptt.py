"""Hand-written NumPy BPTTs for rnnkern.testing's tests: a correct one and one with each
classic bug. Signature: bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y) -> dict of gradients of
L = Σ y ⊙ grad_y (tanh, time-major x (T, B, I), h0 (B, H))."""

import numpy as np


def forward(x, h0, w_ih, w_hh, b_ih, b_hh):
    h, ys = h0, []
    for x_t in x:
        h = np.tanh(x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        ys.append(h)
    return np.stack(ys)


def forward_off_by_one(x, h0, w_ih, w_hh, b_ih, b_hh):
    """Wrong forward: the state is not carried from step 2 to step 3."""
    h, ys = h0, []
    for t, x_t in enumerate(x):
        h = np.tanh(x_t @ w_ih.T + b_ih + (h0 if t == 3 else h) @ w_hh.T + b_hh)
        ys.append(h)
    return np.stack(ys)


def _bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, bug=None):
    y = (forward_off_by_one if bug == "forward" else forward)(x, h0, w_ih, w_hh, b_ih, b_hh)
    T = x.shape[0]
    g = np.zeros_like(h0)      # ∂L/∂h_t through the recurrence, from step t + 1
    late = np.zeros_like(h0)
    deltas = np.zeros_like(y)
    for t in range(T - 1, -1, -1):
        if bug == "one step late":
            d = grad_y[t] + late     # the gradient from step t + 1 arrives at step t - 1
            late = g
        else:
            d = grad_y[t] + g
        deltas[t] = d if bug == "no dphi" else d * (1 - y[t] ** 2)
        g = deltas[t] @ (w_hh.T if bug == "w_hh untransposed" else w_hh)
        if bug == "chunks of 3" and t % 3 == 0 and t > 0:
            g = np.zeros_like(g)  # the carry into the chunk before is lost
    h_prev = np.concatenate([h0[None], y[:-1]])
    rows = deltas.reshape(-1, deltas.shape[-1])
    gb = deltas.sum(axis=(0, 2)) if bug == "bias axis" else deltas.sum(axis=(0, 1))
    return {"x": deltas @ w_ih, "h0": g,
            "w_ih": rows.T @ x.reshape(-1, x.shape[-1]),
            "w_hh": rows.T @ h_prev.reshape(-1, h0.shape[-1]),
            "b_ih": gb, "b_hh": gb.copy()}


def bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """Correct."""
    return _bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y)


def bptt_no_dphi(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """δ_t = ∂L/∂h_t: the φ'(a_t) = 1 - h_t² factor is left out."""
    return _bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, "no dphi")


def bptt_w_hh_untransposed(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """∂L/∂h_{t-1} = δ_t W_hhᵀ instead of δ_t W_hh."""
    return _bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, "w_hh untransposed")


def bptt_one_step_late(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """The gradient from step t + 1 is added at step t - 1 instead of step t."""
    return _bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, "one step late")


def bptt_bias_axis(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """Bias gradient summed over time and units (axes 0, 2) instead of time and batch: the
    right shape only when B == H."""
    return _bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, "bias axis")


def bptt_chunked(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """A backward in chunks of 3 steps from the start (0 … 2, 3 … 5, …) that loses the carry
    across a chunk boundary: step 3 sends nothing back to h_2 (nor 6 to h_5, …); the
    gradient to h0 is right."""
    return _bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, "chunks of 3")


def bptt_forward_off_by_one(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """The backward's formulas are right but run on forward_off_by_one's states: the bug is in
    the forward (the state is not carried from step 2 to step 3)."""
    return _bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, "forward")


def bptt_without_w_hh(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    grads = bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y)
    del grads["w_hh"]
    return grads


def bptt_transposed_w_ih(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    grads = bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y)
    grads["w_ih"] = grads["w_ih"].T
    return grads


def bptt_returns_a_tuple(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    return tuple(bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y).values())


NOT_A_FUNCTION = 3
