"""Zarr stores on object storage (any fsspec URL): create, write shards, read shards.

The layout and the checks are the local Zarr backend's; only the I/O differs: zarr's
`FsspecStore` for metadata, and batched byte-range requests for the fast read path (shards are
written by `zarr_shards`, one PUT each).
Object stores have no rename and no fsync: each shard object appears whole when its PUT
completes, and the manifest, written last, is still the commit point.
"""

from __future__ import annotations

import zarr
from zarr.storage import FsspecStore

from ...errors import StoreFormatError
from ...urls import RemoteLocation
from ..manifest import Manifest, ShardInfo
from .base import Layout, ShardReader
from .remote import RemoteChunkReader
from .zarr_format import ARRAY, DECODERS, ZarrLibraryReader, check_array, create_array, parse_shard_index


def zarr_store(location: RemoteLocation, read_only: bool) -> FsspecStore:
    options = location.storage_options or None
    return FsspecStore.from_url(location.url, storage_options=options, read_only=read_only)


def prepare_remote(location: RemoteLocation, layout: Layout) -> None:
    group = zarr.open_group(store=zarr_store(location, read_only=False), mode="a", zarr_format=3)
    create_array(group, layout)


def open_remote_reader(location: RemoteLocation, manifest: Manifest, shard: ShardInfo, fast: bool) -> ShardReader:
    try:
        array = zarr.open_array(store=zarr_store(location, read_only=True), path=ARRAY, mode="r", zarr_format=3)
    except Exception as exc:  # zarr raises many types for bad metadata
        raise StoreFormatError(f"{location.url_of(ARRAY)}: unreadable array metadata: {exc}") from exc
    check_array(array, location.url_of(ARRAY), manifest)
    if not fast:
        return ZarrLibraryReader(array, manifest.grid_row(shard), manifest.chunk_rows)
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
