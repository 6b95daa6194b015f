"""Remote (S3-compatible) vs local read throughput of the same Zarr store, in one run.

Starts moto_server on 127.0.0.1 (pip install 'moto[server]' s3fs), converts the same data to a
local directory and to s3://, and reads random batches from both through `Store.read`.

    python scripts/bench_remote.py [--samples 2000] [--shape 32 32 32 1] [--batches 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import shardfeed
from shardfeed.inputs.demo import make_tutorial_dataset


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(2)
    return proc, f"http://127.0.0.1:{port}"


def rate(store, batches: int, batch_size: int, shuffle: str) -> float:
    rng = np.random.default_rng(0)
    order = shardfeed.epoch_order(np.arange(len(store)), seed=0, epoch=0, mode=shuffle,
                                  chunk_rows=store.manifest.chunk_rows)  # fmt: skip
    store.read(order[:batch_size])  # open readers
    start = time.perf_counter()
    for k in range(batches):
        rows = order[(k * batch_size) % len(order):][:batch_size] if shuffle == "block" else \
            rng.integers(0, len(store), batch_size)  # fmt: skip
        store.read(rows)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--shape", type=int, nargs="+", default=[32, 32, 32, 1])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", default="1MB", help="small: moto copies a whole object per range request")
    args = parser.parse_args()
    proc, endpoint = start_moto()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)  # fmt: skip
    try:
        import fsspec

        fsspec.filesystem("s3").mkdir("bench")
        with tempfile.TemporaryDirectory() as tmp:
            data, labels, partition = make_tutorial_dataset(tmp, args.samples, tuple(args.shape))
            common = dict(labels=labels, partition=partition, shard_size=args.shard_size)
            shardfeed.convert(data, Path(tmp) / "local.zarr", **common)
            shardfeed.convert(data, "s3://bench/remote.zarr", **common)
            local = shardfeed.open_store(Path(tmp) / "local.zarr")
            remote = shardfeed.open_store("s3://bench/remote.zarr")
            print(f"{args.samples} samples of {tuple(args.shape)} float32, batches of {args.batch_size}")
            for shuffle in ("global", "block"):
                r_local = rate(local, args.batches, args.batch_size, shuffle)
                r_remote = rate(remote, args.batches, args.batch_size, shuffle)
                print(f"{shuffle:>6} shuffle: local {r_local:>9,.0f} samples/s  s3 (moto) {r_remote:>8,.0f} "
                      f"samples/s  ratio {r_remote / r_local:.3f}")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
