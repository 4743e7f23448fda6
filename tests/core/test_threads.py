"""Results do not depend on the thread count (issue 18 item 7).

torch.nn.RNN, LSTM and GRU give bitwise the same outputs and gradients with 1 and with 2
threads, so a DataLoader worker (1 thread) and the main process agree; rnnkern must too, for
every cell of the registry (the IndRNN, which torch lacks, as well).
rnnkern's kernels take their thread count from OpenMP, which torch.set_num_threads sets in the
same process (one OpenMP runtime), and OMP_NUM_THREADS sets at start-up.

The shapes take every threading path: a single-threaded step (small B·H), the time loop split
by batch rows (B ≥ 8), steps split by hidden units (H > 512), GEMMs split by rows or columns
of C and along k (the weight gradients summed over many rows), bidirectional, two layers,
packed sequences (whose last steps leave a thread one or two rows) and proj_size.
"""
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkern
from rnnkern import cells

# (T, B, I, H) and what each exercises.
SHAPES = [
    pytest.param((5, 3, 4, 17), id="small-single-thread"),
    pytest.param((20, 16, 32, 64), id="row-split"),
    pytest.param((12, 13, 7, 129), id="row-split-odd"),
    pytest.param((50, 16, 32, 64), id="split-k-gemm"),
    pytest.param((20, 64, 64, 128), id="row-split-big-gemm"),
    pytest.param((4, 5, 8, 640), id="hidden-unit-split"),
    pytest.param((6, 1, 8, 640), id="hidden-unit-split-one-row"),
    pytest.param((6, 2, 5, 600), id="hidden-unit-split-two-rows"),
]

# Every cell of the registry, with each nonlinearity of a cell that takes one: (name, kwargs).
CELLS = [pytest.param((spec.name, {"nonlinearity": nl} if nl else {}),
                      id=f"{spec.name}-{nl}" if nl else spec.name)
         for spec in cells.CELLS for nl in (("tanh", "relu") if spec.nonlinearity else (None,))]

DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]


def _states(name, module, B, dtype, gen):
    """Random initial states (h0, or (h0, c0)) that require grad."""
    layers = module.num_layers * (2 if module.bidirectional else 1)
    out = getattr(module, "proj_size", 0) or module.hidden_size
    h0 = torch.randn(layers, B, out, dtype=dtype, generator=gen).requires_grad_()
    if len(cells.get(name).states) == 1:
        return h0, [h0]
    c0 = torch.randn(layers, B, module.hidden_size, dtype=dtype, generator=gen).requires_grad_()
    return (h0, c0), [h0, c0]


def train_step(cell, shape, dtype, threads, packed=False, **kwargs):
    """Forward and backward on `threads` threads: the outputs, then every gradient."""
    name, cell_kwargs = cell
    T, B, I, H = shape
    gen = torch.Generator().manual_seed(1234)
    torch.manual_seed(1234)
    module = cells.get(name).module_type()(I, H, **cell_kwargs, **kwargs).to(dtype)
    x = torch.randn(T, B, I, dtype=dtype, generator=gen).requires_grad_()
    hx, leaves = _states(name, module, B, dtype, gen)
    inp = x
    if packed:
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        lengths[0] = T
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y, hn = module(inp, hx)
        y = y.data if packed else y
        hn = list(hn) if isinstance(hn, tuple) else [hn]
        outputs = [y] + hn
        # A loss that weights every output element differently.
        loss = sum((o * torch.randn(o.shape, dtype=dtype, generator=gen)).sum() for o in outputs)
        loss.backward()
    finally:
        torch.set_num_threads(before)
    named = [("y", y)] + [(f"state_n[{i}]", s) for i, s in enumerate(hn)]
    named += [("grad x", x.grad)] + [(f"grad state0[{i}]", s.grad) for i, s in enumerate(leaves)]
    named += [(f"grad {n}", p.grad) for n, p in module.named_parameters()]
    return [(n, t.detach().clone()) for n, t in named]


def assert_thread_independent(cell, shape, dtype, **kwargs):
    one = train_step(cell, shape, dtype, 1, **kwargs)
    two = train_step(cell, shape, dtype, 2, **kwargs)
    different = []
    for (name, a), (_, b) in zip(one, two):
        assert a is not None and b is not None, name
        if not torch.equal(a, b):
            rel = ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
            different.append(f"{name} (max relative difference {rel:.2e})")
    assert not different, "1 vs 2 threads differ in: " + ", ".join(different)


