"""rnnkern.reference against torch.nn in float64, for every drop-in cell of the registry (its
reference loop against its torch class: the Elman RNN, LSTM and GRU): one layer, both
directions, packed and padded, with and without hx and bias, and proj_size for a cell that
takes it."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from rnnkern import cells

from conftest import assert_f64_close

SIZES = [(1, 1, 1, 1), (5, 3, 4, 5), (7, 4, 3, 17), (3, 2, 5, 2)]


def reference_module(spec, module, x, hx, batch_sizes):
    """torch's module computed by the cell's reference loop, one direction at a time."""
    several = len(spec.states) > 1
    outputs, finals = [], []
    for d, suffix in enumerate(["", "_reverse"][:2 if module.bidirectional else 1]):
        w = {n: getattr(module, f"{n}_l0{suffix}", None)
             for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
        options = dict(batch_sizes=batch_sizes, reverse=d == 1)
        if spec.projection:
            options["w_hr"] = w["weight_hr"]
        if spec.nonlinearity:
            options["nonlinearity"] = module.nonlinearity
        if hx is None:
            state = None
        else:
            state = tuple(s[d] for s in hx) if several else hx[d]
        out, final = spec.reference_loop()(x, state, w["weight_ih"], w["weight_hh"],
                                           w["bias_ih"], w["bias_hh"], **options)
        outputs.append(out)
        finals.append(final if several else (final,))
    out = torch.cat(outputs, -1)
    stacked = tuple(torch.stack(column) for column in zip(*finals))
    return (out, stacked) if several else (out, stacked[0])


CASES = list(itertools.product(range(len(SIZES)), [False, True], [False, True], [True, False],
                               [False, True]))


def case_id(c):
    size, bidir, packed, bias, with_hx = c
    return (f"s{size}" + ("-bi" if bidir else "") + ("-packed" if packed else "") +
            ("" if bias else "-nobias") + ("-hx" if with_hx else ""))


def check(cell, size, bidir, packed, bias, with_hx, proj):
    """The reference module's outputs and gradients against torch's own."""
    spec = cells.get(cell)
    several = len(spec.states) > 1
    T, B, I, H = SIZES[size]
    proj_size = min(proj, H - 1) if proj else 0
    torch.manual_seed(size)
    options = dict(proj_size=proj_size) if spec.projection else {}
    module = spec.torch_type()(I, H, bias=bias, bidirectional=bidir, dtype=torch.float64,
                               **options)
    D = 2 if bidir else 1
    P = proj_size or H
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    hx = None
    if with_hx:
        h0 = torch.randn(D, B, P, dtype=torch.float64, requires_grad=True)
        c0 = torch.randn(D, B, H, dtype=torch.float64, requires_grad=True)
        hx = (h0, c0) if several else h0
    batch_sizes = None
    inp = x
    if packed:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T
        lengths = lengths.sort(descending=True).values
        inp = pack_padded_sequence(x, lengths)
        batch_sizes = inp.batch_sizes
    theirs = module(inp, hx)
    ours = reference_module(spec, module, inp.data if packed else x, hx, batch_sizes)

    def flat(result):
        out, state = result
        out = out.data if isinstance(out, PackedSequence) else out
        return [out, *(state if isinstance(state, tuple) else (state,))]

    theirs, ours = flat(theirs), flat(ours)
    inputs = [x, *module.parameters()] + ([] if hx is None else list(hx if several else (hx,)))
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


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_reference_matches_torch_float64(case, cell):
    check(cell, *case, proj=0)


@pytest.mark.cells(drop_in=True, projection=True)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_reference_with_proj_size_matches_torch_float64(case, cell):
    check(cell, *case, proj=1)
