"""Benchmark: rnnkern.RNN against torch.nn.RNN, forward and train step, in one process.

Implementations are interleaved within each repeat so that machine drift hits all of them
alike, and each figure is the median over the repeats.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from .modules import RNN


@dataclass(frozen=True)
class Case:
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False  # variable lengths (uniform in [1, T]) as an unsorted PackedSequence

    def label(self) -> str:
        extra = ([f"L{self.layers}"] if self.layers > 1 else []) + \
            (["bi"] if self.bidirectional else []) + (["packed"] if self.packed else [])
        return " ".join(extra) or "-"


# From latency-bound to GEMM-bound; small enough for `rnnkern bench` to stay short.
DEFAULT_CASES = (
    Case(1000, 1, 32, 32),
    Case(100, 16, 32, 64),
    Case(200, 32, 128, 128),
    Case(100, 64, 256, 512),
    Case(100, 32, 64, 128, layers=2, bidirectional=True, packed=True),
)


@dataclass
class Result:
    case: Case
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


def _input(case: Case, dtype: torch.dtype, generator: torch.Generator):
    x = torch.randn(case.T, case.B, case.I, dtype=dtype, generator=generator)
    if not case.packed:
        return x.requires_grad_()
    lengths = torch.randint(1, case.T + 1, (case.B,), generator=generator)
    lengths[0] = case.T
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    packed.data.requires_grad_()
    return packed


def measure(case: Case, repeats: int = 7, warmup: int = 2, dtype: torch.dtype = torch.float32,
            seed: int = 0) -> Result:
    """Times forward (no grad) and a train step (forward + backward of output.sum())."""
    torch.manual_seed(seed)
    kwargs = dict(num_layers=case.layers, bidirectional=case.bidirectional, dtype=dtype)
    theirs = torch.nn.RNN(case.I, case.H, **kwargs)
    ours = RNN(case.I, case.H, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    x = _input(case, dtype, torch.Generator().manual_seed(seed))
    leaf = x if isinstance(x, torch.Tensor) else x.data

    def forward(module):
        def run():
            with torch.no_grad():
                module(x)
        return run

    def train(module):
        def run():
            leaf.grad = None
            module.zero_grad(set_to_none=True)
            out, h_n = module(x)
            out = out if isinstance(out, torch.Tensor) else out.data
            (out.sum() + h_n.sum()).backward()
        return run

    fwd = _median_ms({"torch": forward(theirs), "rnnkern": forward(ours)}, repeats, warmup)
    step = _median_ms({"torch": train(theirs), "rnnkern": train(ours)}, repeats, warmup)
    return Result(case, fwd["torch"], fwd["rnnkern"], step["torch"], step["rnnkern"])


def format_table(results: Sequence[Result]) -> str:
    head = ("T", "B", "I", "H", "layout", "torch fwd ms", "rnnkern fwd ms", "fwd speedup",
            "torch train ms", "rnnkern train ms", "train speedup")
    rows = [head] + [
        (str(r.case.T), str(r.case.B), str(r.case.I), str(r.case.H), r.case.label(),
         f"{r.torch_forward_ms:.3f}", f"{r.rnnkern_forward_ms:.3f}", f"{r.forward_speedup:.2f}x",
         f"{r.torch_train_ms:.3f}", f"{r.rnnkern_train_ms:.3f}", f"{r.train_speedup:.2f}x")
        for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(cases: Sequence[Case] = DEFAULT_CASES, repeats: int = 7,
        dtype: torch.dtype = torch.float32, progress=sys.stderr) -> List[Result]:
    results = []
    for i, case in enumerate(cases, 1):
        if progress is not None:
            print(f"[{i}/{len(cases)}] T={case.T} B={case.B} I={case.I} H={case.H} "
                  f"{case.label()} ...", file=progress, flush=True)
        results.append(measure(case, repeats=repeats, dtype=dtype))
    return results


def as_dicts(results: Sequence[Result]) -> List[dict]:
    return [dict(asdict(r.case), torch_forward_ms=r.torch_forward_ms,
                 rnnkern_forward_ms=r.rnnkern_forward_ms, torch_train_ms=r.torch_train_ms,
                 rnnkern_train_ms=r.rnnkern_train_ms, forward_speedup=r.forward_speedup,
                 train_speedup=r.train_speedup) for r in results]
