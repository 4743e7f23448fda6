"""The CUDA kernels (csrc/cuda) on the CPU: built by g++ against ROCm/HIP-CPU
(tests/cuda/cuda_on_cpu/run.sh) and run through rnnkern.gpu, and through rnnkern.RNN, against
the reference. Runs where HIP_CPU_DIR names a HIP-CPU checkout (see README, "The CUDA path");
skipped otherwise, as in CI, which cannot download it."""

import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from rnnkern import functional, gpu

import cuda_parity

HIP_CPU_DIR = os.environ.get("HIP_CPU_DIR")
pytestmark = pytest.mark.skipif(
    not HIP_CPU_DIR, reason="HIP_CPU_DIR is not set (a checkout of github.com/ROCm/HIP-CPU)")

RUN_SH = Path(__file__).parent / "cuda_on_cpu" / "run.sh"


@pytest.fixture(scope="module")
def hip_module(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_on_cpu")
    proc = subprocess.run(["bash", str(RUN_SH), HIP_CPU_DIR, str(out)], capture_output=True,
                          text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = out / f"_cuda{sysconfig.get_config_var('EXT_SUFFIX')}"
    spec = importlib.util.spec_from_file_location("_cuda", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def on_hip(hip_module, monkeypatch):
    """rnnkern.gpu uses the HIP-CPU build, and the layers send CPU tensors to it."""
    monkeypatch.setattr(gpu, "extension", lambda device=None: hip_module)
    monkeypatch.setattr(functional, "_on_gpu", lambda x: True)
    return hip_module


@pytest.mark.parametrize("case", cuda_parity.LAYER_CASES,
                         ids=[cuda_parity.layer_case_id(c) for c in cuda_parity.LAYER_CASES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_layer(on_hip, dtype, case):
    cuda_parity.check_layer("cpu", dtype, case)


@pytest.mark.parametrize("case", cuda_parity.MODULE_CASES,
                         ids=[cuda_parity.module_case_id(c) for c in cuda_parity.MODULE_CASES])
def test_module(on_hip, case):
    cuda_parity.check_module("cpu", case)


@pytest.mark.parametrize("case", cuda_parity.MODULE_CASES[2:6],
                         ids=[cuda_parity.module_case_id(c) for c in cuda_parity.MODULE_CASES[2:6]])
def test_gradient_flow(on_hip, case):
    cuda_parity.check_gradient_flow("cpu", case)


def test_compile(on_hip):
    cuda_parity.check_compile("cpu")


def test_the_kernels_ran(on_hip, monkeypatch):
    """The tests above exercise the HIP-CPU kernels, not the CPU core."""
    calls = []
    real = gpu.forward
    monkeypatch.setattr(gpu, "forward", lambda *a: calls.append(1) or real(*a))
    cuda_parity.check_module("cpu", cuda_parity.MODULE_CASES[2])
    assert calls


def test_hidden_size_beyond_shared_memory(on_hip):
    x = torch.zeros(1, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="hidden_size 8000 is too large for the CUDA kernels"):
        gpu.forward(x, torch.zeros(1, 8000, dtype=torch.float64),
                    torch.zeros(8000, 1, dtype=torch.float64),
                    torch.zeros(8000, 8000, dtype=torch.float64), None, None, "tanh", None,
                    False)
