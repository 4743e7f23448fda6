"""Gradient-flow diagnostics against autograd on unrolled float64 networks:
record_gradient_flow (‖∂L/∂h_t‖, and ‖∂L/∂c_t‖ for the LSTM) over every cell of the registry,
with layers, directions and packed input; jacobian_norms for the Elman RNN."""

import math
import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkern
from rnnkern import cells
from rnnkern.diagnostics import jacobian_norms, record_gradient_flow

from conftest import assert_f64_close


def weights_of(module, index, directions):
    layer, direction = divmod(index, directions)
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    get = lambda name: getattr(module, name + suffix, None)  # noqa: E731
    return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")


def step(cell, x, states, weights, phi):
    """One step of ``cell`` written out (x one vector or rows): the new states, (h,) or the
    LSTM's (h, c), c being the tensor that h is computed from."""
    w_ih, w_hh, b_ih, b_hh = weights
    a_x = x @ w_ih.T
    a_h = w_hh * states[0] if cells.get(cell).recurrent == "diagonal" else states[0] @ w_hh.T
    if b_ih is not None:
        a_x, a_h = a_x + b_ih, a_h + b_hh
    if cell in ("rnn", "indrnn"):
        return (phi(a_x + a_h),)
    if cell == "lstm":
        i, f, g, o = (a_x + a_h).chunk(4, -1)
        c = torch.sigmoid(f) * states[1] + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if cell == "gru":
        x_r, x_z, x_n = a_x.chunk(3, -1)
        h_r, h_z, h_n = a_h.chunk(3, -1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        return ((1 - z) * torch.tanh(x_n + r * h_n) + z * states[0],)
    raise AssertionError(f"no step written out for cell {cell!r}")


def make(cell, *args, nonlinearity="tanh", **options):
    """The cell's module; ``nonlinearity`` only for a cell that takes one."""
    spec = cells.get(cell)
    if spec.nonlinearity:
        options["nonlinearity"] = nonlinearity
    return spec.module_type()(*args, **options)


def unrolled(module, cell, x, lengths, hx, untied=None):
    """Every sample and step computed on its own; returns padded output, the final states
    (h_n, or (h_n, c_n)) and the states of each step, {(index, t, b): (h_t,) or (h_t, c_t)}.
    With a dict ``untied``, step t of layer-direction index reads its own copy of W_hh,
    untied[index, t] (shared by the samples), whose .grad is that step's term of ∂L/∂W_hh."""
    phi = torch.relu if getattr(module, "nonlinearity", "tanh") == "relu" else torch.tanh
    D = 2 if module.bidirectional else 1
    T, B = x.shape[:2]
    H = module.hidden_size
    layer_in = [x[:int(lengths[b]), b] for b in range(B)]
    states, final = {}, [[None] * B for _ in range(module.num_layers * D)]
    for layer in range(module.num_layers):
        outs = [[None] * D for _ in range(B)]
        for d in range(D):
            index = layer * D + d
            weights = weights_of(module, index, D)
            for b in range(B):
                n = int(lengths[b])
                state, seq = tuple(s[index, b] for s in hx), [None] * n
                for t in (range(n - 1, -1, -1) if d else range(n)):
                    w = weights
                    if untied is not None:
                        if (index, t) not in untied:
                            untied[index, t] = weights[1].detach().clone().requires_grad_()
                        w = (weights[0], untied[index, t], *weights[2:])
                    state = step(cell, layer_in[b][t], state, w, phi)
                    for s in state:
                        s.retain_grad()
                    states[index, t, b] = state
                    seq[t] = state[0]
                outs[b][d] = torch.stack(seq)
                final[index][b] = state
        layer_in = [torch.cat(outs[b], -1) for b in range(B)]
    output = torch.zeros(T, B, D * H, dtype=x.dtype)
    output = torch.stack([torch.cat([layer_in[b], output[len(layer_in[b]):, b]])
                          for b in range(B)], 1)
    finals = tuple(torch.stack([torch.stack([row[b][k] for b in range(B)]) for row in final])
                   for k in range(len(hx)))
    return output, finals, states


def loss_of(output, finals, seed=0):
    """A random linear loss of the output and each final state (h_n, c_n, …)."""
    g = torch.Generator().manual_seed(seed)
    loss = (output * torch.randn(output.shape, generator=g, dtype=output.dtype)).sum()
    for state in finals:
        loss = loss + (state * torch.randn(state.shape, generator=g, dtype=state.dtype)).sum()
    return loss


CASES = [
    dict(layers=1, bidirectional=False, nonlinearity="tanh", packed=False, batch_first=False),
    dict(layers=2, bidirectional=True, nonlinearity="tanh", packed=False, batch_first=True),
    dict(layers=2, bidirectional=True, nonlinearity="relu", packed=True, batch_first=False),
    dict(layers=3, bidirectional=False, nonlinearity="tanh", packed=True, batch_first=True),
    # large enough for the kernel to split the time loop by rows over threads
    dict(layers=1, bidirectional=True, nonlinearity="tanh", packed=True, batch_first=False,
         size=(12, 11, 4, 160)),
]


def run_case(case, cell, seed, **options):
    """A case's module run forward and backward (the loss of loss_of) under
    record_gradient_flow(module, **options): (module, flow, out, x, lengths, hx, D), out
    padded and time-major."""
    several = len(cells.get(cell).states) > 1
    torch.manual_seed(seed)
    T, B, I, H = case.get("size", (6, 4, 3, 5))
    module = make(cell, I, H, num_layers=case["layers"], bidirectional=case["bidirectional"],
                  nonlinearity=case["nonlinearity"], batch_first=case["batch_first"],
                  dtype=torch.float64)
    D = 2 if case["bidirectional"] else 1
    x = torch.randn(T, B, I, dtype=torch.float64)  # time-major, caller order
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(1))
    lengths[1] = T
    if not case["packed"]:
        lengths = torch.full((B,), T)
    hx = tuple(torch.randn(case["layers"] * D, B, H, dtype=torch.float64)
               for _ in cells.get(cell).states)
    if case["packed"]:
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
    else:
        inp = x.transpose(0, 1) if case["batch_first"] else x
    with record_gradient_flow(module, **options) as flow:
        out, finals = module(inp, hx if several else hx[0])
        if case["packed"]:
            out, _ = pad_packed_sequence(out, total_length=T)
        elif case["batch_first"]:
            out = out.transpose(0, 1)
        loss_of(out, finals if several else (finals,)).backward()
    return module, flow, out, x, lengths, hx, D


