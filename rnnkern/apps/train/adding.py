"""`rnnkern train adding`: the adding problem (Hochreiter & Schmidhuber 1997; Le, Jaitly and
Hinton 2015) with a gradient-flow heat map recorded by the fused kernel, for the Elman RNN,
the LSTM or the GRU (``cell``).

Each sample has T steps of two channels: a value in [0, 1) and a marker that is 1 at exactly
two steps, one in each half. The target is the sum of the two marked values. Predicting 1
everywhere gives MSE = 1/6 ≈ 0.167.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from ...cells import get as cell_spec
from ...diagnostics import record_gradient_flow

BASELINE_MSE = 1 / 6
HORIZON_FRACTION = 0.9


def batch(T: int, B: int, generator: torch.Generator):
    """(x, y): x (B, T, 2), y (B, 1)."""
    values = torch.rand(B, T, generator=generator)
    markers = torch.zeros(B, T)
    half = max(T // 2, 1)
    first = torch.randint(0, half, (B,), generator=generator)
    second = torch.randint(half, T, (B,), generator=generator) if T > 1 else first
    rows = torch.arange(B)
    markers[rows, first] = 1
    markers[rows, second] = 1
    target = (values * markers).sum(1, keepdim=True)
    return torch.stack([values, markers], -1), target


class Model(torch.nn.Module):
    def __init__(self, hidden: int, nonlinearity: str, init: str, engine: str,
                 cell: str = "rnn"):
        super().__init__()
        spec = cell_spec(cell)
        cls = spec.module_type() if engine == "rnnkern" else spec.torch_type()
        if spec.nonlinearity:
            self.rnn = cls(2, hidden, nonlinearity=nonlinearity, batch_first=True)
        else:
            if init == "identity":
                raise ValueError("init 'identity' is for the Elman cell (--cell rnn) only")
            self.rnn = cls(2, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)
        with torch.no_grad():
            if init == "orthogonal" and cell != "rnn":  # each gate's block of W_hh
                for block in self.rnn.weight_hh_l0.chunk(spec.gate_count):
                    torch.nn.init.orthogonal_(block)
            elif init == "orthogonal":
                torch.nn.init.orthogonal_(self.rnn.weight_hh_l0)
            elif init == "identity":  # IRNN (Le, Jaitly and Hinton 2015)
                self.rnn.weight_hh_l0.copy_(torch.eye(hidden))
                self.rnn.bias_ih_l0.zero_()
                self.rnn.bias_hh_l0.zero_()
                torch.nn.init.normal_(self.rnn.weight_ih_l0, std=0.001)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@dataclass
class Run:
    losses: List[float] = field(default_factory=list)
    flow: List[torch.Tensor] = field(default_factory=list)  # per iteration: (T,) mean ‖∂L/∂h_t‖
    # per iteration: the gradient horizon, the distance from the loss within which
    # HORIZON_FRACTION of Σ_t ‖δ_tᵀ h_{t-1}‖ (∂L/∂W_hh's terms) comes; empty for torch
    horizon: List[int] = field(default_factory=list)
    seconds: float = 0.0
    test_mse: float = math.nan
    # ‖∂L/∂h_0‖ / ‖∂L/∂h_T-1‖ before and after training, measured in float64 on a fixed batch
    # (in float32 it underflows to 0 at T = 100); empty for the torch engine.
    reach: Tuple[float, ...] = ()


def gradient_reach(model: "Model", x: torch.Tensor, y: torch.Tensor) -> float:
    """How much of the gradient at the last step reaches the first one, mean over the batch:
    ‖∂L/∂h_0‖ / ‖∂L/∂h_T-1‖, from a float64 copy of ``model`` (the model is left as it is)."""
    probe = copy.deepcopy(model).double()
    with record_gradient_flow(probe.rnn) as flow:
        torch.nn.functional.mse_loss(probe(x.double()), y.double()).backward()
    norms = flow.norms[0].mean(1)
    return float(norms[0] / norms[-1])


class Progress:
    """A one-line progress bar on stderr (a line every 10% when stderr is not a terminal)."""

    def __init__(self, total: int, stream=sys.stderr, width: int = 30):
        self.total, self.stream, self.width = total, stream, width
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last_tenth = -1

    def update(self, done: int, loss: float) -> None:
        filled = int(self.width * done / self.total)
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} loss {loss:.4f}"
        if self.tty:
            end = "\n" if done == self.total else ""
            print("\r" + text, end=end, file=self.stream, flush=True)
        elif done * 10 // self.total > self.last_tenth:
            self.last_tenth = done * 10 // self.total
            print(text, file=self.stream, flush=True)


def train(T: int = 50, steps: int = 2000, hidden: int = 64, nonlinearity: str = "tanh",
          init: str = "default", engine: str = "rnnkern", batch_size: int = 64,
          lr: float = 3e-3, clip: float = 1.0, seed: int = 0,
          progress: Optional[Progress] = None, cell: str = "rnn") -> Run:
    torch.manual_seed(seed)
    model = Model(hidden, nonlinearity, init, engine, cell)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    run = Run()
    recording = engine == "rnnkern"
    probe = batch(T, 256, torch.Generator().manual_seed(seed + 3))
    first_reach = gradient_reach(model, *probe) if recording else None
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = batch(T, batch_size, g)
        opt.zero_grad(set_to_none=True)
        if recording:
            with record_gradient_flow(model.rnn, weight_contributions=True) as flow:
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
            run.flow.append(flow.norms[0].mean(1))
            run.horizon.append(int(flow.horizon(HORIZON_FRACTION)[0]))
        else:
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        run.losses.append(loss.item())
        if progress is not None:
            progress.update(step, run.losses[-1])
    run.seconds = time.perf_counter() - start
    with torch.no_grad():
        x, y = batch(T, 2000, torch.Generator().manual_seed(seed + 2))
        run.test_mse = torch.nn.functional.mse_loss(model(x), y).item()
    if first_reach is not None:
        run.reach = (first_reach, gradient_reach(model, *probe))
    return run


def smooth(values: List[float], window: int) -> List[float]:
    """Moving mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_losses(run: Run, title: str, path: str) -> None:
    """Training MSE per iteration (faint) and its moving mean, the test MSE after training
    and the MSE of always predicting 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = len(run.losses)
    window = max(1, steps // 50)
    iterations = range(1, steps + 1)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.semilogy(iterations, run.losses, linewidth=0.5, color="tab:blue", alpha=0.3,
                label="training MSE, per iteration")
    ax.semilogy(iterations, smooth(run.losses, window), linewidth=2, color="tab:blue",
                label=f"training MSE, mean of {window} iterations")
    ax.axhline(BASELINE_MSE, color="tab:red", linestyle="--", label="predicting 1: MSE 1/6")
    if not math.isnan(run.test_mse):
        ax.axhline(run.test_mse, color="black", linestyle=":", linewidth=1.2)
        ax.plot([steps], [run.test_mse], "o", color="black",
                label=f"test MSE after training: {run.test_mse:.4f}")
    ax.set_xlabel("training iteration")
    ax.set_ylabel("mean squared error")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# The heat map's colour scale, the same for every run: log10 of the gradient reaching step t
# relative to the one at the last step.
FLOW_SCALE = (-24.0, 4.0)


def plot_flow(run: Run, title: str, path: str) -> None:
    """Heat map, iteration by time step, of log10 ‖∂L/∂h_t‖ / ‖∂L/∂h_T-1‖ on a fixed scale,
    so that runs can be compared; the bar's label gives this run's range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flow = torch.stack(run.flow)                      # (iterations, T), float64
    zero = flow == 0                                   # underflowed in float32
    ratio = flow / flow[:, -1:].clamp_min(1e-300)
    heat = ratio.clamp_min(1e-300).log10()
    finite = heat[~zero]
    low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 0.0)
    cmap = plt.get_cmap("magma").copy()
    cmap.set_under("#9e9e9e")   # gray: underflowed to 0 in float32
    cmap.set_over("#7fffd4")
    heat = heat.masked_fill(zero, FLOW_SCALE[0] - 1)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    image = ax.imshow(heat.numpy(), aspect="auto", origin="lower", cmap=cmap,
                      vmin=FLOW_SCALE[0], vmax=FLOW_SCALE[1], interpolation="nearest",
                      extent=(-0.5, heat.shape[1] - 0.5, 0.5, heat.shape[0] + 0.5))
    label = (f"log10 ‖∂L/∂h_t‖ / ‖∂L/∂h_T-1‖, one scale for all runs\n"
             f"this run: {low:.1f} to {high:.1f}")
    fig.colorbar(image, ax=ax, label=label, extend="both")
    xlabel = "time step t (the loss reads the last one)"
    if bool(zero.any()):
        xlabel += "\ngray: the gradient underflowed to 0 in float32 (below 1e-45)"
    if run.horizon:
        window = max(1, len(run.horizon) // 50)
        reach = [heat.shape[1] - 1 - h for h in smooth([float(h) for h in run.horizon], window)]
        ax.plot(reach, range(1, len(reach) + 1), color="#00e5ff", linewidth=1.6,
                label=f"the gradient horizon: {HORIZON_FRACTION:.0%} of ∂L/∂W_hh's terms "
                      "come from the steps right of it")
        ax.set_xlim(-0.5, heat.shape[1] - 0.5)
        ax.legend(fontsize=7.5, loc="upper left", framealpha=0.85)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training iteration")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
