"""``rnnkern vanish``: why RNN gradients vanish, in four figures, each with its table: the gain
sweep (an RNN against a tied-weight MLP, :mod:`rnnkern.apps.vanish.curves`), and the three
questions of :mod:`rnnkern.apps.vanish.questions` (tied against untied depth, ∂L/∂W_hh step by
step, a loss at every step)."""

from __future__ import annotations

import argparse
import os

from ...cells import get as cell_spec
from ..arguments import (HelpFormatter, add_out, cell_choices, fraction, has_torch,
                         no_matplotlib, positive, positive_float, wrote)

PANELS = ("gains", "tied", "weight", "every-step")


def add_parser(sub) -> argparse.ArgumentParser:
    v = sub.add_parser("vanish", formatter_class=HelpFormatter,
                       help="why RNN gradients vanish: gradient norms through time for "
                            "several W_hh gains, tied against untied depth, ∂L/∂W_hh step by "
                            "step, a loss at every step; tables and pictures",
                       description="Four figures, each with its table (--panel draws one): "
                                   "gains: ‖∂L/∂h_t‖ against the distance from the loss for "
                                   "W_hh = gain · orthogonal, tanh and relu, as an RNN (recorded "
                                   "by the kernel) and as a deep MLP with tied weights "
                                   "(autograd), with the gain^k bound; tied: an RNN's one W_hh "
                                   "against an MLP's fresh matrix per layer, to --depth; weight: "
                                   "each step's term of ∂L/∂W_hh and the gradient horizon, for "
                                   "the RNN, LSTM and GRU; every-step: with a loss at every "
                                   "step, the part of ∂L/∂h_t from the loss k steps later. "
                                   "float64, each checked against autograd.")
    v.add_argument("--seq-len", "--T", dest="T", type=positive, default=100,
                   help="steps of the sequence (--T: its old spelling, deprecated)")
    v.add_argument("--hidden", type=positive, default=64, help="hidden size")
    v.add_argument("--batch-size", type=positive, default=16, help="samples")
    v.add_argument("--gains", type=positive_float, nargs="+", default=[0.5, 0.9, 1.0, 1.1, 1.5],
                   help="W_hh = gain · a random orthogonal matrix, one curve per gain")
    v.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    v.add_argument("--panel", choices=("all",) + PANELS, default="all",
                   help="draw one figure alone: gains (vanish.png: the gain sweep and the "
                        "three cells), tied (vanish-tied.png: an RNN's one W_hh against an "
                        "MLP's fresh matrix per layer), weight (vanish-weight.png: each step's "
                        "term of ∂L/∂W_hh and the gradient horizon), every-step "
                        "(vanish-every-step.png: a loss at every step)")
    v.add_argument("--depth", type=positive, default=1000,
                   help="depth of the tied panel (steps of the RNN, layers of the MLP)")
    v.add_argument("--fraction", type=fraction, default=0.9,
                   help="the weight panel's horizon: the distance within which this share "
                        "of Σ_t ‖δ_tᵀ h_(t-1)‖ comes")
    v.add_argument("--cell", choices=cell_choices(all_=True), default="rnn",
                   help="the gain sweep's layer: rnn (tanh and relu, with the tied-weight MLP), "
                        "lstm, gru, or indrnn (tanh and relu, u = gain · U(-1, 1), the bound "
                        "per unit), or all (vanish-<cell>.png for each); the three drop-in "
                        "cells side by side are shown for every choice")
    add_out(v, "vanish.png")
    v.set_defaults(parser=v)
    return v


# The every-step panel runs a forward and a backward per loss step: T²/2 steps per cell.
EVERY_STEP_MAX_T = 1000


def check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.panel in ("all", "every-step") and args.T > EVERY_STEP_MAX_T:
        parser.error(f"argument --seq-len: the every-step panel (in --panel {args.panel}) runs "
                     f"one backward per loss step, T²/2 steps per cell; expected at most "
                     f"{EVERY_STEP_MAX_T}, got {args.T}; draw the others alone with --panel "
                     "gains, tied or weight")


