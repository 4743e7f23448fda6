"""The command line runs end to end on a tiny size."""

import json
import subprocess
import sys

import pytest

from rnnkern import bench, cli


def test_bench_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rnnkern", "bench", "--size", "20x2x3x4", "--size", "3x1x1x1",
         "--repeats", "2", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if "train speedup" in line)
    assert "torch train ms" in header and "rnnkern train ms" in header
    rows = [line.split() for line in lines if line.split()[:5] in (["20", "2", "3", "4", "-"],
                                                                  ["3", "1", "1", "1", "-"])]
    assert len(rows) == 2
    assert all(row[-1].endswith("x") and float(row[-1][:-1]) > 0 for row in rows)
    assert "[1/2]" in proc.stderr and "[2/2]" in proc.stderr
    data = json.loads(out.read_text())
    assert [r["T"] for r in data["results"]] == [20, 3]
    assert all(r["rnnkern_train_ms"] > 0 and r["torch_train_ms"] > 0 for r in data["results"])


@pytest.mark.parametrize("bad", ["10x2x3", "10x0x3x4", "axbxcxd"])
def test_bench_rejects_bad_sizes(bad, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--size", bad])
    assert "expected TxBxIxH" in capsys.readouterr().err


@pytest.mark.parametrize("case", [bench.Case(5, 2, 3, 4),
                                  bench.Case(6, 3, 2, 5, layers=2, bidirectional=True,
                                             packed=True)])
def test_measure_returns_positive_times(case):
    r = bench.measure(case, repeats=1, warmup=0)
    assert r.torch_train_ms > 0 and r.rnnkern_train_ms > 0
    assert r.train_speedup == pytest.approx(r.torch_train_ms / r.rnnkern_train_ms)
