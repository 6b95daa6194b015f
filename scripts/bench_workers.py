"""Worker benchmark (issue: many cores, one GPU): fit samples/s with shardfeed's worker processes,
in-process, and Keras' own multiprocessing, with and without a flip+noise transform.

    python scripts/bench_workers.py [--samples 2048] [--workers 2] [--workdir DIR]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import shardfeed
from shardfeed.bench.harness import format_table
from shardfeed.bench.machine import cpu_line
from shardfeed.bench.workers import fit_workers
from shardfeed.inputs.demo import make_tutorial_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", help="folder for the data (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="shardfeed-workers-") as tmp:
        data, labels, partition = make_tutorial_dataset(Path(tmp), num_samples=args.samples, shape=(32, 32, 32, 1))
        out = Path(tmp) / "demo.zarr"
        shardfeed.convert(data, out, labels=labels, partition=partition, workers=2)
        store = shardfeed.open_store(out)
        print(f"cpu: {cpu_line()}; {args.samples} samples of 128 KiB, batch 64")
        results = fit_workers(store, list(store.ids), workers=args.workers)
        print(format_table(results, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
