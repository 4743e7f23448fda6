"""The CUDA module as built here, without a GPU: rnnkern._cuda exists wherever nvcc was on
PATH at install time, holds real code for every listed architecture and PTX for the newest,
and its recurrence kernels spill no registers; without it, import rnnkern still works and a
CUDA call says how to get it."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import rnnkern

ARCHITECTURES = {"75", "80", "86", "89", "90", "100", "120"}
PTX = {"120"}


def _cuda_module():
    try:
        from rnnkern import _cuda
    except ImportError:
        if shutil.which("nvcc"):
            pytest.fail("nvcc is on PATH but rnnkern._cuda was not built (RNNKERN_CUDA=AUTO)")
        pytest.skip("rnnkern was built without CUDA (no nvcc at install time)")
    return _cuda


def _cuobjdump() -> str:
    """PyPI's nvidia-cuda-cuobjdump (requirements-cuda.txt), else one on PATH; a skip where
    neither is, except in CI, which installs it."""
    for entry in sys.path:
        candidate = Path(entry) / "nvidia" / "cu13" / "bin" / "cuobjdump"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(0o755)
            return str(candidate)
    found = shutil.which("cuobjdump")
    if not found:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            "no cuobjdump: pip install -r requirements-cuda.txt")
    return found


def _dump(*args) -> str:
    module = _cuda_module()
    proc = subprocess.run([_cuobjdump(), *args, module.__file__], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_module_reports_its_build():
    module = _cuda_module()
    assert set(module.architectures.replace("-real", "").split()) == ARCHITECTURES
    assert re.fullmatch(r"\d+\.\d+\.\d+", module.cuda_version)
    assert module.device_count() >= 0
    assert rnnkern.cuda_available() == (module.device_count() > 0)


def test_code_for_every_architecture():
    elf = set(re.findall(r"\.sm_(\d+)\.cubin", _dump("--list-elf")))
    ptx = set(re.findall(r"\.sm_(\d+)\.ptx", _dump("--list-ptx")))
    assert elf == ARCHITECTURES
    assert ptx == PTX


def test_recurrence_kernels_spill_no_registers():
    """cuobjdump's resource usage per architecture and kernel: no local memory, no stack."""
    sections = re.split(r"Fatbin (elf|ptx) code:", _dump("--dump-resource-usage"))[1:]
    cubins = {re.search(r"arch = sm_(\d+)", text)[1]: text
              for kind, text in zip(sections[::2], sections[1::2]) if kind == "elf"}
    assert set(cubins) == ARCHITECTURES
    for arch, text in cubins.items():
        kernels = re.findall(r"Function (\S+):\s+REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)",
                             text)
        names = [name for name, *_ in kernels]
        # float and double, 1, 2 and 4 rows per block
        assert sum("forward_kernel" in n for n in names) == 6, (arch, names)
        assert sum("backward_kernel" in n for n in names) == 6, (arch, names)
        for name, registers, stack, local in kernels:
            assert (int(stack), int(local)) == (0, 0), f"sm_{arch} {name} spills: {stack}, {local}"
            assert int(registers) <= 255


