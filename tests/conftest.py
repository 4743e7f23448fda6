import atexit
import os
import shutil
import tempfile

# A fresh compile cache per run: a cache left by another build could hold a stale op schema.
# Removed when the run ends (subprocesses of the tests inherit it while it runs).
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_CACHE = tempfile.mkdtemp(prefix="rnnkern-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE
    atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

from rnnkern import cells as _cells  # noqa: E402

# Odd and tiny shapes (T, B, I, H): every kernel tail (rows, columns, panels) gets hit.
SHAPES = [
    (1, 1, 1, 1),
    (1, 3, 5, 17),
    (5, 1, 3, 5),
    (7, 4, 5, 17),
    (4, 7, 33, 33),
    (3, 13, 6, 129),
    (2, 7, 3, 385),  # more than one k block of the recurrent kernel
    (12, 11, 4, 150),  # enough work to split the time loop by rows over threads
    (70, 20, 3, 40),  # ∂W_hh summed over 1400 rows: the GEMM is split along k over threads
    # Rows of 1 KiB (float64) and 5 KiB: the kernel reads a copy of h with padded rows, in a
    # row-split time loop and in steps split by columns.
    (8, 10, 3, 128),
    (2, 3, 2, 640),
]

F64_TOL = 1e-10
# float32 results may be this many times further from float64 than torch's own float32 run.
F32_FACTOR = 8.0


def rel_err(a, b) -> float:
    """max |a - b| relative to max |b| (b is the more exact value)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(np.abs(b).max(initial=0.0), 1e-30)
    return float(np.abs(a - b).max(initial=0.0) / scale)


def assert_f64_close(actual, expected, name=""):
    err = rel_err(actual, expected)
    assert err <= F64_TOL, f"{name}: relative error {err:.3e} > {F64_TOL}"


def assert_f32_close(actual32, torch32, exact64, name=""):
    """actual32 is within F32_FACTOR times torch32's own error against exact64."""
    ours = rel_err(actual32, exact64)
    theirs = rel_err(torch32, exact64)
    bound = F32_FACTOR * max(theirs, 1e-6)
    assert ours <= bound, f"{name}: relative error {ours:.3e} > {bound:.3e} (torch: {theirs:.3e})"


def random_batch_sizes(rng, T, B):
    """Non-increasing batch sizes whose first entry is B and that last T steps."""
    lengths = np.sort(rng.integers(1, T + 1, size=B))[::-1].copy()
    lengths[0] = T
    return np.array([int((lengths > t).sum()) for t in range(T)], dtype=np.int64)


def make_problem(T, B, I, H, dtype=np.float64, seed=0, bias=True, packed=False):
    """Random inputs (dict of NumPy arrays) with torch.nn.RNN's weight scale."""
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    bs = random_batch_sizes(rng, T, B) if packed else None
    N = int(bs.sum()) if packed else None
    x_shape = (N, I) if packed else (T, B, I)
    p = dict(
        x=rng.standard_normal(x_shape),
        h0=rng.standard_normal((B, H)) * 0.5,
        w_ih=rng.uniform(-k, k, (H, I)),
        w_hh=rng.uniform(-k, k, (H, H)),
        b_ih=rng.uniform(-k, k, H) if bias else None,
        b_hh=rng.uniform(-k, k, H) if bias else None,
    )
    p = {n: (None if a is None else a.astype(dtype)) for n, a in p.items()}
    y_shape = (N, H) if packed else (T, B, H)
    grads = dict(grad_y=rng.standard_normal(y_shape).astype(dtype),
                 grad_hn=rng.standard_normal((B, H)).astype(dtype))
    return p, bs, grads


def make_input(form, T, B, I, batch_first, dtype, seed):
    """The same module input for two modules (form: batched, unbatched, packed_sorted,
    packed_unsorted), and its batch size."""
    g = torch.Generator().manual_seed(seed)
    if form == "unbatched":
        return torch.randn(T, I, dtype=dtype, generator=g), 1
    x = torch.randn(B, T, I, dtype=dtype, generator=g) if batch_first else \
        torch.randn(T, B, I, dtype=dtype, generator=g)
    if form == "batched":
        return x, B
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[torch.randint(0, B, (1,), generator=g)] = T
    if form == "packed_sorted":
        lengths = lengths.sort(descending=True).values
    return pack_padded_sequence(x, lengths, batch_first=batch_first,
                                enforce_sorted=form == "packed_sorted"), B


# Tests that rerun whole suites in subprocesses (each kernel variant, other thread counts):
# in the slow group, which CI runs (`pytest -m slow`); the default run keeps the suites once.
SLOW = {("test_isa.py", "test_kernel_variant_passes_kernel_suites"),
        ("test_isa.py", "test_kernel_suites_with_other_thread_counts")}


def _cells_of(marker):
    """The registry's cells a ``cells`` marker selects: by name (``cells("lstm", "gru")``),
    by spec attribute (``cells(drop_in=True)``, ``cells(recurrent="dense")``), or both."""
    if marker is None:
        return list(_cells.CELLS)
    chosen = [_cells.get(name) for name in marker.args] or list(_cells.CELLS)
    for attribute, value in marker.kwargs.items():
        chosen = [c for c in chosen if getattr(c, attribute) == value]
    if not chosen:
        raise pytest.UsageError(f"the cells marker {marker} selects no cell of {_cells.NAMES}")
    return chosen


def pytest_generate_tests(metafunc):
    """A test that takes ``cell`` (and does not parametrize it itself) runs once per cell of
    the registry, or per cell its ``cells`` marker selects; ``cell`` is the cell's name."""
    if "cell" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if "cell" in names:
            return
    chosen = _cells_of(metafunc.definition.get_closest_marker("cells"))
    metafunc.parametrize("cell", [c.name for c in chosen], ids=[c.name for c in chosen])


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.path.name, getattr(item, "originalname", item.name)) in SLOW:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
