"""Benchmark: rnnkern.RNN against torch.nn.RNN (and rnnkern.LSTM / GRU against torch.nn.LSTM /
GRU, ``Case.cell``), the autograd loop (rnnkern.reference) and torch.compile of that loop; forward (no grad) and train step (forward + backward). A second
section times the calls of a step-by-step caller (T = 1 to 10, and a generate loop).

Implementations are interleaved: every repeat times a block of calls of each in turn, so
machine drift hits all of them alike; each figure is the median over the repeats.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from ...cells import get as cell_spec
from ...modules import RNN

IMPLEMENTATIONS = ("torch", "rnnkern", "reference", "compiled")


@dataclass(frozen=True)
class Case:
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False  # variable lengths (uniform in [1, T]) as an unsorted PackedSequence
    cell: str = "rnn"  # "rnn", "lstm" or "gru": the torch.nn class and its rnnkern drop-in

    def label(self) -> str:
        extra = ([self.cell] if self.cell != "rnn" else []) + \
            ([f"L{self.layers}"] if self.layers > 1 else []) + \
            (["bi"] if self.bidirectional else []) + (["packed"] if self.packed else [])
        return " ".join(extra) or "-"

    def name(self) -> str:
        return f"{self.T}x{self.B}x{self.I}x{self.H}" + "".join(
            " " + part for part in self.label().split() if part != "-")


# `rnnkern bench`: short, from latency-bound to GEMM-bound.
DEFAULT_CASES = (
    Case(1000, 1, 32, 32),
    Case(100, 16, 32, 64),
    Case(200, 32, 128, 128),
    Case(100, 32, 64, 128, layers=2, bidirectional=True, packed=True),
)

# `rnnkern bench --full`: tiny to large, B=1 cases, a 2-layer bidirectional packed case.
FULL_CASES = (
    Case(1000, 1, 32, 32),
    Case(100, 1, 256, 256),
    Case(50, 8, 16, 16),
    Case(100, 16, 32, 64),
    Case(200, 32, 128, 128),
    Case(100, 64, 256, 512),
    Case(50, 64, 1024, 1024),
    Case(100, 32, 64, 128, layers=2, bidirectional=True, packed=True),
)

# `rnnkern bench --cell lstm|gru|all`: the gated cells at the sizes of their targets (README).
GATED_SIZES = ((100, 16, 32, 64), (100, 64, 256, 512))


def gated_cases(cell: str) -> tuple:
    return tuple(Case(*size, cell=cell) for size in GATED_SIZES)


def classes(cell: str):
    """The torch class and rnnkern's module for a cell."""
    spec = cell_spec(cell)
    return spec.torch_type(), spec.module_type()


def _state_sum(hidden) -> torch.Tensor:
    """The sum of h_n (and the LSTM's c_n)."""
    return sum(h.sum() for h in hidden) if isinstance(hidden, tuple) else hidden.sum()


# torch.compile unrolls the reference loop; beyond this many steps compiling takes too long.
COMPILE_MAX_STEPS = 100


@dataclass
class Result:
    case: Case
    forward_ms: Dict[str, float] = field(default_factory=dict)
    train_ms: Dict[str, float] = field(default_factory=dict)
    saved_bytes: Dict[str, int] = field(default_factory=dict)
    train_flop: float = 0.0
    sgemm_gflops: float = 0.0
    device: str = "cpu"
    launch_us: float = math.nan  # one kernel launch (GPU): the floor of a launch per step
    peak_gflops: float = 0.0  # the FMA peak on the threads in use (CPU), measured in the run
    # interquartile range over the median of the repeats, per implementation
    forward_spread: Dict[str, float] = field(default_factory=dict)
    train_spread: Dict[str, float] = field(default_factory=dict)
    peers_missing: Dict[str, str] = field(default_factory=dict)  # peer -> why not timed

    def speedup(self, impl: str, what: str = "train") -> float:
        times = self.train_ms if what == "train" else self.forward_ms
        return times["torch"] / times[impl] if impl in times and "torch" in times else math.nan

    def gflops(self, impl: str) -> float:
        return self.train_flop / self.train_ms[impl] / 1e6 if impl in self.train_ms else math.nan

    def spread(self) -> float:
        """The widest spread of this row's times (NaN when none was measured)."""
        return _widest(self.forward_spread, self.train_spread)


def train_flop(case: Case, rows: int) -> float:
    """FLOPs of a train step: per layer-direction 2·N·(I·H + H·H) forward and twice that
    backward (recurrent product, ∂W_hh, ∂W_ih, ∂x), times the gate blocks (4 LSTM, 3 GRU);
    H·H is H for a diagonal W_hh."""
    spec = cell_spec(case.cell)
    recurrent = case.H * case.H if spec.recurrent == "dense" else case.H
    D = 2 if case.bidirectional else 1
    total = 0.0
    for layer in range(case.layers):
        inputs = case.I if layer == 0 else D * case.H
        total += D * 6.0 * rows * (inputs * case.H + recurrent) * spec.gate_count
    return total


def _synchronize(device: str) -> Optional[Callable[[], None]]:
    """What makes a timer see the end of queued GPU work; None on the CPU."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else None


def sgemm_gflops(n: int = 2048, repeats: int = 5, device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> float:
    """This machine's GEMM rate (torch.mm on the device; float32 unless ``dtype``), now."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = _synchronize(device) or (lambda: None)
    a @ b
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


# OpenBLAS's kernel sets ("cores") that use AVX2 at most, and the variables that choose them.
_AVX2_CORES = ("haswell", "zen", "sandybridge", "prescott", "nehalem", "core2", "atom", "barcelona",
               "bulldozer", "piledriver", "steamroller", "excavator")
OPENBLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass
class Limits:
    """What this machine can do, measured in the run: the FMA peak of the kernels' instruction
    set on the threads in use, and the float32 GEMM rate of rnnkern's OpenBLAS and of
    torch.mm (2048³)."""
    isa: str
    threads: int
    peak_gflops: float
    openblas_gflops: float
    openblas_core: str
    torch_mm_gflops: float
    dtype: str = "float32"
    environment: Dict[str, str] = field(default_factory=dict)  # OPENBLAS_* variables set

    def note(self) -> Optional[str]:
        return blas_note(self.environment, self.openblas_core, self.isa)

    def as_dict(self) -> dict:
        return dict(_finite(self.__dict__), note=self.note())


def blas_note(environment: Dict[str, str], core: str, isa: str) -> Optional[str]:
    """One line on the OpenBLAS variables set in ``environment``, which OpenBLAS obeys (its
    documented override), saying when they lower it below what the CPU supports; None when
    none is set."""
    set_ = {k: v for k, v in environment.items() if k in OPENBLAS_VARIABLES and v}
    if not set_:
        return None
    named = ", ".join(f"{k}={v}" for k, v in sorted(set_.items()))
    line = f"note: {named} is set, and rnnkern's OpenBLAS obeys it (its {core} kernels)"
    if isa == "avx512" and core.lower() in _AVX2_CORES:
        line += (": AVX2 GEMMs on a CPU with AVX-512, at about half their speed, so rnnkern's "
                 "times are slower than on a machine without the variable")
    return line + (". For a user's machine's numbers: env -u " + " -u ".join(sorted(set_))
                   + " rnnkern bench ...")


def measure_limits(dtype: torch.dtype = torch.float32, device: str = "cpu") -> Limits:
    """The machine's limits now (about a second): see :class:`Limits`."""
    from ... import _core

    threads = torch.get_num_threads()
    double = dtype == torch.float64
    environment = {k: os.environ[k] for k in OPENBLAS_VARIABLES if os.environ.get(k)}
    peak = _core.fma_peak_gflops(double, threads) if device == "cpu" else math.nan
    return Limits(isa=_core.isa(), threads=threads, peak_gflops=peak,
                  openblas_gflops=_core.blas_gemm_gflops(double),
                  openblas_core=_core.blas_info()["core"],
                  torch_mm_gflops=sgemm_gflops(device=device, dtype=dtype),
                  dtype=str(dtype).replace("torch.", ""), environment=environment)


