"""`rnnkern vanish`'s three questions, each answered by a figure (float64 throughout):

- tied: why a deep RNN suffers more than a deep MLP. ‖∂L/∂h‖ against depth k for an RNN, whose
  one W_hh is multiplied k times (recorded by the kernel), and for an MLP whose k layers each
  have their own matrix from the same distribution (autograd). At h = 0 (φ' = 1, the linear
  regime) the tied product follows its one matrix's spectrum, ‖v W^k‖ ~ ρ(W)^k, while the
  untied one concentrates around its mean log-norm, E log ‖v Π W_i‖ = k (log gain + c_H),
  c_H = (ψ(H/2) - log(H/2)) / 2 for Gaussian matrices (0 for orthogonal ones).
- weight: why one W_hh over T steps behaves like T layers. ∂L/∂W_hh = Σ_t δ_tᵀ h_{t-1} is the
  sum of T untied copies' gradients; the kernel records each term's norm
  (record_gradient_flow(..., weight_contributions=True)), shown against the distance from the
  loss beside the norm of the total, for the three cells, and checked against autograd on
  untied copies.
- every_step: a loss at every step. ‖∂ℓ_{t+k}/∂h_t‖, the part of ∂L/∂h_t that comes from the
  loss k steps later, against k, beside the loss-at-the-end case, and the whole ‖∂L/∂h_t‖
  beside its direct part ‖∂ℓ_t/∂h_t‖.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

from ...cells import get as cell_spec
from ...diagnostics import record_gradient_flow
from ...modules import GRU, LSTM, RNN
from .curves import CELL_STYLES, GAIN_COLORS, GATE_BIAS, _format

DISTRIBUTIONS = ("gaussian", "orthogonal")
TIED_GAINS = (0.9, 1.0, 1.1)
DRAWS = 3  # matrices drawn per distribution and gain in the tied panel
CELLS = ("rnn", "lstm", "gru")
_DTYPE = torch.float64


def _matrices(kind: str, H: int, gain: float, g: torch.Generator, count: int = 1
              ) -> torch.Tensor:
    """(count, H, H): gain · Gaussian matrices with N(0, 1/H) entries, or gain · Haar
    orthogonal ones."""
    m = torch.randn(count, H, H, generator=g, dtype=_DTYPE)
    if kind == "gaussian":
        return gain * m / math.sqrt(H)
    q, r = torch.linalg.qr(m)
    return gain * q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def mean_log_growth(kind: str, H: int, gain: float) -> float:
    """E log(‖g M u‖ / ‖u‖) per layer for one fresh matrix M of ``kind`` and a unit u:
    log gain, plus (ψ(H/2) - log(H/2)) / 2 for a Gaussian one (‖M u‖² ~ χ²_H / H)."""
    if kind == "orthogonal":
        return math.log(gain)
    half = torch.tensor(H / 2, dtype=_DTYPE)
    return math.log(gain) + 0.5 * float(torch.special.digamma(half) - torch.log(half))


@dataclass
class Tied:
    """Panel "tied": per (distribution, gain, draw), (depth + 1,) curves by depth k of the
    geometric mean over the batch of ‖∂L/∂h‖ / ‖v‖ (k = 0 is 1)."""

    depth: int
    H: int
    tied: Dict[Tuple[str, float, int], torch.Tensor] = field(default_factory=dict)
    untied: Dict[Tuple[str, float, int], torch.Tensor] = field(default_factory=dict)
    radius: Dict[Tuple[str, float, int], float] = field(default_factory=dict)  # ρ(W) of a draw
    agreement: float = 0.0  # kernel against autograd on the same tied network, max relative


def _geometric_mean(rows: torch.Tensor) -> torch.Tensor:
    return rows.clamp_min(1e-300).log().mean(-1).exp()


def tied_rnn(w_hh: torch.Tensor, v: torch.Tensor, depth: int) -> torch.Tensor:
    """(depth + 1, B) ‖∂L/∂h_{T-1-k}‖ of a tanh RNN with W_hh = w_hh at h = 0 (zero input and
    state, so φ' = 1), L = Σ_b v_b · h_{T-1}, recorded by the kernel; T = depth + 1."""
    H, B = w_hh.shape[0], v.shape[0]
    rnn = RNN(1, H, bias=False, dtype=_DTYPE)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(w_hh)
        rnn.weight_ih_l0.zero_()
    x = torch.zeros(depth + 1, B, 1, dtype=_DTYPE)
    with record_gradient_flow(rnn) as flow:
        out, _ = rnn(x)
        (out[-1] * v).sum().backward()
    return flow.norms[0].flip(0)


def untied_mlp(weights: Sequence[torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    """(len(weights) + 1, B) ‖∂L/∂h‖ k layers below the output of a tanh MLP at h = 0 whose
    layer i computes tanh(W_i h), L = Σ_b v_b · h_out; autograd (retain_grad)."""
    H, B = weights[0].shape[0], v.shape[0]
    h = torch.zeros(B, H, dtype=_DTYPE, requires_grad=True)
    states = [h]
    for w in weights:
        h = torch.tanh(h @ w.T)
        h.retain_grad()
        states.append(h)
    (h * v).sum().backward()
    return torch.stack([s.grad.norm(dim=1) for s in reversed(states)])


def tied(depth: int = 1000, H: int = 64, B: int = 16, gains: Sequence[float] = TIED_GAINS,
         draws: int = DRAWS, seed: int = 0) -> Tied:
    result = Tied(depth, H)
    worst = 0.0
    for kind in DISTRIBUTIONS:
        for gain in gains:
            for draw in range(draws):
                g = torch.Generator().manual_seed(seed + 1000 * draw + 17)
                v = torch.randn(B, H, generator=g, dtype=_DTYPE)
                w = _matrices(kind, H, gain, g)[0]
                scale = v.norm(dim=1)
                rnn = tied_rnn(w, v, depth)
                result.tied[kind, gain, draw] = _geometric_mean(rnn / scale)
                result.radius[kind, gain, draw] = float(torch.linalg.eigvals(w).abs().max())
                layers = _matrices(kind, H, gain, g, depth)
                result.untied[kind, gain, draw] = _geometric_mean(untied_mlp(layers, v) / scale)
                if draw == 0:  # the same tied network by autograd
                    mlp = untied_mlp([w] * depth, v)
                    worst = max(worst, float(((rnn - mlp).abs() / mlp.clamp_min(1e-300)).max()))
    result.agreement = worst
    return result


# ------------------------------------------------------------------ the three cells, stepwise

def _module(cell: str, I: int, H: int, seed: int):
    torch.manual_seed(seed)
    module = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[cell](I, H, dtype=_DTYPE)
    if cell != "rnn":
        with torch.no_grad():
            module.bias_ih_l0[H:2 * H] += GATE_BIAS
    return module


def _data(module, T: int, B: int, seed: int):
    H, I = module.hidden_size, module.input_size
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, B, I, generator=g, dtype=_DTYPE)
    v = torch.randn(T, B, H, generator=g, dtype=_DTYPE)  # the loss weights of each step
    states = tuple(0.1 * torch.randn(1, B, H, generator=g, dtype=_DTYPE)
                   for _ in cell_spec(module._cell).states)
    return x, v, states


def _weights(module) -> List[torch.Tensor]:
    return [module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0]


def stepwise(module, x, states, untied: bool = False):
    """The reference loop one step at a time (rnnkern.cells' reference_layer on each x_t):
    ([(h_t, …) per step], each retaining its grad; the per-step copies of W_hh when
    ``untied``, else [])."""
    spec = cell_spec(module._cell)
    weights = [w.detach() for w in _weights(module)]
    state = tuple(s[0].clone().requires_grad_() for s in states)
    steps, copies = [], []
    for t in range(x.shape[0]):
        w = list(weights)
        if untied:
            w[1] = weights[1].clone().requires_grad_()
            copies.append(w[1])
        _, state = spec.reference_layer(x[t:t + 1], state, w)
        for s in state:
            s.retain_grad()
        steps.append(state)
    return steps, copies


@dataclass
class Weight:
    """Panel "weight": per cell, (T,) ‖δ_tᵀ h_{t-1}‖_F by distance k = T-1-t from the loss
    (v · h_{T-1}), the norm of the whole ∂L/∂W_hh, and the 90% horizon."""

    T: int
    fraction: float
    terms: Dict[str, torch.Tensor] = field(default_factory=dict)
    total: Dict[str, float] = field(default_factory=dict)
    horizon: Dict[str, int] = field(default_factory=dict)
    agreement: float = 0.0  # the kernel's terms against autograd on untied copies


def weight(T: int = 100, B: int = 16, H: int = 64, I: int = 8, seed: int = 0,
           fraction: float = 0.9) -> Weight:
    result = Weight(T, fraction)
    worst = 0.0
    for cell in CELLS:
        module = _module(cell, I, H, seed)
        x, v, states = _data(module, T, B, seed)
        with record_gradient_flow(module, weight_contributions=True) as flow:
            out, _ = module(x, states if len(states) > 1 else states[0])
            (out[-1] * v[-1]).sum().backward()
        terms = flow.weight_contributions[0]
        result.terms[cell] = terms.flip(0)
        result.total[cell] = float(module.weight_hh_l0.grad.norm())
        result.horizon[cell] = int(flow.horizon(fraction)[0])
        steps, copies = stepwise(module, x, states, untied=True)
        (steps[-1][0] * v[-1]).sum().backward()
        expected = torch.stack([c.grad.norm() for c in copies])
        worst = max(worst, float(((terms - expected).abs()
                                  / expected.abs().clamp_min(1e-300)).max()))
    result.agreement = worst
    return result


@dataclass
class EveryStep:
    """Panel "every-step", per cell: ``by_source`` (T, T) ‖∂ℓ_s/∂h_t‖ (mean over the batch)
    for the loss ℓ_s = v_s · h_s of step s ≥ t (NaN for s < t), recorded by the kernel;
    ``later[k]`` its mean over t of the entries s = t + k; ``end[k]`` = by_source[T-1, T-1-k]
    (a loss at the end only); ``whole[t]`` ‖∂L/∂h_t‖ for L = Σ_s ℓ_s."""

    T: int
    by_source: Dict[str, torch.Tensor] = field(default_factory=dict)
    later: Dict[str, torch.Tensor] = field(default_factory=dict)
    end: Dict[str, torch.Tensor] = field(default_factory=dict)
    whole: Dict[str, torch.Tensor] = field(default_factory=dict)
    agreement: float = 0.0  # the kernel against autograd on the stepwise reference loop


def every_step(T: int = 100, B: int = 16, H: int = 64, I: int = 8, seed: int = 0,
               check_sources: int = 4) -> EveryStep:
    """``check_sources``: how many loss steps (spread over T) are also computed by autograd
    for the agreement."""
    result = EveryStep(T)
    worst = 0.0
    for cell in CELLS:
        module = _module(cell, I, H, seed)
        x, v, states = _data(module, T, B, seed)
        hx = states if len(states) > 1 else states[0]
        by_source = torch.full((T, T), math.nan, dtype=_DTYPE)
        with record_gradient_flow(module) as flow:
            for s in range(T):
                out, _ = module(x[:s + 1], hx)
                (out[-1] * v[s]).sum().backward()
                by_source[s, :s + 1] = flow.norms[0].mean(1)
            out, _ = module(x, hx)
            (out * v).sum().backward()
            result.whole[cell] = flow.norms[0].mean(1)
        result.by_source[cell] = by_source
        result.later[cell] = torch.stack([torch.diagonal(by_source, -k).mean()
                                          for k in range(T)])
        result.end[cell] = by_source[T - 1].flip(0)
        steps, _ = stepwise(module, x, states)
        for s in sorted({round(i * (T - 1) / max(check_sources - 1, 1))
                         for i in range(check_sources)}):
            hs = [steps[t][0] for t in range(s + 1)]
            grads = torch.autograd.grad((steps[s][0] * v[s]).sum(), hs, retain_graph=True)
            expected = torch.stack([gr.norm(dim=1).mean() for gr in grads])
            got = by_source[s, :s + 1]
            worst = max(worst, float(((got - expected).abs()
                                      / expected.clamp_min(1e-300)).max()))
    result.agreement = worst
    return result


# ------------------------------------------------------------------ tables

def _distances(n: int) -> List[int]:
    return sorted({k for k in (0, 10, 100, n // 2, n - 1) if 0 <= k < n})


def tied_table(result: Tied) -> str:
    ks = _distances(result.depth + 1)
    rows = [["matrices", "gain", "network"] + [f"k={k}" for k in ks] + ["spread at k=%d" % ks[-1]]]
    for kind in DISTRIBUTIONS:
        for gain in sorted({g for _, g, _ in result.tied}):
            for name, data in (("RNN (tied)", result.tied), ("MLP (untied)", result.untied)):
                curves = [c for (k_, g_, _), c in data.items() if k_ == kind and g_ == gain]
                if not curves:
                    continue
                mid = torch.stack(curves).log().median(0).values.exp()
                logs = torch.stack([c[ks[-1]] for c in curves]).log10()
                rows.append([kind, f"{gain:g}", name] + [f"{float(mid[k]):.2e}" for k in ks]
                            + [f"{float(logs.max() - logs.min()):.1f} decades"])
    return _format(rows)


def weight_table(result: Weight) -> str:
    ks = _distances(result.T)
    rows = [["cell"] + [f"k={k}" for k in ks] + ["Σ_t term", "‖∂L/∂W_hh‖",
                                                 f"{result.fraction:.0%} horizon"]]
    for cell, terms in result.terms.items():
        rows.append([cell] + [f"{float(terms[k]):.2e}" for k in ks]
                    + [f"{float(terms.sum()):.2e}", f"{result.total[cell]:.2e}",
                       f"{result.horizon[cell]} steps"])
    return _format(rows)


def every_step_table(result: EveryStep) -> str:
    ks = [k for k in _distances(result.T) if k > 0]
    rows = [["cell", "loss"] + [f"k={k}" for k in ks]]
    for cell in result.later:
        rows.append([cell, "every step"] + [f"{float(result.later[cell][k]):.2e}" for k in ks])
        rows.append([cell, "at the end"] + [f"{float(result.end[cell][k]):.2e}" for k in ks])
    return _format(rows)


# ------------------------------------------------------------------ figures

_COLORS = {cell: CELL_STYLES[cell][1] for cell in ("rnn", "lstm", "gru")}
_TITLES = {"rnn": "tanh RNN", "lstm": "LSTM", "gru": "GRU"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tied(result: Tied, path: str) -> None:
    plt = _pyplot()
    from matplotlib.lines import Line2D

    gains = sorted({g for _, g, _ in result.tied})
    colors = {g: GAIN_COLORS[i % len(GAIN_COLORS)] for i, g in enumerate(gains)}
    k = torch.arange(result.depth + 1, dtype=_DTYPE)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), sharey=True)
    for ax, kind in zip(axes, DISTRIBUTIONS):
        for gain in gains:
            c = colors[gain]
            for (kind_, gain_, draw), curve in result.tied.items():
                if kind_ != kind or gain_ != gain:
                    continue
                ax.semilogy(k, curve, color=c, linewidth=1.6)
                ax.semilogy(k, result.untied[kind, gain, draw], color=c, linewidth=1.6,
                            linestyle=(0, (5, 3)), alpha=0.9)
                if kind == "gaussian":
                    ax.semilogy(k, result.radius[kind, gain, draw] ** k, color=c,
                                linestyle=":", linewidth=1)
            ax.semilogy(k, torch.exp(k * mean_log_growth(kind, result.H, gain)), color="gray",
                        linestyle="-.", linewidth=1)
        ax.set_title(("W = gain · G/√H, Gaussian entries" if kind == "gaussian"
                      else "W = gain · a random orthogonal matrix") + f", H = {result.H}",
                     fontsize=10)
        ax.set_xlabel("depth k: steps of the RNN, or layers of the MLP, from the loss")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("‖∂L/∂h‖ / ‖∂L/∂h_out‖, geometric mean over the batch")
    handles = [Line2D([], [], color=colors[g], linewidth=2, label=f"gain {g:g}") for g in gains]
    handles += [Line2D([], [], color="black", linewidth=1.6, label="RNN: one W, tied (kernel)"),
                Line2D([], [], color="black", linewidth=1.6, linestyle=(0, (5, 3)),
                       label="MLP: a fresh W per layer, untied (autograd)"),
                Line2D([], [], color="black", linestyle=":", linewidth=1,
                       label="ρ(W)^k, the tied W's spectral radius"),
                Line2D([], [], color="gray", linestyle="-.", linewidth=1,
                       label="exp(k · E log ‖W u‖), the untied mean")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8.5, frameon=False)
    fig.suptitle("Tied against untied depth, at h = 0 (φ' = 1): the RNN multiplies one matrix "
                 "k times and follows its spectrum;\nthe MLP's independent matrices concentrate "
                 f"around their mean log-norm ({len({d for *_, d in result.tied})} draws each; "
                 f"kernel and autograd on the tied network agree to {result.agreement:.0e})",
                 fontsize=10.5)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=72)
    plt.close(fig)


def plot_weight(result: Weight, path: str) -> None:
    plt = _pyplot()
    k = torch.arange(result.T)
    fig, ax = plt.subplots(figsize=(10, 5.4))
    for cell, terms in result.terms.items():
        c = _COLORS[cell]
        ax.semilogy(k, terms.clamp_min(1e-300), color=c, linewidth=2,
                    label=f"{_TITLES[cell]}: ‖δ_tᵀ h_(t-1)‖, step t's term")
        ax.axhline(result.total[cell], color=c, linestyle=(0, (5, 3)), linewidth=1.3,
                   label=f"{_TITLES[cell]}: ‖∂L/∂W_hh‖, the whole gradient")
        ax.axvline(result.horizon[cell], color=c, linestyle=":", linewidth=1.3,
                   label=f"{_TITLES[cell]}: {result.fraction:.0%} of Σ‖term‖ within "
                         f"{result.horizon[cell]} steps")
    ax.set_xlabel("distance from the loss k = T-1-t (steps)")
    ax.set_ylabel("Frobenius norm")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, ncol=3, loc="lower center", bbox_to_anchor=(0.5, -0.42))
    ax.set_title("One W_hh, T terms: ∂L/∂W_hh = Σ_t δ_tᵀ h_(t-1), the gradients of T untied "
                 f"copies (T = {result.T}, loss at the end)\nthe whole is not small, but it is "
                 "made of the near steps (recorded by the kernel; autograd on untied copies "
                 f"agrees to {result.agreement:.0e})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def plot_every_step(result: EveryStep, path: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4))
    k = torch.arange(result.T)
    for cell in result.later:
        c = _COLORS[cell]
        axes[0].semilogy(k, result.whole[cell], color=c, linewidth=2,
                         label=f"{_TITLES[cell]}: loss at every step, L = Σ_s ℓ_s")
        axes[0].semilogy(k, result.end[cell].flip(0).clamp_min(1e-300), color=c,
                         linewidth=1.3, linestyle=(0, (5, 3)),
                         label=f"{_TITLES[cell]}: loss at the end, L = ℓ_(T-1)")
        axes[1].semilogy(k[1:], result.later[cell][1:].clamp_min(1e-300), color=c,
                         linewidth=3.5, alpha=0.45, label=f"{_TITLES[cell]}: loss at every step")
        axes[1].semilogy(k[1:], result.end[cell][1:].clamp_min(1e-300), color=c, linewidth=1.3,
                         linestyle=(0, (5, 3)), label=f"{_TITLES[cell]}: loss at the end")
    direct = torch.diagonal(next(iter(result.by_source.values())))
    axes[0].semilogy(k, direct, color="gray", linewidth=1, linestyle=":",
                     label="‖∂ℓ_t/∂h_t‖ = ‖v_t‖: step t's own loss, the direct term")
    axes[0].set_xlabel("step t")
    axes[0].set_ylabel("‖∂L/∂h_t‖, mean over the batch")
    axes[0].set_title("with a loss at every step the gradient reaching each h_t stays large:\n"
                      "it is mostly the direct term of its own and the nearby steps' losses",
                      fontsize=10)
    axes[1].set_xlabel("k: how many steps later the loss is")
    axes[1].set_ylabel("‖∂ℓ_(t+k)/∂h_t‖, mean over t and the batch")
    axes[1].set_title("but the part that comes from the loss k steps later\ndecays as with "
                      "the loss at the end", fontsize=10)
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.suptitle(f"T = {result.T}, recorded by the kernel (one backward per loss step); "
                 f"autograd on the reference loop agrees to {result.agreement:.0e}",
                 fontsize=10.5)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