def run(args: argparse.Namespace) -> int:
    if not has_torch():
        return 1
    panels = PANELS if args.panel == "all" else (args.panel,)
    figures = []
    if "gains" in panels:
        cells = cell_choices() if args.cell == "all" else [args.cell]
        for i, cell in enumerate(cells):
            name = "vanish.png" if len(cells) == 1 else f"vanish-{cell}.png"
            figures.append(_gains(args, cell, name, three_cells=i == 0))
    from . import questions

    H, B, T = args.hidden, args.batch_size, args.T
    if "tied" in panels:
        print(f"\ntied against untied depth, at h = 0 (φ' = 1), H={H}, B={B}, depth "
              f"{args.depth}: median over {questions.DRAWS} draws of ‖∂L/∂h‖ / ‖∂L/∂h_out‖ "
              "(geometric mean over the batch), and how far the draws spread", flush=True)
        tied = questions.tied(depth=args.depth, H=H, B=B, seed=args.seed)
        print(questions.tied_table(tied))
        print(f"the kernel's tied RNN and autograd's tied MLP agree to {tied.agreement:.1e}")
        figures.append(("vanish-tied.png", questions.plot_tied, tied))
    if "weight" in panels:
        print(f"\neach step's term ‖δ_tᵀ h_(t-1)‖_F of ∂L/∂W_hh by distance k from the loss, "
              f"T={T}, H={H}, B={B}, torch's initialisation (gate bias +{questions.GATE_BIAS:g})",
              flush=True)
        weight = questions.weight(T=T, B=B, H=H, seed=args.seed, fraction=args.fraction)
        print(questions.weight_table(weight))
        print(f"the kernel's terms and autograd's untied copies of W_hh agree to "
              f"{weight.agreement:.1e}")
        figures.append(("vanish-weight.png", questions.plot_weight, weight))
    if "every-step" in panels:
        print(f"\na loss at every step: ‖∂ℓ_(t+k)/∂h_t‖ (mean over t and the batch) against the "
              f"loss at the end, ‖∂ℓ_(T-1)/∂h_(T-1-k)‖, T={T}, H={H}, B={B}", flush=True)
        every = questions.every_step(T=T, B=B, H=H, seed=args.seed)
        print(questions.every_step_table(every))
        print(f"the kernel and autograd on the reference loop agree to {every.agreement:.1e}")
        figures.append(("vanish-every-step.png", questions.plot_every_step, every))
    try:
        for name, draw, data in figures:
            path = os.path.join(args.out, name)
            draw(data, path)
            wrote(path)
    except ImportError:
        no_matplotlib()
    return 0


def _gains(args: argparse.Namespace, cell: str, name: str, three_cells: bool = True):
    """The gain sweep's tables for ``cell`` (and, with ``three_cells``, the drop-in cells side
    by side); its figure as (file name, plot, curves)."""
    from . import curves as vanish

    print(("" if three_cells else "\n") + "‖∂L/∂h_t‖ against the distance k from the loss, "
          f"{cell_spec(cell).title}, T={args.T}, H={args.hidden}, B={args.batch_size}, "
          + ("u = W_hh ~ gain · U(-1, 1)" if cell == "indrnn" else "W_hh = gain · orthogonal"),
          flush=True)
    curves = vanish.compute(T=args.T, B=args.batch_size, H=args.hidden, gains=args.gains,
                            seed=args.seed, cell=cell)
    print(vanish.table(curves))
    if cell == "rnn":
        print(f"the RNN (kernel) and the MLP (autograd) agree to a relative difference of "
              f"{vanish.agreement(curves):.1e} at most")
    if cell == "indrnn":
        print("each unit j's gradient changes by |u_j| · φ' per step (its bound |u_j|^k); "
              + ("every curve stays under max |u_j|^k = gain^k" if vanish.within_bound(curves)
                 else "some curves cross gain^k"))
    if three_cells:
        print(f"\nthe three cells at the same T={args.T}, as torch initialises them, the LSTM's "
              f"forget and the GRU's update gate bias +{vanish.GATE_BIAS:g} (first / last: the "
              "gradient at the first step over the one at the last)")
        print(vanish.cells_table(curves))
    return name, vanish.plot, curves
