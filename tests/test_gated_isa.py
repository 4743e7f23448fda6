"""Every instruction-set variant of the kernels, and other thread counts, pass the LSTM / GRU
kernel suite (in the slow group, as tests/test_isa.py for the Elman cell)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import rnnkern

HERE = Path(__file__).parent
ORDER = ["generic", "avx2", "avx512"]


def run_gated_suite(**env):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(HERE / "test_gated_numpy.py")],
        cwd=HERE, env=dict(os.environ, **env), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("isa", ORDER)
def test_gated_kernels_under_every_isa(isa):
    best = rnnkern.isa()
    if ORDER.index(isa) > ORDER.index(best):
        pytest.skip(f"this CPU runs {best} at best")
    run_gated_suite(RNNKERN_ISA=isa)


@pytest.mark.slow
@pytest.mark.parametrize("threads", ["1", "3"])
def test_gated_kernels_with_other_thread_counts(threads):
    run_gated_suite(OMP_NUM_THREADS=threads)
