"""Cost of recording the gradient flow: rnnkern.RNN (LSTM, GRU with --cell) train step with
and without rnnkern.diagnostics.record_gradient_flow, interleaved blocks, median of repeats.

    python benchmarks/flow_overhead.py [--size 200x32x128x128] [--repeats 15] [--cell lstm]
"""

import argparse
import statistics
import time

import torch

import rnnkern
from rnnkern.diagnostics import record_gradient_flow


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="200x32x128x128", help="TxBxIxH")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--number", type=int, default=20, help="train steps per block")
    parser.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="rnn")
    args = parser.parse_args()
    T, B, I, H = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    rnn = {"rnn": rnnkern.RNN, "lstm": rnnkern.LSTM, "gru": rnnkern.GRU}[args.cell](I, H)
    x = torch.randn(T, B, I)

    def step():
        rnn.zero_grad(set_to_none=True)
        out, _ = rnn(x)
        out.sum().backward()

    def plain():
        for _ in range(args.number):
            step()

    def recording():
        with record_gradient_flow(rnn) as flow:
            for _ in range(args.number):
                step()
        assert len(flow.history) == args.number

    times = {"plain": [], "recording": []}
    for fn in (plain, recording):
        fn()
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("recording", recording)):
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3 / args.number)
    plain_ms = statistics.median(times["plain"])
    rec_ms = statistics.median(times["recording"])
    print(f"{args.cell} T={T} B={B} I={I} H={H}: train step {plain_ms:.3f} ms, with recording "
          f"{rec_ms:.3f} ms, overhead {100 * (rec_ms / plain_ms - 1):+.1f}% "
          f"(median of {args.repeats})")


if __name__ == "__main__":
    main()