def test_import_and_errors_without_the_cuda_module(tmp_path):
    """A build without CUDA: import rnnkern works, cuda_available() is False, the CPU path
    runs, and the CUDA path says how to reinstall."""
    script = textwrap.dedent("""
        import sys
        class NoCuda:
            def find_spec(self, name, path=None, target=None):
                if name == "rnnkern._cuda":
                    raise ImportError("No module named 'rnnkern._cuda'")
        sys.meta_path.insert(0, NoCuda())
        import torch, rnnkern
        from rnnkern import gpu
        assert not rnnkern.cuda_available()
        out, _ = rnnkern.RNN(3, 4)(torch.randn(2, 1, 3))
        assert out.shape == (2, 1, 4)
        try:
            gpu.extension("cuda:0")
        except RuntimeError as e:
            print(e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rnnkern was built without CUDA support" in proc.stdout
    assert "cannot run on cuda:0" in proc.stdout and "nvcc" in proc.stdout


def test_cpu_tensors_never_reach_the_cuda_module(monkeypatch):
    from rnnkern import functional, gpu

    def fail(device=None):
        raise AssertionError("the CUDA module was asked for a CPU call")

    monkeypatch.setattr(gpu, "extension", fail)
    import torch
    x = torch.randn(3, 2, 4, requires_grad=True)
    out, _ = functional.rnn(x, None, torch.randn(5, 4), torch.randn(5, 5))
    out.sum().backward()


def test_argument_checks_name_the_argument():
    import torch
    from rnnkern import gpu

    f64 = dict(dtype=torch.float64)
    x, h0 = torch.zeros(3, 2, 4, **f64), torch.zeros(2, 5, **f64)
    w_ih, w_hh = torch.zeros(5, 4, **f64), torch.zeros(5, 5, **f64)
    cases = [
        (dict(x=x.float()), TypeError, "hx must have input's dtype torch.float32"),
        (dict(x=x.int()), TypeError, "input must have dtype torch.float32 or torch.float64"),
        (dict(x=x[0]), ValueError, r"input must have 3 dimensions \(T, B, I\), got shape \(2, 4\)"),
        (dict(w_ih=w_ih[:, :3]), ValueError, r"w_ih must have shape \(hidden_size, 4\), got \(5, 3\)"),
        (dict(w_hh=w_hh[:4]), ValueError, r"w_hh must have shape \(5, 5\), got \(4, 5\)"),
        (dict(h0=h0[:1]), ValueError, r"hx must have shape \(2, 5\), got \(1, 5\)"),
        (dict(b_ih=torch.zeros(4, **f64)), ValueError, r"b_ih must have shape \(5,\), got \(4,\)"),
        (dict(x=x.reshape(6, 4), batch_sizes=torch.tensor([2, 3, 1])), ValueError,
         r"batch_sizes must be positive and non-increasing, got \[2, 3, 1\]"),
        (dict(x=x.reshape(6, 4), batch_sizes=torch.tensor([2, 2])), ValueError,
         r"input must have shape \(sum\(batch_sizes\) = 4, I\)"),
        (dict(x=x.reshape(6, 4), batch_sizes=torch.tensor([2, 2, 2], dtype=torch.int32)),
         TypeError, "batch_sizes must be an int64 CPU tensor"),
    ]
    for change, error, message in cases:
        args = dict(x=x, h0=h0, w_ih=w_ih, w_hh=w_hh, b_ih=None, b_hh=None, batch_sizes=None)
        args.update(change)
        with pytest.raises(error, match=message):
            gpu.check_arguments(args.pop("x"), args.pop("h0"), args.pop("w_ih"),
                                args.pop("w_hh"), args.pop("batch_sizes"), **args)


def test_bench_on_a_gpu_reports_time_per_step_and_launch_floor():
    """The GPU columns of `rnnkern bench --device cuda`, from a result as a GPU run fills it."""
    from rnnkern.apps.bench import timing as bench

    result = bench.Result(bench.Case(100, 16, 32, 64, layers=2, bidirectional=True),
                          forward_ms={"torch": 2.0, "rnnkern": 1.0},
                          train_ms={"torch": 6.0, "rnnkern": 3.0},
                          saved_bytes={"torch": 10**6, "rnnkern": 10**6}, train_flop=3e9,
                          sgemm_gflops=5e4, device="cuda", launch_us=2.5)
    table = bench.format_table([result])
    head, _, row = table.splitlines()
    assert "torch fwd us/step" in head and "launch floor us/step" in head
    assert row.split()[-3:] == ["20.0", "10.0", "10.0"]  # 2 ms / 100, 1 ms / 100, 2.5 · 2 · 2
    assert bench.as_dicts([result])[0]["launch_us"] == 2.5
    assert "launch floor" not in bench.format_table([bench.Result(
        result.case, result.forward_ms, result.train_ms, result.saved_bytes, 3e9, 5e4)])


def test_bench_device_cuda_without_a_gpu(capsys):
    from rnnkern import apps as cli

    if rnnkern.cuda_available():
        pytest.skip("a GPU is visible")
    assert cli.main(["bench", "--device", "cuda"]) == 1
    assert "rnnkern bench --device cuda: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--device", "cuda", "--step-by-step"])
    assert exit_info.value.code == 2
    assert "step-by-step section runs on the CPU only" in capsys.readouterr().err
