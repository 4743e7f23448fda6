"""rnnkern.reference.lstm / gru against torch.nn.LSTM / GRU in float64: one layer, both
directions, packed and padded, with and without hx, bias and proj_size."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from rnnkern import reference

from conftest import assert_f64_close

SIZES = [(1, 1, 1, 1), (5, 3, 4, 5), (7, 4, 3, 17), (3, 2, 5, 2)]


def reference_module(module, x, hx, batch_sizes):
    """torch's module computed by the reference, one direction at a time."""
    lstm = isinstance(module, torch.nn.LSTM)
    outputs, h_n, c_n = [], [], []
    for d, suffix in enumerate(["", "_reverse"][:2 if module.bidirectional else 1]):
        w = {n: getattr(module, f"{n}_l0{suffix}", None)
             for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
        args = dict(batch_sizes=batch_sizes, reverse=d == 1)
        if lstm:
            state = None if hx is None else (hx[0][d], hx[1][d])
            out, (h, c) = reference.lstm(x, state, w["weight_ih"], w["weight_hh"],
                                         w["bias_ih"], w["bias_hh"], w["weight_hr"], **args)
            c_n.append(c)
        else:
            out, h = reference.gru(x, None if hx is None else hx[d], w["weight_ih"],
                                   w["weight_hh"], w["bias_ih"], w["bias_hh"], **args)
        outputs.append(out)
        h_n.append(h)
    out = torch.cat(outputs, -1)
    return (out, (torch.stack(h_n), torch.stack(c_n))) if lstm else (out, torch.stack(h_n))


CASES = list(itertools.product(["lstm", "gru"], range(len(SIZES)), [False, True],
                               [False, True], [True, False], [False, True], [0, 1]))


def case_id(c):
    cell, size, bidir, packed, bias, with_hx, proj = c
    return (f"{cell}-s{size}" + ("-bi" if bidir else "") + ("-packed" if packed else "") +
            ("" if bias else "-nobias") + ("-hx" if with_hx else "") + ("-proj" if proj else ""))


@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "lstm" or not c[6]], ids=case_id)
def test_reference_matches_torch_float64(case):
    cell, size, bidir, packed, bias, with_hx, proj = case
    T, B, I, H = SIZES[size]
    proj_size = min(proj, H - 1) if proj else 0
    torch.manual_seed(size)
    if cell == "lstm":
        module = torch.nn.LSTM(I, H, bias=bias, bidirectional=bidir, proj_size=proj_size,
                               dtype=torch.float64)
    else:
        module = torch.nn.GRU(I, H, bias=bias, bidirectional=bidir, dtype=torch.float64)
    D = 2 if bidir else 1
    P = proj_size or H
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    hx = None
    if with_hx:
        h0 = torch.randn(D, B, P, dtype=torch.float64, requires_grad=True)
        c0 = torch.randn(D, B, H, dtype=torch.float64, requires_grad=True)
        hx = (h0, c0) if cell == "lstm" else h0
    batch_sizes = None
    inp = x
    if packed:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T
        lengths = lengths.sort(descending=True).values
        inp = pack_padded_sequence(x, lengths)
        batch_sizes = inp.batch_sizes
    theirs = module(inp, hx)
    ours = reference_module(module, inp.data if packed else x, hx, batch_sizes)

    def flat(result):
        out, state = result
        out = out.data if isinstance(out, PackedSequence) else out
        return [out, *(state if isinstance(state, tuple) else (state,))]

    theirs, ours = flat(theirs), flat(ours)
    inputs = [x, *module.parameters()] + ([] if hx is None else list(hx if cell == "lstm"
                                                                      else (hx,)))
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in theirs]
    grads_t = torch.autograd.grad(sum((t * w).sum() for t, w in zip(theirs, weights)), inputs,
                                  retain_graph=True)
    grads_o = torch.autograd.grad(sum((t * w).sum() for t, w in zip(ours, weights)), inputs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert_f64_close(a.detach(), b.detach(), "output")
    for k, (a, b) in enumerate(zip(grads_o, grads_t)):
        assert_f64_close(a, b, f"grad {k}")
