"""`rnnkern vanish` and `rnnkern train adding`, and the pieces behind them."""

import os
import re
import subprocess
import sys

import pytest
import torch

from rnnkern import apps as cli
from rnnkern.apps.train import adding
from rnnkern.apps.vanish import curves as vanish


def run_cli(args, cwd):
    proc = subprocess.run([sys.executable, "-m", "rnnkern", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_vanish_rnn_and_tied_mlp_curves_are_the_same_and_under_the_bound():
    curves = vanish.compute(T=30, B=4, H=8, I=3, gains=(0.5, 1.0, 1.5))
    for (nl, gain), norms in curves.rnn.items():
        assert norms.shape == (30,)
        torch.testing.assert_close(norms, curves.mlp[nl, gain], rtol=1e-10, atol=0)
        # the Pascanu bound, from the loss's own gradient norm
        assert torch.all(norms <= curves.bound[gain] * norms[0] * (1 + 1e-9))
    # contraction vanishes, relu with gain 1.5 explodes
    assert curves.rnn["tanh", 0.5][-1] < 1e-6 * curves.rnn["tanh", 0.5][0]
    assert curves.rnn["relu", 1.5][-1] > curves.rnn["relu", 1.5][0]


def test_vanish_command_prints_table_and_writes_png(tmp_path):
    proc = run_cli(["vanish", "--panel", "gains", "--seq-len", "12", "--hidden", "6",
                    "--batch-size", "2", "--gains", "0.5", "1.5", "--out", "plots/v"], tmp_path)
    assert "max |RNN-MLP|/MLP" in proc.stdout
    assert len([line for line in proc.stdout.splitlines()
                if line.strip().startswith(("tanh", "relu"))]) == 4
    agree = re.search(r"agree to a relative difference of (\S+) at most", proc.stdout)
    assert agree and float(agree.group(1)) < 1e-12
    png = tmp_path / "plots" / "v" / "vanish.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {os.path.realpath(png)}" in proc.stdout


def test_vanish_agreement_and_bound_are_computed():
    curves = vanish.compute(T=10, B=2, H=5, I=3, gains=(0.9,))
    assert 0 <= vanish.agreement(curves) < 1e-12 and vanish.within_bound(curves)
    curves.mlp["tanh", 0.9] = curves.mlp["tanh", 0.9] * 1.5
    assert vanish.agreement(curves) == pytest.approx(1 / 3)
    curves.rnn["relu", 0.9] = curves.rnn["relu", 0.9] * torch.linspace(1, 100, 10,
                                                                       dtype=torch.float64)
    assert not vanish.within_bound(curves)


def test_vanish_writes_into_the_default_results_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["vanish", "--panel", "gains", "--seq-len", "5", "--hidden", "3",
                     "--batch-size", "1", "--gains", "1"]) == 0
    assert os.listdir(tmp_path) == ["rnnkern-results"]
    assert os.listdir(tmp_path / "rnnkern-results") == ["vanish.png"]


def test_adding_batch():
    x, y = adding.batch(10, 32, torch.Generator().manual_seed(0))
    assert x.shape == (32, 10, 2) and y.shape == (32, 1)
    markers = x[..., 1]
    assert torch.all(markers.sum(1) == 2)
    assert torch.all(markers[:, :5].sum(1) == 1) and torch.all(markers[:, 5:].sum(1) == 1)
    torch.testing.assert_close(y[:, 0], (x[..., 0] * markers).sum(1))
    _, y_many = adding.batch(10, 20000, torch.Generator().manual_seed(1))
    assert float(((1 - y_many) ** 2).mean()) == pytest.approx(adding.BASELINE_MSE, abs=0.01)


@pytest.mark.parametrize("engine", ["rnnkern", "torch"])
def test_train_adding_command(tmp_path, engine):
    proc = run_cli(["train", "adding", "--seq-len", "8", "--steps", "20", "--hidden", "8",
                    "--impl", engine, "--init", "orthogonal", "--out", "out"], tmp_path)
    assert "wall time" in proc.stdout and "test MSE" in proc.stdout
    assert "20/20 loss" in proc.stderr  # the progress bar
    assert ("before training" in proc.stdout) == (engine == "rnnkern")
    horizon = re.search(r"gradient horizon .*: (\S+) → (\S+) of T-1 = 7", proc.stdout)
    assert (horizon is not None) == (engine == "rnnkern")
    if horizon:
        assert all(0 <= float(h) <= 7 for h in horizon.groups())
    stem = f"adding-T8-tanh-orthogonal-{engine}"
    assert (tmp_path / "out" / f"{stem}-loss.png").exists()
    assert (tmp_path / "out" / f"{stem}-gradient-flow.png").exists() == (engine == "rnnkern")
    written = [line[len("wrote "):] for line in proc.stdout.splitlines()
               if line.startswith("wrote ")]
    assert written and all(os.path.isabs(p) and os.path.exists(p) for p in written)


def test_gradient_reach_is_measured_in_float64():
    """At T = 100 a tanh RNN's gradient reaching the first step underflows float32 (the
    kernel records 0); the float64 probe still measures it."""
    run = adding.train(T=100, steps=2, hidden=16, engine="rnnkern", seed=0)
    assert len(run.reach) == 2
    assert 0 < run.reach[0] < 1e-10 and 0 < run.reach[1] < 1e-10
    assert float(run.flow[0][0]) == 0.0  # what float32 recording gives
    assert adding.train(T=5, steps=1, hidden=4, engine="torch").reach == ()


def test_gradient_reach_leaves_the_model_alone():
    model = adding.Model(6, "tanh", "default", "rnnkern")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = adding.batch(7, 3, torch.Generator().manual_seed(0))
    reach = adding.gradient_reach(model, x, y)
    assert 0 < reach
    assert all(p.grad is None and p.dtype == torch.float32 for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_smooth():
    assert adding.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert adding.smooth([2.0], 5) == [2.0]


def test_train_records_flow_per_iteration_and_engines_agree():
    ours = adding.train(T=6, steps=5, hidden=5, engine="rnnkern", seed=3)
    theirs = adding.train(T=6, steps=5, hidden=5, engine="torch", seed=3)
    assert len(ours.flow) == 5 and ours.flow[0].shape == (6,)
    assert torch.all(ours.flow[0] > 0)
    torch.testing.assert_close(torch.tensor(ours.losses), torch.tensor(theirs.losses),
                               rtol=1e-4, atol=1e-6)


def test_identity_init_is_the_irnn():
    model = adding.Model(4, "relu", "identity", "rnnkern")
    torch.testing.assert_close(model.rnn.weight_hh_l0.detach(), torch.eye(4))
    assert torch.all(model.rnn.bias_hh_l0 == 0)


def test_vanish_indrnn_curves_stay_under_the_per_unit_bound(tmp_path):
    curves = vanish.compute(T=20, B=3, H=8, I=3, gains=(0.5, 1.5), cell="indrnn")
    assert sorted(curves.rnn) == [("relu", 0.5), ("relu", 1.5), ("tanh", 0.5), ("tanh", 1.5)]
    assert vanish.within_bound(curves) and not curves.mlp
    # gain 0.5 contracts by at least 2 per step; relu with gain 1.5 lets some unit grow
    shrink = curves.rnn["tanh", 0.5]
    assert float(shrink[-1] / shrink[0]) <= 0.5 ** 19
    grow = curves.rnn["relu", 1.5]
    assert float(grow.max()) > float(grow[0])
    table = vanish.table(curves)
    assert table.splitlines()[0].split()[:2] == ["nonlinearity", "gain"] and "bound" in table
    path = str(tmp_path / "v.png")
    vanish.plot(curves, path)
    assert os.path.getsize(path) > 10_000
