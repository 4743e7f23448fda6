"""Cost of recording the gradient flow: a train step of rnnkern.RNN, LSTM and GRU without
rnnkern.diagnostics.record_gradient_flow, with it (‖∂L/∂h_t‖, and ‖∂L/∂c_t‖ for the LSTM), and
with weight_contributions=True as well (each step's term of ∂L/∂W_hh), interleaved blocks,
median of the repeats, with each variant's interquartile range over its median.

    python benchmarks/flow_overhead.py --cell all [--size 200x32x128x128] [--repeats 9]
"""

import argparse
import os
import statistics
import time

import torch

import rnnkern
from rnnkern.apps.arguments import cpu_model
from rnnkern.diagnostics import record_gradient_flow

CLASSES = {"rnn": rnnkern.RNN, "lstm": rnnkern.LSTM, "gru": rnnkern.GRU}


def _spread(values):
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / statistics.median(values)


def measure(cell: str, T: int, B: int, I: int, H: int, repeats: int, number: int):
    torch.manual_seed(0)
    rnn = CLASSES[cell](I, H)
    x = torch.randn(T, B, I)

    def step():
        rnn.zero_grad(set_to_none=True)
        out, _ = rnn(x)
        out.sum().backward()

    def plain():
        for _ in range(number):
            step()

    def recording(weights):
        def run():
            with record_gradient_flow(rnn, weight_contributions=weights) as flow:
                for _ in range(number):
                    step()
            assert len(flow.history) == number
            assert (flow.weight_contributions is not None) == weights
        return run

    variants = {"plain": plain, "norms": recording(False), "weights": recording(True)}
    times = {name: [] for name in variants}
    for fn in variants.values():
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3 / number)
    return {name: (statistics.median(t), _spread(t)) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="200x32x128x128", help="TxBxIxH")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--number", type=int, default=20, help="train steps per block")
    parser.add_argument("--cell", choices=[*CLASSES, "all"], default="all")
    args = parser.parse_args()
    try:
        T, B, I, H = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"argument --size: expected TxBxIxH, got {args.size!r}")
    if args.repeats < 2:
        parser.error(f"argument --repeats: expected at least 2, got {args.repeats}")
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, float32, "
          f"T={T} B={B} I={I} H={H}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}", flush=True)
    for cell in CLASSES if args.cell == "all" else [args.cell]:
        r = measure(cell, T, B, I, H, args.repeats, args.number)
        base = r["plain"][0]
        print(f"{cell}: train step {base:.3f} ms (spread {r['plain'][1]:.0%}); recording the "
              f"norms {r['norms'][0]:.3f} ms, {100 * (r['norms'][0] / base - 1):+.1f}% "
              f"(spread {r['norms'][1]:.0%}); with weight_contributions "
              f"{r['weights'][0]:.3f} ms, {100 * (r['weights'][0] / base - 1):+.1f}% "
              f"(spread {r['weights'][1]:.0%}); median of {args.repeats}", flush=True)


if __name__ == "__main__":
    main()
