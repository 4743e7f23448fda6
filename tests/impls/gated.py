"""Hand-written NumPy BPTTs of the gated cells for rnnkern.testing's tests (docs/design.md 1b,
torch's gate order), correct or with one classic bug, and torch.nn.LSTM / torch.nn.GRU
subclasses whose backward is one of them.

LSTM: bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y) -> dict with keys x, h0, c0, w_ih, w_hh,
b_ih, b_hh. GRU: bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y) -> dict with keys x, h0, w_ih,
w_hh, b_ih, b_hh. Gradients of L = Σ y ⊙ grad_y."""

import numpy as np
import torch


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


# ----------------------------------------------------------------------------- LSTM

def _lstm_steps(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    h, c, steps = h0, c0, []
    for x_t in x:
        a = x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)
        i, f, g, o = _sigmoid(a_i), _sigmoid(a_f), np.tanh(a_g), _sigmoid(a_o)
        c_prev, h_prev = c, h
        c = f * c_prev + i * g
        h = o * np.tanh(c)
        steps.append((i, f, g, o, c, c_prev, h_prev, h))
    return steps


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    return np.stack([s[-1] for s in _lstm_steps(x, h0, c0, w_ih, w_hh, b_ih, b_hh)])


def _lstm_bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y, bug=None, grad_c_n=None):
    steps = _lstm_steps(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    H = c0.shape[1]
    gh = np.zeros_like(h0)
    gc = np.zeros_like(c0) if grad_c_n is None else grad_c_n
    deltas = np.zeros(x.shape[:2] + (4 * H,))
    for t in range(x.shape[0] - 1, -1, -1):
        i, f, g, o, c, c_prev, _, _ = steps[t]
        d = grad_y[t] + gh
        tau = np.tanh(c)
        da_o = d * tau * o * (1 - o)
        dc = d * o * (1 if bug == "no tanh'" else 1 - tau ** 2) + gc
        da_i, da_g = dc * g * i * (1 - i), dc * i * (1 - g ** 2)
        da_f = dc * c_prev * f * (1 - f)
        T = x.shape[0]
        no_f = bug == "dc without f" or (bug == "dc without f at step 2" and t == 2) or (
            bug == "chunks of 3" and t > 0 and (T - t) % 3 == 0)
        gc = dc if no_f else dc * f
        deltas[t] = np.concatenate([da_i, da_f, da_g, da_o], axis=1)
        gh = deltas[t][:, :H] @ w_hh[:H] if bug == "only i to h" else deltas[t] @ w_hh
    h_prev = np.stack([s[6] for s in steps])
    rows = deltas.reshape(-1, 4 * H)
    gb = rows.sum(axis=0)
    return {"x": deltas @ w_ih, "h0": gh, "c0": gc,
            "w_ih": rows.T @ x.reshape(-1, x.shape[-1]),
            "w_hh": rows.T @ h_prev.reshape(-1, h0.shape[-1]), "b_ih": gb, "b_hh": gb.copy()}


def lstm_bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """Correct."""
    return _lstm_bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y)


def lstm_bptt_no_dtanh(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """dc = d ⊙ o without tanh'(c_t) = 1 - τ²: δ_t is wrong inside the step."""
    return _lstm_bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y, "no tanh'")


def lstm_bptt_dc_without_f(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """The cell gradient is passed to c_{t-1} without the forget gate's factor f."""
    return _lstm_bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y, "dc without f")


def lstm_bptt_f_dropped_at_step_2(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """A bug tied to an absolute step: the carry from step 2 to c_1 drops f_2 (every other
    step is right)."""
    return _lstm_bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y, "dc without f at step 2")


def lstm_bptt_chunked(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """A backward in chunks of 3 steps counted from the end (T-3 … T-1, T-6 … T-4, …) whose
    carry of dc across a chunk boundary drops f; the carry to c0 is right."""
    return _lstm_bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y, "chunks of 3")


def lstm_bptt_only_i_to_h(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """∂L/∂h_{t-1} from the input gate's block of δ_t W_hh only."""
    return _lstm_bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y, "only i to h")


# ----------------------------------------------------------------------------- GRU

def _gru_steps(x, h0, w_ih, w_hh, b_ih, b_hh):
    h, steps = h0, []
    for x_t in x:
        x_r, x_z, x_n = np.split(x_t @ w_ih.T + b_ih, 3, axis=1)
        h_r, h_z, h_n = np.split(h @ w_hh.T + b_hh, 3, axis=1)
        r, z = _sigmoid(x_r + h_r), _sigmoid(x_z + h_z)
        n = np.tanh(x_n + r * h_n)
        h_prev, h = h, (1 - z) * n + z * h
        steps.append((r, z, n, h_n, h_prev, h))
    return steps


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh):
    return np.stack([s[-1] for s in _gru_steps(x, h0, w_ih, w_hh, b_ih, b_hh)])