@pytest.mark.parametrize("case", CASES, ids=str)
def test_recorded_norms_equal_autograd_on_unrolled_network(case, cell):
    """A cell without a nonlinearity option runs its own gate functions in the relu case."""
    several = len(cells.get(cell).states) > 1
    module, flow, out, x, lengths, hx, D = run_case(case, cell, seed=0)
    T, B = x.shape[:2]
    assert flow.norms.shape == (case["layers"] * D, T, B)
    assert flow.norms.dtype == torch.float64
    recorded = [flow.norms]
    if several:  # ‖∂L/∂c_t‖ of the LSTM's cell state, in the same layout
        assert flow.cell_norms.shape == (case["layers"] * D, T, B)
        assert flow.cell_norms.dtype == torch.float64
        recorded.append(flow.cell_norms)
    else:
        assert flow.cell_norms is None

    ref_out, ref_finals, states = unrolled(module, cell, x, lengths, hx)
    assert_f64_close(out.detach(), ref_out.detach(), "output")
    loss_of(ref_out, ref_finals).backward()
    for k, norms in enumerate(recorded):
        for index in range(case["layers"] * D):
            for b in range(B):
                for t in range(T):
                    got = float(norms[index, t, b])
                    if t >= lengths[b]:
                        assert math.isnan(got)
                    else:
                        expected = float(states[index, t, b][k].grad.norm())
                        assert got == pytest.approx(expected, rel=1e-10, abs=1e-12), \
                            (k, index, t, b)


