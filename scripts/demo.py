"""The main job on built-in demo data: make tutorial-layout data, convert it to HDF5 and Zarr,
inspect and verify both stores, then train a small Keras model from the Zarr store.

    python scripts/demo.py [--dir demo] [--samples 3000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from shardfeed.inputs.demo import make_tutorial_dataset


def shardfeed(*args: str) -> None:
    command = [sys.executable, "-m", "shardfeed.cli", *args]
    print("$ shardfeed " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="demo", help="work folder (created; reused if present)")
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    root = Path(args.dir)
    start = time.perf_counter()
    data, labels, partition = make_tutorial_dataset(root, num_samples=args.samples)
    print(f"wrote {args.samples} samples of (32, 32, 32, 1) float32 to {data} "
          f"in {time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
    common = ["--labels", str(labels), "--partition", str(partition), "--workers", "2", "--overwrite"]
    shardfeed("convert", str(data), str(root / "demo.h5store"), "--format", "hdf5", *common)
    shardfeed("convert", str(data), str(root / "demo.zarr"), "--format", "zarr", *common)
    shardfeed("inspect", str(root / "demo.h5store"))
    shardfeed("inspect", str(root / "demo.zarr"))
    shardfeed("verify", str(root / "demo.zarr"), "--source", str(data))
    script = Path(__file__).with_name("train_example.py")
    print(f"$ python {script} {root / 'demo.zarr'} --epochs {args.epochs}", flush=True)
    subprocess.run([sys.executable, str(script), str(root / "demo.zarr"), "--epochs", str(args.epochs)],
                   check=True)  # fmt: skip


if __name__ == "__main__":
    main()
