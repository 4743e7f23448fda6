"""Benchmark: rnnkern against torch.nn.RNN, forward and train step, timed in one process.

Implementations are interleaved within each repeat so that machine drift hits all of them
alike, and each figure is the median over the repeats.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from . import functional

# (T, B, I, H): from latency-bound to GEMM-bound; small enough for `rnnkern bench` to stay short.
DEFAULT_SIZES: Tuple[Tuple[int, int, int, int], ...] = (
    (1000, 1, 32, 32),
    (100, 16, 32, 64),
    (200, 32, 128, 128),
    (100, 64, 256, 512),
)


@dataclass
class Result:
    T: int
    B: int
    I: int
    H: int
    torch_forward_ms: float
    rnnkern_forward_ms: float
    torch_train_ms: float
    rnnkern_train_ms: float

    @property
    def forward_speedup(self) -> float:
        return self.torch_forward_ms / self.rnnkern_forward_ms

    @property
    def train_speedup(self) -> float:
        return self.torch_train_ms / self.rnnkern_train_ms


def _median_ms(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int) -> Dict[str, float]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def measure(T: int, B: int, I: int, H: int, repeats: int = 7, warmup: int = 2,
            dtype: torch.dtype = torch.float32, seed: int = 0) -> Result:
    """Times forward (no grad) and a train step (forward + backward of output.sum())."""
    torch.manual_seed(seed)
    module = torch.nn.RNN(I, H, dtype=dtype)
    params = [module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0]
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=dtype, requires_grad=True)

    def torch_forward():
        with torch.no_grad():
            module(x, h0)

    def rnnkern_forward():
        with torch.no_grad():
            functional.rnn(x, h0[0], *params)

    def train(run):
        def step():
            for p in (x, h0, *params):
                p.grad = None
            run()[0].sum().backward()
        return step

    fwd = _median_ms({"torch": torch_forward, "rnnkern": rnnkern_forward}, repeats, warmup)
    train_ms = _median_ms({"torch": train(lambda: module(x, h0)),
                           "rnnkern": train(lambda: functional.rnn(x, h0[0], *params))},
                          repeats, warmup)
    return Result(T, B, I, H, fwd["torch"], fwd["rnnkern"], train_ms["torch"], train_ms["rnnkern"])


def format_table(results: Sequence[Result]) -> str:
    head = ("T", "B", "I", "H", "torch fwd ms", "rnnkern fwd ms", "fwd speedup",
            "torch train ms", "rnnkern train ms", "train speedup")
    rows = [head] + [
        (str(r.T), str(r.B), str(r.I), str(r.H), f"{r.torch_forward_ms:.3f}",
         f"{r.rnnkern_forward_ms:.3f}", f"{r.forward_speedup:.2f}x", f"{r.torch_train_ms:.3f}",
         f"{r.rnnkern_train_ms:.3f}", f"{r.train_speedup:.2f}x")
        for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(sizes: Sequence[Tuple[int, int, int, int]] = DEFAULT_SIZES, repeats: int = 7,
        dtype: torch.dtype = torch.float32, progress=sys.stderr) -> List[Result]:
    results = []
    for i, (T, B, I, H) in enumerate(sizes, 1):
        if progress is not None:
            print(f"[{i}/{len(sizes)}] T={T} B={B} I={I} H={H} ...", file=progress, flush=True)
        results.append(measure(T, B, I, H, repeats=repeats, dtype=dtype))
    return results


def as_dicts(results: Sequence[Result]) -> List[dict]:
    return [dict(asdict(r), forward_speedup=r.forward_speedup, train_speedup=r.train_speedup)
            for r in results]
