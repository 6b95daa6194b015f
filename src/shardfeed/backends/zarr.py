"""Zarr v3 backend: one group with array `x`, chunked along axis 0, using Zarr's sharding codec.

Each conversion task writes one whole Zarr shard in a single assignment (a partial write to a
sharded array would read, merge and rewrite the shard). Zarr's local store already writes
through a `.partial` file and a rename. Readers trust the manifest, never `array.shape`
(RELIABILITY.md: a crash can leave the shape grown and the last block reading as fill values).
"""

from __future__ import annotations

import os
from pathlib import Path

import numcodecs
import numpy as np
import zarr
import zarr.codecs

from ..errors import StoreFormatError
from ..manifest import Manifest, ShardInfo
from .base import Backend, Layout, ShardReader, ShardWriter, copy_rows_from_chunks
from .rawchunks import Decoder, RawChunkReader, zlib_decoder

ARRAY = "x"
MISSING = 2**64 - 1
CODEC_ALLOW_LIST = {"bytes", "zstd", "gzip", "blosc"}


def _compressors(compression: str):
    return {
        "none": None,
        "zstd": zarr.codecs.ZstdCodec(level=3),
        "gzip": zarr.codecs.GzipCodec(level=5),
        "lz4": zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    }[compression]


def _bounded(codec) -> Decoder:
    def decode(data: bytes, expected: int) -> bytes:
        out = np.empty(expected, dtype=np.uint8)
        codec.decode(data, out=out)
        return out.data

    return decode


DECODERS: dict[str, Decoder | None] = {
    "none": None,
    "zstd": _bounded(numcodecs.Zstd()),
    "gzip": zlib_decoder(31),
    "lz4": _bounded(numcodecs.Blosc()),
}


class ZarrBackend(Backend):
    name = "zarr"

    def shard_path(self, layout: Layout, shard: int) -> str:
        # docstring inherited
        return "/".join([ARRAY, "c", str(shard), *["0"] * len(layout.sample_shape)])

    def prepare(self, root: Path, layout: Layout) -> None:
        # docstring inherited
        group = zarr.open_group(store=str(root), mode="a", zarr_format=3)
        group.create_array(
            ARRAY,
            shape=(layout.num_samples, *layout.sample_shape),
            chunks=(layout.chunk_rows, *layout.sample_shape),
            shards=(layout.shard_rows, *layout.sample_shape),
            dtype=layout.dtype,
            compressors=_compressors(layout.compression),
            filters=None,
            fill_value=0,
            overwrite=True,
            config={"write_empty_chunks": True},
        )

    def open_writer(self, root: Path, layout: Layout, shard: int) -> ShardWriter:
        # docstring inherited
        return ZarrShardWriter(root, layout, shard, root / self.shard_path(layout, shard))

    def open_reader(self, root: Path, manifest: Manifest, shard: ShardInfo, fast: bool) -> ShardReader:
        # docstring inherited
        array = zarr.open_array(store=str(root / ARRAY), mode="r", zarr_format=3)
        _check_array(array, root, manifest)
        if not fast:
            return ZarrLibraryReader(array, shard.first_row, manifest.chunk_rows)
        path = root / shard.path
        num_chunks = -(-shard.num_rows // manifest.chunk_rows)
        offsets, sizes = _shard_index(path, manifest.shard_rows // manifest.chunk_rows, num_chunks)
        return RawChunkReader(
            path,
            offsets,
            sizes,
            manifest.chunk_rows,
            manifest.sample_shape,
            manifest.np_dtype,
            DECODERS[manifest.compression],
        )


class ZarrShardWriter(ShardWriter):
    def __init__(self, root: Path, layout: Layout, shard: int, shard_file: Path) -> None:
        self._array = zarr.open_array(store=str(root / ARRAY), mode="r+", zarr_format=3)
        self._first = shard * layout.shard_rows
        rows = min(layout.shard_rows, layout.num_samples - self._first)
        self._buffer = np.empty((rows, *layout.sample_shape), dtype=layout.dtype)
        self._next = 0
        self._shard_file = shard_file

    def write(self, block: np.ndarray) -> None:
        # docstring inherited
        self._buffer[self._next : self._next + len(block)] = block
        self._next += len(block)

    def close(self) -> int:
        # docstring inherited
        if self._next != len(self._buffer):
            raise RuntimeError(f"{self._shard_file}: {self._next} of {len(self._buffer)} rows written")
        self._array[self._first : self._first + len(self._buffer)] = self._buffer
        self._buffer = None
        fd = os.open(self._shard_file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return self._shard_file.stat().st_size

    def abort(self) -> None:
        # docstring inherited
        self._buffer = None


class ZarrLibraryReader(ShardReader):
    """Reference path: whole inner chunks through zarr's own slicing."""

    def __init__(self, array: zarr.Array, first_row: int, chunk_rows: int) -> None:
        self._array = array
        self._first = first_row
        self._chunk_rows = chunk_rows

    def read(self, local_rows: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
        # docstring inherited
        copy_rows_from_chunks(self._read_chunk, local_rows, self._chunk_rows, out, positions)

    def _read_chunk(self, chunk: int) -> np.ndarray:
        start = self._first + chunk * self._chunk_rows
        return self._array[start : start + self._chunk_rows]

    def close(self) -> None:
        # docstring inherited
        self._array = None


def _check_array(array: zarr.Array, root: Path, manifest: Manifest) -> None:
    """Refuse metadata that disagrees with the manifest (a chunk bomb declares huge chunks)."""
    expected_shape = (manifest.num_samples, *manifest.sample_shape)
    problems = []
    if array.shape != expected_shape:
        problems.append(f"shape {array.shape}, expected {expected_shape}")
    if array.dtype != manifest.np_dtype:
        problems.append(f"dtype {array.dtype}, expected {manifest.dtype}")
    if array.chunks != (manifest.chunk_rows, *manifest.sample_shape):
        problems.append(f"chunks {array.chunks}, expected {manifest.chunk_rows} rows")
    if array.shards != (manifest.shard_rows, *manifest.sample_shape):
        problems.append(f"shards {array.shards}, expected {manifest.shard_rows} rows")
    names = {c.to_dict()["name"] for sharding in array.metadata.codecs for c in getattr(sharding, "codecs", ())}
    if not names <= CODEC_ALLOW_LIST:
        problems.append(f"codecs {sorted(names - CODEC_ALLOW_LIST)} not allowed")
    if problems:
        raise StoreFormatError(f"{root / ARRAY}: array does not match the manifest: " + "; ".join(problems))


def _shard_index(path: Path, chunks_per_shard: int, num_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """(offset, size) of the first `num_chunks` inner chunks, from the index at the shard's end."""
    index_nbytes = chunks_per_shard * 16 + 4  # uint64 pairs, then a CRC32C
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < index_nbytes:
                raise StoreFormatError(f"{path}: shard is shorter than its index (truncated)")
            f.seek(-index_nbytes, os.SEEK_END)
            raw = f.read(index_nbytes - 4)
    except FileNotFoundError as exc:
        raise StoreFormatError(f"{path}: shard file missing") from exc
    pairs = np.frombuffer(raw, dtype="<u8").reshape(chunks_per_shard, 2)[:num_chunks]
    if (pairs == MISSING).any():
        raise StoreFormatError(f"{path}: shard index lacks chunks that hold samples (corrupt shard)")
    if (pairs > np.iinfo(np.int64).max).any():
        raise StoreFormatError(f"{path}: shard index holds impossible offsets (corrupt shard)")
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
