"""rnnkern.RNNCell, LSTMCell and GRUCell against torch.nn's: one state_dict, the same new
states and every gradient through a Python time loop, in float64 (1e-10) and float32, batched
and unbatched, hx given and omitted, bias or none; torch's errors; convert / revert, scripting
and tracing get torch's cell; and each forward and backward is one call of the kernels."""

import copy

import pytest
import torch

import rnnkern
from conftest import assert_f32_close, assert_f64_close
from rnnkern import _core, cells

STEP_CELLS = [c.name for c in cells.CELLS if c.step_module]


def _pair(cell, I, H, dtype=torch.float64, **options):
    theirs_type, ours_type = cells.get(cell).step_types()
    torch.manual_seed(0)
    theirs = theirs_type(I, H, dtype=dtype, **options)
    ours = ours_type(I, H, dtype=dtype, **options)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _loop(module, xs, hx):
    """Steps over xs, the states carried; the outputs stacked, and the last states."""
    outs = []
    for x in xs:
        hx = module(x, hx)
        outs.append(hx[0] if isinstance(hx, tuple) else hx)
    return torch.stack(outs), hx


def _initial(cell, B, H, dtype, unbatched):
    shape = (H,) if unbatched else (B, H)
    h = torch.randn(*shape, dtype=dtype)
    return (h, torch.randn(*shape, dtype=dtype)) if cell == "lstm" else h


def _flat(states):
    return list(states) if isinstance(states, tuple) else [states]


# Each cell's options: bias or none, and the RNNCell's relu.
OPTIONS = [(cell, options) for cell in STEP_CELLS
           for options in ([{}, {"bias": False}] + ([{"nonlinearity": "relu"}]
                                                    if cells.get(cell).nonlinearity else []))]


@pytest.mark.parametrize("cell, options", OPTIONS,
                         ids=[f"{c}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}"
                              for c, o in OPTIONS])
@pytest.mark.parametrize("B, I, H", [(1, 3, 5), (4, 7, 17), (32, 16, 64), (2, 1, 1)])
@pytest.mark.parametrize("hx_given", [False, True])
@pytest.mark.parametrize("unbatched", [False, True])
def test_float64_loop_matches_torch(cell, options, B, I, H, hx_given, unbatched):
    theirs, ours = _pair(cell, I, H, **options)
    steps = 6
    xs = torch.randn(steps, I, dtype=torch.float64) if unbatched else \
        torch.randn(steps, B, I, dtype=torch.float64)
    h0 = _initial(cell, B, H, torch.float64, unbatched) if hx_given else None
    results = []
    for module in (theirs, ours):
        x = xs.clone().requires_grad_()
        hx = None if h0 is None else tuple(h.clone().requires_grad_() for h in _flat(h0))
        hx = hx if hx is None or cell == "lstm" else hx[0]
        out, last = _loop(module, x, hx)
        torch.manual_seed(1)
        loss = (out * torch.randn_like(out)).sum() + sum(
            (h * torch.randn_like(h)).sum() for h in _flat(last))
        params = list(module.parameters())
        wrt = [x, *params] + ([] if hx is None else _flat(hx))
        grads = torch.autograd.grad(loss, wrt)
        results.append((out.detach(), [h.detach() for h in _flat(last)], grads))
    (out_t, last_t, grads_t), (out_o, last_o, grads_o) = results
    assert out_o.shape == out_t.shape
    assert_f64_close(out_o, out_t, "outputs")
    for a, b in zip(last_o, last_t):
        assert a.shape == b.shape
        assert_f64_close(a, b, "last state")
    for a, b in zip(grads_o, grads_t):
        assert a.shape == b.shape
        assert_f64_close(a, b, "gradient")


@pytest.mark.parametrize("cell", STEP_CELLS)
@pytest.mark.parametrize("B, H", [(1, 64), (32, 256)])
def test_float32_within_torchs_error(cell, B, H):
    theirs, ours = _pair(cell, 16, H, dtype=torch.float32)
    exact = copy.deepcopy(theirs).double()
    xs = torch.randn(5, B, 16)
    got = _loop(ours, xs, None)[0]
    expected = _loop(theirs, xs, None)[0]
    best = _loop(exact, xs.double(), None)[0]
    assert got.dtype == torch.float32
    assert_f32_close(got.detach(), expected.detach(), best.detach(), "outputs")
    got.sum().backward()
    expected.sum().backward()
    best.sum().backward()
    for a, b, c in zip(ours.parameters(), theirs.parameters(), exact.parameters()):
        assert_f32_close(a.grad, b.grad, c.grad, "weight gradient")


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = {"forward": 0, "backward": 0}
    for name, kind in (("layer_forward_pointers", "forward"),
                       ("layer_backward_pointers", "backward")):
        real = getattr(_core, name)

        def counting(*args, real=real, kind=kind, **kwargs):
            calls[kind] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(_core, name, counting)
    return calls


