"""The command line: ``rnnkern <command>`` or ``python -m rnnkern <command>``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import List, Optional


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _size(text: str):
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected TxBxIxH with positive integers, got {text!r}")
    return tuple(int(p) for p in parts)


def _bench(args) -> int:
    if not _torch_or_exit():
        return 1
    import torch

    from . import bench, isa

    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    if args.size:
        cases = [bench.Case(*size, layers=args.layers, bidirectional=args.bidirectional,
                            packed=args.packed) for size in args.size]
    else:
        cases = bench.FULL_CASES if args.full else bench.DEFAULT_CASES
    impls = args.impl or (bench.IMPLEMENTATIONS if args.full else ("torch", "rnnkern"))
    print(f"rnnkern.RNN vs torch.nn.RNN {torch.__version__}, {args.dtype}, "
          f"kernels: {isa()}, threads: {torch.get_num_threads()}, "
          f"median of {args.repeats}; {platform.machine()} {_cpu_name()}", flush=True)
    results = bench.run(cases, impls=impls, repeats=args.repeats, dtype=dtype)
    print(bench.format_table(results))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "bench.json")
        with open(path, "w") as f:
            json.dump({"machine": _cpu_name(), "torch": torch.__version__, "dtype": args.dtype,
                       "kernels": isa(), "threads": torch.get_num_threads(),
                       "date": time.strftime("%Y-%m-%d"), "results": bench.as_dicts(results)},
                      f, indent=2)
        print(f"wrote {path}")
        try:
            bench.plot(results, os.path.join(args.out, "speedup.png"))
            print(f"wrote {os.path.join(args.out, 'speedup.png')}")
        except ImportError:
            print("no plot: matplotlib is not installed (pip install matplotlib)",
                  file=sys.stderr)
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_or_exit() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("this command needs torch: pip install torch==2.13.0", file=sys.stderr)
        return False
    return True


def _plot_path(path: str) -> str:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    return path


def _vanish(args) -> int:
    if not _torch_or_exit():
        return 1
    from . import vanish

    print(f"‖∂L/∂h_t‖ against the distance k from the loss, T={args.T}, H={args.hidden}, "
          f"B={args.batch_size}, W_hh = gain · orthogonal", flush=True)
    curves = vanish.compute(T=args.T, B=args.batch_size, H=args.hidden, gains=args.gains)
    print(vanish.table(curves))
    try:
        vanish.plot(curves, _plot_path(args.out))
    except ImportError:
        print("no plot: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 0
    print(f"wrote {args.out}")
    return 0


def _train(args) -> int:
    if not _torch_or_exit():
        return 1
    import torch

    from . import adding

    title = (f"adding problem T={args.T}, {args.nonlinearity}, init {args.init}, "
             f"H={args.hidden}, {args.engine}")
    print(title, flush=True)
    run = adding.train(T=args.T, steps=args.steps, hidden=args.hidden,
                       nonlinearity=args.nonlinearity, init=args.init, engine=args.engine,
                       batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       progress=adding.Progress(args.steps))
    print(f"wall time {run.seconds:.2f} s ({1e3 * run.seconds / args.steps:.2f} ms per step)")
    print(f"final training MSE {run.losses[-1]:.4f}, test MSE {run.test_mse:.4f} "
          f"(predicting 1: {adding.BASELINE_MSE:.3f})")
    if run.flow:
        def reach(norms):
            return float(norms[0] / norms[-1])
        late = torch.stack(run.flow[-max(len(run.flow) // 10, 1):]).mean(0)
        print(f"‖∂L/∂h_0‖ / ‖∂L/∂h_T-1‖: {reach(run.flow[0]):.2e} at the first iteration, "
              f"{reach(late):.2e} over the last 10%")
    os.makedirs(args.out, exist_ok=True)
    stem = f"adding-T{args.T}-{args.nonlinearity}-{args.init}-{args.engine}"
    try:
        loss_path = os.path.join(args.out, stem + "-loss.png")
        adding.plot_losses(run, title, loss_path)
        print(f"wrote {loss_path}")
        if run.flow:
            flow_path = os.path.join(args.out, stem + "-gradient-flow.png")
            adding.plot_flow(run, title, flow_path)
            print(f"wrote {flow_path}")
        else:
            print("no gradient-flow heat map: torch.nn.RNN cannot record it "
                  "(use --engine rnnkern)")
    except ImportError:
        print("no plots: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnkern", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time rnnkern.RNN against torch.nn.RNN and print a table")
    b.add_argument("--full", action="store_true",
                   help="the whole grid, with the reference loop and its torch.compile")
    b.add_argument("--size", type=_size, action="append", metavar="TxBxIxH",
                   help="a size to time (repeatable); default: a short built-in grid")
    b.add_argument("--layers", type=int, default=1, help="layers, for --size (default 1)")
    b.add_argument("--bidirectional", action="store_true", help="for --size")
    b.add_argument("--packed", action="store_true",
                   help="for --size: variable lengths as an unsorted PackedSequence")
    b.add_argument("--impl", choices=["torch", "rnnkern", "reference", "compiled"],
                   action="append", help="implementations to time (repeatable)")
    b.add_argument("--repeats", type=_positive, default=5, help="timed repeats (median)")
    b.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    b.add_argument("--out", metavar="DIR", help="also write DIR/bench.json and DIR/speedup.png")
    b.set_defaults(func=_bench)

    v = sub.add_parser("vanish", help="gradient norms through time for several W_hh gains, "
                                      "as an RNN and as a tied-weight MLP; table and PNG")
    v.add_argument("--T", type=_positive, default=100, help="steps (default 100)")
    v.add_argument("--hidden", type=_positive, default=64, help="hidden size (default 64)")
    v.add_argument("--batch-size", type=_positive, default=16, help="samples (default 16)")
    v.add_argument("--gains", type=float, nargs="+", default=[0.5, 0.9, 1.0, 1.1, 1.5])
    v.add_argument("--out", default="vanish.png", help="PNG to write (default vanish.png)")
    v.set_defaults(func=_vanish)

    t = sub.add_parser("train", help="train an RNN on a task; progress, loss and "
                                     "gradient-flow plots")
    t.add_argument("task", choices=["adding"], help="adding: the adding problem")
    t.add_argument("--T", type=_positive, default=50, help="sequence length (default 50)")
    t.add_argument("--steps", type=_positive, default=2000, help="iterations (default 2000)")
    t.add_argument("--hidden", type=_positive, default=64, help="hidden size (default 64)")
    t.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh")
    t.add_argument("--init", choices=["default", "orthogonal", "identity"], default="default",
                   help="W_hh initialisation; identity with relu is the IRNN")
    t.add_argument("--engine", choices=["rnnkern", "torch"], default="rnnkern",
                   help="rnnkern.RNN or torch.nn.RNN (no gradient-flow map)")
    t.add_argument("--batch-size", type=_positive, default=64)
    t.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="adding-results", help="folder for the PNGs")
    t.set_defaults(func=_train)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
