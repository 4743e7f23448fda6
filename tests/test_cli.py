"""`rnnkern bench` runs end to end on tiny sizes; the pieces behind it."""

import json
import subprocess
import sys

import pytest

from rnnkern import bench, cli


def test_bench_prints_a_table_and_writes_json_and_png(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rnnkern", "bench", "--size", "20x2x3x4", "--size", "3x1x1x1",
         "--repeats", "2", "--impl", "rnnkern", "--impl", "reference", "--out", "res"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if "rnnkern speedup" in line)
    assert "torch train ms" in header and "reference train ms" in header
    assert "saved MB rnnkern" in header and "% of sgemm" in header
    rows = [line.split() for line in lines if line.split()[:5] in (["20", "2", "3", "4", "-"],
                                                                  ["3", "1", "1", "1", "-"])]
    assert len(rows) == 2
    assert "[1/2]" in proc.stderr and "[2/2]" in proc.stderr and "sgemm" in proc.stderr
    data = json.loads((tmp_path / "res" / "bench.json").read_text())
    assert [r["T"] for r in data["results"]] == [20, 3]
    for r in data["results"]:
        assert set(r["train_ms"]) == {"torch", "rnnkern", "reference"}
        assert r["train_speedup"]["rnnkern"] > 0 and r["sgemm_gflops"] > 0
    assert (tmp_path / "res" / "speedup.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("bad", ["10x2x3", "10x0x3x4", "axbxcxd"])
def test_bench_rejects_bad_sizes(bad, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--size", bad])
    assert "expected TxBxIxH" in capsys.readouterr().err


@pytest.mark.parametrize("case", [bench.Case(5, 2, 3, 4),
                                  bench.Case(6, 3, 2, 5, layers=2, bidirectional=True,
                                             packed=True)])
def test_measure(case):
    impls = ("torch", "rnnkern", "reference", "compiled")
    r = bench.measure(case, impls=impls, repeats=1, sgemm=100.0)
    expected = set(impls) if case.layers == 1 else {"torch", "rnnkern"}
    assert set(r.train_ms) == expected and set(r.forward_ms) == expected
    assert all(v > 0 for v in r.train_ms.values())
    assert r.speedup("rnnkern") == pytest.approx(r.train_ms["torch"] / r.train_ms["rnnkern"])
    assert r.gflops("rnnkern") > 0


def test_saved_state_is_hidden_states_plus_inputs():
    case = bench.Case(7, 3, 4, 5)
    r = bench.measure(case, repeats=1, sgemm=100.0)
    T, B, I, H = 7, 3, 4, 5
    # x, h0 and y (float32), nothing else: never the pre-activations.
    assert r.saved_bytes["rnnkern"] == 4 * (T * B * I + B * H + T * B * H)


def test_train_flop_counts_every_layer_direction():
    one = bench.train_flop(bench.Case(10, 2, 3, 4), rows=20)
    assert one == 6 * 20 * (3 * 4 + 4 * 4)
    two = bench.train_flop(bench.Case(10, 2, 3, 4, layers=2, bidirectional=True), rows=20)
    assert two == 2 * one + 2 * 6 * 20 * (8 * 4 + 4 * 4)