@pytest.mark.parametrize("cell", STEP_CELLS)
def test_one_kernel_call_per_step(cell, kernel_calls):
    _, ours = _pair(cell, 3, 8, dtype=torch.float32)
    out, _ = _loop(ours, torch.randn(7, 2, 3), None)
    out.sum().backward()
    assert kernel_calls == {"forward": 7, "backward": 7}


@pytest.mark.parametrize("cell", STEP_CELLS)
def test_torchs_errors(cell):
    theirs, ours = _pair(cell, 3, 5)
    bad = [(torch.randn(2, 4, dtype=torch.float64), None),  # input_size
           (torch.randn(1, 2, 3, dtype=torch.float64), None),  # 3-D input
           (torch.randn(2, 3, dtype=torch.float64), _initial(cell, 3, 5, torch.float64, False)),
           (torch.randn(2, 3, dtype=torch.float64), _initial(cell, 2, 4, torch.float64, False)),
           (torch.randn(2, 3), None)]  # float32 input, float64 weights
    for x, hx in bad:
        with pytest.raises(Exception) as expected:
            theirs(x, hx)
        with pytest.raises(type(expected.value)) as got:
            ours(x, hx)
        assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("cell", STEP_CELLS)
def test_convert_revert_save_and_load(cell, tmp_path):
    theirs, _ = _pair(cell, 3, 5)
    model = torch.nn.ModuleList([theirs])
    weights = list(theirs.parameters())
    rnnkern.convert(model)
    ours_type = cells.get(cell).step_types()[1]
    assert type(model[0]) is ours_type and list(model[0].parameters()) == weights
    torch.save(model[0], tmp_path / "cell.pt")
    loaded = torch.load(tmp_path / "cell.pt", weights_only=True)
    assert type(loaded) is ours_type
    x = torch.randn(2, 3, dtype=torch.float64)
    for a, b in zip(_flat(loaded(x)), _flat(theirs(x))):
        assert_f64_close(a.detach(), b.detach(), "loaded")
    rnnkern.revert(model)
    assert type(model[0]) is cells.get(cell).step_types()[0]


@pytest.mark.parametrize("cell", STEP_CELLS)
def test_script_and_trace_get_torchs_cell(cell):
    theirs, ours = _pair(cell, 3, 5)
    x = torch.randn(2, 3, dtype=torch.float64)
    expected = theirs(x)
    scripted = torch.jit.script(ours)
    traced = torch.jit.trace(ours, (x,))
    with torch.no_grad():
        traced_no_grad = torch.jit.trace(ours, (x,))
    for m in (scripted, traced, traced_no_grad):
        got = m(x)
        for a, b in zip(_flat(got), _flat(expected)):
            assert_f64_close(a.detach(), b.detach(), "graph")
        assert "rnnkern::" not in str(m.inlined_graph)


@pytest.mark.parametrize("cell", STEP_CELLS)
def test_compile(cell):
    _, ours = _pair(cell, 3, 5)
    eager = copy.deepcopy(ours)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 3, dtype=torch.float64)
    for a, b in zip(_flat(compiled(x)), _flat(eager(x))):
        assert_f64_close(a.detach(), b.detach(), "compiled")


def test_layers_keep_their_classes():
    assert rnnkern.RNNCell is rnnkern.modules.RNNCell
    assert issubclass(rnnkern.LSTMCell, torch.nn.LSTMCell)
    assert set(rnnkern.modules._DROP_INS) >= {torch.nn.RNNCell, torch.nn.LSTMCell,
                                               torch.nn.GRUCell}


@pytest.mark.parametrize("cell", STEP_CELLS)
def test_gradcheck_and_second_derivatives(cell):
    """gradcheck and gradgradcheck through a step (create_graph=True runs the reference)."""
    _, ours = _pair(cell, 3, 4)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
              for _ in cells.get(cell).states]

    def fn(x, *states):
        return _flat(ours(x, tuple(states) if cell == "lstm" else states[0]))

    assert torch.autograd.gradcheck(fn, (x, *states))
    assert torch.autograd.gradgradcheck(fn, (x, *states))
