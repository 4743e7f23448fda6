"""``rnnkern bench``: times rnnkern's layers against torch.nn's and prints a table (the
timing itself is in :mod:`rnnkern.apps.bench.timing`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import List

from ...cells import CELLS, get
from ..arguments import (HelpFormatter, add_out, cell_choices, check_memory, cpu_model,
                         has_torch, no_matplotlib, positive, recurrent_bytes, size, wrote)


def add_parser(sub) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", formatter_class=HelpFormatter,
                       help="time rnnkern.RNN against torch.nn.RNN and print a table",
                       description="Times forward (no grad) and a train step (forward + "
                                   "backward) of rnnkern.RNN against torch.nn.RNN. The "
                                   "implementations are interleaved; each figure is the median "
                                   "of the repeats.")
    b.add_argument("--full", action="store_true",
                   help="the whole grid, with the autograd loop and its torch.compile, and "
                        "the step-by-step section")
    b.add_argument("--step-by-step", "--steps", dest="steps", action="store_true",
                   help="the step-by-step section, for the RNN, LSTM and GRU: calls of T = 1 "
                        "and 10 with hx passed (and ONNX Runtime when onnxruntime is "
                        "installed), a Python loop over the one-step cells, and a generate "
                        "loop of 1000 single-token calls (alone unless --size or --full is "
                        "given; --steps: its old spelling, deprecated)")
    b.add_argument("--size", type=size, action="append", metavar="TxBxIxH",
                   help="a size to time (repeatable); without it: a short built-in grid")
    b.add_argument("--layers", type=positive, default=1, help="layers, for --size")
    b.add_argument("--bidirectional", action="store_true", help="for --size")
    b.add_argument("--packed", action="store_true",
                   help="for --size: variable lengths as an unsorted PackedSequence")
    b.add_argument("--impl", choices=["rnnkern", "reference", "compiled"], action="append",
                   help="what to compare with torch.nn.RNN, which is always timed "
                        "(repeatable; default: rnnkern, and all three with --full)")
    b.add_argument("--peers", type=_peers, metavar="NAMES",
                   help="other runtimes to time beside torch.nn, comma-separated, each when "
                        "installed: jax (lax.scan under jit: inference and train step), "
                        "onnxruntime and openvino (inference of torch.onnx.export of the "
                        "torch.nn layer, float32); in the grid and in --step-by-step (which times "
                        "onnxruntime when installed without being asked)")
    b.add_argument("--cell", choices=cell_choices(all_=True), default="rnn",
                   help="which layer: rnn (torch.nn.RNN), lstm, gru, or all three; the gated "
                        "cells run their own sizes unless --size is given")
    b.add_argument("--repeats", type=positive, default=5, help="timed repeats (median)")
    b.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of inputs and weights")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to run: cuda times the CUDA kernels against torch.nn.RNN "
                        "(cuDNN) and the autograd loop, and adds the time per step against "
                        "the launch latency")
    add_out(b, "bench.json and speedup.png")
    b.set_defaults(parser=b)
    return b


def _peers(text: str) -> List[str]:
    from .peers import parse

    try:
        return parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cells(args: argparse.Namespace) -> List[str]:
    return cell_choices() if args.cell == "all" else [args.cell]


def check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not args.size:
        given = [name for name, on in (("--layers", args.layers != 1),
                                       ("--bidirectional", args.bidirectional),
                                       ("--packed", args.packed)) if on]
        if given:
            parser.error(f"argument {given[0]}: applies to --size only; give a --size TxBxIxH")
    itemsize = 8 if args.dtype == "float64" else 4
    for T, B, I, H in args.size or ():  # noqa: E741
        for cell in _cells(args):
            # torch's layer and rnnkern's, each with its saved state
            needed = 2 * recurrent_bytes(T, B, I, H, get(cell).gate_count, args.layers,
                                         2 if args.bidirectional else 1, itemsize)
            check_memory(parser, "--size", f"{T}x{B}x{I}x{H} ({get(cell).title}, "
                         f"{args.dtype})", needed)
    if args.device != "cpu":
        if any(args.device not in get(c).backends for c in _cells(args)):
            off = [c.title for c in CELLS if args.device not in c.backends]
            names = " and ".join([", ".join(off[:-1]), off[-1]] if len(off) > 1 else off)
            parser.error(f"argument --cell: the {names} run{'' if len(off) > 1 else 's'} on "
                         "the CPU only (--device cpu)")
        if args.steps:
            parser.error("argument --step-by-step: the step-by-step section runs on the CPU "
                         "only (--device cpu)")


def _has_cuda_module() -> bool:
    try:
        from ... import _cuda  # noqa: F401
    except ImportError:
        return False
    return True


def _cases(args: argparse.Namespace, cases) -> list:
    """--cell: the cases for each cell (the gated cells' own sizes unless --size)."""
    import dataclasses

    from . import timing

    out = []
    for cell in _cells(args):
        if cell == "rnn":
            out += list(cases)
        elif args.size:
            out += [dataclasses.replace(c, cell=cell) for c in cases]
        else:
            out += list(timing.gated_cases(cell))
    return out


def _title(args: argparse.Namespace) -> str:
    return ", ".join(f"rnnkern.{get(c).title} vs {get(c).torch_class.replace(':', '.')}"
                     for c in _cells(args))


def run(args: argparse.Namespace) -> int:
    if not has_torch():
        return 1
    import torch

    from ... import cuda_available, isa
    from . import timing

    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    grid = bool(args.size) or args.full or not args.steps
    steps = args.steps or (args.full and args.device == "cpu")
    if args.size:
        cases = [timing.Case(*s, layers=args.layers, bidirectional=args.bidirectional,
                             packed=args.packed) for s in args.size]
    else:
        cases = timing.FULL_CASES if args.full else timing.DEFAULT_CASES
    cases = _cases(args, cases)
    default = ("rnnkern", "reference") if args.device == "cuda" else ("rnnkern",)
    impls = ("torch", *(args.impl or (timing.IMPLEMENTATIONS[1:] if args.full else default)))
    meta = {"machine": cpu_model(), "torch": torch.__version__, "dtype": args.dtype,
            "kernels": isa(), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"), "device": args.device}
    if args.device == "cuda":
        if not cuda_available():
            why = ("no GPU is visible" if _has_cuda_module()
                   else "rnnkern was built without CUDA support (rnnkern._cuda is missing); "
                        "reinstall it where nvcc is on PATH (README, The CUDA path)")
            print(f"rnnkern bench --device cuda: {why}", file=sys.stderr)
            return 1
        meta["device"] = torch.cuda.get_device_name()
        meta["kernels"] = "cuda v1"
    print(f"machine: {meta['machine']} ({platform.machine()}, {os.cpu_count()} logical CPUs); "
          f"torch {meta['torch']}, {meta['threads']} threads; {args.dtype}; "
          f"rnnkern kernels: {meta['kernels']}; median of {args.repeats} repeats", flush=True)
    if args.device == "cuda":
        print(f"device: {meta['device']}", flush=True)
    limits = timing.measure_limits(dtype, "cuda" if args.device == "cuda" else "cpu")
    print(timing.format_limits(limits, args.device), flush=True)
    data = dict(meta, limits=limits.as_dict())
    if grid:
        print(_title(args) + ": forward (no grad) and train step (forward + backward)",
              flush=True)
        load = timing.Load()
        results = timing.run(cases, impls=impls, repeats=args.repeats, dtype=dtype,
                             device=args.device, limits=limits, peers=args.peers or ())
        print(timing.format_table(results), flush=True)
        for line in timing.missing_peers(results, "forward_ms"):
            print(line, flush=True)
        data["results"] = timing.as_dicts(results)
        after = math.nan
        if args.device == "cpu":
            from ... import _core
            after = _core.fma_peak_gflops(dtype == torch.float64, limits.threads)
        data["limits"]["peak_after_gflops"] = None if math.isnan(after) else after
        print(load.stop().line(), flush=True)
        data["load"] = load.as_dict()
        data["warnings"] = timing.warnings_for(results, limits.peak_gflops, after, load)
        for line in data["warnings"]:
            print(line, flush=True)
    if steps:
        print("\nstep by step: one call of a streaming or generating caller "
              "(microseconds per call)", flush=True)
        load = timing.Load()
        section = timing.run_steps(repeats=args.repeats, dtype=dtype,
                                   peers=list(dict.fromkeys(["onnxruntime",
                                                             *(args.peers or ())])))
        print(timing.format_steps_table(section), flush=True)
        data["steps"] = timing.steps_as_dict(section)
        print(load.stop().line(), flush=True)
        data["steps"]["load"] = load.as_dict()
        data["steps"]["warnings"] = timing.warnings_for(section.calls, load=load)
        for line in data["steps"]["warnings"]:
            print(line, flush=True)
    path = os.path.join(args.out, "bench.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    wrote(path)
    if grid:
        try:
            png = os.path.join(args.out, "speedup.png")
            timing.plot(data["results"], png, timing.plot_title(meta, data["results"]))
            wrote(png)
        except ImportError:
            no_matplotlib()
    return 0
