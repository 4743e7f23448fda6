"""record_gradient_flow on rnnkern.LSTM and rnnkern.GRU: ‖∂L/∂h_t‖ (and ‖∂L/∂c_t‖) from the
kernel against autograd, layouts of layered, bidirectional and packed input."""

import math
import re

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkern
from rnnkern import cells
from rnnkern.diagnostics import record_gradient_flow

from conftest import assert_f64_close
from test_gated_numpy import step_norms


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recorded_norms_match_autograd(cell):
    torch.manual_seed(0)
    T, B, I, H = 6, 3, 4, 5
    module = (rnnkern.LSTM if cell == "lstm" else rnnkern.GRU)(I, H, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, dtype=torch.float64, generator=g)
    h0 = torch.randn(1, B, H, dtype=torch.float64, generator=g)
    c0 = torch.randn(1, B, H, dtype=torch.float64, generator=g)
    gy = torch.randn(T, B, H, dtype=torch.float64, generator=g)
    ghn = torch.randn(B, H, dtype=torch.float64, generator=g)
    gcn = torch.randn(B, H, dtype=torch.float64, generator=g)
    with record_gradient_flow(module) as flow:
        if cell == "lstm":
            out, (h_n, c_n) = module(x, (h0, c0))
            loss = (out * gy).sum() + (h_n[0] * ghn).sum() + (c_n[0] * gcn).sum()
        else:
            out, h_n = module(x, h0)
            loss = (out * gy).sum() + (h_n[0] * ghn).sum()
        loss.backward()
    p = dict(x=x.numpy(), h0=h0[0].numpy(), c0=c0[0].numpy() if cell == "lstm" else None,
             w_ih=module.weight_ih_l0.detach().numpy(), w_hh=module.weight_hh_l0.detach().numpy(),
             b_ih=module.bias_ih_l0.detach().numpy(), b_hh=module.bias_hh_l0.detach().numpy())
    exact_h, exact_c = step_norms(cell, p, dict(grad_y=gy.numpy(), grad_hn=ghn.numpy(),
                                                grad_cn=gcn.numpy()), False)
    assert flow.norms.shape == (1, T, B)
    assert_f64_close(flow.norms[0].reshape(-1), exact_h, "h norms")
    if cell == "lstm":
        assert flow.cell_norms.shape == (1, T, B)
        assert_f64_close(flow.cell_norms[0].reshape(-1), exact_c, "c norms")
    else:
        assert flow.cell_norms is None


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layers_directions_and_unsorted_packed_input(cell):
    torch.manual_seed(0)
    module = (rnnkern.LSTM if cell == "lstm" else rnnkern.GRU)(3, 4, num_layers=2,
                                                               bidirectional=True)
    lengths = torch.tensor([2, 5, 3])
    x = pack_padded_sequence(torch.randn(5, 3, 3), lengths, enforce_sorted=False)
    with record_gradient_flow(module) as flow:
        out, _ = module(x)
        out.data.square().sum().backward()
        out, _ = module(x)
        out.data.sum().backward()
    assert len(flow.history) == 2
    for norms in [flow.norms] + ([flow.cell_norms] if cell == "lstm" else []):
        assert norms.shape == (4, 5, 3)
        for b, n in enumerate(lengths.tolist()):  # caller's order: NaN past each length
            assert torch.isfinite(norms[:, :n, b]).all()
            assert torch.isnan(norms[:, n:, b]).all()
    assert module._gradient_flow is None


def test_lstm_cell_gradient_survives_where_elman_vanishes():
    """The point of the gated cells: with the loss on the last step only, the gradient that
    reaches step 0 of a default-initialised tanh RNN is far smaller than the LSTM's."""
    torch.manual_seed(0)
    T, B = 100, 8
    x = torch.randn(T, B, 4, dtype=torch.float64)
    reach = {}
    for name, cls in (("rnn", rnnkern.RNN), ("lstm", rnnkern.LSTM), ("gru", rnnkern.GRU)):
        module = cls(4, 32, dtype=torch.float64)
        if name == "lstm":
            with torch.no_grad():  # forget-gate bias 1 (Jozefowicz et al. 2015)
                module.bias_ih_l0[32:64].fill_(1.0)
        with record_gradient_flow(module) as flow:
            out, _ = module(x)
            out[-1].sum().backward()
        norms = flow.norms[0].mean(1)
        reach[name] = float(norms[0] / norms[-1])
    assert reach["rnn"] < 1e-6
    assert reach["lstm"] > 1e3 * reach["rnn"] and reach["gru"] > 1e3 * reach["rnn"]


def test_recording_with_proj_size_matches_autograd():
    torch.manual_seed(0)
    module = rnnkern.LSTM(3, 4, proj_size=2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with record_gradient_flow(module) as flow:
        out, _ = module(x)
        out.square().sum().backward()
    # ∂L/∂h_t by autograd: the same layer written as a loop that keeps every h_t
    w = [p.detach().requires_grad_() for p in module._flat_weights]
    h, c, grads = torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64), []
    outputs = []
    for t in range(5):
        a = x[t] @ w[0].T + w[2] + h @ w[1].T + w[3]
        i, f, g, o = a.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = (torch.sigmoid(o) * torch.tanh(c)) @ w[4].T
        h.retain_grad()
        outputs.append(h)
    sum(o.square().sum() for o in outputs).backward()
    exact = torch.stack([o.grad.norm(dim=1) for o in outputs])
    assert_f64_close(flow.norms[0], exact, "h norms")


def test_record_rejects_other_modules():
    with pytest.raises(TypeError, match="rnn must be an rnnkern.LSTM, got LSTM"):
        with record_gradient_flow(torch.nn.LSTM(3, 4)):
            pass
    *first, last = [c.title for c in cells.CELLS]
    wanted = f"rnn must be an rnnkern.{', '.join(first)} or {last}, got Linear"
    with pytest.raises(TypeError, match=re.escape(wanted)):
        with record_gradient_flow(torch.nn.Linear(3, 4)):
            pass
