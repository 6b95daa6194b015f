"""Compressed chunks decode to exactly their size, or are refused in one line naming the shard and
chunk: never cut, and never part left as the buffer held it (numcodecs fills a larger buffer from
a smaller chunk without a word)."""

from __future__ import annotations

import google_crc32c
import numpy as np
import pytest

import shardfeed
from shardfeed.errors import StoreFormatError
from shardfeed.storage.backends.zarr_format import DECODERS, ZSTD_MAGIC, zstd_content_size
from shardfeed.storage.backends.zarr_shards import encoder


def _raw_block_frame(payload: bytes, descriptor: int, size_field: bytes = b"") -> bytes:
    """A zstd frame of one raw block, with the frame header descriptor and size field given."""
    window = b"" if descriptor & 0x20 else b"\x00"  # single-segment frames have no window byte
    block_header = ((len(payload) << 3) | 1).to_bytes(3, "little")  # last block, raw
    return ZSTD_MAGIC + bytes([descriptor]) + window + size_field + block_header + payload


@pytest.mark.parametrize("size", [0, 100, 255, 256, 300, 65_791, 70_000, 2**20])
def test_zstd_content_size_reads_every_field_width_numcodecs_writes(size):
    frame = encoder("zstd", np.dtype("u1"))(memoryview(bytes(range(256)) * (size // 256) + bytes(size % 256)))
    assert zstd_content_size(frame) == size


def test_zstd_content_size_of_a_frame_that_declares_none_is_none_and_it_is_refused():
    frame = _raw_block_frame(b"x" * 100, descriptor=0x00)
    assert zstd_content_size(frame) is None
    with pytest.raises(ValueError, match="header says None decoded bytes, expected 200"):
        DECODERS["zstd"](frame, np.empty(200, np.uint8))


@pytest.mark.parametrize("frame", [b"", b"\x28\xb5", b"not zstd at all", ZSTD_MAGIC + b"\xc0\x00\x01"])
def test_zstd_content_size_refuses_what_is_not_a_whole_header(frame):
    with pytest.raises(ValueError, match=r"not a zstd frame|cut short"):
        zstd_content_size(frame)


@pytest.mark.parametrize("compression", ["zstd", "lz4", "gzip"])
def test_decoders_fill_exactly_or_refuse(compression):
    data = np.arange(1000, dtype="<f4").tobytes()
    chunk = encoder(compression, np.dtype("<f4"))(memoryview(data))
    out = np.full(len(data), 7, np.uint8)
    DECODERS[compression](chunk, out)
    assert out.tobytes() == data
    for wrong in (len(data) + 4, len(data) - 4):
        with pytest.raises(ValueError, match=str(wrong)):
            DECODERS[compression](chunk, np.empty(wrong, np.uint8))


def _replace_chunk(shard_path, chunks_per_shard: int, chunk: int, data: bytes) -> None:
    """Append `data` to a Zarr shard and point chunk `chunk` of its index at it (CRC32C redone)."""
    blob = bytearray(shard_path.read_bytes())
    index_bytes = 16 * chunks_per_shard
    index = np.frombuffer(bytes(blob[-index_bytes - 4 : -4]), dtype="<u8").reshape(-1, 2).copy()
    body = blob[: -index_bytes - 4]
    index[chunk] = (len(body), len(data))
    body += data
    index_raw = index.tobytes()
    shard_path.write_bytes(bytes(body) + index_raw + google_crc32c.value(index_raw).to_bytes(4, "little"))


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_a_chunk_that_decodes_to_fewer_bytes_is_refused_not_left_part_filled(tmp_path, make_npy_dir, compression):
    src, _, _, arrays = make_npy_dir(n=16, shape=(32, 32), num_classes=None)
    out = tmp_path / "s"
    shardfeed.convert(src, out, format="zarr", compression=compression, chunk_rows=2, shard_size=8 * 4096)
    store = shardfeed.open_store(out)
    shard = store.manifest.shards[1]
    half = np.zeros(2 * 32 * 32 // 2, dtype="<f4")  # a valid chunk of half a chunk's bytes
    _replace_chunk(out / shard.path, 4, 1, encoder(compression, np.dtype("<f4"))(memoryview(half).cast("B")))
    store = shardfeed.open_store(out)
    rows = [shard.first_row + 2, shard.first_row + 3]
    with pytest.raises(StoreFormatError, match=rf"{shard.path}: chunk 1 does not decode: its header says 4096 decoded"):
        store.read(rows)
    good = [shard.first_row, shard.first_row + 4]  # the shard's other chunks still read
    assert all(store.read(good)[i].tobytes() == arrays[store.ids[r]].tobytes() for i, r in enumerate(good))


COMPRESSED = [("zarr", "zstd"), ("zarr", "lz4"), ("zarr", "gzip"), ("hdf5", "gzip")]


@pytest.mark.parametrize(("fmt", "compression"), COMPRESSED)
@pytest.mark.parametrize("chunk_rows", [1, 3])
def test_compressed_rows_across_shards_any_order_with_repeats(tmp_path, make_npy_dir, fmt, compression, chunk_rows):
    """Chunks of one row decode straight into the batch (a repeated row copied from there); larger
    ones through a scratch buffer; every shard's chunks on the threads at once."""
    src, _, _, arrays = make_npy_dir(n=40, shape=(16, 16), num_classes=None)
    shardfeed.convert(src, tmp_path / "s", format=fmt, compression=compression, chunk_rows=chunk_rows,
                      shard_size=6 * 1024)  # fmt: skip
    store = shardfeed.open_store(tmp_path / "s")
    assert len(store.manifest.shards) >= 6
    rows = np.random.default_rng(2).integers(0, 40, 90)
    got = store.read(rows)
    assert all(got[i].tobytes() == arrays[store.ids[r]].tobytes() for i, r in enumerate(rows.tolist()))


def test_a_store_written_at_the_earlier_zstd_level_reads_and_verifies(tmp_path, make_npy_dir, monkeypatch):
    """Stores converted before the level went from 3 to 1 hold other bytes, which decode the same."""
    from shardfeed.storage.backends import zarr_shards

    src, _, _, arrays = make_npy_dir(n=12, shape=(32, 32), num_classes=None)
    for sample in arrays.values():
        sample[...] = np.round(sample * 4) / 4  # data that compresses, where levels make other frames
    for sample_id, sample in arrays.items():
        np.save(src / f"{sample_id}.npy", sample)
    shardfeed.convert(src, tmp_path / "now", format="zarr", compression="zstd")
    monkeypatch.setattr(zarr_shards, "ZSTD_LEVEL", 3)
    shardfeed.convert(src, tmp_path / "before", format="zarr", compression="zstd")
    now, before = shardfeed.open_store(tmp_path / "now"), shardfeed.open_store(tmp_path / "before")
    shard = before.manifest.shards[0].path
    assert (before.path / shard).read_bytes() != (now.path / shard).read_bytes()
    rows = before.read(np.arange(len(before)))
    assert all(rows[i].tobytes() == arrays[sample_id].tobytes() for i, sample_id in enumerate(before.ids))
    assert shardfeed.verify_store(before, src).ok
