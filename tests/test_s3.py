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
from crashkit import tree

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


def test_target_arrays_on_s3_equal_local_and_verify(s3_server, tmp_path, make_npy_dir, capsys):
    src, _labels, partition, arrays = make_npy_dir(n=20, shape=(6, 5))
    masks = tmp_path / "masks"
    masks.mkdir()
    for sample_id, array in arrays.items():
        np.save(masks / f"{sample_id}.npy", (array > 0).astype("u1"))
    url = "s3://shardfeed-test/targets.zarr"
    options = dict(partition=partition, targets=masks, chunk_rows=2, shard_size=480)
    shardfeed.convert(src, url, overwrite=True, **options)
    shardfeed.convert(src, tmp_path / "local.zarr", **options)
    remote, local = shardfeed.open_store(url), shardfeed.open_store(tmp_path / "local.zarr")
    assert len(remote.targets.manifest.shards) == len(remote.manifest.shards) > 1
    assert remote.targets.read(np.arange(20)).tobytes() == local.targets.read(np.arange(20)).tobytes()
    _x, t = shardfeed.DataGenerator(url, split="train", batch_size=4, shuffle=False)[0]
    assert t.tobytes() == local.targets.read(local.split("train")[:4]).tobytes()
    assert shardfeed.cli.main(["verify", url, "--targets", str(masks)]) == 0
    assert "and 20 target arrays match" in capsys.readouterr().out


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


def _upload(src: Path, labels: Path, partition: Path, prefix: str) -> tuple[str, str, str]:
    """Put a tutorial-layout input set on the server: (src URL, labels URL, partition URL)."""
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.rm(f"shardfeed-test/{prefix}", recursive=True) if fs.exists(f"shardfeed-test/{prefix}") else None
    fs.put([str(p) for p in sorted(src.iterdir())], f"shardfeed-test/{prefix}/data/")
    fs.put_file(str(labels), f"shardfeed-test/{prefix}/labels.json")
    fs.put_file(str(partition), f"shardfeed-test/{prefix}/partition.json")
    fs.invalidate_cache()
    base = f"s3://shardfeed-test/{prefix}"
    return f"{base}/data", f"{base}/labels.json", f"{base}/partition.json"


