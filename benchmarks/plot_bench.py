"""Redraw speedup.png from a bench.json written by `rnnkern bench --out DIR`.

    python benchmarks/plot_bench.py docs/bench-full.json docs/speedup.png
"""

import argparse
import json

from rnnkern.apps.bench import timing as bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="bench.json from rnnkern bench")
    parser.add_argument("png", help="picture to write")
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    bench.plot(data["results"], args.png, bench.plot_title(data, data["results"]))
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
