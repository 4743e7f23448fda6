"""`rnnkern vanish`: gradient norms through time for W_hh = gain · orthogonal, as an RNN and
as a deep MLP with tied weights (one layer per step), with the σ_max^k bound; or, with
``cell`` "lstm" / "gru", for the gated cells (each gate's block of W_hh = gain · orthogonal).
A last panel puts the three cells side by side at the same T, as torch initialises them.

The loss reads only the last hidden state, so ‖∂L/∂h_t‖ at distance k = T-1-t from the loss
is ‖v Π diag(φ'(a)) W_hh‖ over those k steps, at most ‖v‖ · gain^k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

from ...cells import get as cell_spec
from ...diagnostics import record_gradient_flow
from ...modules import GRU, LSTM, RNN

GAINS = (0.5, 0.9, 1.0, 1.1, 1.5)
NONLINEARITIES = ("tanh", "relu")


@dataclass
class Curves:
    T: int
    rnn: Dict[Tuple[str, float], torch.Tensor]   # (nonlinearity, gain) -> (T,) by distance k
    mlp: Dict[Tuple[str, float], torch.Tensor]
    bound: Dict[float, torch.Tensor]              # gain -> ‖v‖ · gain^k
    cell: str = "rnn"  # "lstm" / "gru": rnn holds (cell, gain) curves, mlp is empty
    # The three cells at the same T, torch's initialisation: "rnn", "lstm", "gru" (‖∂L/∂h‖)
    # and "lstm c" (‖∂L/∂c‖), by distance k.
    cells: Dict[str, torch.Tensor] = field(default_factory=dict)


def _setup(H: int, I: int, gain: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=torch.float64))
    w_hh = gain * q * torch.sign(torch.diagonal(r))  # a uniformly random orthogonal matrix
    w_ih = torch.randn(H, I, generator=g, dtype=torch.float64) / I ** 0.5
    return w_hh, w_ih


def rnn_norms(nonlinearity: str, gain: float, T: int, B: int, H: int, I: int,
              seed: int = 0) -> torch.Tensor:
    """Mean over the batch of ‖∂L/∂h_{T-1-k}‖, k = 0 … T-1, recorded by the fused kernel."""
    w_hh, w_ih = _setup(H, I, gain, seed)
    rnn = RNN(I, H, nonlinearity=nonlinearity, dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(w_hh)
        rnn.weight_ih_l0.copy_(w_ih)
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    h0 = torch.randn(1, B, H, generator=g, dtype=torch.float64) * 0.1
    v = torch.randn(H, generator=g, dtype=torch.float64)
    with record_gradient_flow(rnn) as flow:
        out, _ = rnn(x, h0)
        (out[-1] @ v).sum().backward()
    return flow.norms[0].mean(1).flip(0)


def mlp_norms(nonlinearity: str, gain: float, T: int, B: int, H: int, I: int,
              seed: int = 0) -> torch.Tensor:
    """The same computation as a T-layer MLP whose layers share one weight matrix; the
    inputs x_t enter as per-layer biases. Gradients by autograd (retain_grad)."""
    w_hh, w_ih = _setup(H, I, gain, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    h = torch.randn(1, B, H, generator=g, dtype=torch.float64)[0] * 0.1
    v = torch.randn(H, generator=g, dtype=torch.float64)
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu
    layer = torch.nn.Linear(H, H, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w_hh)
    activations: List[torch.Tensor] = []
    for t in range(T):
        h = phi(layer(h) + x[t] @ w_ih.T)
        h.retain_grad()
        activations.append(h)
    (h @ v).sum().backward()
    return torch.stack([a.grad.norm(dim=1).mean() for a in reversed(activations)])


_GATED = {name: (cell_spec(name).module_type(), cell_spec(name).gate_count)
          for name in ("lstm", "gru")}


def _flow_by_distance(module, T: int, B: int, I: int, H: int, seed: int, h0_scale: float):
    """(‖∂L/∂h‖, ‖∂L/∂c‖ or None) by distance k, mean over the batch, loss v · h_{T-1}."""
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    h0 = torch.randn(1, B, H, generator=g, dtype=torch.float64) * h0_scale
    v = torch.randn(H, generator=g, dtype=torch.float64)
    hx = (h0, torch.zeros_like(h0)) if isinstance(module, LSTM) else h0
    with record_gradient_flow(module) as flow:
        out, _ = module(x, hx)
        (out[-1] @ v).sum().backward()
    c = flow.cell_norms
    return flow.norms[0].mean(1).flip(0), None if c is None else c[0].mean(1).flip(0)


def gated_norms(cell: str, gain: float, T: int, B: int, H: int, I: int,
                seed: int = 0) -> torch.Tensor:
    """As :func:`rnn_norms` for the LSTM or GRU: every gate's block of W_hh = gain ·
    orthogonal, biases zero."""
    cls, gates = _GATED[cell]
    module = cls(I, H, dtype=torch.float64)
    with torch.no_grad():
        for q in range(gates):
            w_hh, w_ih = _setup(H, I, gain, seed + q)
            module.weight_hh_l0[q * H:(q + 1) * H].copy_(w_hh)
            module.weight_ih_l0[q * H:(q + 1) * H].copy_(w_ih)
        module.bias_ih_l0.zero_()
        module.bias_hh_l0.zero_()
    return _flow_by_distance(module, T, B, I, H, seed, 0.1)[0]


def indrnn_norms(nonlinearity: str, gain: float, T: int, B: int, H: int, I: int,
                 seed: int = 0) -> torch.Tensor:
    """As :func:`rnn_norms` for the IndRNN, u = W_hh drawn from gain · U(-1, 1) with one unit
    at u = gain: each unit j's gradient shrinks or grows by |u_j| · φ' per step, so the bound
    is per unit, |u_j|^k, and the norm's is gain^k = max |u_j|^k."""
    w_hh, w_ih = _setup(H, I, gain, seed)
    module = cell_spec("indrnn").module_type()(I, H, nonlinearity=nonlinearity,
                                               dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 2)
    u = gain * (2 * torch.rand(H, generator=g, dtype=torch.float64) - 1)
    u[0] = gain
    with torch.no_grad():
        module.weight_hh_l0.copy_(u)
        module.weight_ih_l0.copy_(w_ih)
        module.bias_ih_l0.zero_()
        module.bias_hh_l0.zero_()
    return _flow_by_distance(module, T, B, I, H, seed, 0.1)[0]


