"""Zarr stores on a real S3-compatible server (moto_server on 127.0.0.1): convert, inspect,
verify, read and train — no mocks of fsspec or s3fs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import shardfeed
import shardfeed.cli

pytest.importorskip("s3fs")
MOTO = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")


@pytest.fixture(scope="module")
def s3_server():
    """moto_server on a free loopback port; AWS_* variables point s3fs at it."""
    if not Path(MOTO).exists():
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("shardfeed-test")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_convert_to_s3_equals_local_and_reads_back(s3_server, tmp_path, make_npy_dir, compression):
    src, labels, partition, arrays = make_npy_dir(n=30, shape=(6, 5))
    url = f"s3://shardfeed-test/{compression}.zarr"
    options = dict(labels=labels, partition=partition, chunk_rows=3, shard_size=3 * 120 * 2, compression=compression)
    shardfeed.convert(src, url, overwrite=True, **options)
    shardfeed.convert(src, tmp_path / "local.zarr", **options)
    remote, local = shardfeed.open_store(url), shardfeed.open_store(tmp_path / "local.zarr")
    assert remote.ids == local.ids and remote.splits == local.splits
    np.testing.assert_array_equal(remote.checksums, local.checksums)
    rows = np.random.default_rng(0).integers(0, len(remote), 50)
    assert remote.read(rows).tobytes() == local.read(rows).tobytes()
    library = shardfeed.open_store(url, fast=False)
    assert library.read(rows).tobytes() == local.read(rows).tobytes()
    for row in rows[:5]:
        assert remote.read([row])[0].tobytes() == arrays[remote.ids[row]].tobytes()


def test_cli_inspect_verify_and_train_from_s3(s3_server, tmp_path, make_npy_dir, capsys):
    import keras

    src, labels, partition, _ = make_npy_dir(n=40, shape=(4, 4, 1))
    url = "s3://shardfeed-test/cli.zarr"
    assert shardfeed.cli.main(["convert", str(src), url, "--labels", str(labels), "--partition",
                               str(partition), "--overwrite", "--quiet", "--chunk-rows", "4"]) == 0  # fmt: skip
    assert shardfeed.cli.main(["inspect", url, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backend"] == "zarr" and summary["num_samples"] == 40
    assert shardfeed.cli.main(["verify", url]) == 0
    assert "OK" in capsys.readouterr().out
    gen = shardfeed.DataGenerator(url, split="train", batch_size=8, workers=2, use_multiprocessing=True)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.CategoricalCrossentropy(from_logits=True))
    history = model.fit(gen, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2


def test_unfinished_remote_store_is_refused(s3_server, tmp_path, make_npy_dir):
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.pipe_file("shardfeed-test/unfinished.zarr/.convert/plan.json", b"{}")
    with pytest.raises(shardfeed.StoreNotFinalizedError, match="--resume"):
        shardfeed.open_store("s3://shardfeed-test/unfinished.zarr")


def test_hdf5_to_s3_is_refused_with_advice(s3_server, make_npy_dir):
    src, labels, partition, _ = make_npy_dir(n=4)
    with pytest.raises(shardfeed.OptionError, match="--format zarr"):
        shardfeed.convert(src, "s3://shardfeed-test/x.h5store", labels=labels, partition=partition, format="hdf5")
