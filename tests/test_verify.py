"""Integrity: `verify` catches every single-byte flip and every truncation of a shard file, in the
sample data and in the container's metadata (HDF5 headers and chunk index, Zarr's shard index
and its CRC), naming the shard and the damaged sample IDs; `open_store(..., verify=True)` makes a
read of a damaged sample raise `ChecksumError` instead of returning wrong bytes.

Flips and truncations are random (seeded). `SHARDFEED_VERIFY_TRIALS` sets the number of flips per
backend and compression (default 100, the RELIABILITY goal); `-m slow` also flips every byte of
one shard per backend (about a minute each).
"""

from __future__ import annotations

import random
import subprocess
import sys
from contextlib import contextmanager

import h5py
import numpy as np
import pytest
from crashkit import trials

import shardfeed
from shardfeed.cli import main

pytestmark = pytest.mark.timeout(300)

FLIPS = trials("SHARDFEED_VERIFY_TRIALS", 100)
TRUNCATIONS = max(10, FLIPS // 4)
MISSING = 2**64 - 1  # an empty slot in a Zarr shard index


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify-src")
    rng = np.random.default_rng(1)
    for k in range(120):
        np.save(root / f"id-{k}.npy", rng.standard_normal((8, 8)).astype("float32"))
    return root


STORES = [("hdf5", "none"), ("zarr", "none"), ("hdf5", "gzip"), ("zarr", "zstd")]


@pytest.fixture(scope="module", params=STORES, ids=["-".join(s) for s in STORES])
def store_path(request, src, tmp_path_factory):
    """120 samples of 256 bytes, chunks of 4 rows, shards of 16 rows: 8 shards."""
    backend, compression = request.param
    out = tmp_path_factory.mktemp(f"verify-{backend}-{compression}") / "store"
    shardfeed.convert(src, out, format=backend, compression=compression, chunk_rows=4,
                      shard_size=16 * 256)  # fmt: skip
    return out


def chunk_ranges(path, store) -> list[tuple[int, int, int]]:
    """(start, stop, first local row) of each chunk's bytes in a shard file: its data region."""
    if store.backend == "hdf5":
        with h5py.File(path, "r") as f:
            dset = f["x"]
            infos = [dset.id.get_chunk_info(i) for i in range(dset.id.get_num_chunks())]
        return [(i.byte_offset, i.byte_offset + i.size, i.chunk_offset[0]) for i in infos]
    chunks_per_shard = store.manifest.shard_rows // store.manifest.chunk_rows
    tail = path.read_bytes()[-(16 * chunks_per_shard + 4) : -4]  # the index, before its CRC32C
    index = np.frombuffer(tail, dtype="<u8").reshape(-1, 2)
    rows = store.manifest.chunk_rows
    return [(int(o), int(o + n), k * rows) for k, (o, n) in enumerate(index) if o != MISSING]


@contextmanager
def damaged(path, data: bytes):
    """Replace a file's bytes for the duration of the block, then put the original back."""
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(original)


def verify(path) -> shardfeed.storage.integrity.VerifyReport:
    with shardfeed.open_store(path) as store:  # fresh readers: nothing cached from another trial
        return shardfeed.verify_store(store)


def test_verify_catches_random_single_byte_flips(store_path):
    store = shardfeed.open_store(store_path)
    manifest, ids = store.manifest, store.ids
    uncompressed = manifest.compression == "none"
    rng = random.Random(f"flips-{store_path}")
    for trial in range(FLIPS):
        shard = manifest.shards[rng.randrange(len(manifest.shards))]
        path = store_path / shard.path
        original = path.read_bytes()
        ranges = chunk_ranges(path, store)
        in_data = trial % 2 == 0  # half in chunk bytes, half in the container's own bytes
        if in_data:
            start, stop, first_local_row = rng.choice(ranges)
            pos = rng.randrange(start, stop)
        else:
            covered = set().union(*(range(a, b) for a, b, _ in ranges))
            pos = rng.choice([p for p in range(len(original)) if p not in covered])
        data = bytearray(original)
        data[pos] ^= rng.randrange(1, 256)
        with damaged(path, bytes(data)):
            report = verify(store_path)
        where = f"byte {pos} of {shard.path} ({'data' if in_data else 'metadata'})"
        assert not report.ok, f"flip at {where} went undetected"
        assert shard.path in report.bad_shards, where
        if in_data and uncompressed:  # the flipped byte belongs to exactly one sample
            row = shard.first_row + first_local_row + (pos - start) // manifest.sample_nbytes
            assert report.bad_samples.get(ids[row], "").endswith(shard.path), (where, ids[row])
    assert verify(store_path).ok


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["hdf5", "zarr"])
def test_verify_catches_every_flip_of_a_shard(src, tmp_path, backend):
    out = tmp_path / "store"
    shardfeed.convert(src, out, format=backend, chunk_rows=4, shard_size=16 * 256)
    _assert_every_flip_detected(out)


