"""Zarr v3 backend: one group with array `x`, chunked along axis 0, using Zarr's sharding codec.

Local stores live here; stores at URLs in `zarr_remote`, the layout and checks both share in
`zarr_format`, and the shards' bytes, assembled without zarr, in `zarr_shards`.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import zarr

from ...errors import StoreFormatError
from ...urls import RemoteLocation
from ..files import read_store_file, write_atomic
from ..manifest import Manifest, ShardInfo
from . import zarr_remote
from .base import Backend, Layout, ShardReader
from .rawchunks import RawChunkReader
from .zarr_format import ARRAY, DECODERS, ZarrLibraryReader, check_array, create_array, parse_shard_index
from .zarr_shards import ZarrShardWriting

MAX_METADATA_BYTES = 1 << 20


class ZarrBackend(ZarrShardWriting, Backend):
    """The shards' paths and writers are `ZarrShardWriting`'s; the rest needs zarr."""

    def unstorable(self, sample_shape: tuple[int, ...], dtype: np.dtype) -> str | None:
        # docstring inherited
        if (dtype.kind == "f" and dtype.itemsize > 8) or (dtype.kind == "c" and dtype.itemsize > 16):
            return f"dtype {dtype.str}; Zarr v3 has no {dtype.name} (store float64 / complex128, or use --format hdf5)"
        return None

    def prepare(self, root: Path, layout: Layout) -> None:
        # docstring inherited
        create_array(zarr.open_group(store=str(root), mode="a", zarr_format=3), layout)

    def extend(self, root: Path, layout: Layout) -> None:
        # docstring inherited
        # The array's length is the one field that changes; zarr's own resize rewrites zarr.json in
        # place, which a crash could leave half written. Rows beyond the manifest's are never read.
        path = root / ARRAY / "zarr.json"
        metadata = json.loads(read_store_file(path, "array metadata", MAX_METADATA_BYTES))
        metadata["shape"][0] = layout.num_samples
        write_atomic(path, json.dumps(metadata, indent=2).encode())

    def open_reader(
        self, root: Path, manifest: Manifest, shard: ShardInfo, fast: bool
    ) -> ShardReader:
        # docstring inherited
        metadata = root / ARRAY / "zarr.json"
        info = os.stat(metadata) if os.path.lexists(metadata) else None
        if info is None or not stat.S_ISREG(info.st_mode) or info.st_size > MAX_METADATA_BYTES:
            raise StoreFormatError(f"{metadata}: missing, not a regular file, or too large")
        try:
            array = zarr.open_array(store=str(root / ARRAY), mode="r", zarr_format=3)
        except Exception as exc:  # zarr raises many types for bad metadata (unknown codecs...)
            raise StoreFormatError(f"{metadata}: unreadable array metadata: {exc}") from exc
        check_array(array, str(root / ARRAY), manifest)
        if not fast:
            return ZarrLibraryReader(array, manifest.grid_row(shard), manifest.chunk_rows)
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


    def prepare_remote(self, location: RemoteLocation, layout: Layout) -> None:
        # docstring inherited
        zarr_remote.prepare_remote(location, layout)

    def open_remote_reader(
        self, location: RemoteLocation, manifest: Manifest, shard: ShardInfo, fast: bool
    ) -> ShardReader:
        # docstring inherited
        return zarr_remote.open_remote_reader(location, manifest, shard, fast)


def _shard_index(path: Path, chunks_per_shard: int, num_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """(offset, size) of the first `num_chunks` inner chunks, from the index at the shard's end."""
    index_nbytes = chunks_per_shard * 16 + 4  # uint64 pairs, then a CRC32C
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < index_nbytes:
                raise StoreFormatError(f"{path}: shard is shorter than its index (truncated)")
            f.seek(-index_nbytes, os.SEEK_END)
            tail = f.read(index_nbytes)
    except FileNotFoundError as exc:
        raise StoreFormatError(f"{path}: shard file missing") from exc
    return parse_shard_index(tail, str(path), chunks_per_shard, num_chunks)