# The gated cells' gate bias in the side-by-side panel: the LSTM's forget gate and the GRU's
# update gate (rows H to 2H of b_ih) start at +1, the LSTM's usual initialisation (Gers et al.
# 2000, Jozefowicz et al. 2015); at torch's 0 both forget half of the state every step.
GATE_BIAS = 1.0


def cells_norms(T: int, B: int, H: int, I: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    """The three cells side by side at the same T, as torch initialises them, the gated
    cells' forget / update gate bias raised by GATE_BIAS."""
    out = {}
    for name, cls in (("rnn", RNN), ("lstm", LSTM), ("gru", GRU)):
        torch.manual_seed(seed)
        module = cls(I, H, dtype=torch.float64)
        if name != "rnn":
            with torch.no_grad():
                module.bias_ih_l0[H:2 * H] += GATE_BIAS
        h, c = _flow_by_distance(module, T, B, I, H, seed, 0.1)
        out[name] = h
        if c is not None:
            out[name + " c"] = c
    return out


def compute(T: int = 100, B: int = 16, H: int = 64, I: int = 8,
            gains: Sequence[float] = GAINS, seed: int = 0, cell: str = "rnn") -> Curves:
    rnn, mlp, bound = {}, {}, {}
    for gain in gains:
        if cell == "indrnn":
            for nl in NONLINEARITIES:
                rnn[nl, gain] = indrnn_norms(nl, gain, T, B, H, I, seed)
        elif cell != "rnn":
            rnn[cell, gain] = gated_norms(cell, gain, T, B, H, I, seed)
        for nl in NONLINEARITIES if cell == "rnn" else ():
            rnn[nl, gain] = rnn_norms(nl, gain, T, B, H, I, seed)
            mlp[nl, gain] = mlp_norms(nl, gain, T, B, H, I, seed)
        # gain^k as a tensor: inf past float64's range (a float's ** raises there)
        bound[gain] = torch.tensor(gain, dtype=torch.float64) ** torch.arange(
            T, dtype=torch.float64)
    return Curves(T, rnn, mlp, bound, cell, cells_norms(T, B, H, I, seed))


def relative_difference(curves: Curves, nonlinearity: str, gain: float) -> float:
    """max over k of |RNN - MLP| / |MLP| for one curve."""
    rnn, mlp = curves.rnn[nonlinearity, gain], curves.mlp[nonlinearity, gain]
    return float(((rnn - mlp).abs() / mlp.abs().clamp_min(1e-300)).max())


def agreement(curves: Curves) -> float:
    """The largest relative difference between the RNN and the MLP curves, over all curves."""
    return max(relative_difference(curves, nl, gain) for nl, gain in curves.rnn)


def within_bound(curves: Curves, slack: float = 1e-9) -> bool:
    """Whether every RNN curve stays under ‖∂L/∂h_T-1‖ · gain^k (Pascanu et al. 2013)."""
    return all(bool(torch.all(norms <= curves.bound[gain] * norms[0] * (1 + slack)))
               for (_, gain), norms in curves.rnn.items())


def _format(rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cells_table(curves: Curves, distances: Sequence[int] = (0, 10, 25, 50, 99)) -> str:
    """The three cells at the same T: ‖∂L/∂h‖ (and the LSTM's ‖∂L/∂c‖) at distance k, and
    the fraction that reaches the first step."""
    ks = [k for k in distances if k < curves.T]
    rows = [["cell", "norm"] + [f"k={k}" for k in ks] + ["first / last"]]
    for name, norms in curves.cells.items():
        cell, _, kind = name.partition(" ")
        rows.append([cell, "‖∂L/∂c‖" if kind else "‖∂L/∂h‖"] +
                    [f"{float(norms[k]):.3e}" for k in ks] +
                    [f"{float(norms[-1] / curves.cells[cell][0]):.1e}"])
    return _format(rows)


def table(curves: Curves, distances: Sequence[int] = (0, 10, 25, 50, 99)) -> str:
    ks = [k for k in distances if k < curves.T]
    if curves.cell == "indrnn":  # no tied-weight MLP; the bound max |u_j|^k = gain^k
        rows = [["nonlinearity", "gain"] + [f"k={k}" for k in ks] + ["bound k=%d" % ks[-1]]]
        for (nl, gain), norms in curves.rnn.items():
            rows.append([nl, f"{gain:g}"] + [f"{float(norms[k]):.3e}" for k in ks] +
                        [f"{float(curves.bound[gain][ks[-1]] * norms[0]):.3e}"])
        return _format(rows)
    if curves.cell != "rnn":  # the gated cells: no tied-weight MLP, no gain^k bound
        rows = [["cell", "gain"] + [f"k={k}" for k in ks]]
        for (cell, gain), norms in curves.rnn.items():
            rows.append([cell, f"{gain:g}"] + [f"{float(norms[k]):.3e}" for k in ks])
        return _format(rows)
    head = ["nonlinearity", "gain"] + [f"k={k}" for k in ks] + ["bound k=%d" % ks[-1],
                                                               "max |RNN-MLP|/MLP"]
    rows = [head]
    for (nl, gain), norms in curves.rnn.items():
        rows.append([nl, f"{gain:g}"] + [f"{float(norms[k]):.3e}" for k in ks] +
                    [f"{float(curves.bound[gain][ks[-1]] * norms[0]):.3e}",
                     f"{relative_difference(curves, nl, gain):.1e}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# Dark, distinct colours from contracting (blue) to expanding (red); none pale on white.
GAIN_COLORS = ["#1f4e9c", "#2a9d8f", "#222222", "#e07b00", "#c1121f", "#7b2cbf", "#6b4f1d"]
# The cells' colours in the panel of the three cells: none of the gains'.
CELL_STYLES = {"rnn": ("tanh RNN ‖∂L/∂h‖", "#d00070", "-"),
               "lstm": ("LSTM ‖∂L/∂h‖", "#38a000", "-"),
               "lstm c": ("LSTM ‖∂L/∂c‖ (cell state)", "#38a000", ":"),
               "gru": ("GRU ‖∂L/∂h‖", "#b8860b", "-")}


def decades_lost(norms: torch.Tensor) -> float:
    """How many orders of magnitude a curve falls from the loss (k = 0) to k = T-1."""
    return float(torch.log10(norms[0].clamp_min(1e-300) / norms[-1].clamp_min(1e-300)))


def _plot_cells(ax, curves: Curves) -> None:
    """The panel with the three cells side by side (recorded by the kernel); its title says
    how far each cell's gradient falls over the T steps."""
    k = torch.arange(curves.T)
    for name, norms in curves.cells.items():
        label, color, style = CELL_STYLES[name]
        ax.semilogy(k, norms.clamp_min(1e-300), color=color, linestyle=style, linewidth=2,
                    label=label)
    falls = ", ".join(f"{CELL_STYLES[name][0].split(' ‖')[0]} "
                      f"{'≥ ' if norms[-1] == 0 else ''}{decades_lost(norms):.0f}"  # underflow
                      for name, norms in curves.cells.items() if name != "lstm c")
    ax.set_title(f"the three cells at the same T = {curves.T}, torch's initialisation (LSTM "
                 f"forget and GRU update\ngate bias +{GATE_BIAS:g}); orders of magnitude "
                 f"‖∂L/∂h‖ falls over the T steps: {falls}", fontsize=9)
    ax.set_xlabel("distance from the loss k = T-1-t (steps)")
    ax.set_ylabel("‖∂L/∂h‖, mean over the batch")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)


def _plot_gated(curves: Curves, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.4))
    k = torch.arange(curves.T)
    indrnn = curves.cell == "indrnn"
    for i, ((name, gain), norms) in enumerate(curves.rnn.items()):
        color = GAIN_COLORS[(i // 2 if indrnn else i) % len(GAIN_COLORS)]
        # a relu unit that is off passes nothing back: its curve ends there (no log of 0)
        shown = torch.where(norms > 0, norms, torch.nan) if indrnn else norms.clamp_min(1e-300)
        line = axes[0].semilogy(k, shown, linewidth=2, color=color,
                                linestyle=":" if indrnn and name == "relu" else "-",
                                label=f"{name} gain {gain:g}" if indrnn else f"gain {gain:g}")
        if indrnn and name == "tanh":
            axes[0].semilogy(k, curves.bound[gain] * norms[0], color=line[0].get_color(),
                             linestyle=(0, (4, 3)), linewidth=1, alpha=0.8)
    axes[0].set_title("IndRNN, u = W_hh ~ gain · U(-1, 1): ‖∂L/∂h_t‖ recorded by the kernel\n"
                      "dashed: the bound gain^k = max |u_j|^k (each unit's is |u_j|^k)"
                      if indrnn else
                      f"{curves.cell.upper()}: ‖∂L/∂h_t‖ recorded by the kernel,\neach gate's "
                      "W_hh block = gain · orthogonal", fontsize=9)
    axes[0].set_xlabel("distance from the loss k = T-1-t (steps)")
    axes[0].grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=8)
    _plot_cells(axes[1], curves)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def plot(curves: Curves, path: str) -> None:
    """Two rows (tanh, relu) by two columns (RNN by the kernel, tied-weight MLP by autograd),
    one colour per gain, the gain^k bound dashed, one legend for all panels; below them the
    three cells side by side. For a gated ``curves.cell``: its gain curves and that panel."""
    if curves.cell != "rnn":
        return _plot_gated(curves, path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogLocator, NullFormatter

    gains = sorted(curves.bound)
    colors = {g: GAIN_COLORS[i % len(GAIN_COLORS)] for i, g in enumerate(gains)}
    k = torch.arange(curves.T)
    fig = plt.figure(figsize=(11, 12.4))
    grid = fig.add_gridspec(2, 1, height_ratios=(2, 0.95))
    axes = grid[0].subgridspec(2, 2).subplots(sharex=True, sharey="row")
    _plot_cells(fig.add_subplot(grid[1]), curves)
    columns = (("RNN over T steps: ‖∂L/∂h_t‖ recorded by the rnnkern kernel", curves.rnn),
               ("MLP of T layers, one shared weight matrix: autograd", curves.mlp))
    for row, nl in enumerate(NONLINEARITIES):
        for col, (kind, data) in enumerate(columns):
            ax = axes[row, col]
            for gain in gains:
                norms = data[nl, gain]
                ax.semilogy(k, norms, color=colors[gain], linewidth=2)
                ax.semilogy(k, curves.bound[gain] * norms[0], color=colors[gain],
                            linestyle=(0, (4, 3)), linewidth=1.3, alpha=0.85)
            ax.set_title(f"{kind}\n{nl}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            # One labelled tick per ten decades: even exponents on every row.
            ax.yaxis.set_major_locator(LogLocator(base=10.0 ** 10, numticks=12))
            ax.yaxis.set_minor_locator(LogLocator(base=10.0, numticks=100))
            ax.yaxis.set_minor_formatter(NullFormatter())
            if row == 1:
                ax.set_xlabel("distance from the loss k = T-1-t (steps, or layers)")
            if col == 0:
                ax.set_ylabel(f"‖∂L/∂h‖, mean over the batch ({nl})")
    handles = [Line2D([], [], color=colors[g], linewidth=2, label=f"gain {g:g}") for g in gains]
    handles.append(Line2D([], [], color="gray", linestyle=(0, (4, 3)), linewidth=1.3,
                          label="bound ‖∂L/∂h_T-1‖ · gain^k"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9,
               title="W_hh = gain · orthogonal matrix", title_fontsize=9, frameon=False)
    fig.suptitle("Vanishing and exploding gradients: an RNN over T steps is a T-layer network "
                 "with tied weights\n"
                 f"the two columns agree to a relative difference of {agreement(curves):.0e} "
                 "at most (float64); "
                 + ("every curve stays under its bound" if within_bound(curves)
                    else "some curves cross their bound"), fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=72)
    plt.close(fig)