def test_history_keeps_every_backward_and_recording_stops_after_the_block(cell):
    several = len(cells.get(cell).states) > 1
    module = make(cell, 3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with record_gradient_flow(module) as flow:
        module(x)[0].sum().backward()
        (2 * module(x)[0]).sum().backward()
    assert len(flow.history) == 2
    torch.testing.assert_close(flow.history[1][:, -1], 2 * flow.history[0][:, -1])
    assert len(flow.cell_history) == (2 if several else 0)
    if several:  # at the last step ∂L/∂c_T comes from h_T alone: it doubles too
        torch.testing.assert_close(flow.cell_history[1][:, -1], 2 * flow.cell_history[0][:, -1])
    module(x)[0].sum().backward()
    assert len(flow.history) == 2
    assert module._gradient_flow is None


@pytest.mark.cells(drop_in=True)
def test_record_gradient_flow_rejects_other_modules(cell):
    """torch's own class of a drop-in cell is named in the message; another module gets the
    list of rnnkern's classes."""
    title = cells.get(cell).title
    with pytest.raises(TypeError, match=re.escape(f"rnn must be an rnnkern.{title}, got {title}")):
        with record_gradient_flow(cells.get(cell).torch_type()(2, 3)):
            pass
    *first, last = [c.title for c in cells.CELLS]
    wanted = f"rnn must be an rnnkern.{', '.join(first)} or {last}, got Linear"
    with pytest.raises(TypeError, match=re.escape(wanted)):
        with record_gradient_flow(torch.nn.Linear(3, 4)):
            pass


def test_recording_does_not_change_gradients(cell):
    module = make(cell, 3, 4, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    module(x)[0].square().sum().backward()
    plain = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    with record_gradient_flow(module):
        module(x)[0].square().sum().backward()
    for a, p in zip(plain, module.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=0, atol=0)


def test_recorded_norms_match_autograd(cell):
    """One layer, with a loss on the output and every final state: the norms against an
    autograd loop that keeps every state."""
    several = len(cells.get(cell).states) > 1
    torch.manual_seed(0)
    T, B, I, H = 6, 3, 4, 5
    module = make(cell, I, H, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, dtype=torch.float64, generator=g)
    h0 = torch.randn(1, B, H, dtype=torch.float64, generator=g)
    c0 = torch.randn(1, B, H, dtype=torch.float64, generator=g)
    gy = torch.randn(T, B, H, dtype=torch.float64, generator=g)
    ghn = torch.randn(B, H, dtype=torch.float64, generator=g)
    gcn = torch.randn(B, H, dtype=torch.float64, generator=g)
    with record_gradient_flow(module) as flow:
        if several:
            out, (h_n, c_n) = module(x, (h0, c0))
            loss = (out * gy).sum() + (h_n[0] * ghn).sum() + (c_n[0] * gcn).sum()
        else:
            out, h_n = module(x, h0)
            loss = (out * gy).sum() + (h_n[0] * ghn).sum()
        loss.backward()
    # ∂L/∂h_t (and ∂L/∂c_t) by autograd: the layer as a loop that keeps every state
    weights = [w.detach() for w in module._flat_weights]  # w_ih, w_hh, b_ih, b_hh
    state = tuple(s[0].clone().requires_grad_() for s in ((h0, c0) if several else (h0,)))
    kept = []
    for t in range(T):
        state = step(cell, x[t], state, weights, torch.tanh)
        for s in state:
            s.retain_grad()
        kept.append(state)
    loss = sum((kept[t][0] * gy[t]).sum() for t in range(T)) + (state[0] * ghn).sum()
    if several:
        loss = loss + (state[1] * gcn).sum()
    loss.backward()
    exact = [torch.stack([k[i].grad for k in kept]).norm(dim=-1) for i in range(len(state))]
    assert flow.norms.shape == (1, T, B)
    assert_f64_close(flow.norms[0], exact[0], "h norms")
    if several:
        assert flow.cell_norms.shape == (1, T, B)
        assert_f64_close(flow.cell_norms[0], exact[1], "c norms")
    else:
        assert flow.cell_norms is None


def test_layers_directions_and_unsorted_packed_input(cell):
    torch.manual_seed(0)
    module = make(cell, 3, 4, num_layers=2, bidirectional=True)
    lengths = torch.tensor([2, 5, 3])
    x = pack_padded_sequence(torch.randn(5, 3, 3), lengths, enforce_sorted=False)
    with record_gradient_flow(module) as flow:
        out, _ = module(x)
        out.data.square().sum().backward()
        out, _ = module(x)
        out.data.sum().backward()
    assert len(flow.history) == 2
    several = len(cells.get(cell).states) > 1
    for norms in [flow.norms] + ([flow.cell_norms] if several else []):
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


def step_function(w_ih, w_hh, b, phi, inputs):
    def run(h):
        for x_t in inputs:
            h = phi(w_ih @ x_t + w_hh @ h + b)
        return h
    return run


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("layer,direction", [(0, 0), (1, 1)])
@pytest.mark.parametrize("packed", [False, True])
def test_jacobian_norms_equal_autograd_jacobians(nonlinearity, layer, direction, packed):
    torch.manual_seed(1)
    T, B, I, H = 6, 3, 2, 4
    module = rnnkern.RNN(I, H, num_layers=2, bidirectional=True, nonlinearity=nonlinearity,
                         dtype=torch.float64)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("weight_hh"):
                p.mul_(2.0)  # let some products grow, some shrink
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 5]) if packed else torch.full((B,), T)
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
    result = jacobian_norms(module, inp, layer=layer, direction=direction)
    assert result.norms.shape == (T, B)

    # The layer's input: x, or layer 0's output computed on its own.
    if layer == 0:
        layer_in = x
    else:
        below = torch.nn.RNN(I, H, bidirectional=True, nonlinearity=nonlinearity,
                             dtype=torch.float64)
        below.load_state_dict({k: v for k, v in module.state_dict().items() if "_l0" in k})
        if packed:
            layer_in, _ = pad_packed_sequence(below(inp)[0], total_length=T)
        else:
            layer_in = below(x)[0]
    w_ih, w_hh, b_ih, b_hh = [w.detach() for w in weights_of(module, layer * 2 + direction, 2)]
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu
    sigma = float(torch.linalg.matrix_norm(w_hh, ord=2))
    assert result.sigma_max == pytest.approx(sigma, rel=1e-12)
    torch.testing.assert_close(result.bound, torch.tensor([sigma ** k for k in range(T)],
                                                         dtype=torch.float64))
    for b in range(B):
        n = int(lengths[b])
        seq = layer_in[:n, b].detach()
        if direction:
            seq = seq.flip(0)  # processing order
        states = [torch.zeros(H, dtype=torch.float64)]
        for x_t in seq:
            states.append(phi(w_ih @ x_t + w_hh @ states[-1] + b_ih + b_hh))
        for k in range(T):
            got = float(result.norms[k, b])
            if k >= n:
                assert math.isnan(got)
                continue
            start = states[n - k]  # h at k steps before the last processed one
            f = step_function(w_ih, w_hh, b_ih + b_hh, phi, seq[n - k:])
            jac = torch.autograd.functional.jacobian(f, start)
            expected = float(torch.linalg.matrix_norm(jac, ord=2))
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), (b, k)
            assert got <= result.bound[k] * (1 + 1e-9)


