"""Conversion on a real Dask scheduler and workers on loopback gives the local result exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import shardfeed
import shardfeed.cli

distributed = pytest.importorskip("dask.distributed")

BIN = Path(sys.executable).parent


def _same_store(a: Path, b: Path) -> None:
    assert (a / "index.npz").read_bytes() == (b / "index.npz").read_bytes()
    ma, mb = shardfeed.open_store(a).manifest, shardfeed.open_store(b).manifest
    assert [(s.path, s.first_row, s.last_row, s.checksum) for s in ma.shards] == [
        (s.path, s.first_row, s.last_row, s.checksum) for s in mb.shards
    ]
    sa, sb = shardfeed.open_store(a), shardfeed.open_store(b)
    rows = np.arange(len(sa))
    assert sa.read(rows).tobytes() == sb.read(rows).tobytes()


@pytest.fixture
def dask_cluster(tmp_path):
    """`dask scheduler` and three `dask worker` processes on 127.0.0.1, as a user would start them."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]  # fmt: skip
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    for _ in range(3):
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
             "--no-dashboard", "--host", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        ))  # fmt: skip
    client = distributed.Client(scheduler_file=str(scheduler_file), timeout="60s")
    client.wait_for_workers(3, timeout=90)
    try:
        yield client, procs[1:]
    finally:
        client.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


@pytest.mark.parametrize("backend_name", ["hdf5", "zarr"])
def test_dask_conversion_equals_local_conversion(tmp_path, make_npy_dir, dask_cluster, backend_name):
    client, _ = dask_cluster
    src, labels, partition, _ = make_npy_dir(n=60, shape=(8, 8))
    options = dict(labels=labels, partition=partition, format=backend_name, chunk_rows=4, shard_size=4 * 256 * 2)
    shardfeed.convert(src, tmp_path / "local", workers=1, **options)
    shardfeed.convert(src, tmp_path / "dask", client=client, **options)
    _same_store(tmp_path / "local", tmp_path / "dask")


def test_cli_scheduler_address_and_a_lost_worker(tmp_path, make_npy_dir, dask_cluster):
    """Through the CLI with --scheduler tcp://...; a worker SIGKILLed mid-run: its task is redone."""
    client, workers = dask_cluster
    src, labels, partition, _ = make_npy_dir(n=400, shape=(64, 64))
    common = ["--labels", str(labels), "--partition", str(partition), "--chunk-rows", "2",
              "--shard-size", str(2 * 64 * 64 * 4 * 2), "--quiet"]  # fmt: skip
    shardfeed.cli.main(["convert", str(src), str(tmp_path / "local"), *common])
    address = client.scheduler.address
    run = subprocess.Popen([sys.executable, "-m", "shardfeed.cli", "convert", str(src), str(tmp_path / "dask"),
                            "--scheduler", address, *common], stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1.0)
    os.kill(workers[0].pid, signal.SIGKILL)
    _, stderr = run.communicate(timeout=240)
    assert run.returncode == 0, stderr
    _same_store(tmp_path / "local", tmp_path / "dask")


def test_local_scheduler_option(tmp_path, make_npy_dir):
    src, labels, partition, _ = make_npy_dir(n=30)
    shardfeed.convert(src, tmp_path / "a", labels=labels, partition=partition, chunk_rows=2, shard_size=96)
    shardfeed.convert(src, tmp_path / "b", labels=labels, partition=partition, chunk_rows=2, shard_size=96,
                      scheduler="local", workers=2)  # fmt: skip
    _same_store(tmp_path / "a", tmp_path / "b")


def test_unreachable_scheduler_is_a_clear_error(tmp_path, make_npy_dir):
    src, labels, partition, _ = make_npy_dir(n=4)
    with pytest.raises(shardfeed.OptionError, match="cannot reach the Dask scheduler"):
        shardfeed.convert(src, tmp_path / "x", labels=labels, partition=partition, scheduler="tcp://127.0.0.1:9")