def test_set_num_threads_reaches_rnnkern():
    """The in-process switch the tests below rely on: rnnkern's kernels share torch's OpenMP
    runtime, whose thread count torch.set_num_threads sets."""
    import ctypes

    rnnkern.isa()  # the compiled core is loaded
    with open("/proc/self/maps") as maps:
        gomp = sorted({line.split()[-1] for line in maps if "libgomp" in line})
    assert len(gomp) == 1, f"more than one OpenMP runtime loaded: {gomp}"
    omp = ctypes.CDLL(gomp[0])
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert omp.omp_get_max_threads() == n
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_one_layer(cell, shape, dtype):
    assert_thread_independent(cell, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_two_layers(cell, dtype):
    assert_thread_independent(cell, (30, 16, 24, 64), dtype, num_layers=2, bidirectional=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(40, 16, 16, 64), (12, 13, 7, 129)], ids=["B16", "B13"])
@pytest.mark.parametrize("cell", CELLS)
def test_packed(cell, shape, dtype):
    assert_thread_independent(cell, shape, dtype, packed=True, bidirectional=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(20, 16, 32, 64), (10, 64, 16, 320)], ids=["small", "gemm-split"])
def test_lstm_proj(shape, dtype):
    T, B, I, H = shape
    assert_thread_independent(("lstm", {}), shape, dtype, proj_size=H // 2 + 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_proj_packed(dtype):
    assert_thread_independent(("lstm", {}), (30, 16, 16, 96), dtype, proj_size=40, packed=True,
                              bidirectional=True)


_CHILD = r"""
import sys, torch, rnnkern
from torch.nn.utils.rnn import pack_padded_sequence
torch.manual_seed(0)
out = []
for cls in (rnnkern.RNN, rnnkern.LSTM, rnnkern.GRU):
    m = cls(64, 128, num_layers=2, bidirectional=True)
    x = torch.randn(20, 32, 64, requires_grad=True)
    lengths = torch.randint(1, 21, (32,))
    lengths[0] = 20
    for inp in (x, pack_padded_sequence(x, lengths, enforce_sorted=False)):
        y, _ = m(inp)
        y = y.data if isinstance(inp, torch.nn.utils.rnn.PackedSequence) else y
        (y * torch.randn_like(y)).sum().backward()
        out += [y.detach(), x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
torch.save(out, sys.argv[1])
"""


@pytest.mark.parametrize("isa", ["", "avx2"], ids=["default-isa", "avx2"])
def test_omp_num_threads_processes(tmp_path, isa):
    """What a DataLoader worker sees: a process started with OMP_NUM_THREADS=1 gets bitwise
    the results of one started with 2 (for each instruction set's kernels)."""
    order = ["generic", "avx2", "avx512"]
    if isa and order.index(isa) > order.index(rnnkern.isa()):
        pytest.skip(f"this CPU runs {rnnkern.isa()} at best")
    results = []
    for n in (1, 2):
        path = tmp_path / f"out{n}.pt"
        env = dict(os.environ, OMP_NUM_THREADS=str(n), RNNKERN_ISA=isa)
        # cwd away from the source tree: `import rnnkern` must find the installed package
        subprocess.run([sys.executable, "-c", _CHILD, str(path)], env=env, check=True,
                       timeout=300, cwd=tmp_path)
        results.append(torch.load(path))
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"tensor {i} differs between OMP_NUM_THREADS=1 and 2"



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 128, 256), (3, 2, 100, 300), (1, 1, 300, 100)],
                         ids=["one-row", "two-rows", "wide-input"])
@pytest.mark.parametrize("cell", [c for c in CELLS if cells.get(c.values[0][0]).drop_in])
def test_inference_of_a_stack(cell, shape, dtype):
    """A call without gradient (the whole stack in one kernel call; a row or two read W as it
    is, its dot products split over the threads by W's rows) on 1 and 2 threads."""
    name, cell_kwargs = cell
    T, B, I, H = shape
    torch.manual_seed(1234)
    module = cells.get(name).module_type()(I, H, num_layers=2, bidirectional=True,
                                           **cell_kwargs).to(dtype)
    x = torch.randn(T, B, I, dtype=dtype)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                y, hn = module(x)
            results.append([y] + (list(hn) if isinstance(hn, tuple) else [hn]))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b), "1 vs 2 threads differ"


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_weight_contributions(cell, packed):
    """record_gradient_flow(weight_contributions=True) spreads the steps over the threads: the
    terms are bitwise those of one thread."""
    from rnnkern.diagnostics import record_gradient_flow

    name, cell_kwargs = cell
    found = []
    for threads in (1, 2):
        torch.manual_seed(7)
        module = cells.get(name).module_type()(6, 40, bidirectional=True, **cell_kwargs)
        x = torch.randn(30, 11, 6)
        inp = x
        if packed:
            lengths = torch.randint(1, 31, (11,), generator=torch.Generator().manual_seed(3))
            lengths[0] = 30
            inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with record_gradient_flow(module, weight_contributions=True) as flow:
                y = module(inp)[0]
                (y.data if packed else y).square().sum().backward()
        finally:
            torch.set_num_threads(before)
        found.append(flow.weight_contributions)
    assert torch.equal(found[0], found[1])
