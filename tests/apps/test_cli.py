"""The command line's arguments, `rnnkern bench` end to end on tiny sizes with the pieces
behind it, and --cell for `rnnkern bench`, `rnnkern vanish` and `rnnkern train adding`."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from rnnkern import _core
from rnnkern import apps as cli
from rnnkern import cells
from rnnkern.apps import arguments
from rnnkern.apps.bench import peers
from rnnkern.apps.bench import timing as bench
from rnnkern.apps.train import adding
from rnnkern.apps.vanish import curves as vanish


def test_bench_prints_a_table_and_writes_json_and_png(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rnnkern", "bench", "--size", "20x2x3x4", "--size", "3x1x1x1",
         "--repeats", "2", "--impl", "rnnkern", "--impl", "reference", "--out", "res"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if "rnnkern speedup" in line)
    header_cells = [c.strip() for c in header.split("  ") if c.strip()]
    assert "torch train ms" in header and "reference train ms" in header
    assert "saved MB rnnkern" in header and "% of peak" in header
    rows = [line.split() for line in lines if line.split()[:5] in (["20", "2", "3", "4", "-"],
                                                                  ["3", "1", "1", "1", "-"])]
    assert len(rows) == 2
    header = next(line for line in lines if line.startswith("machine: "))
    assert arguments.cpu_model() in header and torch.__version__ in header
    assert f"{torch.get_num_threads()} threads" in header
    limit = next(line for line in lines if line.startswith("limit: "))
    assert "FMA peak" in limit and "OpenBLAS" in limit and "torch.mm" in limit
    assert f"core {_core.blas_info()['core']}" in limit
    assert "[1/2]" in proc.stderr and "[2/2]" in proc.stderr
    data = json.loads((tmp_path / "res" / "bench.json").read_text())
    assert [r["T"] for r in data["results"]] == [20, 3]
    for r in data["results"]:
        assert set(r["train_ms"]) == {"torch", "rnnkern", "reference"}
        assert r["train_speedup"]["rnnkern"] > 0 and r["sgemm_gflops"] > 0
        assert r["peak_gflops"] == data["limits"]["peak_gflops"] > 0
        assert set(r["train_spread"]) == set(r["train_ms"])
        assert all(v is not None and v >= 0 for v in r["train_spread"].values())
    assert isinstance(data["warnings"], list)
    assert set(data["load"]) == {"other_cpus", "steal_cpus", "cpus", "wall_s"}
    assert any(line.startswith("load: other processes used") for line in lines)
    limits = data["limits"]
    assert limits["peak_after_gflops"] > 0
    assert limits["isa"] == _core.isa() and limits["threads"] == torch.get_num_threads()
    assert limits["openblas_gflops"] > 0 and limits["torch_mm_gflops"] > 0
    # the share of the peak in the table is the row's GFLOP/s over the peak
    share = rows[0][header_cells.index("% of peak")]
    rate = data["results"][0]["rnnkern_gflops"]
    assert share == f"{100 * rate / limits['peak_gflops']:.0f}%"
    assert data["machine"] == arguments.cpu_model() and data["torch"] == torch.__version__
    assert (tmp_path / "res" / "speedup.png").read_bytes()[:4] == b"\x89PNG"
    # the real paths of what was written
    for name in ("bench.json", "speedup.png"):
        assert f"wrote {os.path.realpath(tmp_path / 'res' / name)}" in proc.stdout


def test_the_machines_limits_are_measured():
    for double in (False, True):
        peak = _core.fma_peak_gflops(double, 1, 0.05)
        assert 0 < peak < 1e5
        assert 0 < _core.blas_gemm_gflops(double, 64, 1)
    info = _core.blas_info()
    assert info["core"] and "OpenBLAS" in info["config"]
    for call, name in ((lambda: _core.fma_peak_gflops(False, 0), "threads"),
                       (lambda: _core.fma_peak_gflops(False, 1, 0.0), "seconds"),
                       (lambda: _core.blas_gemm_gflops(False, 0), "n")):
        with pytest.raises(ValueError, match=name):
            call()


def test_the_openblas_note_names_the_variables_and_what_they_cost():
    assert bench.blas_note({}, "SkylakeX", "avx512") is None
    assert bench.blas_note({"HOME": "/root"}, "Haswell", "avx512") is None
    lowered = bench.blas_note({"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576"},
                              "Haswell", "avx512")
    assert "OPENBLAS_CORETYPE=Haswell" in lowered and "OPENBLAS_L2_SIZE=1048576" in lowered
    assert "half" in lowered and "AVX-512" in lowered
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE rnnkern bench" in lowered
    # an AVX2 CPU loses nothing to the Haswell kernels: the variable is named, no loss claimed
    same = bench.blas_note({"OPENBLAS_CORETYPE": "Haswell"}, "Haswell", "avx2")
    assert "OPENBLAS_CORETYPE=Haswell" in same and "half" not in same
    limits = bench.Limits("avx512", 2, 500.0, 400.0, "Haswell", 200.0,
                          environment={"OPENBLAS_CORETYPE": "Haswell"})
    assert limits.as_dict()["note"] == limits.note() and "half" in limits.note()
    assert limits.note() in bench.format_limits(limits)


def test_spread_and_the_warnings_it_gives():
    assert bench.relative_spread([2.0, 2.0, 2.0]) == 0
    assert bench.relative_spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)
    assert math.isnan(bench.relative_spread([1.0]))
    timings = bench._timed_blocks({"a": lambda: None, "b": lambda: None}, 3, min_block_s=1e-4)
    assert set(timings) == set(timings.spread) == {"a", "b"}
    calm, busy = bench.Result(bench.Case(5, 2, 3, 4)), bench.Result(bench.Case(6, 2, 3, 4))
    calm.train_spread = {"torch": 0.02, "rnnkern": 0.03}
    busy.train_spread = {"torch": 0.02, "rnnkern": 0.4}
    assert bench.warnings_for([calm], 100.0, 99.0) == []
    lines = bench.warnings_for([calm, busy], 100.0, 99.0)
    assert "1 of 2 rows" in lines[0] and "40%" in lines[0] and busy.case.name() in lines[0]
    assert "--repeats" in lines[-1]
    assert any("fell from 100 to 80" in line for line in bench.warnings_for([calm], 100.0, 80.0))
    busy.train_ms = {"torch": 2.0, "rnnkern": 1.0}
    busy.sgemm_gflops = busy.peak_gflops = 100.0
    assert "40%!" in bench.format_table([busy])
    calm.train_ms, calm.peak_gflops = {"torch": 2.0, "rnnkern": 1.0}, 100.0
    calm.train_flop = 0.5e8  # 50 GFLOP/s: within the peak
    assert bench.warnings_for([calm], 100.0, 99.0) == []
    calm.train_flop = 1.13e8  # 113 GFLOP/s: above it, so the probe read low
    lines = bench.warnings_for([calm], 100.0, 99.0)
    assert "1 of 1 rows ran faster than the FMA peak" in lines[0] and "113" in lines[0]


def test_the_plot_names_each_cell_and_draws_slowdowns_below_one(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    records = []
    for cell, speedup in (("rnn", 0.57), ("lstm", 2.0)):
        r = bench.Result(bench.Case(5, 2, 3, 4, cell=cell),
                         forward_ms={"torch": 1.0, "rnnkern": 0.5},
                         train_ms={"torch": 1.0, "rnnkern": 1.0 / speedup}, train_flop=1e6)
        records += bench.as_dicts([r])
    meta = {"machine": "CPU", "torch": "2.x", "dtype": "float32", "threads": 2}
    title = bench.plot_title(meta, records)
    assert "rnnkern.RNN, rnnkern.LSTM vs torch.nn.RNN, torch.nn.LSTM" in title
    drawn = {}
    real_savefig = plt.Figure.savefig

    def keep(fig, *args, **kwargs):  # the figure as plot() left it
        ax = fig.axes[0]
        drawn["labels"] = [t.get_text() for t in ax.get_xticklabels()]
        drawn["bars"] = [(p.get_y(), p.get_y() + p.get_height()) for p in ax.patches]
        return real_savefig(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        bench.plot(records, str(tmp_path / "speedup.png"), title)
    finally:
        plt.Figure.savefig = real_savefig
    assert drawn["labels"] == ["RNN 5x2x3x4", "LSTM 5x2x3x4"]
    # every bar starts at 1x: the RNN's train bar goes down to 0.57, the LSTM's up to 2
    assert all(low == pytest.approx(1.0) for low, _ in drawn["bars"])
    assert sorted(round(top, 2) for _, top in drawn["bars"]) == [0.57, 2.0, 2.0, 2.0]
    assert (tmp_path / "speedup.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("bad", ["10x2x3", "10x0x3x4", "axbxcxd"])
def test_bench_rejects_bad_sizes(bad, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--size", bad])
    assert "expected TxBxIxH" in capsys.readouterr().err


@pytest.mark.parametrize("case", [
    # the first compiles the autograd loop with torch.compile: about 20 s
    pytest.param(bench.Case(5, 2, 3, 4), marks=pytest.mark.slow),
    bench.Case(6, 3, 2, 5, layers=2, bidirectional=True, packed=True)])
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


def test_bench_writes_into_the_default_results_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--size", "3x1x1x1", "--repeats", "1"]) == 0
    assert sorted(os.listdir(tmp_path)) == [arguments.DEFAULT_OUT]
    assert sorted(os.listdir(tmp_path / arguments.DEFAULT_OUT)) == ["bench.json", "speedup.png"]


def test_bench_table_without_rnnkern():
    """--impl reference alone: torch.nn.RNN and the autograd loop, no rnnkern columns."""
    r = bench.measure(bench.Case(4, 2, 3, 4), impls=("torch", "reference"), repeats=1,
                      sgemm=100.0)
    table = bench.format_table([r])
    assert "reference speedup" in table and "rnnkern train ms" not in table


def _small_steps(monkeypatch, cases):
    monkeypatch.setattr(bench, "STEP_CASES", cases)
    monkeypatch.setattr(bench, "CELL_LOOP_SIZES", ((2, 3),))
    monkeypatch.setattr(bench, "CELL_LOOP_STEPS", 4)
    monkeypatch.setattr(bench, "GENERATE_TOKENS", 20)
    monkeypatch.setattr(bench, "GENERATE_VOCAB", 11)
    monkeypatch.setattr(bench, "GENERATE_INPUT", 5)
    monkeypatch.setattr(bench, "GENERATE_HIDDEN", 6)


def test_step_by_step_section(monkeypatch):
    """`bench --step-by-step`: the step cases of every cell asked for (layers, T, B), the one-step
    cells' loops and a generate loop per cell, timed for the torch class and rnnkern's."""
    cases = (bench.Case(1, 1, 3, 4), bench.Case(3, 2, 3, 4, layers=2, cell="lstm"),
             bench.Case(1, 2, 3, 4, cell="gru"))
    _small_steps(monkeypatch, cases)
    section = bench.run_steps(bench.STEP_CASES, repeats=1, tokens=20, progress=None,
                              peers=())
    assert [(r.case.cell, r.case.T, r.case.layers) for r in section.calls] == [
        ("rnn", 1, 1), ("lstm", 3, 2), ("gru", 1, 1)]
    for r in section.calls:
        assert set(r.inference_us) == set(r.train_us) == {"torch", "rnnkern"}
        assert r.speedup("inference") > 0 and r.speedup("train") > 0
    assert [(r.cell, r.B, r.H, r.steps) for r in section.loops] == [
        ("rnn", 2, 3, 4), ("lstm", 2, 3, 4), ("gru", 2, 3, 4)]
    assert all(set(r.loop_us) == {"torch", "rnnkern"} and r.speedup() > 0
               for r in section.loops)
    assert [g.cell for g in section.generate] == ["rnn", "lstm", "gru"]
    assert all(g.tokens == 20 and set(g.per_token_us) == {"torch", "rnnkern"}
               for g in section.generate)
    table = bench.format_steps_table(section)
    lines = table.splitlines()
    assert lines[0].split()[:6] == ["cell", "layers", "T", "B", "I", "H"]
    assert "infer speedup" in lines[0] and "train speedup" in lines[0]
    assert ["lstm", "2", "3", "2", "3", "4"] in [line.split()[:6] for line in lines]
    assert "onnxruntime" not in table and "(no " not in table
    assert "torch.nn.RNNCell, LSTMCell, GRUCell" in table
    assert table.count("20 single-token calls") == 3 and "-> LSTM 5->6 ->" in table
    data = bench.steps_as_dict(section)
    assert [(c["cell"], c["T"], c["layers"]) for c in data["cases"]] == [
        ("rnn", 1, 1), ("lstm", 3, 2), ("gru", 1, 1)]
    assert [g["cell"] for g in data["generate"]] == ["rnn", "lstm", "gru"]
    assert len(data["cell_loops"]) == 3 and all(g["speedup"] > 0 for g in data["generate"])
    # one repeat: no spread to show
    assert "spread" in lines[0] and all(c["train_spread"]["rnnkern"] is None
                                        for c in data["cases"])


def _stand_in_peers(monkeypatch, calls=None):
    """peers.makers giving onnxruntime's inference and JAX's inference and train step as
    stand-ins, and saying openvino is missing."""
    calls = [] if calls is None else calls

    def makers(names, cell, module, x, hx):
        assert list(names) == ["onnxruntime", "jax", "openvino"]
        assert x.shape[1:] == (1, 3) and hx.shape[1:] == (1, 4)  # the row's own x and hx
        return ({"onnxruntime": lambda: calls.append("ort"), "jax": lambda: calls.append("j")},
                {"jax": lambda: calls.append("jt")}, {"openvino": "openvino is not installed"})

    monkeypatch.setattr(peers, "makers", makers)
    return calls


def test_step_rows_have_a_spread_and_are_warned_about(monkeypatch):
    _small_steps(monkeypatch, (bench.Case(1, 1, 3, 4, cell="gru"),))
    _stand_in_peers(monkeypatch)
    section = bench.run_steps(repeats=3, tokens=5, progress=None, loop_sizes=(),
                              peers=["onnxruntime", "jax", "openvino"])
    r = section.calls[0]
    assert set(r.inference_spread) == {"torch", "rnnkern", "onnxruntime", "jax"}
    assert set(r.train_spread) == {"torch", "rnnkern", "jax"}
    assert all(v >= 0 for v in (*r.inference_spread.values(), *r.train_spread.values()))
    # the row shows its widest spread: the others set below it (the stand-ins' own spreads vary)
    r.inference_spread = {name: 0.01 for name in r.inference_spread}
    r.train_spread = {name: 0.01 for name in r.train_spread}
    r.train_spread["rnnkern"] = 0.5
    table = bench.format_steps_table(section)
    assert "50%!" in table.splitlines()[2]
    assert bench.steps_as_dict(section)["cases"][0]["train_spread"]["rnnkern"] == 0.5
    assert "1 of 1 rows" in bench.warnings_for(section.calls)[0]


def test_peer_columns_in_the_step_rows(monkeypatch):
    """`bench --step-by-step --peers ...`: a column pair (time, rnnkern's ratio over it) per peer for
    inference, and for train where the peer trains; a line for the peer that is missing."""
    _small_steps(monkeypatch, (bench.Case(1, 1, 3, 4, cell="gru"), bench.Case(2, 1, 3, 4)))
    calls = _stand_in_peers(monkeypatch)
    section = bench.run_steps(repeats=1, tokens=20, progress=None, loop_sizes=(),
                              peers=["onnxruntime", "jax", "openvino"])
    assert {"ort", "j", "jt"} <= set(calls)
    r = section.calls[0]
    assert set(r.inference_us) == {"torch", "rnnkern", "onnxruntime", "jax"}
    assert set(r.train_us) == {"torch", "rnnkern", "jax"}
    lines = bench.format_steps_table(section).splitlines()
    head = lines[0]
    for column in ("onnxruntime infer us", "vs onnxruntime", "jax infer us", "vs jax",
                   "jax train us", "vs jax train"):
        assert column in head
    assert head.index("vs onnxruntime") < head.index("torch train us") < head.index("vs jax train")
    assert "openvino" not in head
    assert "(no openvino figures at all: openvino is not installed)" in lines
    row = lines[2].split()
    assert len(row) == len(["cell", "layers", "T", "B", "I", "H"]) + 3 + 4 + 3 + 2 + 1
    assert row[-2] == f"{r.speedup('train', 'jax'):.2f}x"
    data = bench.steps_as_dict(section)["cases"][0]
    assert data["peers_missing"] == {"openvino": "openvino is not installed"}
    assert data["inference_us"]["jax"] == r.inference_us["jax"]


def test_float64_steps_time_no_peer(monkeypatch):
    _small_steps(monkeypatch, (bench.Case(1, 1, 3, 4, cell="gru"),))
    _stand_in_peers(monkeypatch)
    section = bench.run_steps(repeats=1, tokens=5, progress=None, loop_sizes=(),
                              dtype=torch.float64, peers=["onnxruntime", "jax", "openvino"])
    assert set(section.calls[0].inference_us) == {"torch", "rnnkern"}
    assert "float64" in section.calls[0].peers_missing["jax"]


def test_the_load_of_other_processes(monkeypatch):
    """The busy check: the machine's busy CPU time (/proc/stat) less this process's own, over
    the wall time; a warning above LOAD_WARNING of the CPUs."""
    load = bench.Load().stop()
    if os.path.exists("/proc/stat"):
        assert load.others >= 0 and load.steal >= 0 and load.wall_s >= 0
        assert "load: other processes used" in load.line()
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(bench.time, "monotonic", lambda: next(clock))
    machine = iter([(1000.0, 5.0), (1016.0, 7.0)])  # 16 busy CPU seconds in 10 s, 2 stolen
    monkeypatch.setattr(bench, "_cpu_seconds", lambda: next(machine))
    own = iter([50.0, 54.0])  # of which this process used 4
    monkeypatch.setattr(bench.Load, "_own", staticmethod(lambda: next(own)))
    load = bench.Load()
    load.cpus = 4
    load.stop()
    assert load.others == pytest.approx(1.2) and load.steal == pytest.approx(0.2)
    assert load.busy() and load.as_dict() == dict(other_cpus=pytest.approx(1.2),
                                                  steal_cpus=pytest.approx(0.2), cpus=4,
                                                  wall_s=10.0)
    lines = bench.warnings_for([], load=load)
    assert "other processes used 1.20 of the 4 logical CPUs" in lines[0]
    assert "--repeats" in lines[-1]
    load.others = 0.3  # under 10% of 4 CPUs
    assert bench.warnings_for([], load=load) == []
    monkeypatch.setattr(bench, "_cpu_seconds", lambda: (math.nan, math.nan))
    clock, own = iter([0.0, 1.0]), iter([0.0, 0.5])
    unread = bench.Load().stop()
    assert not unread.busy() and "not measured" in unread.line()
    assert unread.as_dict()["other_cpus"] is None


def test_step_sizes_are_the_requested_ones():
    """Per cell: T = 1 with B = 1 and 32, H = 256 and 512, 1 and 2 layers, and T = 10."""
    assert {c.cell for c in bench.STEP_CASES} == {"rnn", "lstm", "gru"}
    for cell in ("rnn", "lstm", "gru"):
        assert [(c.T, c.B, c.I, c.H, c.layers) for c in bench.STEP_CASES if c.cell == cell] == [
            (1, 1, 128, 256, 1), (1, 1, 128, 256, 2), (1, 1, 128, 512, 1),
            (1, 32, 128, 256, 1), (10, 1, 128, 256, 1)]
    assert bench.GENERATE_TOKENS == 1000 and bench.CELL_LOOP_STEPS == 100


def test_generate_loop_feeds_back_tokens_and_passes_the_state():
    """The rnnkern and the torch model share weights, so they generate the same tokens; the
    hidden state goes from call to call (a model without it would repeat one token)."""
    torch.manual_seed(0)
    theirs = bench._Generator(torch.nn.RNN, 13, 5, 7, torch.float64)
    ours = bench._Generator(bench.RNN, 13, 5, 7, torch.float64)
    ours.load_state_dict(theirs.state_dict())
    start, hx = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, 7, dtype=torch.float64)
    for n in (1, 5, 30):
        assert torch.equal(theirs.generate(start, hx, n), ours.generate(start, hx, n))


def test_bench_steps_command(tmp_path, monkeypatch):
    _small_steps(monkeypatch, (bench.Case(1, 1, 3, 4),))
    out = tmp_path / "steps"
    assert cli.main(["bench", "--step-by-step", "--repeats", "1", "--out", str(out)]) == 0
    data = json.loads((out / "bench.json").read_text())
    assert "results" not in data and len(data["steps"]["cases"]) == 1
    assert data["steps"]["load"]["cpus"] == os.cpu_count()
    assert not (out / "speedup.png").exists()


def test_help_shows_defaults_and_no_markup(capsys):
    for argv, expected in ((["--help"], ["bench", "vanish", "train adding", "rnnkern-results"]),
                           (["bench", "--help"], ["default: 5", "default: float32",
                                                  "default: rnnkern-results"]),
                           (["vanish", "--help"], ["default: 0.5 0.9 1 1.1 1.5",
                                                   "default: 16", "default: 0"]),
                           (["train", "--help"], ["default: 64", "default: 0",
                                                  "default: 0.003"])):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "``" not in text
        for piece in expected:
            assert piece in text, (argv, piece)


def test_torch_missing_message_names_the_cpu_index():
    assert "--index-url https://download.pytorch.org/whl/cpu" in arguments.TORCH_MISSING
    assert "CUDA" in arguments.TORCH_MISSING


BAD_ARGUMENTS = [
    (["bench", "--impl", "torch"], "invalid choice: 'torch'"),
    (["bench", "--layers", "0", "--size", "3x1x1x1"], "expected a positive integer"),
    (["bench", "--layers", "2"], "--layers: applies to --size only"),
    (["bench", "--repeats", "0"], "expected a positive integer"),
    (["vanish", "--gains", "0.5", "nan"], "expected a positive finite number"),
    (["vanish", "--seq-len", "-3"], "expected a positive integer"),
    (["vanish", "--fraction", "1.5"], "expected a number in (0, 1]"),
    (["vanish", "--panel", "tide"], "invalid choice: 'tide'"),
    (["train", "adding", "--lr", "-1"], "expected a positive finite number"),
    (["train", "adding", "--lr", "nan"], "expected a positive finite number"),
    (["train", "adding", "--lr", "inf"], "expected a positive finite number"),
    (["train", "adding", "--batch-size", "0"], "expected a positive integer"),
    (["train", "copying"], "invalid choice: 'copying'"),
    # a value that starts with a minus is the option's value, and its type says what is wrong
    (["bench", "--size", "-5x2x3x4"], "expected TxBxIxH with positive integers, got '-5x2x3x4'"),
    (["check", "--size", "-5x2x3x4"], "expected TxBxIxH with positive integers"),
    # sizes that cannot fit in memory, refused before any allocation
    (["bench", "--size", "100000000x1000x1000x1000"], "GiB of memory, more than the"),
    (["check", "--size", "100000000x1000x1000x1000", "--cell", "all"], "needs at least"),
    (["check", "--reference", "finite-differences", "--size", "100x10x10x100"],
     "argument --reference: finite differences are for small sizes"),
    (["vanish", "--seq-len", "5000"], "expected at most 1000, got 5000"),
    (["vanish", "--T", "5000", "--panel", "every-step"], "--panel gains, tied or weight"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in
                                                             BAD_ARGUMENTS])
def test_bad_arguments_are_one_line_usage_errors(argv, message, capsys, tmp_path,
                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing ran
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("rnnkern") and ": error: " in last and message in last
    assert "Traceback" not in captured.err
    assert not os.listdir(tmp_path)  # not even the results folder


@pytest.mark.parametrize("command", [["bench"], ["vanish"], ["train", "adding"]])
def test_out_naming_a_file_or_an_unwritable_place(command, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for out, message in ((a_file, "is an existing file"),
                         (a_file / "below", "cannot create the folder"),
                         ("/proc/rnnkern-results", "cannot create the folder")):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*command, "--out", str(out)])
        assert exit_.value.code == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        last = captured.err.strip().splitlines()[-1]
        assert ": error: argument --out: " in last and message in last


def test_out_folder_is_created(tmp_path):
    out = tmp_path / "a" / "b"
    assert arguments.out_dir(cli.build_parser(), str(out)) == os.path.realpath(out)
    assert out.is_dir() and not os.listdir(out)


# ----------------------------------------------------------------------------- --cell

def run_cli(args, cwd):
    proc = subprocess.run([sys.executable, "-m", "rnnkern", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_bench_cell_all_times_the_three_layers(tmp_path):
    proc = run_cli(["bench", "--cell", "all", "--size", "3x2x4x5", "--repeats", "1",
                    "--out", "b"], tmp_path)
    assert "rnnkern.LSTM vs torch.nn.LSTM" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line.lstrip().startswith("3 ")]
    assert [r[4] for r in rows] == ["-", "lstm", "gru", "indrnn"]
    assert "rnnkern.IndRNN vs torch.nn.RNN" in proc.stdout
    data = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert len(data["results"]) == 4


def test_measure_cell(cell):
    spec = cells.get(cell)
    result = bench.measure(bench.Case(4, 3, 5, 6, cell=cell), repeats=1)
    assert result.train_ms["rnnkern"] > 0 and result.forward_ms["torch"] > 0
    recurrent = 36 if spec.recurrent == "dense" else 6  # W_hh (H, H), or u (H,)
    assert result.train_flop == pytest.approx(6 * 12 * (5 * 6 + recurrent) * spec.gate_count)
    assert 0 < result.saved_bytes["rnnkern"] <= result.saved_bytes["torch"]
    if spec.gate_count > 1:  # torch's gated cells keep more of the forward than rnnkern's
        assert result.saved_bytes["rnnkern"] < result.saved_bytes["torch"]


@pytest.mark.cells("lstm", "gru")  # the gated cells' gain table (rnn, indrnn: test_commands.py)
def test_vanish_cell_prints_gain_table_and_the_three_cells(tmp_path, cell):
    proc = run_cli(["vanish", "--panel", "gains", "--cell", cell, "--seq-len", "12",
                    "--hidden", "6", "--batch-size", "2", "--gains", "0.5", "1.5", "--out", "v"], tmp_path)
    lines = proc.stdout.splitlines()
    # two gains, and a row per state (‖∂L/∂h‖, the LSTM's ‖∂L/∂c‖) in the three cells' table
    states = len(cells.get(cell).states)
    assert len([line for line in lines if line.split()[:1] == [cell]]) == 2 + states
    assert any(line.split()[:2] == [cell, "‖∂L/∂c‖"] for line in lines) == (states > 1)
    assert (tmp_path / "v" / "vanish.png").stat().st_size > 0


def test_old_spellings_still_work_with_a_note(capsys):
    """--T, bench's --steps and train's --engine: aliases of --seq-len, --step-by-step and
    --impl for one release, each with a note on stderr."""
    parser = cli.build_parser()
    for old, new in ((["train", "adding", "--T", "8", "--engine", "torch"],
                      ["train", "adding", "--seq-len", "8", "--impl", "torch"]),
                     (["vanish", "--T=7"], ["vanish", "--seq-len", "7"]),
                     (["bench", "--steps"], ["bench", "--step-by-step"])):
        a, b = vars(parser.parse_args(old)), vars(parser.parse_args(new))
        a.pop("parser"), b.pop("parser")
        assert a == b, old
    with pytest.raises(SystemExit):  # stops at the check of --device, after the note
        cli.main(["bench", "--steps", "--device", "cuda"])
    err = capsys.readouterr().err
    assert "note: --steps is deprecated and goes in the next release; use --step-by-step" in err
    assert "argument --step-by-step:" in err
    assert cli._negative_values(["--seed", "-3", "--gains", "0.5", "-1"]) == [
        "--seed=-3", "--gains", "0.5", "-1"]


def test_vanish_past_floats_range_and_for_every_cell(tmp_path):
    """gain^k past float64's range is inf, not an OverflowError (--seq-len 5000 used to die
    after the work); --cell all draws the gain sweep of each cell."""
    curves = vanish.compute(T=1800, B=1, H=2, I=2, gains=(1.5,))
    assert math.isinf(float(curves.bound[1.5][-1])) and curves.bound[1.5][1] == 1.5
    proc = run_cli(["vanish", "--panel", "gains", "--cell", "all", "--seq-len", "6",
                    "--hidden", "3", "--batch-size", "2", "--gains", "0.5", "--out", "v"],
                   tmp_path)
    for cell in cells.NAMES:
        assert (tmp_path / "v" / f"vanish-{cell}.png").stat().st_size > 0
        assert f"from the loss, {cells.get(cell).title}, T=6" in proc.stdout
    assert proc.stdout.count("the three cells at the same T=6") == 1


def test_the_three_cells_panel_says_how_far_each_falls():
    assert vanish.decades_lost(torch.tensor([1.0, 1e-3, 1e-7])) == pytest.approx(7)
    gains = set(vanish.GAIN_COLORS)
    assert not gains & {color for _, color, _ in vanish.CELL_STYLES.values()}


def test_vanish_three_cells_at_the_same_t():
    curves = vanish.compute(T=60, B=4, H=16, I=3, gains=(1.0,))
    assert set(curves.cells) == {"rnn", "lstm", "lstm c", "gru"}
    reach = {name: float(n[-1] / curves.cells[name.split()[0]][0])
             for name, n in curves.cells.items()}
    # the tanh RNN's gradient vanishes far faster than the gated cells'
    assert reach["lstm"] > 1e3 * reach["rnn"] and reach["gru"] > 1e3 * reach["rnn"]
    gated = vanish.compute(T=10, B=2, H=4, I=3, gains=(0.5, 1.5), cell="gru")
    assert set(gated.rnn) == {("gru", 0.5), ("gru", 1.5)} and not gated.mlp
    assert "gain" in vanish.table(gated)


@pytest.mark.cells("gru")  # the LSTM: test_adding_model_and_runs_for_every_cell; the
# Elman RNN: test_commands.py
def test_train_adding_cell(tmp_path, cell):
    proc = run_cli(["train", "adding", "--cell", cell, "--seq-len", "8", "--steps", "10",
                    "--hidden", "6", "--init", "orthogonal", "--out", "a"], tmp_path)
    assert f"adding problem T=8, {cell}, init orthogonal" in proc.stdout
    assert (tmp_path / "a" / f"adding-T8-{cell}-orthogonal-rnnkern-gradient-flow.png").exists()


def test_adding_model_and_runs_for_every_cell():
    model = adding.Model(5, "tanh", "orthogonal", "rnnkern", cell="lstm")
    for block in model.rnn.weight_hh_l0.detach().chunk(4):
        torch.testing.assert_close(block @ block.T, torch.eye(5), atol=1e-5, rtol=0)
    run = adding.train(T=6, steps=3, hidden=4, cell="gru", engine="torch")
    assert len(run.losses) == 3 and run.reach == () and run.horizon == []
    run = adding.train(T=6, steps=3, hidden=4, cell="lstm")
    assert len(run.flow) == 3 and run.flow[0].shape == (6,) and len(run.reach) == 2
    assert len(run.horizon) == 3 and all(0 <= h <= 5 for h in run.horizon)


def test_train_horizon_is_the_recorded_one():
    """The horizon of each iteration is GradientFlow.horizon of that iteration's backward:
    replayed here on the same seed, batch and weights."""
    from rnnkern.diagnostics import record_gradient_flow

    run = adding.train(T=12, steps=1, hidden=6, cell="gru", seed=4)
    torch.manual_seed(4)
    model = adding.Model(6, "tanh", "default", "rnnkern", cell="gru")
    x, y = adding.batch(12, 64, torch.Generator().manual_seed(5))
    with record_gradient_flow(model.rnn, weight_contributions=True) as flow:
        torch.nn.functional.mse_loss(model(x), y).backward()
    assert run.horizon == [int(flow.horizon(adding.HORIZON_FRACTION)[0])]


@pytest.mark.parametrize("argv,message", [
    (["train", "adding", "--cell", "lstm", "--init", "identity"], "identity is for --cell rnn"),
    (["train", "adding", "--cell", "gru", "--nonlinearity", "relu"], "applies to --cell rnn"),
    (["bench", "--cell", "tcn"], "invalid choice: 'tcn'"),
    (["bench", "--cell", "lstm", "--device", "cuda"], "run on the CPU only"),
])
def test_bad_cell_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
