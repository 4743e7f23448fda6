"""The command line: ``rnnkern <command>`` or ``python -m rnnkern <command>``."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import List, Optional

DESCRIPTION = "rnnkern: fast, exact backpropagation through time for the Elman RNN."

EPILOG = """\
Every command writes its files into one folder, --out (default ./rnnkern-results), and
prints where. "rnnkern <command> --help" shows a command's options and their defaults.
"""

DEFAULT_OUT = "rnnkern-results"

TORCH_MISSING = (
    "this command needs torch (pip install torch). On Linux, PyPI's default torch wheel is the "
    "multi-GB CUDA build; for the CPU-only build use PyTorch's CPU wheel index:\n"
    "    pip install torch --index-url https://download.pytorch.org/whl/cpu\n"
    "For the CUDA build, pick the command for your CUDA version at "
    "https://pytorch.org/get-started/locally/ (on Linux, plain 'pip install torch' gives one)."
)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows each option's default, except for
    switches (on/off) and options without a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text or default is None
                or default is argparse.SUPPRESS or isinstance(default, bool)):
            return text
        if isinstance(default, (list, tuple)):
            shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
            return f"{text} (default: {shown})"
        return text + " (default: %(default)s)"


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _size(text: str):
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected TxBxIxH with positive integers, got {text!r}")
    return tuple(int(p) for p in parts)


def _out_dir(parser: argparse.ArgumentParser, path: str) -> str:
    """Creates the --out folder (before any work) and returns its real path; a path that is
    an existing file or cannot be created or written to is a usage error."""
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"argument --out: {path!r} is an existing file; --out names a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        parser.error(f"argument --out: cannot create the folder {path!r}: "
                     f"{error.strerror or error}")
    real = os.path.realpath(path)
    probe = os.path.join(real, f".rnnkern-write-test-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        parser.error(f"argument --out: cannot write into the folder {path!r}: "
                     f"{error.strerror or error}")
    return real


def _wrote(path: str) -> None:
    print(f"wrote {os.path.realpath(path)}")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else lscpu, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def _torch_or_exit() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        print(TORCH_MISSING, file=sys.stderr)
        return False
    return True


def _no_matplotlib() -> None:
    print("no plot: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)


def _has_cuda_module() -> bool:
    try:
        from . import _cuda  # noqa: F401
    except ImportError:
        return False
    return True


def _bench(args: argparse.Namespace) -> int:
    if not _torch_or_exit():
        return 1
    import torch

    from . import bench, isa

    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    grid = bool(args.size) or args.full or not args.steps
    steps = args.steps or (args.full and args.device == "cpu")
    if args.size:
        cases = [bench.Case(*size, layers=args.layers, bidirectional=args.bidirectional,
                            packed=args.packed) for size in args.size]
    else:
        cases = bench.FULL_CASES if args.full else bench.DEFAULT_CASES
    cases = _cells_cases(args, cases)
    default = ("rnnkern", "reference") if args.device == "cuda" else ("rnnkern",)
    impls = ("torch", *(args.impl or (bench.IMPLEMENTATIONS[1:] if args.full else default)))
    meta = {"machine": cpu_model(), "torch": torch.__version__, "dtype": args.dtype,
            "kernels": isa(), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"), "device": args.device}
    if args.device == "cuda":
        from . import cuda_available

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
    data = dict(meta)
    if grid:
        print(_cells_title(args) + ": forward (no grad) and train step "
              "(forward + backward)", flush=True)
        results = bench.run(cases, impls=impls, repeats=args.repeats, dtype=dtype,
                            device=args.device)
        print(bench.format_table(results), flush=True)
        data["results"] = bench.as_dicts(results)
    if steps:
        print("\nstep by step: one call of a streaming or generating caller "
              "(microseconds per call)", flush=True)
        step_results, generate = bench.run_steps(repeats=args.repeats, dtype=dtype)
        print(bench.format_steps_table(step_results, generate), flush=True)
        data["steps"] = bench.steps_as_dict(step_results, generate)
    path = os.path.join(args.out, "bench.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    _wrote(path)
    if grid:
        try:
            png = os.path.join(args.out, "speedup.png")
            bench.plot(data["results"], png, bench.plot_title(meta))
            _wrote(png)
        except ImportError:
            _no_matplotlib()
    return 0


_CELL_NAMES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _cells(args: argparse.Namespace) -> List[str]:
    return ["rnn", "lstm", "gru"] if args.cell == "all" else [args.cell]


def _cells_cases(args: argparse.Namespace, cases) -> list:
    """bench --cell: the cases for each cell (the gated cells' own sizes unless --size)."""
    import dataclasses

    from . import bench

    out = []
    for cell in _cells(args):
        if cell == "rnn":
            out += list(cases)
        elif args.size:
            out += [dataclasses.replace(c, cell=cell) for c in cases]
        else:
            out += list(bench.gated_cases(cell))
    return out


def _cells_title(args: argparse.Namespace) -> str:
    return ", ".join(f"rnnkern.{_CELL_NAMES[c]} vs torch.nn.{_CELL_NAMES[c]}"
                     for c in _cells(args))


def _vanish(args: argparse.Namespace) -> int:
    if not _torch_or_exit():
        return 1
    from . import vanish

    print(f"‖∂L/∂h_t‖ against the distance k from the loss, T={args.T}, H={args.hidden}, "
          f"B={args.batch_size}, W_hh = gain · orthogonal", flush=True)
    curves = vanish.compute(T=args.T, B=args.batch_size, H=args.hidden, gains=args.gains,
                            seed=args.seed, cell=args.cell)
    print(vanish.table(curves))
    if args.cell == "rnn":
        print(f"the RNN (kernel) and the MLP (autograd) agree to a relative difference of "
              f"{vanish.agreement(curves):.1e} at most")
    print(f"\nthe three cells at the same T={args.T}, as torch initialises them, the LSTM's "
          f"forget and the GRU's update gate bias +{vanish.GATE_BIAS:g} (first / last: the "
          "gradient at the first step over the one at the last)")
    print(vanish.cells_table(curves))
    try:
        path = os.path.join(args.out, "vanish.png")
        vanish.plot(curves, path)
        _wrote(path)
    except ImportError:
        _no_matplotlib()
    return 0


def _format_reach(value: float) -> str:
    return "0 (below the float64 range)" if value == 0 else f"{value:.2e}"


def _train(args: argparse.Namespace) -> int:
    if not _torch_or_exit():
        return 1
    from . import adding

    kind = args.nonlinearity if args.cell == "rnn" else args.cell
    title = (f"adding problem T={args.T}, {kind}, init {args.init}, "
             f"H={args.hidden}, {args.engine}")
    print(title, flush=True)
    run = adding.train(T=args.T, steps=args.steps, hidden=args.hidden,
                       nonlinearity=args.nonlinearity, init=args.init, engine=args.engine,
                       batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       progress=adding.Progress(args.steps), cell=args.cell)
    print(f"wall time {run.seconds:.2f} s ({1e3 * run.seconds / args.steps:.2f} ms per step)")
    print(f"final training MSE {run.losses[-1]:.4f}, test MSE {run.test_mse:.4f} "
          f"(predicting 1: {adding.BASELINE_MSE:.3f})")
    if run.reach:
        print(f"gradient reaching the first step, ‖∂L/∂h_0‖ / ‖∂L/∂h_T-1‖ (measured in "
              f"float64): {_format_reach(run.reach[0])} before training, "
              f"{_format_reach(run.reach[1])} after")
    stem = f"adding-T{args.T}-{kind}-{args.init}-{args.engine}"
    try:
        loss_path = os.path.join(args.out, stem + "-loss.png")
        adding.plot_losses(run, title, loss_path)
        _wrote(loss_path)
        if run.flow:
            flow_path = os.path.join(args.out, stem + "-gradient-flow.png")
            adding.plot_flow(run, title, flow_path)
            _wrote(flow_path)
        else:
            print(f"no gradient-flow heat map: torch.nn.{_CELL_NAMES[args.cell]} cannot "
                  "record it (use --engine rnnkern)")
    except ImportError:
        _no_matplotlib()
    return 0


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return int(text)


def _check_gradients(args: argparse.Namespace) -> int:
    from . import check

    cells = ["rnn", "lstm", "gru"] if args.cell == "all" else [args.cell]
    rows, names = [], []
    path = os.path.join(args.out, "check.json")
    for number, cell in enumerate(cells):
        if args.impl:
            candidate, name = args.candidate, args.candidate_name
        else:
            candidate, name = check.default_candidate(cell)
        checks = check.plan(bptt=check.is_bptt(candidate), cell=cell, sizes=args.size,
                            layers=args.layers, bidirectional=args.bidirectional,
                            packed=args.packed, nonlinearity=args.nonlinearity,
                            proj_size=args.proj_size, dtype=args.dtype,
                            references=args.reference, builtin=not args.impl)
        if number:
            print()
        label = ", ".join(names + [name])

        def progress(done, running, label=label):  # a check.json that is not a pass until the end
            check.write_json(rows + done, label, path, finished=False, running=running)
        try:
            rows += check.run(candidate, name, checks, forward=args.forward_fn,
                              atol=args.atol, rtol=args.rtol, seed=args.seed,
                              timeout=args.timeout, hard_exit=True, progress=progress)
        except check.Interrupted as stop:
            rows += stop.rows
            check.write_json(rows, label, path, finished=False)
            sys.stdout.flush()
            print(f"rnnkern check: interrupted (Ctrl-C) after {len(stop.rows)} of "
                  f"{stop.total} checks of {name}; {path} lists the checks that finished",
                  file=sys.stderr)
            return 130
        names.append(name)
    if len(cells) > 1:
        failed = sum(not row.passed for row in rows)
        print(f"\n{', '.join(names)}: " + (f"all {len(rows)} checks agree" if not failed else
                                           f"{failed} of {len(rows)} checks differ"))
    check.write_json(rows, ", ".join(names), path)
    _wrote(path)
    return 0 if rows and all(row.passed for row in rows) else 1


def _check_arguments_of_check(args: argparse.Namespace) -> None:
    """`rnnkern check`: loads --impl and --forward (their errors are usage errors) and checks
    that the options fit the candidate, before any work."""
    parser = args.parser
    if not _torch_or_exit():
        sys.exit(1)
    from . import check

    args.forward_fn = None
    if args.forward and not args.impl:
        parser.error("argument --forward: goes with --impl FILE.py:NAME (a NumPy bptt)")
    if args.cell == "all" and args.impl:
        parser.error("argument --cell: all checks rnnkern's three drop-ins; with --impl give "
                     "the cell of your class or function (rnn, lstm or gru)")
    if args.nonlinearity and args.cell != "rnn":
        parser.error(f"argument --nonlinearity: applies to --cell rnn only, got --cell "
                     f"{args.cell}")
    if args.proj_size:
        if args.cell != "lstm":
            parser.error(f"argument --proj-size: applies to --cell lstm only, got --cell "
                         f"{args.cell}")
        sizes = args.size or [check.DEFAULT_SIZE]
        small = [size for size in sizes if args.proj_size >= size[3]]
        if small:
            T, B, I, H = small[0]  # noqa: E741
            parser.error(f"argument --proj-size: must be smaller than H (as torch.nn.LSTM "
                         f"requires), got {args.proj_size} with size {T}x{B}x{I}x{H}")
    if not args.impl:
        return
    try:
        args.candidate, args.candidate_name = check.load(args.impl)
    except ValueError as error:
        parser.error(f"argument --impl: {error}")
    if args.forward:
        try:
            args.forward_fn = check.load(args.forward)[0]
        except ValueError as error:
            parser.error(f"argument --forward: {error}")
    if check.is_bptt(args.candidate):
        given = [name for name, on in (("--layers", args.layers is not None),
                                       ("--bidirectional", args.bidirectional),
                                       ("--packed", args.packed),
                                       ("--proj-size", bool(args.proj_size))) if on]
        if given:
            parser.error(f"argument {given[0]}: {args.impl} is a NumPy bptt function (one "
                         "layer, one direction, unpacked, no projection); options of that "
                         "kind apply to a module class")
    elif args.forward:
        parser.error(f"argument --forward: {args.impl} is a module class, whose forward is "
                     "its own; --forward goes with a NumPy bptt function")


def _add_out(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                   help=f"folder to write {what} into, created if missing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnkern", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    b = sub.add_parser("bench", formatter_class=_HelpFormatter,
                       help="time rnnkern.RNN against torch.nn.RNN and print a table",
                       description="Times forward (no grad) and a train step (forward + "
                                   "backward) of rnnkern.RNN against torch.nn.RNN. The "
                                   "implementations are interleaved; each figure is the median "
                                   "of the repeats.")
    b.add_argument("--full", action="store_true",
                   help="the whole grid, with the autograd loop and its torch.compile, and "
                        "the step-by-step section")
    b.add_argument("--steps", action="store_true",
                   help="the step-by-step section: T = 1 to 10 calls with hx passed, and a "
                        "generate loop of 1000 single-token calls (alone unless --size or "
                        "--full is given)")
    b.add_argument("--size", type=_size, action="append", metavar="TxBxIxH",
                   help="a size to time (repeatable); without it: a short built-in grid")
    b.add_argument("--layers", type=_positive, default=1, help="layers, for --size")
    b.add_argument("--bidirectional", action="store_true", help="for --size")
    b.add_argument("--packed", action="store_true",
                   help="for --size: variable lengths as an unsorted PackedSequence")
    b.add_argument("--impl", choices=["rnnkern", "reference", "compiled"], action="append",
                   help="what to compare with torch.nn.RNN, which is always timed "
                        "(repeatable; default: rnnkern, and all three with --full)")
    b.add_argument("--cell", choices=["rnn", "lstm", "gru", "all"], default="rnn",
                   help="which layer: rnn (torch.nn.RNN), lstm, gru, or all three; the gated "
                        "cells run their own sizes unless --size is given")
    b.add_argument("--repeats", type=_positive, default=5, help="timed repeats (median)")
    b.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of inputs and weights")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to run: cuda times the CUDA kernels against torch.nn.RNN "
                        "(cuDNN) and the autograd loop, and adds the time per step against "
                        "the launch latency")
    _add_out(b, "bench.json and speedup.png")
    b.set_defaults(func=_bench, parser=b)

    v = sub.add_parser("vanish", formatter_class=_HelpFormatter,
                       help="gradient norms through time for several W_hh gains, "
                            "as an RNN and as a tied-weight MLP; table and picture",
                       description="‖∂L/∂h_t‖ against the distance from the loss for "
                                   "W_hh = gain · orthogonal, tanh and relu, as an RNN (recorded "
                                   "by the kernel) and as a deep MLP with tied weights "
                                   "(autograd), with the gain^k bound.")
    v.add_argument("--T", type=_positive, default=100, help="steps")
    v.add_argument("--hidden", type=_positive, default=64, help="hidden size")
    v.add_argument("--batch-size", type=_positive, default=16, help="samples")
    v.add_argument("--gains", type=_positive_float, nargs="+", default=[0.5, 0.9, 1.0, 1.1, 1.5],
                   help="W_hh = gain · a random orthogonal matrix, one curve per gain")
    v.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    v.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="rnn",
                   help="the gain sweep's layer: rnn (tanh and relu, with the tied-weight MLP), "
                        "lstm or gru; the three cells side by side are shown for every choice")
    _add_out(v, "vanish.png")
    v.set_defaults(func=_vanish, parser=v)

    t = sub.add_parser("train", formatter_class=_HelpFormatter,
                       help="train adding: train an RNN on the adding problem; progress, "
                            "loss curve and gradient-flow heat map",
                       description="Trains on the adding problem (two marked values among T; "
                                   "the target is their sum) with Adam and gradient clipping.")
    t.add_argument("task", choices=["adding"], help="adding: the adding problem")
    t.add_argument("--T", type=_positive, default=50, help="sequence length")
    t.add_argument("--steps", type=_positive, default=2000, help="training iterations")
    t.add_argument("--hidden", type=_positive, default=64, help="hidden size")
    t.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh",
                   help="activation")
    t.add_argument("--init", choices=["default", "orthogonal", "identity"], default="default",
                   help="W_hh initialisation; identity with relu is the IRNN")
    t.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="rnn",
                   help="the recurrent layer: Elman RNN (--nonlinearity applies), LSTM or GRU")
    t.add_argument("--engine", choices=["rnnkern", "torch"], default="rnnkern",
                   help="rnnkern.RNN or torch.nn.RNN (no gradient-flow map)")
    t.add_argument("--batch-size", type=_positive, default=64, help="samples per iteration")
    t.add_argument("--lr", type=_positive_float, default=3e-3, help="Adam learning rate")
    t.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    _add_out(t, "the loss curve and the gradient-flow heat map")
    t.set_defaults(func=_train, parser=t)

    c = sub.add_parser("check", formatter_class=_HelpFormatter,
                       help="check gradients (rnnkern's kernels, or your own RNN, LSTM or GRU "
                            "with --impl) against rnnkern.reference and torch; exit 1 if any "
                            "differ",
                       description="Compares outputs, final states and every gradient (input, "
                                   "h0 (and c0), each weight and bias) with oracles and prints "
                                   "a table naming the worst tensor and the step where an "
                                   "error enters. Without --impl: rnnkern's drop-in for --cell "
                                   "(rnnkern.RNN by default; all: RNN, LSTM and GRU) on a "
                                   "built-in grid (odd sizes, layers, directions, packed, "
                                   "proj_size for the LSTM, both dtypes), against "
                                   "rnnkern.reference, the torch class and finite "
                                   "differences, plus torch.autograd.gradcheck. Exit status: "
                                   "0 when everything agrees, 1 when anything differs (a "
                                   "candidate that raises, SystemExit included, or times out "
                                   "differs), 2 for usage errors, 130 when stopped by Ctrl-C.",
                       epilog="--impl FILE.py:NAME names either a torch.nn.Module class "
                              "constructed like torch.nn.RNN (LSTM, GRU with --cell; same "
                              "arguments and parameter names, called as module(input, hx) -> "
                              "(output, h_n), the LSTM's with hx = (h0, c0) -> (output, (h_n, "
                              "c_n))), or a NumPy function bptt(x, h0, w_ih, w_hh, b_ih, b_hh, "
                              "grad_y) that returns a dict of the gradients of sum(y * grad_y) "
                              "with keys x, h0, w_ih, w_hh, b_ih, b_hh (one tanh layer, "
                              "time-major x of shape (T, B, I); --nonlinearity relu for a relu "
                              "one; --cell gru: the same with GRU weights (3H rows); --cell "
                              "lstm: bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y) with keys "
                              "x, h0, c0, w_ih, w_hh, b_ih, b_hh).\n"
                              "Without --size and the configuration options: a built-in grid. "
                              "With any of them: each --size (default 5x3x4x6) with those "
                              "options.")
    c.add_argument("--cell", choices=["rnn", "lstm", "gru", "all"], default="rnn",
                   help="the cell: Elman RNN, LSTM or GRU; all: rnnkern's three drop-ins, one "
                        "table each (not with --impl)")
    c.add_argument("--impl", metavar="FILE.py:NAME",
                   help="your module class or NumPy bptt function (default: rnnkern's drop-in "
                        "for --cell)")
    c.add_argument("--forward", metavar="FILE.py:NAME",
                   help="with a NumPy bptt: its forward(x, h0, w_ih, w_hh, b_ih, b_hh) -> y, "
                        "compared too")
    c.add_argument("--size", type=_size, action="append", metavar="TxBxIxH",
                   help="a size to check (repeatable); without it and the options below: a "
                        "built-in grid")
    c.add_argument("--layers", type=_positive, help="layers (module classes; default 1)")
    c.add_argument("--bidirectional", action="store_true", help="both directions")
    c.add_argument("--packed", action="store_true",
                   help="variable lengths as an unsorted PackedSequence")
    c.add_argument("--nonlinearity", choices=["tanh", "relu"],
                   help="activation (--cell rnn; default tanh)")
    c.add_argument("--proj-size", type=_positive, metavar="P",
                   help="LSTM projection size, smaller than H (--cell lstm, module classes)")
    c.add_argument("--dtype", choices=["float64", "float32"],
                   help="dtype of the candidate (default float64); the references run in "
                        "float64, and float32 is held to the torch class's own float32 error")
    c.add_argument("--reference", choices=["reference", "torch", "rnnkern",
                                           "finite-differences"], action="append",
                   help="oracle (repeatable; default: reference and torch). "
                        "finite-differences: central differences in float64, small sizes only")
    c.add_argument("--atol", type=_nonnegative_float,
                   help="absolute tolerance (with --rtol: |error| ≤ atol + rtol · max "
                        "|reference| per tensor; default: float64 rtol 1e-10, float32 8 × "
                        "the torch class's float32 error)")
    c.add_argument("--rtol", type=_nonnegative_float, help="relative tolerance, see --atol")
    c.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of weights, inputs and loss")
    c.add_argument("--timeout", type=_nonnegative_float, default=300, metavar="SECONDS",
                   help="time limit of each check (0: none); past it the check is a failed "
                        "row, timed out, and the command goes on. Enforced by SIGALRM in "
                        "Python code: a candidate stuck in C code that never returns to "
                        "Python cannot be interrupted, and 30 s later the command exits "
                        "with status 1, printing the stack")
    _add_out(c, "check.json")
    c.set_defaults(func=_check_gradients, parser=c)
    return parser


