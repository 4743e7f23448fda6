"""The command line: ``rnnkern <command>`` or ``python -m rnnkern <command>``."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import List, Optional


def _size(text: str):
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected TxBxIxH with positive integers, got {text!r}")
    return tuple(int(p) for p in parts)


def _bench(args) -> int:
    try:
        import torch
    except ImportError:
        print("rnnkern bench needs torch: pip install torch==2.13.0", file=sys.stderr)
        return 1
    from . import bench, isa

    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    if args.size:
        cases = [bench.Case(*size, layers=args.layers, bidirectional=args.bidirectional,
                            packed=args.packed) for size in args.size]
    else:
        cases = bench.DEFAULT_CASES
    print(f"rnnkern.RNN vs torch.nn.RNN {torch.__version__}, {args.dtype}, "
          f"kernels: {isa()}, torch threads: {torch.get_num_threads()}, "
          f"median of {args.repeats}", flush=True)
    results = bench.run(cases, repeats=args.repeats, dtype=dtype)
    print(bench.format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(),
                       "torch": torch.__version__, "dtype": args.dtype,
                       "results": bench.as_dicts(results)}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnkern", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time rnnkern.RNN against torch.nn.RNN and print a table")
    b.add_argument("--size", type=_size, action="append", metavar="TxBxIxH",
                   help="a size to time (repeatable); default: a short built-in grid")
    b.add_argument("--layers", type=int, default=1, help="layers, for --size (default 1)")
    b.add_argument("--bidirectional", action="store_true", help="for --size")
    b.add_argument("--packed", action="store_true",
                   help="for --size: variable lengths as an unsorted PackedSequence")
    b.add_argument("--repeats", type=int, default=7, help="timed repeats per size (median)")
    b.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    b.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    b.set_defaults(func=_bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
