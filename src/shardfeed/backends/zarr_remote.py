"""Zarr stores on object storage (any fsspec URL): create, write shards, read shards.

The layout and the checks are the local Zarr backend's; only the I/O differs: zarr's
`FsspecStore` for metadata and writes, and batched byte-range requests for the fast read path.
Object stores have no rename and no fsync: each shard object appears whole when its PUT
completes, and the manifest, written last, is still the commit point.
"""

from __future__ import annotations

import numpy as np
import zarr

from ..errors import StoreFormatError
from ..location import RemoteLocation
from ..manifest import Manifest, ShardInfo
from .base import Layout, ShardReader, ShardWriter
from .remote import RemoteChunkReader
from .zarr import (
    ARRAY,
    DECODERS,
    WRITE_CONFIG,
    ZarrLibraryReader,
    _check_array,
    _create_array,
    parse_shard_index,
)


def prepare_remote(location: RemoteLocation, layout: Layout) -> None:
    group = zarr.open_group(store=location.zarr_store(read_only=False), mode="a", zarr_format=3)
    _create_array(group, layout)


class RemoteZarrShardWriter(ShardWriter):
    """Buffers one shard and writes it with a single assignment (one PUT per shard)."""

    def __init__(self, location: RemoteLocation, layout: Layout, shard: int, shard_path: str) -> None:
        self._location = location
        self._array = zarr.open_array(store=location.zarr_store(read_only=False), path=ARRAY,
                                      mode="r+", zarr_format=3)  # fmt: skip
        self._first = shard * layout.shard_rows
        rows = min(layout.shard_rows, layout.num_samples - self._first)
        self._buffer = np.empty((rows, *layout.sample_shape), dtype=layout.dtype)
        self._next = 0
        self._shard_path = shard_path

    def write(self, block: np.ndarray) -> None:
        # docstring inherited
        self._buffer[self._next : self._next + len(block)] = block
        self._next += len(block)

    def close(self) -> int:
        # docstring inherited
        if self._next != len(self._buffer):
            raise RuntimeError(f"{self._shard_path}: {self._next} of {len(self._buffer)} rows written")
        with zarr.config.set(WRITE_CONFIG):
            self._array[self._first : self._first + len(self._buffer)] = self._buffer
        self._buffer = None
        return self._location.size(self._shard_path)

    def abort(self) -> None:
        # docstring inherited
        self._buffer = None


def open_remote_reader(location: RemoteLocation, manifest: Manifest, shard: ShardInfo, fast: bool) -> ShardReader:
    try:
        array = zarr.open_array(store=location.zarr_store(read_only=True), path=ARRAY, mode="r", zarr_format=3)
    except Exception as exc:  # zarr raises many types for bad metadata
        raise StoreFormatError(f"{location.url_of(ARRAY)}: unreadable array metadata: {exc}") from exc
    _check_array(array, location.url_of(ARRAY), manifest)
    if not fast:
        return ZarrLibraryReader(array, shard.first_row, manifest.chunk_rows)
    path = location / shard.path
    chunks_per_shard = manifest.shard_rows // manifest.chunk_rows
    index_nbytes = chunks_per_shard * 16 + 4
    try:
        size = location.fs.size(path)
    except FileNotFoundError as exc:
        raise StoreFormatError(f"{location.url_of(shard.path)}: shard object missing") from exc
    if size < index_nbytes:
        raise StoreFormatError(f"{location.url_of(shard.path)}: shard is shorter than its index")
    tail = location.fs.cat_file(path, start=size - index_nbytes, end=size)
    num_chunks = -(-shard.num_rows // manifest.chunk_rows)
    offsets, sizes = parse_shard_index(tail, location.url_of(shard.path), chunks_per_shard, num_chunks)
    if ((offsets + sizes) > size).any():
        raise StoreFormatError(f"{location.url_of(shard.path)}: shard index points past the object's end")
    return RemoteChunkReader(location.fs, path, offsets, sizes, manifest.chunk_rows,
                             manifest.sample_shape, manifest.np_dtype, DECODERS[manifest.compression])  # fmt: skip
