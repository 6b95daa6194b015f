"""Shards written directly (`storage/backends/shardfile.py`, `zarr_shards.py`, HDF5's template): the
bytes the libraries themselves write for the same rows, a `file_checksum` that is the CRC32 of the
file on disk, samples that read back byte for byte, and no temporary file left by a stopped writer."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st

import shardfeed
from shardfeed.storage.backends import Layout
from shardfeed.storage.backends.hdf5 import _create_shard
from shardfeed.storage.backends.shardfile import LocalShardFile, remove_unfinished
from shardfeed.storage.backends.zarr_format import create_array
from shardfeed.storage.files import checksum_extend
from shardfeed.storage.format import COMPRESSIONS

CASES = [(b, c) for b, names in COMPRESSIONS.items() for c in names]
# 4 rows per chunk, 12 per shard: 23 samples end in a partial shard whose last chunk is partial too
OPTIONS = {"chunk_rows": 4, "shard_size": 12 * 6 * 5 * 4}


def stored_layout(manifest) -> Layout:
    return Layout(manifest.num_samples, manifest.sample_shape, manifest.np_dtype, manifest.chunk_rows,
                  manifest.shard_rows, manifest.compression)  # fmt: skip


@pytest.fixture
def converted(tmp_path, make_npy_dir):
    src, labels, partition, arrays = make_npy_dir(n=23, shape=(6, 5))
    arrays["id-3"][...] = 0  # a sample of fill values is written like any other

    def convert(fmt: str, compression: str, **more):
        out = tmp_path / f"{fmt}-{compression}"
        shardfeed.convert(src, out, labels=labels, partition=partition, format=fmt, compression=compression,
                          **{**OPTIONS, **more})  # fmt: skip
        return shardfeed.open_store(out)

    np.save(src / "id-3.npy", arrays["id-3"])
    return convert, arrays


@pytest.mark.parametrize(("fmt", "compression"), CASES)
@pytest.mark.parametrize("workers", [1, 2])
def test_file_checksum_is_the_crc_of_the_file_on_disk_and_samples_read_back(converted, fmt, compression, workers):
    convert, arrays = converted
    store = convert(fmt, compression, workers=workers)
    assert len(store.manifest.shards) == 2
    for shard in store.manifest.shards:
        data = (store.path / shard.path).read_bytes()
        assert (len(data), zlib.crc32(data)) == (shard.nbytes, shard.file_checksum)
    rows = store.read(np.arange(len(store)))
    for row, sample_id in enumerate(store.ids):
        assert rows[row].tobytes() == arrays[sample_id].tobytes()


@pytest.mark.parametrize("compression", ["none", "zstd", "lz4"])  # zarr's own gzip stamps the time
def test_zarr_shards_are_what_zarr_writes(converted, tmp_path, compression):
    convert, _ = converted
    store = convert("zarr", compression)
    reference = tmp_path / "by-zarr"
    group = zarr.open_group(store=str(reference), mode="w", zarr_format=3)
    create_array(group, stored_layout(store.manifest))
    with zarr.config.set({"array.write_empty_chunks": True}):
        group["x"][:] = store.read(np.arange(len(store)))
    for shard in store.manifest.shards:
        assert (store.path / shard.path).read_bytes() == (reference / shard.path).read_bytes()


def test_uncompressed_hdf5_shards_are_what_h5py_writes(converted):
    convert, _ = converted
    store = convert("hdf5", "none")
    layout = stored_layout(store.manifest)
    for shard in store.manifest.shards:
        file, dset = _create_shard(layout, shard.num_rows)
        dset[...] = store.read(np.arange(shard.first_row, shard.last_row + 1))
        file.flush()
        image = file.id.get_file_image()
        file.close()
        assert (store.path / shard.path).read_bytes() == image


@given(st.binary(max_size=64), st.lists(st.binary(min_size=1, max_size=1), max_size=4), st.integers(1, 70))
def test_checksum_extend_is_the_crc_of_the_concatenation(head, seeds, nbytes):
    blocks = [seed * nbytes for seed in seeds]
    crcs = [zlib.crc32(block) for block in blocks]
    assert checksum_extend(zlib.crc32(head), crcs, nbytes) == zlib.crc32(head + b"".join(blocks))


def test_a_stopped_writer_leaves_no_temporary_file(tmp_path):
    sink = LocalShardFile(tmp_path, "shards/shard-00000.h5")
    sink.write(b"half a shard")
    remove_unfinished()  # what a worker does on SIGTERM, before it dies
    assert list((tmp_path / "shards").iterdir()) == []


def test_a_sample_file_that_grew_after_validation_is_refused(tmp_path, make_npy_dir, backend):
    src, labels, _, _ = make_npy_dir(n=6, shape=(160, 128))  # too big for the scan to keep: read again

    def grow(sources, layout) -> None:  # between validation and copying
        with open(src / "id-4.npy", "ab") as f:
            f.write(b"\0" * 8)

    with pytest.raises(shardfeed.InputError, match=r"id-4.*changed since it was validated"):
        shardfeed.convert(src, tmp_path / "out", labels=labels, format=backend, on_start=grow)
