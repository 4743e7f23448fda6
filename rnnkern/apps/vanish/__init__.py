"""``rnnkern vanish``: gradient norms through time for several W_hh gains, as an RNN and as a
tied-weight MLP; table and picture (the curves are computed in
:mod:`rnnkern.apps.vanish.curves`)."""

from __future__ import annotations

import argparse
import os

from ..arguments import (HelpFormatter, add_out, cell_choices, has_torch, no_matplotlib,
                         positive, positive_float, wrote)


def add_parser(sub) -> argparse.ArgumentParser:
    v = sub.add_parser("vanish", formatter_class=HelpFormatter,
                       help="gradient norms through time for several W_hh gains, "
                            "as an RNN and as a tied-weight MLP; table and picture",
                       description="‖∂L/∂h_t‖ against the distance from the loss for "
                                   "W_hh = gain · orthogonal, tanh and relu, as an RNN (recorded "
                                   "by the kernel) and as a deep MLP with tied weights "
                                   "(autograd), with the gain^k bound.")
    v.add_argument("--T", type=positive, default=100, help="steps")
    v.add_argument("--hidden", type=positive, default=64, help="hidden size")
    v.add_argument("--batch-size", type=positive, default=16, help="samples")
    v.add_argument("--gains", type=positive_float, nargs="+", default=[0.5, 0.9, 1.0, 1.1, 1.5],
                   help="W_hh = gain · a random orthogonal matrix, one curve per gain")
    v.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    v.add_argument("--cell", choices=cell_choices(), default="rnn",
                   help="the gain sweep's layer: rnn (tanh and relu, with the tied-weight MLP), "
                        "lstm, gru, or indrnn (tanh and relu, u = gain · U(-1, 1), the bound "
                        "per unit); the three drop-in cells side by side are shown for every "
                        "choice")
    add_out(v, "vanish.png")
    v.set_defaults(parser=v)
    return v


def check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    if not has_torch():
        return 1
    from . import curves as vanish

    print(f"‖∂L/∂h_t‖ against the distance k from the loss, T={args.T}, H={args.hidden}, "
          f"B={args.batch_size}, "
          + ("u = W_hh ~ gain · U(-1, 1)" if args.cell == "indrnn" else "W_hh = gain · orthogonal"),
          flush=True)
    curves = vanish.compute(T=args.T, B=args.batch_size, H=args.hidden, gains=args.gains,
                            seed=args.seed, cell=args.cell)
    print(vanish.table(curves))
    if args.cell == "rnn":
        print(f"the RNN (kernel) and the MLP (autograd) agree to a relative difference of "
              f"{vanish.agreement(curves):.1e} at most")
    if args.cell == "indrnn":
        print("each unit j's gradient changes by |u_j| · φ' per step (its bound |u_j|^k); "
              + ("every curve stays under max |u_j|^k = gain^k" if vanish.within_bound(curves)
                 else "some curves cross gain^k"))
    print(f"\nthe three cells at the same T={args.T}, as torch initialises them, the LSTM's "
          f"forget and the GRU's update gate bias +{vanish.GATE_BIAS:g} (first / last: the "
          "gradient at the first step over the one at the last)")
    print(vanish.cells_table(curves))
    try:
        path = os.path.join(args.out, "vanish.png")
        vanish.plot(curves, path)
        wrote(path)
    except ImportError:
        no_matplotlib()
    return 0