def _finite(values: Dict[str, object]) -> Dict[str, object]:
    """values with each NaN as None (JSON has no NaN)."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def _widest(*spreads: Dict[str, float]) -> float:
    """The largest of these per-implementation spreads, NaN when none was measured."""
    values = [v for d in spreads for v in d.values() if not math.isnan(v)]
    return max(values) if values else math.nan


# Other processes' CPU use during a run, as a share of all the logical CPUs, above which the
# command warns.
LOAD_WARNING = 0.10


def _cpu_seconds() -> Tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine since boot, from /proc/stat's first
    line (Linux); NaN elsewhere. Busy counts user, nice, system, irq, softirq and steal."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan, math.nan
    return (user + nice + system + irq + softirq + steal) / tick, steal / tick


class Load:
    """What other processes take of the machine while the command runs: the whole machine's
    busy CPU time (/proc/stat) less this process's own (os.times), over the wall time, in
    logical CPUs; ``steal`` is the time a hypervisor gave to other machines. NaN where
    /proc/stat cannot be read."""

    def __init__(self):
        self._start = (time.monotonic(), *_cpu_seconds(), self._own())
        self.wall_s = self.others = self.steal = math.nan
        self.cpus = os.cpu_count() or 1

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def stop(self) -> "Load":
        """Measure the time since the start; returns self."""
        wall0, busy0, steal0, own0 = self._start
        wall, (busy, steal), own = time.monotonic(), _cpu_seconds(), self._own()
        self.wall_s = wall - wall0
        if self.wall_s > 0 and not math.isnan(busy - busy0):
            # clock ticks are 10 ms: a short run's figure is rough, never below zero
            self.others = max(0.0, (busy - busy0) - (own - own0)) / self.wall_s
            self.steal = max(0.0, steal - steal0) / self.wall_s
        return self

    def busy(self) -> bool:
        return self.others > LOAD_WARNING * self.cpus  # False for NaN

    def line(self) -> str:
        if math.isnan(self.others):
            return "load: not measured (no /proc/stat)"
        return (f"load: other processes used {self.others:.2f} of the {self.cpus} logical CPUs "
                f"on average over these {self.wall_s:.0f} s (of which {self.steal:.2f} stolen "
                "by the hypervisor)")

    def as_dict(self) -> Dict[str, object]:
        return _finite(dict(other_cpus=self.others, steal_cpus=self.steal, cpus=self.cpus,
                            wall_s=self.wall_s))


def warnings_for(results: Sequence, peak_before: float = math.nan,
                 peak_after: float = math.nan, load: Optional[Load] = None) -> List[str]:
    """What makes these numbers doubtful, each as a line (empty when nothing does): rows
    (Result or StepResult) whose repeats spread by more than SPREAD_WARNING, an FMA peak
    that fell during the run or that a row's rate exceeds, and other processes using more
    than LOAD_WARNING of the CPUs."""
    out = []
    wide = [r for r in results if r.spread() > SPREAD_WARNING]
    if wide:
        worst = max(wide, key=lambda r: r.spread())
        out.append(f"warning: the repeats of {len(wide)} of {len(results)} rows spread by more "
                   f"than {100 * SPREAD_WARNING:.0f}% (interquartile range over the median; "
                   f"marked !, widest {100 * worst.spread():.0f}% at {worst.case.name()}): "
                   "the machine is busy or its speed drifts")
    if peak_after < 0.9 * peak_before:
        out.append(f"warning: the FMA peak fell from {peak_before:.0f} to {peak_after:.0f} "
                   "GFLOP/s during the run: another job is using the CPU")
    # no row can run faster than the FMA peak: one that did means the probe was slowed
    over = [r for r in results if isinstance(r, Result) and r.device == "cpu"
            and r.gflops("rnnkern") > r.peak_gflops > 0]
    if over:
        fastest = max(r.gflops("rnnkern") for r in over)
        out.append(f"warning: {len(over)} of {len(results)} rows ran faster than the FMA peak "
                   f"measured before the grid ({over[0].peak_gflops:.0f} GFLOP/s; up to "
                   f"{fastest:.0f}): the probe was slowed, so the % of peak column reads high")
    if load is not None and load.busy():
        out.append(f"warning: other processes used {load.others:.2f} of the {load.cpus} "
                   f"logical CPUs during the run ({load.steal:.2f} stolen by the hypervisor): "
                   "the times include waiting for them")
    if out:
        out.append("for numbers to trust: stop other heavy jobs, then rerun with more --repeats "
                   "(and, on a machine that sets them, env -u OPENBLAS_CORETYPE -u "
                   "OPENBLAS_L2_SIZE)")
    return out


def format_limits(limits: Limits, device: str = "cpu") -> str:
    lines = []
    if device == "cpu":
        lines.append(f"limit: FMA peak {limits.peak_gflops:.0f} GFLOP/s ({limits.isa}, "
                     f"{limits.threads} threads, {limits.dtype}); GEMM 2048^3: rnnkern's "
                     f"OpenBLAS {limits.openblas_gflops:.0f} (core {limits.openblas_core}), "
                     f"torch.mm {limits.torch_mm_gflops:.0f} GFLOP/s")
    else:
        lines.append(f"limit: GEMM 2048^3 on {device} (torch.mm): "
                     f"{limits.torch_mm_gflops:.0f} GFLOP/s")
    note = limits.note()
    if note:
        lines.append(note)
    return "\n".join(lines)


def launch_us(device: str, launches: int = 2000) -> float:
    """Microseconds per launch of a one-element kernel on a busy stream: what any
    implementation that launches a kernel per time step pays per step at least."""
    t = torch.zeros(1, device=device)
    sync = _synchronize(device) or (lambda: None)
    samples = []
    for _ in range(5):
        sync()
        start = time.perf_counter()
        for _ in range(launches):
            t.add_(1)
        sync()
        samples.append((time.perf_counter() - start) * 1e6 / launches)
    return statistics.median(samples)


_SETTLE_S = 0.01
# A spread (interquartile range over the median of the repeats) above this is warned about.
SPREAD_WARNING = 0.10


class Timings(dict):
    """Median ms per call of each implementation, with ``spread``: each one's interquartile
    range over its median across the repeats (NaN for a single repeat)."""

    def __init__(self, medians: Dict[str, float], spread: Dict[str, float]):
        super().__init__(medians)
        self.spread = spread


def relative_spread(samples: Sequence[float]) -> float:
    """The interquartile range of ``samples`` over their median; NaN for fewer than two."""
    if len(samples) < 2:
        return math.nan
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(samples)


def _timed_blocks(fns: Dict[str, Callable[[], None]], repeats: int,
                  min_block_s: float = 0.02,
                  sync: Optional[Callable[[], None]] = None) -> Timings:
    """Median ms per call (and the spread); each repeat runs a block of calls of every
    implementation. ``sync`` (GPU) waits for the queued work before a block's time is read."""
    sync = sync or (lambda: None)
    numbers = {}
    for name, fn in fns.items():  # warm-up, and calls per block
        fn()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        once = max(time.perf_counter() - start, 1e-7)
        numbers[name] = max(1, min(1000, int(min_block_s / once)))
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            # the previous block's thread pools (torch's, OpenBLAS's, ONNX Runtime's) spin
            # for a while after their last call: let them go idle before this block starts
            time.sleep(_SETTLE_S)
            start = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) * 1e3 / numbers[name])
    return Timings({name: statistics.median(s) for name, s in samples.items()},
                   {name: relative_spread(s) for name, s in samples.items()})


def _input(case: Case, dtype: torch.dtype, generator: torch.Generator, device: str = "cpu"):
    x = torch.randn(case.T, case.B, case.I, dtype=dtype, generator=generator).to(device)
    if not case.packed:
        return x.requires_grad_()
    lengths = torch.randint(1, case.T + 1, (case.B,), generator=generator)
    lengths[0] = case.T
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    packed.data.requires_grad_()
    return packed


def _reference_loop(module: torch.nn.RNNBase, cell: str):
    """The cell's autograd loop for a one-layer, one-direction module on tensor input."""
    spec = cell_spec(cell)

    def run(x):
        states = tuple(x.new_zeros(x.shape[1], module.hidden_size) for _ in spec.states)
        output, finals = spec.reference_layer(x, states, module._flat_weights,
                                              getattr(module, "nonlinearity", "tanh"))
        return output, finals if len(finals) > 1 else finals[0]
    return run