def _check(args: argparse.Namespace) -> None:
    """Argument checks that argparse cannot do alone; all run before any work, and a bad
    argument ends the command with argparse's usage line and a one-line message."""
    parser = args.parser
    if args.command == "bench" and not args.size:
        given = [name for name, on in (("--layers", args.layers != 1),
                                       ("--bidirectional", args.bidirectional),
                                       ("--packed", args.packed)) if on]
        if given:
            parser.error(f"argument {given[0]}: applies to --size only; give a --size TxBxIxH")
    if args.command == "train" and args.cell != "rnn" and args.init == "identity":
        parser.error("argument --init: identity is for --cell rnn only")
    if args.command == "train" and args.cell != "rnn" and args.nonlinearity != "tanh":
        parser.error("argument --nonlinearity: applies to --cell rnn only")
    if args.command == "bench" and args.device == "cuda" and args.cell != "rnn":
        parser.error("argument --cell: the LSTM and GRU run on the CPU only (--device cpu)")
    if args.command == "bench" and args.device == "cuda" and args.steps:
        parser.error("argument --steps: the step-by-step section runs on the CPU only "
                     "(--device cpu)")
    if args.command == "check":
        _check_arguments_of_check(args)
    args.out = _out_dir(parser, args.out)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line with ``argv`` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
