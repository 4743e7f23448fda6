"""Every instruction-set variant of the recurrent kernels, and other thread counts, pass the
kernel suites, each in a fresh process (in the slow group): the NumPy-level suite of every
cell with a NumPy API (tests/core/test_numpy_api.py) and the gradient-flow suite
(tests/diagnostics/test_diagnostics.py). An unknown variant is refused."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import rnnkern

HERE = Path(__file__).parent
TESTS = HERE.parent
ORDER = ["generic", "avx2", "avx512"]
SUITES = {"numpy_api": TESTS / "core" / "test_numpy_api.py",
          "diagnostics": TESTS / "diagnostics" / "test_diagnostics.py"}


def run_kernel_suite(suite, **env):
    """One of SUITES in a fresh process with these variables."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SUITES[suite])],
        cwd=HERE, env=dict(os.environ, **env), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("isa", ORDER)
def test_kernel_variant_passes_kernel_suites(isa, suite):
    best = rnnkern.isa()
    if ORDER.index(isa) > ORDER.index(best):
        pytest.skip(f"this CPU runs {best} at best")
    run_kernel_suite(suite, RNNKERN_ISA=isa)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("threads", ["1", "3"])
def test_kernel_suites_with_other_thread_counts(threads, suite):
    # One thread: no split at all. Three on two cores: uneven row ranges and panel shares.
    run_kernel_suite(suite, OMP_NUM_THREADS=threads)


def test_unknown_isa_is_rejected(tmp_path):
    env = dict(os.environ, RNNKERN_ISA="sse9")
    proc = subprocess.run([sys.executable, "-c", "import rnnkern; rnnkern.isa()"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "RNNKERN_ISA must be one of avx512, avx2, generic, got 'sse9'" in proc.stderr
