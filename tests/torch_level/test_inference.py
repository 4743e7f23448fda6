"""A call that needs no gradient (torch.no_grad, torch.inference_mode, frozen weights) runs the
whole stack of layers and directions in one call of the kernels (functional.stack_inference),
and a batch of one or two rows reads W_hh as it is (dot products, no packing): both against
torch.nn in float64 (1e-10) and float32, for every drop-in cell, layers, directions,
batch_first, bias, unbatched input, hx given and omitted; and the path is taken only when no
gradient is needed."""

import itertools

import pytest
import torch

import rnnkern
from conftest import assert_f32_close, assert_f64_close
from rnnkern import _core, cells

# (T, B, I, H): rows of one and two (W_hh read as it is), then more rows and steps (packed).
SIZES = [(1, 1, 5, 17), (1, 2, 3, 33), (3, 1, 16, 64), (16, 2, 4, 8), (17, 1, 3, 5),
         (2, 3, 4, 5), (5, 9, 6, 40), (1, 1, 128, 256)]


def _pair(cell, I, H, dtype, **options):
    torch.manual_seed(0)
    theirs = cells.get(cell).torch_type()(I, H, dtype=dtype, **options)
    ours = cells.get(cell).module_type()(I, H, dtype=dtype, **options)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _states(cell, result):
    return tuple(result[1]) if cell == "lstm" else (result[1],)


def _hx(cell, layers, B, H, dtype, unbatched):
    shape = (layers, H) if unbatched else (layers, B, H)
    h = torch.randn(*shape, dtype=dtype)
    return (h, torch.randn(*shape, dtype=dtype)) if cell == "lstm" else h


def _assert_same_without_grad(cell, theirs, ours, x, hx):
    """Under no_grad, ours gives torch's output and final states (shapes, float64 1e-10)."""
    with torch.no_grad():
        expected, got = theirs(x, hx), ours(x, hx)
    assert got[0].shape == expected[0].shape
    assert_f64_close(got[0], expected[0], "output")
    for g, e in zip(_states(cell, got), _states(cell, expected)):
        assert g.shape == e.shape
        assert_f64_close(g, e, "final state")


@pytest.fixture
def calls(monkeypatch):
    """How many times the stack's kernel call ran."""
    count = [0]
    real = _core.stack_forward_pointers

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(_core, "stack_forward_pointers", counting)
    return count


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("size", SIZES, ids=["x".join(map(str, s)) for s in SIZES])
@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, False), (1, True), (3, True)])
def test_float64_matches_torch(cell, size, layers, bidirectional, calls):
    T, B, I, H = size
    theirs, ours = _pair(cell, I, H, torch.float64, num_layers=layers,
                         bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I, dtype=torch.float64)
    for hx in (None, _hx(cell, layers * D, B, H, torch.float64, False)):
        _assert_same_without_grad(cell, theirs, ours, x, hx)
    assert calls[0] == 2


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("size", SIZES[:4] + SIZES[-2:], ids=["x".join(map(str, s))
                                                               for s in SIZES[:4] + SIZES[-2:]])
@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True)])
def test_float32_within_torchs_error(cell, size, layers, bidirectional, calls):
    T, B, I, H = size
    theirs, ours = _pair(cell, I, H, torch.float32, num_layers=layers,
                         bidirectional=bidirectional)
    exact = cells.get(cell).torch_type()(I, H, num_layers=layers, bidirectional=bidirectional,
                                         dtype=torch.float64)
    exact.load_state_dict({k: v.double() for k, v in theirs.state_dict().items()})
    x = torch.randn(T, B, I)
    with torch.inference_mode():
        got, expected, best = ours(x), theirs(x), exact(x.double())
    assert got[0].dtype == torch.float32
    assert_f32_close(got[0], expected[0], best[0], "output")
    for g, e, b in zip(_states(cell, got), _states(cell, expected), _states(cell, best)):
        assert_f32_close(g, e, b, "final state")
    assert calls[0] == 1


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("batch_first, bias, unbatched",
                         list(itertools.product([False, True], [False, True], [False, True])))
