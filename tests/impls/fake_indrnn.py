"""A stand-in for the registry's IndRNN, put in its place by a test only: a spec whose
module computes on the reference loop (through rnnkern.testing's input handling) instead of
rnnkern's kernels, a cell that is not a drop-in for its torch class (torch.nn.RNN, whose W_hh
is (H, H)), and NumPy bptt functions (one right, one with the hand-off to h_{t-1} missing u),
for the tests of rnnkern.testing and rnnkern check."""

import numpy as np
import torch

from rnnkern import cells
from rnnkern.indrnn import reference as _indrnn_reference

SPEC = cells.Cell(
    "indrnn", "IndRNN", ("h",), ("h",), nonlinearity=True, projection=False,
    torch_class="torch.nn:RNN", module="fake_indrnn:IndRNN", drop_in=False,
    reference="fake_indrnn:reference", backends=(),
    summary="the IndRNN, h_t = φ(x_t W_ihᵀ + b_ih + u ⊙ h_{t-1} + b_hh)",
    recurrent="diagonal", delta="δ_{t}", error_inside="in the φ'(a_{t}) factor",
    hand_offs=("it is δ_{t} ⊙ u, u = W_hh the vector",))


# the reference loop: rnnkern's own IndRNN's, after rnnkern.cells' convention
reference = _indrnn_reference


class IndRNN(torch.nn.RNN):
    """torch.nn.RNN's constructor and forward, with weight_hh_l{k} of shape (H,); computed
    layer by layer with :func:`reference` (through rnnkern.testing's input handling)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self._flat_weights_names:
            if name.startswith("weight_hh"):
                old = getattr(self, name)
                setattr(self, name, torch.nn.Parameter(
                    old.new_empty(self.hidden_size).uniform_(-1, 1)))

    def forward(self, input, hx=None):  # type: ignore[override]
        from rnnkern import testing
        return testing._reference_forward(self, cells.get("indrnn"), input, hx)


def _phi(nonlinearity):
    if nonlinearity == "relu":
        return lambda a: np.maximum(a, 0), lambda h: (h > 0).astype(h.dtype)
    return np.tanh, lambda h: 1 - h * h


def forward(x, h0, w_ih, w_hh, b_ih, b_hh):
    phi, _ = _phi("tanh")
    h, ys = h0, []
    for x_t in x:
        h = phi(x_t @ w_ih.T + b_ih + w_hh * h + b_hh)
        ys.append(h)
    return np.stack(ys)


def _bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, bug=False):
    _, dphi = _phi("tanh")
    y = forward(x, h0, w_ih, w_hh, b_ih, b_hh)
    previous = np.concatenate([h0[None], y[:-1]])
    g = np.zeros_like(h0)
    deltas = np.zeros_like(y)
    for t in range(x.shape[0] - 1, -1, -1):
        delta = (grad_y[t] + g) * dphi(y[t])
        deltas[t] = delta
        g = delta if bug else delta * w_hh
    rows = deltas.reshape(-1, deltas.shape[-1])
    return {"x": deltas @ w_ih, "h0": g, "w_ih": rows.T @ x.reshape(-1, x.shape[-1]),
            "w_hh": (deltas * previous).sum(axis=(0, 1)), "b_ih": rows.sum(0),
            "b_hh": rows.sum(0)}


def bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    return _bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y)


def bptt_hand_off_without_u(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """Sends δ_t back to h_{t-1} without the factor u."""
    return _bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, bug=True)
