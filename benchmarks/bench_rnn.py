"""rnnkern against torch.nn.RNN over a grid of sizes; the same as `rnnkern bench`.

    python benchmarks/bench_rnn.py --size 1000x1x32x32 --size 100x64x256x512 --repeats 15
"""

import sys

from rnnkern.apps import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