def test_jacobian_norms_argument_errors():
    module = rnnkern.RNN(2, 3)
    x = torch.randn(4, 1, 2)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 1\), got 1"):
        jacobian_norms(module, x, layer=1)
    with pytest.raises(ValueError, match=r"direction must be in \[0, 1\), got 1"):
        jacobian_norms(module, x, direction=1)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_weight_contributions_equal_the_gradients_of_untied_copies(case, cell):
    """Each step's ‖δ_tᵀ h_{t-1}‖_F, recorded inside the fused backward, is the norm of the
    gradient of that step's own copy of W_hh in the unrolled network; the horizon follows."""
    module, flow, out, x, lengths, hx, D = run_case(case, cell, seed=2, weight_contributions=True)
    T = x.shape[0]
    terms = flow.weight_contributions
    assert terms.shape == (case["layers"] * D, T) and terms.dtype == torch.float64

    untied = {}
    ref_out, ref_finals, _ = unrolled(module, cell, x, lengths, hx, untied)
    loss_of(ref_out, ref_finals).backward()
    expected = torch.zeros_like(terms)
    for (index, t), copy in untied.items():
        expected[index, t] = copy.grad.norm()
    assert_f64_close(terms, expected, "weight contributions")
    # the terms add up to the whole ∂L/∂W_hh of each layer-direction
    for index in range(case["layers"] * D):
        total = sum(copy.grad for (i, _), copy in untied.items() if i == index)
        w_hh = weights_of(module, index, D)[1]
        assert_f64_close(w_hh.grad, total, f"∂W_hh {index}")

    horizon = flow.horizon(0.9)
    for index in range(case["layers"] * D):
        by_distance = expected[index] if index % D == 1 else expected[index].flip(0)
        share = torch.cumsum(by_distance, 0) / by_distance.sum()
        assert int(horizon[index]) == int((share < 0.9 * (1 - 1e-12)).sum()), index
    assert ((flow.horizon(1.0) >= horizon) & (flow.horizon(1.0) <= T - 1)).all()


def test_weight_contributions_are_opt_in_and_float32_agrees(cell):
    module = make(cell, 3, 4, dtype=torch.float32)
    x = torch.randn(5, 2, 3)
    with record_gradient_flow(module) as flow:
        module(x)[0].sum().backward()
    assert flow.weight_contributions is None and flow.norms is not None
    with pytest.raises(RuntimeError, match="weight_contributions=True"):
        flow.horizon()
    double = make(cell, 3, 4, dtype=torch.float64)
    double.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    found = []
    for m, inp in ((module, x), (double, x.double())):
        with record_gradient_flow(m, weight_contributions=True) as flow:
            m(inp)[0].sum().backward()
        found.append(flow.weight_contributions)
    assert found[0].dtype == torch.float64
    torch.testing.assert_close(found[0], found[1], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="fraction must be in"):
        flow.horizon(0)
