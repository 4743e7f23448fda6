"""``rnnkern train adding``: trains a recurrent layer on the adding problem, with progress, a
loss curve and a gradient-flow heat map (the task is in :mod:`rnnkern.apps.train.adding`)."""

from __future__ import annotations

import argparse
import os
import statistics

from ...cells import get
from ..arguments import (HelpFormatter, add_out, cell_choices, has_torch, no_matplotlib,
                         positive, positive_float, wrote)


def add_parser(sub) -> argparse.ArgumentParser:
    t = sub.add_parser("train", formatter_class=HelpFormatter,
                       help="train adding: train an RNN on the adding problem; progress, "
                            "loss curve and gradient-flow heat map",
                       description="Trains on the adding problem (two marked values among T; "
                                   "the target is their sum) with Adam and gradient clipping.")
    t.add_argument("task", choices=["adding"], help="adding: the adding problem")
    t.add_argument("--seq-len", "--T", dest="T", type=positive, default=50,
                   help="sequence length (--T: its old spelling, deprecated)")
    t.add_argument("--steps", type=positive, default=2000, help="training iterations")
    t.add_argument("--hidden", type=positive, default=64, help="hidden size")
    t.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh",
                   help="activation")
    t.add_argument("--init", choices=["default", "orthogonal", "identity"], default="default",
                   help="W_hh initialisation; identity with relu is the IRNN")
    t.add_argument("--cell", choices=cell_choices(), default="rnn",
                   help="the recurrent layer: Elman RNN (--nonlinearity applies), LSTM or GRU")
    t.add_argument("--impl", "--engine", dest="engine", choices=["rnnkern", "torch"],
                   default="rnnkern",
                   help="rnnkern.RNN or torch.nn.RNN (no gradient-flow map; --engine: its old "
                        "spelling, deprecated)")
    t.add_argument("--batch-size", type=positive, default=64, help="samples per iteration")
    t.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate")
    t.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    add_out(t, "the loss curve and the gradient-flow heat map")
    t.set_defaults(parser=t)
    return t


def check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.cell != "rnn" and args.init == "identity":
        parser.error("argument --init: identity is for --cell rnn only")
    if not get(args.cell).nonlinearity and args.nonlinearity != "tanh":
        parser.error("argument --nonlinearity: applies to --cell rnn only")


def _format_reach(value: float) -> str:
    return "0 (below the float64 range)" if value == 0 else f"{value:.2e}"


def run(args: argparse.Namespace) -> int:
    if not has_torch():
        return 1
    from . import adding

    kind = args.nonlinearity if get(args.cell).nonlinearity else args.cell
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
    if run.horizon:
        tenth = max(1, len(run.horizon) // 10)
        last = statistics.median(run.horizon[-tenth:])
        print(f"gradient horizon ({adding.HORIZON_FRACTION:.0%} of Σ_t ‖δ_tᵀ h_(t-1)‖, the terms "
              f"of ∂L/∂W_hh, come from within this many steps of the loss; at the first "
              f"iteration → median of the last {tenth}): {run.horizon[0]} → {last:g} of "
              f"T-1 = {args.T - 1}")
    stem = f"adding-T{args.T}-{kind}-{args.init}-{args.engine}"
    try:
        loss_path = os.path.join(args.out, stem + "-loss.png")
        adding.plot_losses(run, title, loss_path)
        wrote(loss_path)
        if run.flow:
            flow_path = os.path.join(args.out, stem + "-gradient-flow.png")
            adding.plot_flow(run, title, flow_path)
            wrote(flow_path)
        else:
            print(f"no gradient-flow heat map: torch.nn.{get(args.cell).title} cannot "
                  "record it (use --impl rnnkern)")
    except ImportError:
        no_matplotlib()
    return 0
