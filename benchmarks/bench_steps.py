"""rnnkern against torch.nn at the sizes of a step-by-step caller; the same as
`rnnkern bench --step-by-step`.

For the RNN, LSTM and GRU at I = 128: T = 1 with B = 1 and 32, H = 256 and 512, 1 and 2 layers,
and T = 10: inference (no grad, hx passed; and ONNX Runtime on torch.onnx.export of the torch
layer when onnxruntime is installed) and a train step (forward + backward), interleaved, median
of the repeats; a Python loop of 100 steps over the one-step cells (torch.nn.RNNCell, LSTMCell,
GRUCell against rnnkern's); then per cell a generate loop of 1000 single-token calls of
Embedding -> layer -> Linear fed its own argmax token.

    python benchmarks/bench_steps.py --repeats 15 --out results
"""

import sys

from rnnkern.apps import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--step-by-step", *sys.argv[1:]]))
