"""rnnkern against torch.nn.RNN at the sizes of a step-by-step caller; the same as
`rnnkern bench --steps`.

T, B, I, H = 1,1,8,8; 1,1,64,256; 1,32,128,512; 10,1,32,32: inference (no grad, hx passed)
and a train step (forward + backward), interleaved, median of the repeats; then a generate
loop of 1000 single-token calls of Embedding -> RNN -> Linear fed its own argmax token.

    python benchmarks/bench_steps.py --repeats 15 --out results
"""

import sys

from rnnkern.apps import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--steps", *sys.argv[1:]]))