def _gru_bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, bug=None):
    steps = _gru_steps(x, h0, w_ih, w_hh, b_ih, b_hh)
    H = h0.shape[1]
    g = np.zeros_like(h0)
    dx = np.zeros(x.shape[:2] + (3 * H,))
    dh = np.zeros_like(dx)
    for t in range(x.shape[0] - 1, -1, -1):
        r, z, n, h_n, h_prev, _ = steps[t]
        d = grad_y[t] + g
        da_n = d * (1 - z) * (1 - n ** 2)
        da_z = d * (h_prev - n) * z * (1 - z)
        da_r = da_n * (1 if bug == "no h_n in da_r" else h_n) * r * (1 - r)
        dx[t] = np.concatenate([da_r, da_z, da_n], axis=1)
        dh[t] = np.concatenate([da_r, da_z, da_n * r], axis=1)
        g = dh[t] @ w_hh + (0 if bug == "no z carry" else d * z)
    h_prev = np.stack([s[4] for s in steps])
    rx, rh = dx.reshape(-1, 3 * H), dh.reshape(-1, 3 * H)
    return {"x": dx @ w_ih, "h0": g, "w_ih": rx.T @ x.reshape(-1, x.shape[-1]),
            "w_hh": rh.T @ h_prev.reshape(-1, H), "b_ih": rx.sum(axis=0),
            "b_hh": rh.sum(axis=0)}


def gru_bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """Correct."""
    return _gru_bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y)


def gru_bptt_no_h_n_in_da_r(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """da_r = da_n ⊙ r(1-r), without the hidden part h_n of n: δ_t is wrong inside the step."""
    return _gru_bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, "no h_n in da_r")


def gru_bptt_no_z_carry(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
    """∂L/∂h_{t-1} = δ_t W_hh without the direct path d_t ⊙ z_t."""
    return _gru_bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, "no z carry")


# ----------------------------------------------------------------------------- modules

class _Layer(torch.autograd.Function):
    """One layer-direction: forward and backward by the NumPy functions above."""

    @staticmethod
    def forward(ctx, cell, bug, x, *tensors):
        arrays = [t.detach().numpy() for t in (x, *tensors)]
        ctx.cell, ctx.bug, ctx.arrays = cell, bug, arrays
        if cell == "lstm":  # (y, c_n)
            steps = _lstm_steps(*arrays)
            return (torch.from_numpy(np.stack([s[-1] for s in steps])),
                    torch.from_numpy(steps[-1][4]))
        return torch.from_numpy(gru_forward(*arrays)), torch.zeros(0, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad_y, grad_c_n):
        if ctx.cell == "lstm":
            g = _lstm_bptt(*ctx.arrays, grad_y.numpy(), bug=ctx.bug,
                           grad_c_n=grad_c_n.numpy())
            keys = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")
        else:
            g = _gru_bptt(*ctx.arrays, grad_y.numpy(), bug=ctx.bug)
            keys = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")
        return (None, None) + tuple(torch.from_numpy(np.ascontiguousarray(g[k]))
                                    for k in keys)


def _weights(module, layer):
    return [getattr(module, f"{kind}_l{layer}") for kind in
            ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


class HandGRU(torch.nn.GRU):
    """torch.nn.GRU by gru_bptt: one direction, unpacked, with biases; `bug` in every layer."""

    bug = None

    def forward(self, input, hx=None):
        layer_input, h_n = input, []
        for layer in range(self.num_layers):
            out, _ = _Layer.apply("gru", self.bug, layer_input, hx[layer],
                                  *_weights(self, layer))
            h_n.append(out[-1])
            layer_input = out
        return layer_input, torch.stack(h_n)


class HandGRUNoZCarry(HandGRU):
    bug = "no z carry"


class HandGRUNoHnInDaR(HandGRU):
    bug = "no h_n in da_r"


class HandLSTM(torch.nn.LSTM):
    """torch.nn.LSTM by lstm_bptt: one direction, unpacked, with biases, no projection; `bug`
    in every layer."""

    bug = None

    def forward(self, input, hx=None):
        h0, c0 = hx
        layer_input, h_n, c_n = input, [], []
        for layer in range(self.num_layers):
            out, c = _Layer.apply("lstm", self.bug, layer_input, h0[layer], c0[layer],
                                  *_weights(self, layer))
            h_n.append(out[-1])
            c_n.append(c)
            layer_input = out
        return layer_input, (torch.stack(h_n), torch.stack(c_n))


class HandLSTMDcWithoutF(HandLSTM):
    bug = "dc without f"


class HandLSTMOnlyIToH(HandLSTM):
    bug = "only i to h"


class HandLSTMFDroppedAtStep2(HandLSTM):
    bug = "dc without f at step 2"


class CnDetached(torch.nn.LSTM):
    """torch.nn.LSTM whose c_n carries no gradient back."""

    def forward(self, input, hx=None):
        out, (h_n, c_n) = super().forward(input, hx)
        return out, (h_n, c_n.detach())


class ReturnsHnOnly(torch.nn.LSTM):
    """Returns (output, h_n) as torch.nn.RNN does, without c_n."""

    def forward(self, input, hx=None):
        out, (h_n, _) = super().forward(input, hx)
        return out, h_n
