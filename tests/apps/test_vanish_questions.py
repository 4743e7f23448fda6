"""`rnnkern vanish`'s three questions (rnnkern.apps.vanish.questions): the numbers of each
figure against an independent computation, and the command."""

import math
import os
import re
import subprocess
import sys

import torch

from rnnkern.apps.vanish import questions

F64 = torch.float64


def test_untied_mlp_is_the_product_of_its_matrices_and_the_rnn_a_power_of_one():
    g = torch.Generator().manual_seed(0)
    H, B, depth = 6, 3, 12
    layers = questions._matrices("gaussian", H, 1.0, g, depth)
    v = torch.randn(B, H, generator=g, dtype=F64)
    # ∂L/∂h k layers below the output, at h = 0 (φ' = 1): v W_depth W_depth-1 … W_depth-k+1
    expected, row = [v.norm(dim=1)], v
    for w in reversed(layers):
        row = row @ w
        expected.append(row.norm(dim=1))
    torch.testing.assert_close(questions.untied_mlp(layers, v), torch.stack(expected),
                               rtol=1e-10, atol=0)
    w = layers[0]
    powers = torch.stack([(v @ torch.linalg.matrix_power(w, k)).norm(dim=1)
                          for k in range(depth + 1)])
    torch.testing.assert_close(questions.tied_rnn(w, v, depth), powers, rtol=1e-10, atol=0)


def test_tied_follows_its_spectrum_and_untied_its_mean_log_norm():
    depth, H = 300, 32
    result = questions.tied(depth=depth, H=H, B=16, gains=(1.0,), draws=3)
    assert result.agreement < 1e-12
    half = depth // 2
    for (kind, gain, draw), curve in result.tied.items():
        untied = result.untied[kind, gain, draw]
        assert curve.shape == untied.shape == (depth + 1,) and curve[0] == 1
        # the untied product's log-norm grows at its mean rate per layer
        rate = math.log(float(untied[depth])) / depth
        assert abs(rate - questions.mean_log_growth(kind, H, gain)) < 0.01, (kind, draw)
        if kind == "orthogonal":  # norms kept: tied and untied alike, gain^k
            torch.testing.assert_close(curve, torch.ones_like(curve), rtol=1e-10, atol=0)
        else:  # the tied one at the rate of its own matrix's spectral radius
            slope = math.log(float(curve[depth] / curve[half])) / (depth - half)
            assert abs(slope - math.log(result.radius[kind, gain, draw])) < 0.02, draw
    # the Gaussian draws' tied curves spread far more than their untied ones
    tied_ends = torch.stack([c[-1] for (k, _, _), c in result.tied.items() if k == "gaussian"])
    untied_ends = torch.stack([c[-1] for (k, _, _), c in result.untied.items()
                               if k == "gaussian"])
    spread = lambda ends: float(ends.log10().max() - ends.log10().min())  # noqa: E731
    assert spread(tied_ends) > 3 * spread(untied_ends)
    assert "decades" in questions.tied_table(result)


def test_weight_terms_agree_with_untied_copies_and_give_the_horizon():
    result = questions.weight(T=40, B=4, H=16, I=3, fraction=0.9)
    assert result.agreement < 1e-12
    for cell, terms in result.terms.items():
        assert terms.shape == (40,) and terms.dtype == F64
        # the whole gradient is the sum of the terms: its norm is at most the sum of theirs
        assert result.total[cell] <= float(terms.sum()) * (1 + 1e-12)
        share = torch.cumsum(terms, 0) / terms.sum()
        assert int((share < 0.9 * (1 - 1e-12)).sum()) == result.horizon[cell]
    # the tanh RNN's weight learns from nearer steps than the gated cells'
    assert result.horizon["rnn"] < min(result.horizon["lstm"], result.horizon["gru"])
    assert "horizon" in questions.weight_table(result)


def test_every_step_splits_the_gradient_by_the_loss_it_comes_from():
    T = 20
    result = questions.every_step(T=T, B=3, H=8, I=3, check_sources=T)
    assert result.agreement < 1e-12
    for cell, by_source in result.by_source.items():
        assert by_source.shape == (T, T)
        assert torch.isnan(by_source[0, 1:]).all() and not torch.isnan(torch.tril(by_source)).any()
        # ∂ℓ_t/∂h_t is v_t itself: the direct term is the same for every cell
        torch.testing.assert_close(torch.diagonal(by_source),
                                   torch.diagonal(result.by_source["rnn"]), rtol=1e-12, atol=0)
        torch.testing.assert_close(result.end[cell], by_source[T - 1].flip(0))
        assert result.later[cell].shape == (T,) and result.whole[cell].shape == (T,)
        # the far part decays: the loss T-1 steps later sends back less than the one 1 later
        assert result.later[cell][T - 1] < result.later[cell][1]
    assert "every step" in questions.every_step_table(result)


def test_vanish_draws_every_panel_or_one(tmp_path):
    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "rnnkern", "vanish", "--seq-len", "8",
                               "--hidden", "6", "--batch-size", "2", "--depth", "20", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    out = run("--out", "all")
    names = ["vanish.png", "vanish-tied.png", "vanish-weight.png", "vanish-every-step.png"]
    assert sorted(os.listdir(tmp_path / "all")) == sorted(names)
    for name in names:
        assert (tmp_path / "all" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"wrote {os.path.realpath(tmp_path / 'all' / name)}" in out
    agreements = [float(a) for a in re.findall(r"agree(?:s)? to (?:a relative difference "
                                               r"of )?([0-9.e+-]+)", out)]
    assert len(agreements) == 4 and max(agreements) < 1e-12
    assert "horizon" in out and "decades" in out and "every step" in out
    out = run("--panel", "weight", "--fraction", "0.5", "--out", "one")
    assert os.listdir(tmp_path / "one") == ["vanish-weight.png"]
    assert "50% horizon" in out
