"""--cell for `rnnkern bench`, `rnnkern vanish` and `rnnkern train adding`."""

import json
import subprocess
import sys

import pytest
import torch

from rnnkern import apps as cli
from rnnkern import cells
from rnnkern.apps.bench import timing as bench
from rnnkern.apps.train import adding
from rnnkern.apps.vanish import curves as vanish


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


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_measure_gated_cell(cell):
    result = bench.measure(bench.Case(4, 3, 5, 6, cell=cell), repeats=1)
    assert result.train_ms["rnnkern"] > 0 and result.forward_ms["torch"] > 0
    assert result.train_flop == pytest.approx(6 * 12 * (5 * 6 + 36) * cells.get(cell).gate_count)
    assert 0 < result.saved_bytes["rnnkern"] < result.saved_bytes["torch"]


def test_vanish_cell_lstm_prints_gain_table_and_the_three_cells(tmp_path):
    proc = run_cli(["vanish", "--cell", "lstm", "--T", "12", "--hidden", "6",
                    "--batch-size", "2", "--gains", "0.5", "1.5", "--out", "v"], tmp_path)
    lines = proc.stdout.splitlines()
    assert len([line for line in lines if line.split()[:1] == ["lstm"]]) == 2 + 2
    assert any(line.split()[:2] == ["lstm", "‖∂L/∂c‖"] for line in lines)
    assert (tmp_path / "v" / "vanish.png").stat().st_size > 0


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


@pytest.mark.parametrize("cell", ["gru"])  # the LSTM: test_adding_model_and_runs_for_every_cell
def test_train_adding_cell(tmp_path, cell):
    proc = run_cli(["train", "adding", "--cell", cell, "--T", "8", "--steps", "10",
                    "--hidden", "6", "--init", "orthogonal", "--out", "a"], tmp_path)
    assert f"adding problem T=8, {cell}, init orthogonal" in proc.stdout
    assert (tmp_path / "a" / f"adding-T8-{cell}-orthogonal-rnnkern-gradient-flow.png").exists()


def test_adding_model_and_runs_for_every_cell():
    model = adding.Model(5, "tanh", "orthogonal", "rnnkern", cell="lstm")
    for block in model.rnn.weight_hh_l0.detach().chunk(4):
        torch.testing.assert_close(block @ block.T, torch.eye(5), atol=1e-5, rtol=0)
    run = adding.train(T=6, steps=3, hidden=4, cell="gru", engine="torch")
    assert len(run.losses) == 3 and run.reach == ()
    run = adding.train(T=6, steps=3, hidden=4, cell="lstm")
    assert len(run.flow) == 3 and run.flow[0].shape == (6,) and len(run.reach) == 2


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
