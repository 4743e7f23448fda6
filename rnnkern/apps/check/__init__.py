"""``rnnkern check``: checks the gradients of rnnkern's layers, or of the user's own RNN, LSTM
or GRU (--impl), against rnnkern.reference, torch and finite differences; the checks are run
by :mod:`rnnkern.apps.check.runner`."""

from __future__ import annotations

import argparse
import os
import sys

from ...cells import CELLS, NAMES, get
from ..arguments import (HelpFormatter, add_out, cell_choices, check_memory, has_torch,
                         nonnegative_float, nonnegative_int, positive, recurrent_bytes, size,
                         wrote)


def add_parser(sub) -> argparse.ArgumentParser:
    c = sub.add_parser("check", formatter_class=HelpFormatter,
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
    c.add_argument("--cell", choices=cell_choices(all_=True), default="rnn",
                   help="the cell: Elman RNN, LSTM or GRU; all: rnnkern's three drop-ins, one "
                        "table each (not with --impl)")
    c.add_argument("--impl", metavar="FILE.py:NAME",
                   help="your module class or NumPy bptt function (default: rnnkern's drop-in "
                        "for --cell)")
    c.add_argument("--forward", metavar="FILE.py:NAME",
                   help="with a NumPy bptt: its forward(x, h0, w_ih, w_hh, b_ih, b_hh) -> y, "
                        "compared too")
    c.add_argument("--size", type=size, action="append", metavar="TxBxIxH",
                   help="a size to check (repeatable); without it and the options below: a "
                        "built-in grid")
    c.add_argument("--layers", type=positive, help="layers (module classes; default 1)")
    c.add_argument("--bidirectional", action="store_true", help="both directions")
    c.add_argument("--packed", action="store_true",
                   help="variable lengths as an unsorted PackedSequence")
    c.add_argument("--nonlinearity", choices=["tanh", "relu"],
                   help="activation (--cell rnn; default tanh)")
    c.add_argument("--proj-size", type=positive, metavar="P",
                   help="LSTM projection size, smaller than H (--cell lstm, module classes)")
    c.add_argument("--dtype", choices=["float64", "float32"],
                   help="dtype of the candidate (default float64); the references run in "
                        "float64, and float32 is held to the torch class's own float32 error")
    c.add_argument("--reference", choices=["reference", "torch", "rnnkern",
                                           "finite-differences"], action="append",
                   help="oracle (repeatable; default: reference and torch). "
                        "finite-differences: central differences in float64, small sizes only")
    c.add_argument("--atol", type=nonnegative_float,
                   help="absolute tolerance (with --rtol: |error| ≤ atol + rtol · max "
                        "|reference| per tensor; default: float64 rtol 1e-10, float32 8 × "
                        "the torch class's float32 error)")
    c.add_argument("--rtol", type=nonnegative_float, help="relative tolerance, see --atol")
    c.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of weights, inputs and loss")
    c.add_argument("--timeout", type=nonnegative_float, default=300, metavar="SECONDS",
                   help="time limit of each check (0: none); past it the check is a failed "
                        "row, timed out, and the command goes on. Enforced by SIGALRM in "
                        "Python code: a candidate stuck in C code that never returns to "
                        "Python cannot be interrupted, and 30 s later the command exits "
                        "with status 1, printing the stack")
    add_out(c, "check.json")
    c.set_defaults(parser=c)
    return c


def _count(n: int) -> str:
    return {2: "two", 3: "three", 4: "four", 5: "five"}.get(n, str(n))


def _or(names) -> str:
    """``rnn``, ``rnn or lstm``, ``rnn, lstm or gru``."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Loads --impl and --forward (their errors are usage errors) and checks that the options
    fit the candidate, before any work."""
    if not has_torch():
        sys.exit(1)
    from . import runner as check

    args.forward_fn = None
    if args.forward and not args.impl:
        parser.error("argument --forward: goes with --impl FILE.py:NAME (a NumPy bptt)")
    if args.cell == "all" and args.impl:
        parser.error(f"argument --cell: all checks rnnkern's {_count(len(CELLS))} "
                     f"{'drop-ins' if all(c.drop_in for c in CELLS) else 'cells'}; with --impl "
                     f"give the cell of your class or function ({_or(NAMES)})")
    spec = None if args.cell == "all" else get(args.cell)
    if args.nonlinearity and not (spec and spec.nonlinearity):
        parser.error(f"argument --nonlinearity: applies to --cell "
                     f"{_or([c.name for c in CELLS if c.nonlinearity])} only, got --cell "
                     f"{args.cell}")
    if args.proj_size:
        if not (spec and spec.projection):
            parser.error(f"argument --proj-size: applies to --cell "
                         f"{_or([c.name for c in CELLS if c.projection])} only, got --cell "
                         f"{args.cell}")
        sizes = args.size or [check.DEFAULT_SIZE]
        small = [size for size in sizes if args.proj_size >= size[3]]
        if small:
            T, B, I, H = small[0]  # noqa: E741
            parser.error(f"argument --proj-size: must be smaller than H (as torch.nn."
                         f"{spec.title} requires), got {args.proj_size} with size "
                         f"{T}x{B}x{I}x{H}")
    if args.reference and "torch" in args.reference and spec and not spec.drop_in:
        parser.error(f"argument --reference: torch does not exist for --cell {args.cell}: "
                     f"rnnkern.{spec.title} is not a drop-in for its torch class")
    for T, B, I, H in args.size or ():  # noqa: E741
        for cell in NAMES if args.cell == "all" else [args.cell]:
            # the candidate, the reference and torch, float64 unless --dtype float32
            needed = 3 * recurrent_bytes(T, B, I, H, get(cell).gate_count, args.layers or 1,
                                         2 if args.bidirectional else 1,
                                         4 if args.dtype == "float32" else 8)
            check_memory(parser, "--size", f"{T}x{B}x{I}x{H} ({get(cell).title})", needed)
    if args.reference and "finite-differences" in args.reference:
        for cell in NAMES if args.cell == "all" else [args.cell]:
            for size in args.size or [check.DEFAULT_SIZE]:
                config = check.Config(*size, num_layers=args.layers or 1,
                                      bidirectional=args.bidirectional, packed=args.packed,
                                      nonlinearity=args.nonlinearity or "tanh", cell=cell,
                                      proj_size=args.proj_size or 0)
                try:
                    check.testing.check_finite_differences_size(config)
                except ValueError as error:
                    parser.error(f"argument --reference: {error}")
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


def run(args: argparse.Namespace) -> int:
    from . import runner as check

    cells = list(NAMES) if args.cell == "all" else [args.cell]
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
    wrote(path)
    return 0 if rows and all(row.passed for row in rows) else 1