def _saved_bytes(run: Callable[[], tuple], exclude: Sequence[torch.Tensor]) -> int:
    """Bytes that autograd saves for backward in one forward, parameters excluded."""
    skip = {t.data_ptr() for t in exclude}
    seen: Dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in skip and t.numel():
            seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def measure(case: Case, impls: Sequence[str] = ("torch", "rnnkern"), repeats: int = 5,
            dtype: torch.dtype = torch.float32, seed: int = 0,
            sgemm: Optional[float] = None, device: str = "cpu",
            peak: Optional[float] = None, peers: Sequence[str] = ()) -> Result:
    torch.manual_seed(seed)
    kwargs = dict(num_layers=case.layers, bidirectional=case.bidirectional, dtype=dtype)
    theirs_class, ours_class = classes(case.cell)
    theirs = theirs_class(case.I, case.H, **kwargs).to(device)
    ours = ours_class(case.I, case.H, **kwargs).to(device)
    spec = cell_spec(case.cell)
    if spec.drop_in:
        ours.load_state_dict(theirs.state_dict())
    # (a cell that is no drop-in races torch's class of the same sizes, its loop its own weights)
    x = _input(case, dtype, torch.Generator().manual_seed(seed), device)
    leaf = x if isinstance(x, torch.Tensor) else x.data
    simple = case.layers == 1 and not case.bidirectional and not case.packed
    calls: Dict[str, Callable] = {"torch": theirs, "rnnkern": ours}
    if simple and "reference" in impls:
        calls["reference"] = _reference_loop(ours, case.cell)
    if simple and "compiled" in impls and case.T <= COMPILE_MAX_STEPS:
        torch._dynamo.reset()
        calls["compiled"] = torch.compile(_reference_loop(ours, case.cell))
    calls = {k: v for k, v in calls.items() if k in impls or k == "torch"}

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(x)
        return run

    def train(fn):
        def run():
            leaf.grad = None
            theirs.zero_grad(set_to_none=True)
            ours.zero_grad(set_to_none=True)
            out, h_n = fn(x)
            out = out.data if isinstance(out, PackedSequence) else out
            (out.sum() + _state_sum(h_n)).backward()
        return run

    result = Result(case, device=torch.device(device).type)
    sync = _synchronize(device)
    result.forward_ms = _timed_blocks({k: forward(f) for k, f in calls.items()}, repeats,
                                      sync=sync)
    result.train_ms = _timed_blocks({k: train(f) for k, f in calls.items()}, repeats,
                                    sync=sync)
    result.forward_spread = dict(getattr(result.forward_ms, "spread", {}))
    result.train_spread = dict(getattr(result.train_ms, "spread", {}))
    result.forward_ms, result.train_ms = dict(result.forward_ms), dict(result.train_ms)
    if peers:
        _time_peers(result, peers, theirs, x, repeats)
    params = list(theirs.parameters()) + list(ours.parameters())
    result.saved_bytes = {k: _saved_bytes(lambda f=f: f(x), params) for k, f in calls.items()}
    result.train_flop = train_flop(case, leaf.shape[0] if case.packed else case.T * case.B)
    result.sgemm_gflops = sgemm if sgemm is not None else sgemm_gflops(device=device)
    result.peak_gflops = peak if peak is not None else math.nan
    if sync is not None:
        result.launch_us = launch_us(device)
    return result


def _time_peers(result: Result, names: Sequence[str], theirs: torch.nn.Module, x,
                repeats: int) -> None:
    """The peers' columns of a row (see peers.py), each timed apart, after torch's and
    rnnkern's: their thread pools spin between calls and would slow the others' blocks."""
    from . import peers

    c = result.case
    if c.packed or result.device != "cpu":
        why = "packed input" if c.packed else "a GPU run"
        result.peers_missing = {n: f"not timed on {why}" for n in names}
        return
    layers = c.layers * (2 if c.bidirectional else 1)
    zeros = torch.zeros(layers, c.B, c.H, dtype=x.dtype)
    hx = (zeros, zeros) if len(cell_spec(c.cell).states) > 1 else zeros
    inference, train, result.peers_missing = peers.makers(names, c.cell, theirs, x.detach(), hx)
    for what, calls in (("forward", inference), ("train", train)):
        for name, call in calls.items():
            ms = _timed_blocks({name: call}, repeats)
            getattr(result, f"{what}_ms")[name] = ms[name]
            getattr(result, f"{what}_spread")[name] = ms.spread[name]


def missing_peers(rows: Sequence, times: str) -> List[str]:
    """A line per peer that some of ``rows`` (Result or StepResult) lack, saying why;
    ``times`` names the rows' field that holds the peers' times."""
    missing = {p: why for r in rows for p, why in r.peers_missing.items()}
    out = []
    for p, why in missing.items():
        some = any(p in getattr(r, times) for r in rows)
        out.append(f"(no {p} figures {'in some rows' if some else 'at all'}: {why})")
    return out


def _spread_cell(spread: float) -> str:
    """A table's spread: a percentage, marked ! above SPREAD_WARNING; - when not measured."""
    if math.isnan(spread):
        return "-"
    return f"{100 * spread:.0f}%" + ("!" if spread > SPREAD_WARNING else "")


