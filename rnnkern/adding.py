"""`rnnkern train adding`: the adding problem (Hochreiter & Schmidhuber 1997; Le, Jaitly and
Hinton 2015) with a gradient-flow heat map recorded by the fused kernel.

Each sample has T steps of two channels: a value in [0, 1) and a marker that is 1 at exactly
two steps, one in each half. The target is the sum of the two marked values. Predicting 1
everywhere gives MSE = 1/6 ≈ 0.167.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from .diagnostics import record_gradient_flow
from .modules import RNN

BASELINE_MSE = 1 / 6


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
    def __init__(self, hidden: int, nonlinearity: str, init: str, engine: str):
        super().__init__()
        cls = RNN if engine == "rnnkern" else torch.nn.RNN
        self.rnn = cls(2, hidden, nonlinearity=nonlinearity, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)
        with torch.no_grad():
            if init == "orthogonal":
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
    seconds: float = 0.0
    test_mse: float = math.nan


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
          progress: Optional[Progress] = None) -> Run:
    torch.manual_seed(seed)
    model = Model(hidden, nonlinearity, init, engine)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    run = Run()
    recording = engine == "rnnkern"
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = batch(T, batch_size, g)
        opt.zero_grad(set_to_none=True)
        if recording:
            with record_gradient_flow(model.rnn) as flow:
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
            run.flow.append(flow.norms[0].mean(1))
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
    return run


def plot_losses(run: Run, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(run.losses, linewidth=0.8, label="training MSE")
    ax.axhline(BASELINE_MSE, color="red", linestyle="--", label="predict 1 (MSE 1/6)")
    ax.set_xlabel("training iteration")
    ax.set_ylabel("MSE")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_flow(run: Run, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heat = torch.stack(run.flow).clamp_min(1e-30).log10()  # (iterations, T)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    image = ax.imshow(heat.numpy(), aspect="auto", origin="lower", cmap="magma",
                      extent=(-0.5, heat.shape[1] - 0.5, 0.5, heat.shape[0] + 0.5))
    fig.colorbar(image, ax=ax, label="log10 mean ‖∂L/∂h_t‖")
    ax.set_xlabel("time step t (the loss reads the last one)")
    ax.set_ylabel("training iteration")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
