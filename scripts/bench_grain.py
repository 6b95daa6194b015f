"""grain's mp_prefetch side by side with shardfeed's worker processes (same samples, same flip+noise
transform, batch 64, 2 workers, loaders alone). Needs `pip install grain array-record`.

    python scripts/bench_grain.py [--samples 1536] [--workers 2]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import shardfeed
from shardfeed.bench.machine import cpu_line
from shardfeed.bench.peers import compare
from shardfeed.inputs.demo import make_tutorial_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1536)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shardfeed-grain-") as tmp:
        data, labels, partition = make_tutorial_dataset(Path(tmp), num_samples=args.samples, shape=(32, 32, 32, 1))
        shardfeed.convert(data, Path(tmp) / "demo.zarr", labels=labels, partition=partition, workers=2)
        store = shardfeed.open_store(Path(tmp) / "demo.zarr")
        print(f"cpu: {cpu_line()}; {args.samples} samples of 128 KiB, flip+noise, batch 64")
        results = compare(store, Path(tmp), workers=args.workers)
    base = dict(results)["grain, in-process"]
    print("| loader | samples/s | x grain in-process |\n|---|---:|---:|")
    for name, rate in results:
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