def _fmt_table(rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(results: Sequence[Result]) -> str:
    impls = [i for i in IMPLEMENTATIONS if any(i in r.train_ms for r in results)]
    head = ["T", "B", "I", "H", "layout"]
    for impl in impls:
        head += [f"{impl} fwd ms", f"{impl} train ms"]
    head += [f"{impl} speedup" for impl in impls if impl != "torch"]
    gpu = any(r.device == "cuda" for r in results)
    from .peers import PEERS, TRAINS

    peer_names = [p for p in PEERS if any(p in r.forward_ms for r in results)]
    for p in peer_names:
        head += [f"{p} fwd ms"] + ([f"{p} train ms"] if TRAINS[p] else [])
        head += [f"rnnkern vs {p}"]
    share = "% of sgemm" if gpu else "% of peak"  # a GPU's limit: torch.mm on it
    head += ["rnnkern GFLOP/s", share, "spread", "saved MB torch", "saved MB rnnkern"]
    if gpu:  # forward time per step against one launch per step and layer-direction
        head += [f"{impl} fwd us/step" for impl in impls] + ["launch floor us/step"]
    rows = [head]
    for r in results:
        c = r.case
        row = [str(c.T), str(c.B), str(c.I), str(c.H), c.label()]
        for impl in impls:
            row += [f"{r.forward_ms[impl]:.3f}" if impl in r.forward_ms else "-",
                    f"{r.train_ms[impl]:.3f}" if impl in r.train_ms else "-"]
        row += [f"{r.speedup(impl):.2f}x" if impl in r.train_ms else "-"
                for impl in impls if impl != "torch"]
        for p in peer_names:
            row += [f"{r.forward_ms[p]:.3f}" if p in r.forward_ms else "-"]
            what = r.train_ms if TRAINS[p] else r.forward_ms
            if TRAINS[p]:
                row += [f"{r.train_ms[p]:.3f}" if p in r.train_ms else "-"]
            row += [f"{what[p] / what['rnnkern']:.2f}x" if p in what and "rnnkern" in what
                    else "-"]
        rate = r.gflops("rnnkern")
        limit = r.sgemm_gflops if gpu else r.peak_gflops
        row += ["-" if math.isnan(rate) else f"{rate:.0f}",
                "-" if math.isnan(rate) or not limit > 0 else f"{100 * rate / limit:.0f}%"]
        row += [_spread_cell(r.spread())]
        row += [f"{r.saved_bytes[impl] / 1e6:.2f}" if impl in r.saved_bytes else "-"
                for impl in ("torch", "rnnkern")]
        if gpu:
            directions = 2 if c.bidirectional else 1
            row += [f"{1e3 * r.forward_ms[impl] / c.T:.1f}" if impl in r.forward_ms else "-"
                    for impl in impls]
            row += [f"{r.launch_us * c.layers * directions:.1f}"]
        rows.append(row)
    return _fmt_table(rows)


def run(cases: Sequence[Case] = DEFAULT_CASES, impls: Sequence[str] = ("torch", "rnnkern"),
        repeats: int = 5, dtype: torch.dtype = torch.float32,
        progress=sys.stderr, device: str = "cpu",
        limits: Optional[Limits] = None, peers: Sequence[str] = ()) -> List[Result]:
    limits = limits if limits is not None else measure_limits(dtype, device)
    sgemm, peak = limits.torch_mm_gflops, limits.peak_gflops
    results = []
    for i, case in enumerate(cases, 1):
        if progress is not None:
            print(f"[{i}/{len(cases)}] {case.name()} ...", file=progress, flush=True)
        results.append(measure(case, impls, repeats=repeats, dtype=dtype, sgemm=sgemm,
                               device=device, peak=peak, peers=peers))
    return results


# `rnnkern bench --step-by-step`: the sizes of a step-by-step caller (a stream, a decoder, an RL
# agent), where the fixed cost of a call is most of its time: per cell, T = 1 with B = 1 and
# 32, H = 256 and 512, 1 and 2 layers, and T = 10 (a chunk of a stream), I = 128.
STEP_CELLS = ("rnn", "lstm", "gru")
STEP_CASES = tuple(Case(T, B, 128, H, layers=layers, cell=cell) for cell in STEP_CELLS
                   for T, B, H, layers in ((1, 1, 256, 1), (1, 1, 256, 2), (1, 1, 512, 1),
                                           (1, 32, 256, 1), (10, 1, 256, 1)))
# Code that writes its own time loop over torch's cells (RNNCell, LSTMCell, GRUCell): a loop of
# CELL_LOOP_STEPS steps, forward and backward, at these (B, H), I = 64.
CELL_LOOP_STEPS = 100
CELL_LOOP_SIZES = ((1, 64), (32, 64), (1, 256), (32, 256))

# The generate loop: Embedding(VOCAB, I) -> the cell's layer (I, H) -> Linear(H, VOCAB), one
# token per call.
GENERATE_TOKENS = 1000
GENERATE_VOCAB, GENERATE_INPUT, GENERATE_HIDDEN = 256, 64, 256


@dataclass
class StepResult:
    case: Case
    inference_us: Dict[str, float] = field(default_factory=dict)  # no_grad forward, hx passed
    train_us: Dict[str, float] = field(default_factory=dict)      # forward + backward
    # interquartile range over the median of the repeats, per implementation
    inference_spread: Dict[str, float] = field(default_factory=dict)
    train_spread: Dict[str, float] = field(default_factory=dict)
    peers_missing: Dict[str, str] = field(default_factory=dict)  # peer -> why not timed

    def speedup(self, what: str = "train", over: str = "torch") -> float:
        times = self.train_us if what == "train" else self.inference_us
        return times[over] / times["rnnkern"]

    def spread(self) -> float:
        """The widest spread of this row's times (NaN when none was measured)."""
        return _widest(self.inference_spread, self.train_spread)


@dataclass
class CellLoopResult:
    cell: str
    B: int
    H: int
    steps: int
    loop_us: Dict[str, float] = field(default_factory=dict)  # forward + backward of the loop

    def speedup(self) -> float:
        return self.loop_us["torch"] / self.loop_us["rnnkern"]


@dataclass
class GenerateResult:
    tokens: int
    vocab: int
    input_size: int
    hidden_size: int
    cell: str = "rnn"
    per_token_us: Dict[str, float] = field(default_factory=dict)

    def speedup(self) -> float:
        return self.per_token_us["torch"] / self.per_token_us["rnnkern"]


def _state(case: Case, dtype, generator) -> object:
    h = torch.randn(case.layers, case.B, case.H, dtype=dtype, generator=generator)
    return (h, torch.randn_like(h)) if len(cell_spec(case.cell).states) > 1 else h


def measure_step(case: Case, repeats: int = 5, dtype: torch.dtype = torch.float32,
                 seed: int = 0, peers: Sequence[str] = ("onnxruntime",)) -> StepResult:
    """One call of a step-by-step caller: inference (no grad, hx passed explicitly, as a
    streaming caller does) and a train step, rnnkern's module against the torch class,
    interleaved; then each of ``peers`` that can run it (see peers.py; float32 only), timed
    apart."""
    torch.manual_seed(seed)
    torch_class, rnnkern_class = classes(case.cell)
    theirs = torch_class(case.I, case.H, num_layers=case.layers, dtype=dtype)
    ours = rnnkern_class(case.I, case.H, num_layers=case.layers, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.T, case.B, case.I, dtype=dtype, generator=g)
    hx = _state(case, dtype, g)
    x_train = x.clone().requires_grad_()
    calls = {"torch": theirs, "rnnkern": ours}

    def inference(module):
        def run():
            with torch.no_grad():
                module(x, hx)
        return run

    def train(module):
        def run():
            x_train.grad = None
            module.zero_grad(set_to_none=True)
            out, h_n = module(x_train)
            (out.sum() + _state_sum(h_n)).backward()
        return run

    result = StepResult(case)
    ms = _timed_blocks({k: inference(m) for k, m in calls.items()}, repeats)
    result.inference_us = {k: 1e3 * v for k, v in ms.items()}
    result.inference_spread = dict(ms.spread)
    ms = _timed_blocks({k: train(m) for k, m in calls.items()}, repeats)
    result.train_us = {k: 1e3 * v for k, v in ms.items()}
    result.train_spread = dict(ms.spread)
    if peers:
        _time_step_peers(result, peers, theirs, x, hx, repeats)
    return result


def _time_step_peers(result: StepResult, names: Sequence[str], theirs: torch.nn.Module,
                     x: torch.Tensor, hx, repeats: int) -> None:
    """The peers' times of a step row, each timed apart: their thread pools spin between
    calls and would slow the others' blocks."""
    from . import peers

    if x.dtype != torch.float32:
        result.peers_missing = {n: "not timed in float64 (the peers run float32)"
                                for n in names}
        return
    inference, train, result.peers_missing = peers.makers(names, result.case.cell, theirs,
                                                          x, hx)
    for what, made in (("inference", inference), ("train", train)):
        for name, call in made.items():
            ms = _timed_blocks({name: call}, repeats)
            getattr(result, f"{what}_us")[name] = 1e3 * ms[name]
            getattr(result, f"{what}_spread")[name] = ms.spread[name]


def measure_cell_loop(cell: str, B: int, H: int, steps: Optional[int] = None,
                      repeats: int = 5, dtype: torch.dtype = torch.float32,
                      seed: int = 0) -> CellLoopResult:
    """A Python loop of ``steps`` steps over torch's one-step cell and over rnnkern's, the
    states carried, then backward through the loop; interleaved."""
    steps = CELL_LOOP_STEPS if steps is None else steps
    theirs_type, ours_type = cell_spec(cell).step_types()
    torch.manual_seed(seed)
    theirs = theirs_type(64, H, dtype=dtype)
    ours = ours_type(64, H, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(steps, B, 64, dtype=dtype, generator=g)

    def loop(module):
        def run():
            module.zero_grad(set_to_none=True)
            hx, total = None, 0
            for x in xs:
                hx = module(x, hx)
                total = total + _state_sum(hx)
            total.backward()
        return run

    ms = _timed_blocks({"torch": loop(theirs), "rnnkern": loop(ours)}, repeats)
    return CellLoopResult(cell, B, H, steps, {k: 1e3 * v for k, v in ms.items()})


class _Generator(torch.nn.Module):
    """Embedding -> a recurrent layer -> Linear, fed its own argmax token back one call at a
    time."""

    def __init__(self, rnn_class, vocab: int, input_size: int, hidden: int, dtype):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, input_size, dtype=dtype)
        self.rnn = rnn_class(input_size, hidden, dtype=dtype)
        self.head = torch.nn.Linear(hidden, vocab, dtype=dtype)

    def generate(self, token: torch.Tensor, hx, tokens: int) -> torch.Tensor:
        with torch.no_grad():
            for _ in range(tokens):
                out, hx = self.rnn(self.embed(token), hx)   # (1, 1, I) -> (1, 1, H)
                token = self.head(out[0]).argmax(-1, keepdim=True)
        return token


def measure_generate(tokens: Optional[int] = None, repeats: int = 5,
                     dtype: torch.dtype = torch.float32, seed: int = 0,
                     cell: str = "rnn") -> GenerateResult:
    """Per-token time of a generate loop: ``tokens`` single-token calls, the hidden state hx
    passed from call to call, rnnkern's layer against the torch class, interleaved repeats."""
    tokens = GENERATE_TOKENS if tokens is None else tokens
    torch.manual_seed(seed)
    sizes = (GENERATE_VOCAB, GENERATE_INPUT, GENERATE_HIDDEN)
    torch_class, rnnkern_class = classes(cell)
    theirs = _Generator(torch_class, *sizes, dtype)
    ours = _Generator(rnnkern_class, *sizes, dtype)
    ours.load_state_dict(theirs.state_dict())
    start_token = torch.zeros(1, 1, dtype=torch.long)
    hx = torch.zeros(1, 1, GENERATE_HIDDEN, dtype=dtype)
    hx = (hx, hx.clone()) if len(cell_spec(cell).states) > 1 else hx
    calls = {name: (lambda m=m: m.generate(start_token, hx, tokens))
             for name, m in (("torch", theirs), ("rnnkern", ours))}
    for fn in calls.values():  # warm-up
        fn()
    samples: Dict[str, List[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e6 / tokens)
    return GenerateResult(tokens, *sizes, cell=cell,
                          per_token_us={k: statistics.median(v) for k, v in samples.items()})


@dataclass
class StepsSection:
    """Everything `bench --step-by-step` measures."""

    calls: List[StepResult]
    loops: List[CellLoopResult]
    generate: List[GenerateResult]


def run_steps(cases: Optional[Sequence[Case]] = None, repeats: int = 5,
              dtype: torch.dtype = torch.float32, tokens: Optional[int] = None,
              progress=sys.stderr, loop_sizes: Optional[Sequence[tuple]] = None,
              loop_steps: Optional[int] = None,
              peers: Sequence[str] = ("onnxruntime",)) -> StepsSection:
    """The step-by-step section: every case of ``cases`` (default STEP_CASES), the cells'
    loops (CELL_LOOP_SIZES for each cell of the cases), then each cell's generate loop of
    ``tokens`` calls (default GENERATE_TOKENS). ``peers`` (see peers.py) are timed on the
    cases, each where installed."""
    cases = STEP_CASES if cases is None else cases
    tokens = GENERATE_TOKENS if tokens is None else tokens
    loop_sizes = CELL_LOOP_SIZES if loop_sizes is None else loop_sizes
    step_cells = list(dict.fromkeys(c.cell for c in cases))

    def say(text):
        if progress is not None:
            print(text, file=progress, flush=True)

    calls = []
    for i, case in enumerate(cases, 1):
        say(f"[step {i}/{len(cases)}] {case.cell} {case.T}x{case.B}x{case.I}x{case.H} "
            f"L{case.layers} ...")
        calls.append(measure_step(case, repeats=repeats, dtype=dtype, peers=peers))
    loops = []
    for cell in step_cells:
        for B, H in loop_sizes:
            say(f"[cell loop] {cell} B={B} H={H} ...")
            loops.append(measure_cell_loop(cell, B, H, loop_steps, repeats=repeats, dtype=dtype))
    generate = []
    for cell in step_cells:
        say(f"[generate] {cell}: {tokens} tokens ...")
        generate.append(measure_generate(tokens, repeats=repeats, dtype=dtype, cell=cell))
    return StepsSection(calls, loops, generate)


def _step_peers(section: StepsSection, what: str) -> List[str]:
    """The peers with a time in some row of ``section`` for ``what`` (inference or train),
    in peers.PEERS' order."""
    from .peers import PEERS

    return [p for p in PEERS if any(p in getattr(r, f"{what}_us") for r in section.calls)]


def format_steps_table(section: StepsSection) -> str:
    infer_peers, train_peers = _step_peers(section, "inference"), _step_peers(section, "train")
    head = ["cell", "layers", "T", "B", "I", "H", "torch infer us", "rnnkern infer us",
            "infer speedup"]
    for p in infer_peers:
        head += [f"{p} infer us", f"vs {p}"]
    head += ["torch train us", "rnnkern train us", "train speedup"]
    for p in train_peers:
        head += [f"{p} train us", f"vs {p} train"]
    head += ["spread"]

    def peer_cells(r: StepResult, what: str, names: List[str]) -> List[str]:
        times, out = getattr(r, f"{what}_us"), []
        for p in names:
            out += [f"{times[p]:.1f}", f"{r.speedup(what, p):.2f}x"] if p in times \
                else ["-", "-"]
        return out

    rows = [head]
    for r in section.calls:
        c = r.case
        row = [c.cell, str(c.layers), str(c.T), str(c.B), str(c.I), str(c.H),
               f"{r.inference_us['torch']:.1f}", f"{r.inference_us['rnnkern']:.1f}",
               f"{r.speedup('inference'):.2f}x"]
        row += peer_cells(r, "inference", infer_peers)
        row += [f"{r.train_us['torch']:.1f}", f"{r.train_us['rnnkern']:.1f}",
                f"{r.speedup('train'):.2f}x"]
        row += peer_cells(r, "train", train_peers) + [_spread_cell(r.spread())]
        rows.append(row)
    text = "\n".join([_fmt_table(rows), *missing_peers(section.calls, "inference_us")])
    if section.loops:
        loop_rows = [["cell", "B", "H", "steps", "torch loop us", "rnnkern loop us", "speedup"]]
        for r in section.loops:
            loop_rows.append([r.cell, str(r.B), str(r.H), str(r.steps),
                              f"{r.loop_us['torch']:.0f}", f"{r.loop_us['rnnkern']:.0f}",
                              f"{r.speedup():.2f}x"])
        text += ("\n\na Python time loop over the one-step cells (torch.nn.RNNCell, LSTMCell, "
                 "GRUCell against rnnkern's), forward and backward, I = 64:\n"
                 + _fmt_table(loop_rows))
    for g in section.generate:
        title = cell_spec(g.cell).title
        text += (f"\n\ngenerate, {g.tokens} single-token calls (Embedding {g.vocab}x"
                 f"{g.input_size} -> {title} {g.input_size}->{g.hidden_size} -> Linear "
                 f"{g.hidden_size}->{g.vocab}, argmax fed back, hx passed, no grad): "
                 f"torch.nn.{title} {g.per_token_us['torch']:.1f} us per token, rnnkern."
                 f"{title} {g.per_token_us['rnnkern']:.1f} us per token, speedup "
                 f"{g.speedup():.2f}x")
    return text


def steps_as_dict(section: StepsSection) -> dict:
    return dict(
        cases=[dict(cell=r.case.cell, layers=r.case.layers, T=r.case.T, B=r.case.B,
                    I=r.case.I, H=r.case.H, inference_us=r.inference_us, train_us=r.train_us,
                    inference_spread=_finite(r.inference_spread),
                    train_spread=_finite(r.train_spread),
                    inference_speedup=r.speedup("inference"), train_speedup=r.speedup("train"),
                    peers_missing=dict(r.peers_missing))
               for r in section.calls],
        cell_loops=[dict(cell=r.cell, B=r.B, H=r.H, steps=r.steps, loop_us=r.loop_us,
                         speedup=r.speedup()) for r in section.loops],
        generate=[dict(cell=g.cell, tokens=g.tokens, vocab=g.vocab, input_size=g.input_size,
                       hidden_size=g.hidden_size, per_token_us=g.per_token_us,
                       speedup=g.speedup()) for g in section.generate])


def as_dicts(results: Sequence[Result]) -> List[dict]:
    out = []
    for r in results:
        c = r.case
        out.append(dict(cell=c.cell, T=c.T, B=c.B, I=c.I, H=c.H, layers=c.layers,
                        bidirectional=c.bidirectional, packed=c.packed,
                        forward_ms=dict(r.forward_ms), train_ms=dict(r.train_ms),
                        forward_spread=_finite(r.forward_spread),
                        train_spread=_finite(r.train_spread),
                        peers_missing=dict(r.peers_missing),
                        saved_bytes=r.saved_bytes, train_flop=r.train_flop,
                        sgemm_gflops=r.sgemm_gflops,
                        peak_gflops=None if math.isnan(r.peak_gflops) else r.peak_gflops,
                        train_speedup={k: r.speedup(k) for k in r.train_ms if k != "torch"},
                        forward_speedup={k: r.speedup(k, "forward")
                                         for k in r.forward_ms if k != "torch"},
                        rnnkern_gflops=r.gflops("rnnkern"), device=r.device,
                        launch_us=None if math.isnan(r.launch_us) else r.launch_us))
    return out


def plot(records: Sequence[dict], path: str, title: str) -> None:
    """Bars of the speedup over the torch.nn layer of each row (torch.nn.RNN for an RNN or an
    IndRNN, LSTM, GRU) of rnnkern and of each implementation and peer timed, one group per
    cell and size, the value on each bar; on a log axis, each bar rises or falls from 1x, so
    a slowdown points down.

    ``records`` are :func:`as_dicts` rows (what bench.json holds); ``title`` names the machine.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("rnnkern", "train", "rnnkern: train step", "tab:blue"),
              ("rnnkern", "forward", "rnnkern: forward (no grad)", "tab:cyan"),
              ("reference", "train", "autograd loop: train step", "tab:orange"),
              ("compiled", "train", "compiled autograd loop: train step", "tab:green"),
              ("jax", "train", "JAX: train step", "tab:purple"),
              ("jax", "forward", "JAX: forward", "plum"),
              ("onnxruntime", "forward", "ONNX Runtime: forward", "tab:gray"),
              ("openvino", "forward", "OpenVINO: forward (f32)", "tab:olive")]
    series = [s for s in series if any(s[0] in r[f"{s[1]}_speedup"] for r in records)]
    cells = list(dict.fromkeys(r.get("cell", "rnn") for r in records))
    order = sorted(records, key=lambda r: (cells.index(r.get("cell", "rnn")), r["train_flop"]))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, (0.6 + 0.2 * len(series)) * len(order) + 2), 5))
    for j, (impl, what, label, color) in enumerate(series):
        xs, values = [], []
        for i, r in enumerate(order):
            value = r[f"{what}_speedup"].get(impl)
            if value is not None and not math.isnan(value):
                xs.append(i + (j - (len(series) - 1) / 2) * width)
                values.append(value)
        bars = ax.bar(xs, [v - 1 for v in values], width, bottom=1.0, label=label, color=color)
        ax.bar_label(bars, [f"{v:.2f}x" if v < 1 else f"{v:.1f}x" if v < 10 else f"{v:.0f}x"
                            for v in values], fontsize=7 if len(series) < 5 else 6, padding=1)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    names = []
    for r in order:
        extra = ([f"{r['layers']} layers"] if r["layers"] > 1 else []) + \
            (["bidir."] if r["bidirectional"] else []) + (["packed"] if r["packed"] else [])
        cell = cell_spec(r.get("cell", "rnn")).title
        names.append(f"{cell} {r['T']}x{r['B']}x{r['I']}x{r['H']}"
                     + ("\n" + ", ".join(extra) if extra else ""))
    ax.set_xticks(range(len(order)), names, fontsize=8)
    ax.set_xlabel("cell, T x B x I x H; per cell from the fewest train-step FLOPs to the most")
    ax.set_ylabel("speedup over torch.nn (1x: as fast)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _torch_names(records: Sequence[dict]) -> str:
    """The torch.nn layers the rows race: their cells' torch classes (torch.nn.RNN for a cell
    that is no drop-in), once each."""
    names = [cell_spec(r.get("cell", "rnn")).torch_class.replace(":", ".") for r in records]
    return ", ".join(dict.fromkeys(names)) or "torch.nn.RNN"


def plot_title(meta: dict, records: Sequence[dict] = ()) -> str:
    """The speedup plot's title from bench.json's header fields (and its rows' cells)."""
    cells = ", ".join(dict.fromkeys(f"rnnkern.{cell_spec(r.get('cell', 'rnn')).title}"
                                    for r in records)) or "rnnkern"
    return (f"{cells} vs {_torch_names(records)}\n{meta['machine']}, torch {meta['torch']}, "
            f"{meta['dtype']}, {meta['threads']} threads ({meta.get('date', '')})")