def test_layouts(cell, batch_first, bias, unbatched, calls):
    T, B, I, H = 4, 2, 3, 6
    theirs, ours = _pair(cell, I, H, torch.float64, num_layers=2, bidirectional=True,
                         batch_first=batch_first, bias=bias)
    x = torch.randn(B, T, I, dtype=torch.float64) if batch_first else \
        torch.randn(T, B, I, dtype=torch.float64)
    if unbatched:
        x = x[0] if batch_first else x[:, 0]
    for hx in (None, _hx(cell, 4, B, H, torch.float64, unbatched)):
        _assert_same_without_grad(cell, theirs, ours, x, hx)
    assert calls[0] == 2


@pytest.mark.cells(drop_in=True)
def test_only_without_gradient(cell, calls):
    """With a gradient to compute (grad enabled and a tensor that requires it), training
    dropout between layers, or a projection, the general path runs; frozen weights and an
    input that needs no gradient take the stack's call even with grad enabled."""
    theirs, ours = _pair(cell, 3, 5, torch.float64, num_layers=2)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    out, _ = ours(x)
    out.sum().backward()
    assert calls[0] == 0 and ours.weight_ih_l0.grad is not None
    x_grad = x.clone().requires_grad_()
    with torch.no_grad():
        ours(x_grad)
    assert calls[0] == 1
    ours.requires_grad_(False)
    out, _ = ours(x)
    assert calls[0] == 2 and not out.requires_grad
    assert_f64_close(out, theirs(x)[0].detach(), "frozen")
    out, _ = ours(x_grad)
    assert calls[0] == 2 and out.requires_grad  # x needs a gradient: the general path
    ours.dropout = 0.5
    ours.train()
    with torch.no_grad():
        ours(x)
    assert calls[0] == 2
    ours.eval()
    with torch.no_grad():
        ours(x)
    assert calls[0] == 3


def test_lstm_projection_takes_the_general_path(calls):
    theirs, ours = _pair("lstm", 3, 6, torch.float64, num_layers=2, proj_size=4)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        assert_f64_close(ours(x)[0], theirs(x)[0], "proj_size")
    assert calls[0] == 0


@pytest.mark.cells(drop_in=True)
def test_converted_generate_loop(cell, calls):
    """A converted model fed one token per call, hx carried, as generation does."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(dict(embed=torch.nn.Embedding(11, 4),
                                     rnn=cells.get(cell).torch_type()(4, 8, num_layers=2),
                                     head=torch.nn.Linear(8, 11))).double()
    twin = rnnkern.convert(__import__("copy").deepcopy(model))
    outputs = []
    for m in (model, twin):
        token, hx, seen = torch.zeros(1, 1, dtype=torch.long), None, []
        with torch.no_grad():
            for _ in range(20):
                out, hx = m["rnn"](m["embed"](token), hx)
                token = m["head"](out[0]).argmax(-1, keepdim=True)
                seen.append(out)
        outputs.append(torch.cat(seen))
    assert_f64_close(outputs[1], outputs[0], "generated")
    assert calls[0] == 20


def test_binding_checks_its_sizes():
    with pytest.raises(ValueError, match="4 pointers per layer and direction"):
        _core.stack_forward_pointers("gru", False, 1, 1, 2, 3, 1, 1, 8, 8, 0, [8, 8], 8, 8, 0,
                                     None)
    with pytest.raises(ValueError, match="directions 1 or 2"):
        _core.stack_forward_pointers("gru", False, 1, 1, 2, 3, 1, 3, 8, 8, 0, [], 8, 8, 0, None)
    with pytest.raises(ValueError, match="cell must be one of"):
        _core.stack_forward_pointers("elman", False, 1, 1, 2, 3, 1, 1, 8, 8, 0, [8] * 4, 8, 8,
                                     0, None)
    with pytest.raises(ValueError, match="pointers set"):
        _core.stack_forward_pointers("lstm", False, 1, 1, 2, 3, 1, 1, 8, 8, 0, [8] * 4, 8, 8,
                                     0, None)