def _store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store but its manifest (which names the source), by relative path."""
    return {name: data for name, data in tree(root).items() if name != "manifest.json"}


@pytest.mark.parametrize(
    ("backend", "workers", "dtype", "fortran"),
    [("hdf5", 2, "float32", False), ("zarr", 1, ">i2", True)],
)
def test_convert_from_s3_inputs_equals_local(s3_server, tmp_path, make_npy_dir, backend, workers, dtype, fortran):
    src, labels, partition, arrays = make_npy_dir(n=45, shape=(5, 3), dtype=dtype, fortran=fortran)
    urls = _upload(src, labels, partition, f"inputs-{backend}")
    options = dict(format=backend, chunk_rows=4, shard_size=4 * 30 * 3)
    shardfeed.convert(src, tmp_path / "local", labels=labels, partition=partition, **options)
    assert shardfeed.cli.main(["convert", urls[0], str(tmp_path / "remote"), "--labels", urls[1],
                               "--partition", urls[2], "--workers", str(workers), "--quiet",
                               "--format", backend, "--chunk-rows", "4", "--shard-size", "360"]) == 0  # fmt: skip
    assert _store_files(tmp_path / "remote") == _store_files(tmp_path / "local")
    store = shardfeed.open_store(tmp_path / "remote")
    assert store.manifest.source["dtype"] == np.dtype(dtype).str and len(store.manifest.shards) > 3
    for row in range(len(store)):
        assert store.read([row])[0].tobytes() == arrays[store.ids[row]].astype(store.dtype).tobytes()
    assert shardfeed.cli.main(["verify", str(tmp_path / "remote"), "--source", urls[0], "--quiet"]) == 0


def test_header_longer_than_the_first_read_and_no_partition(s3_server, tmp_path):
    """A 1 KiB header (valid; numpy pads headers with spaces) needs a second ranged read; without a
    partition every visible object is a sample and `._junk.npy` (macOS) is left out and counted."""
    src = tmp_path / "src"
    src.mkdir()
    for k in range(3):
        np.save(src / f"s{k}.npy", np.full((2, 2), k, dtype="<f8"))
    header = repr({"descr": "<f8", "fortran_order": False, "shape": (2, 2)}).encode()
    padded = header + b" " * (1024 - 10 - len(header) - 1) + b"\n"
    (src / "long.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded
                                   + np.arange(4, dtype="<f8").tobytes())  # fmt: skip
    (src / "._junk.npy").write_bytes(b"\x00\x05\x16\x07 not a numpy file")
    import fsspec

    fsspec.filesystem("s3").put([str(p) for p in src.iterdir()], "shardfeed-test/long/")
    manifest = shardfeed.convert("s3://shardfeed-test/long", tmp_path / "out.zarr")
    store = shardfeed.open_store(tmp_path / "out.zarr")
    assert store.ids == ["long", "s0", "s1", "s2"] and manifest.source["unlisted_files"] == 1
    assert store.read([0])[0].tolist() == [[0, 1], [2, 3]]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", r"s3://shardfeed-test/bad-\w+/data/id-3\.npy: sample 'id-3' has no file"),
        ("truncated", r"id-3\.npy: sample 'id-3': header says shape \(4, 3\) <f4 = 48 bytes, but the file holds 20"),
        ("zip", r"data/id-3\.npy: sample 'id-3': is a ZIP archive"),
        ("shape", r"data/id-3\.npy: sample 'id-3' has shape \(2, 3\) dtype <f4, which differs"),
    ],
)
def test_bad_s3_inputs_name_the_object(s3_server, tmp_path, make_npy_dir, damage, message):
    import fsspec

    src, labels, partition, arrays = make_npy_dir(n=6)
    target = src / "id-3.npy"
    if damage == "missing":
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:-28])
    elif damage == "zip":
        target.write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    else:
        np.save(target, arrays["id-3"][:2])
    urls = _upload(src, labels, partition, f"bad-{damage}")
    with pytest.raises(shardfeed.InputError, match=message):
        shardfeed.convert(urls[0], tmp_path / "out", labels=urls[1], partition=urls[2])
    assert not (tmp_path / "out").exists()
    fsspec.filesystem("s3").invalidate_cache()


def test_verify_against_s3_source_names_changed_and_missing_samples(s3_server, tmp_path, make_npy_dir, capsys):
    import fsspec

    src, labels, partition, arrays = make_npy_dir(n=12)
    shardfeed.convert(src, tmp_path / "store", labels=labels, partition=partition, chunk_rows=2)
    urls = _upload(src, labels, partition, "verify-source")
    fs = fsspec.filesystem("s3")
    np.save(src / "id-4.npy", arrays["id-4"] + 1)
    fs.put_file(str(src / "id-4.npy"), "shardfeed-test/verify-source/data/id-4.npy")
    fs.rm("shardfeed-test/verify-source/data/id-7.npy")
    fs.invalidate_cache()
    assert shardfeed.cli.main(["verify", str(tmp_path / "store"), "--source", urls[0]]) == 1
    out = capsys.readouterr().out
    assert "BAD sample 'id-4': differs from its source s3://shardfeed-test/verify-source/data/id-4.npy" in out
    assert "BAD sample 'id-7': source unreadable:" in out and "id-7.npy: sample 'id-7' has no file" in out
    assert out.count("BAD sample") == 2


def test_resume_from_s3_inputs_refuses_a_changed_object(s3_server, tmp_path, make_npy_dir):
    import fsspec

    src, labels, partition, arrays = make_npy_dir(n=40)
    urls = _upload(src, labels, partition, "resume")
    out = tmp_path / "out.h5store"
    argv = [sys.executable, "-m", "shardfeed.cli", "convert", urls[0], str(out), "--format", "hdf5", "--labels",
            urls[1], "--partition", urls[2], "--chunk-rows", "2", "--shard-size", "96", "--quiet"]  # fmt: skip
    killed = subprocess.run(argv, env={**os.environ, "SHARDFEED_FAULT": "record-saved:3"})
    assert killed.returncode == -9 and not (out / "manifest.json").exists()
    fs = fsspec.filesystem("s3")
    np.save(src / "id-30.npy", arrays["id-30"] * 2)
    fs.put_file(str(src / "id-30.npy"), "shardfeed-test/resume/data/id-30.npy")
    refused = subprocess.run([*argv, "--resume"], capture_output=True, text=True)
    assert refused.returncode == 1
    assert "cannot resume" in refused.stderr and "resume/data/id-30.npy (sample 'id-30')" in refused.stderr
    np.save(src / "id-30.npy", arrays["id-30"])  # the same bytes again: S3's ETag (an MD5) matches again
    fs.put_file(str(src / "id-30.npy"), "shardfeed-test/resume/data/id-30.npy")
    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    shardfeed.convert(src, tmp_path / "local", format="hdf5", labels=labels, partition=partition,
                      chunk_rows=2, shard_size=96)  # fmt: skip
    assert _store_files(out) == _store_files(tmp_path / "local")


def test_dask_workers_read_inputs_from_s3(s3_server, tmp_path, make_npy_dir):
    """Dask tasks fetch their samples from the URL themselves: no shared file system for inputs."""
    pytest.importorskip("distributed")
    src, labels, partition, _ = make_npy_dir(n=24)
    urls = _upload(src, labels, partition, "dask-inputs")
    options = dict(chunk_rows=2, shard_size=96)
    shardfeed.convert(src, tmp_path / "local", labels=labels, partition=partition, **options)
    shardfeed.convert(urls[0], tmp_path / "dask", labels=urls[1], partition=urls[2], scheduler="local", workers=2,
                      **options)  # fmt: skip
    assert _store_files(tmp_path / "dask") == _store_files(tmp_path / "local")


def test_a_second_scan_in_one_process_sees_a_changed_object(s3_server, tmp_path, make_npy_dir):
    """fsspec caches listings: without a fresh one, a same-size rewrite would keep its old ETag."""
    import fsspec

    from shardfeed.inputs.scan import scan_sources

    src, labels, partition, arrays = make_npy_dir(n=4)
    urls = _upload(src, labels, partition, "rescan")
    before = scan_sources(urls[0]).samples
    np.save(src / "id-2.npy", arrays["id-2"] + 1)
    other_client = fsspec.filesystem("s3", skip_instance_cache=True)  # as another process would
    other_client.put_file(str(src / "id-2.npy"), "shardfeed-test/rescan/data/id-2.npy")
    after = scan_sources(urls[0]).samples
    assert [s.stamp == t.stamp for s, t in zip(before, after)] == [True, True, False, True]
