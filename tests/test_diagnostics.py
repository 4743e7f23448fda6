"""Gradient-flow diagnostics against autograd on an unrolled float64 network."""

import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkern
from rnnkern.diagnostics import jacobian_norms, record_gradient_flow

from conftest import assert_f64_close


def weights_of(module, index, directions):
    layer, direction = divmod(index, directions)
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    get = lambda name: getattr(module, name + suffix, None)  # noqa: E731
    return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")


def unrolled(module, x, lengths, hx):
    """Every sample and step computed on its own; returns padded output, h_n and the h_t."""
    phi = torch.tanh if module.nonlinearity == "tanh" else torch.relu
    D = 2 if module.bidirectional else 1
    T, B = x.shape[:2]
    H = module.hidden_size
    layer_in = [x[:int(lengths[b]), b] for b in range(B)]
    states, h_n = {}, [[None] * B for _ in range(module.num_layers * D)]
    for layer in range(module.num_layers):
        outs = [[None] * D for _ in range(B)]
        for d in range(D):
            index = layer * D + d
            w_ih, w_hh, b_ih, b_hh = weights_of(module, index, D)
            for b in range(B):
                n = int(lengths[b])
                h, seq = hx[index, b], [None] * n
                for t in (range(n - 1, -1, -1) if d else range(n)):
                    a = w_ih @ layer_in[b][t] + w_hh @ h
                    if b_ih is not None:
                        a = a + b_ih + b_hh
                    h = phi(a)
                    h.retain_grad()
                    states[index, t, b] = h
                    seq[t] = h
                outs[b][d] = torch.stack(seq)
                h_n[index][b] = h
        layer_in = [torch.cat(outs[b], -1) for b in range(B)]
    output = torch.zeros(T, B, D * H, dtype=x.dtype)
    output = torch.stack([torch.cat([layer_in[b], output[len(layer_in[b]):, b]])
                          for b in range(B)], 1)
    return output, torch.stack([torch.stack(row) for row in h_n]), states


def loss_of(output, h_n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (output * torch.randn(output.shape, generator=g, dtype=output.dtype)).sum() + \
        (h_n * torch.randn(h_n.shape, generator=g, dtype=h_n.dtype)).sum()


CASES = [
    dict(layers=1, bidirectional=False, nonlinearity="tanh", packed=False, batch_first=False),
    dict(layers=2, bidirectional=True, nonlinearity="tanh", packed=False, batch_first=True),
    dict(layers=2, bidirectional=True, nonlinearity="relu", packed=True, batch_first=False),
    dict(layers=3, bidirectional=False, nonlinearity="tanh", packed=True, batch_first=True),
    # large enough for the kernel to split the time loop by rows over threads
    dict(layers=1, bidirectional=True, nonlinearity="tanh", packed=True, batch_first=False,
         size=(12, 11, 4, 160)),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_recorded_norms_equal_autograd_on_unrolled_network(case):
    torch.manual_seed(0)
    T, B, I, H = case.get("size", (6, 4, 3, 5))
    module = rnnkern.RNN(I, H, num_layers=case["layers"], bidirectional=case["bidirectional"],
                         nonlinearity=case["nonlinearity"], batch_first=case["batch_first"],
                         dtype=torch.float64)
    D = 2 if case["bidirectional"] else 1
    x = torch.randn(T, B, I, dtype=torch.float64)  # time-major, caller order
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(1))
    lengths[1] = T
    if not case["packed"]:
        lengths = torch.full((B,), T)
    hx = torch.randn(case["layers"] * D, B, H, dtype=torch.float64)

    if case["packed"]:
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
    else:
        inp = x.transpose(0, 1) if case["batch_first"] else x
    with record_gradient_flow(module) as flow:
        out, h_n = module(inp, hx)
        if case["packed"]:
            out, _ = pad_packed_sequence(out, total_length=T)
        elif case["batch_first"]:
            out = out.transpose(0, 1)
        loss_of(out, h_n).backward()
    assert flow.norms.shape == (case["layers"] * D, T, B)
    assert flow.norms.dtype == torch.float64

    ref_out, ref_h_n, states = unrolled(module, x, lengths, hx)
    assert_f64_close(out.detach(), ref_out.detach(), "output")
    loss_of(ref_out, ref_h_n).backward()
    for index in range(case["layers"] * D):
        for b in range(B):
            for t in range(T):
                got = float(flow.norms[index, t, b])
                if t >= lengths[b]:
                    assert math.isnan(got)
                else:
                    expected = float(states[index, t, b].grad.norm())
                    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12), (index, t, b)


def test_history_keeps_every_backward_and_recording_stops_after_the_block():
    module = rnnkern.RNN(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with record_gradient_flow(module) as flow:
        module(x)[0].sum().backward()
        (2 * module(x)[0]).sum().backward()
    assert len(flow.history) == 2
    torch.testing.assert_close(flow.history[1][:, -1], 2 * flow.history[0][:, -1])
    module(x)[0].sum().backward()
    assert len(flow.history) == 2
    assert module._gradient_flow is None


def test_record_gradient_flow_rejects_other_modules():
    with pytest.raises(TypeError, match="rnn must be an rnnkern.RNN, got RNN"):
        with record_gradient_flow(torch.nn.RNN(2, 3)):
            pass


def test_recording_does_not_change_gradients():
    module = rnnkern.RNN(3, 4, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    module(x)[0].square().sum().backward()
    plain = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    with record_gradient_flow(module):
        module(x)[0].square().sum().backward()
    for a, p in zip(plain, module.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=0, atol=0)


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