def _assert_every_flip_detected(out) -> None:
    shard = shardfeed.open_store(out).manifest.shards[3]
    path = out / shard.path
    original = path.read_bytes()
    missed = []
    for pos in range(len(original)):
        data = bytearray(original)
        data[pos] ^= 0xFF
        with damaged(path, bytes(data)):
            if verify(out).ok:
                missed.append(pos)
    assert missed == [], f"{len(missed)} of {len(original)} flips undetected, e.g. {missed[:10]}"


def test_verify_catches_truncation_and_extension(store_path):
    store = shardfeed.open_store(store_path)
    rng = random.Random(f"truncate-{store_path}")
    for trial in range(TRUNCATIONS):
        shard = store.manifest.shards[rng.randrange(len(store.manifest.shards))]
        path = store_path / shard.path
        original = path.read_bytes()
        extend = trial % 5 == 4  # e.g. by a partial rewrite
        data = original + bytes(rng.randrange(1, 4096)) if extend else original[: rng.randrange(len(original))]
        with damaged(path, data):
            report = verify(store_path)
        assert not report.ok and shard.path in report.bad_shards, (shard.path, len(data))
        assert "bytes, the manifest says" in report.bad_shards[shard.path]
        if len(data) < len(original) * 3 // 4:  # too short to hold the data: every sample is named
            rows = range(shard.first_row, shard.last_row + 1)
            assert {store.ids[r] for r in rows} <= set(report.bad_samples)


def test_cli_verify_prints_shard_and_sample_and_exits_1(store_path, capsys):
    store = shardfeed.open_store(store_path)
    shard = store.manifest.shards[2]
    path = store_path / shard.path
    start, _, first_local_row = chunk_ranges(path, store)[1]
    data = bytearray(path.read_bytes())
    data[start + 3] ^= 0x01
    with damaged(path, bytes(data)):
        assert main(["verify", str(store_path)]) == 1
        out = capsys.readouterr().out
        proc = subprocess.run([sys.executable, "-m", "shardfeed.cli", "verify", str(store_path)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert f"BAD shard {shard.path}:" in out
    assert "FAILED" in out
    if store.manifest.compression == "none":
        bad_id = store.ids[shard.first_row + first_local_row]
        assert f"BAD sample {bad_id!r}: checksum mismatch in shard {shard.path}" in out
    assert proc.returncode == 1 and proc.stdout == out
    assert main(["verify", str(store_path), "--quiet"]) == 0


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "library"])
def test_read_with_verify_raises_on_a_flipped_sample(store_path, fast):
    store = shardfeed.open_store(store_path)
    shard = store.manifest.shards[5]
    path = store_path / shard.path
    start, stop, first_local_row = chunk_ranges(path, store)[2]
    row = shard.first_row + first_local_row
    uncompressed = store.manifest.compression == "none"
    expected = store.read([row])
    data = bytearray(path.read_bytes())
    data[start + 5 if uncompressed else (start + stop) // 2] ^= 0x40
    with damaged(path, bytes(data)):
        checked = shardfeed.open_store(store_path, fast=fast, verify=True)
        assert checked.read([row - 1, row + 4]).shape[0] == 2  # other chunks are fine
        if uncompressed:  # one sample's bytes changed; without verify=True they read back wrong
            unchecked = shardfeed.open_store(store_path, fast=fast).read([row])
            assert unchecked.tobytes() != expected.tobytes()
            expected_message = rf"sample '{store.ids[row]}'.*{shard.path}"
            with pytest.raises(shardfeed.ChecksumError, match=expected_message):
                checked.read([row - 1, row])
        else:  # the chunk no longer decodes, or one of its samples decodes to other bytes
            with pytest.raises(shardfeed.ShardfeedError, match=shard.path):
                checked.read(np.arange(row, row + store.manifest.chunk_rows))


def test_verify_with_source_names_a_changed_source(src, tmp_path):
    out = tmp_path / "store"
    shardfeed.convert(src, out, format="hdf5", chunk_rows=4, shard_size=16 * 256)
    changed = tmp_path / "src"
    changed.mkdir()
    for path in src.iterdir():
        changed.joinpath(path.name).write_bytes(path.read_bytes())
    np.save(changed / "id-9.npy", np.ones((8, 8), "float32"))
    report = shardfeed.verify_store(shardfeed.open_store(out), source=changed)
    assert list(report.bad_samples) == ["id-9"]
    assert "differs from its source" in report.bad_samples["id-9"]
