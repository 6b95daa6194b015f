"""HDF5 backend: one file per shard (`shards/shard-00000.h5`), dataset `x` chunked along axis 0.

Each shard goes to disk through a `shardfile.LocalShardFile`: under a temporary name, fsynced,
then renamed. HDF5 files do not survive a crash mid-write (RELIABILITY.md), so an unfinished shard
never has its final name; and libhdf5 never writes to disk itself, because after a failed write
(disk full) closing the file crashed the process with a segmentation fault, where a write from
Python fails with a clean `OSError`. HDF5 builds files in memory (its core driver): a compressed
shard whole, an uncompressed one only once per process, as the template of its metadata. Files are
read without HDF5's own locking, which fails on NFS/Lustre; our lock file guards conversions.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from pathlib import Path

import h5py
import numpy as np

from ...errors import StoreFormatError
from ..alignment import ALIAS_PERIOD
from ..manifest import Manifest, ShardInfo
from .base import Backend, Layout, ShardReader, ShardWriter, WrittenShard, copy_rows_from_chunks
from .rawchunks import RawChunkReader, zlib_decoder
from .shardfile import LocalShardFile, ShardSink

DATASET = "x"
MAX_HDF5_RANK = 32
GZIP_LEVEL = 4
META_BLOCK_SLACK = 8192  # the superblock's neighbours: object headers, the heap, the root group
MAX_INDEX_SHARE = 64  # one metadata block for the chunk index only while it is under 1/64 of the data


class HDF5Backend(Backend):
    name = "hdf5"

    def unstorable(self, sample_shape: tuple[int, ...], dtype: np.dtype) -> str | None:
        # docstring inherited
        if len(sample_shape) + 1 > MAX_HDF5_RANK:  # the row axis counts
            return f"{len(sample_shape)} dimensions; HDF5 datasets hold at most {MAX_HDF5_RANK - 1} per sample"
        return None

    def shard_path(self, layout: Layout, shard: int) -> str:
        # docstring inherited
        return f"shards/shard-{shard:05d}.h5"

    def open_writer(self, root: Path, layout: Layout, shard: int) -> ShardWriter:
        # docstring inherited
        rows = min(layout.shard_rows, layout.num_samples - shard * layout.shard_rows)
        if layout.compression != "none":  # the in-memory file first: nothing on disk to leave if it fails
            file, dset = _create_shard(layout, rows)
            return HDF5ShardWriter(LocalShardFile(root, self.shard_path(layout, shard)), file, dset)
        template = _template(dataclasses.replace(layout, num_samples=rows), rows)  # one per row count
        return HDF5RawShardWriter(LocalShardFile(root, self.shard_path(layout, shard)), template)

    def open_reader(
        self, root: Path, manifest: Manifest, shard: ShardInfo, fast: bool
    ) -> ShardReader:
        # docstring inherited
        path = root / shard.path
        try:
            with h5py.File(path, "r", locking=False) as f:
                dset = _checked_dataset(f, path, manifest, shard)
                chunk_rows = dset.chunks[0]  # a shard smaller than chunk_rows has one smaller chunk
                if fast:
                    offsets, sizes = _chunk_ranges(dset)
            if not fast:
                return HDF5LibraryReader(path, chunk_rows)
        except StoreFormatError:
            raise
        except Exception as exc:  # h5py reports damage as OSError, KeyError, RuntimeError...
            raise StoreFormatError(f"{path}: not a readable HDF5 shard: {exc}") from exc
        decode = zlib_decoder(15) if manifest.compression == "gzip" else None
        return RawChunkReader(
            path, offsets, sizes, chunk_rows, manifest.sample_shape, manifest.np_dtype, decode
        )


def _create_shard(layout: Layout, rows: int) -> tuple[h5py.File, h5py.Dataset]:
    """A shard of `rows` rows as an HDF5 file in memory (the core driver), its dataset created."""
    file = h5py.File(
        "shard", "w", driver="core", backing_store=False, libver=("earliest", "v110"),
        **_raw_chunk_placement(layout, rows),
    )  # fmt: skip
    options = {}
    dcpl = None
    if layout.compression == "gzip":
        options = {"compression": "gzip", "compression_opts": GZIP_LEVEL}
    else:
        # Allocate every chunk at creation, back to back: the fast reader then sees the whole
        # shard as one array, and the file's bytes do not depend on write order.
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    dset = file.create_dataset(
        DATASET,
        shape=(rows, *layout.sample_shape),
        dtype=layout.dtype,
        chunks=(min(layout.chunk_rows, rows), *layout.sample_shape),
        track_times=False,
        dcpl=dcpl,
        **options,
    )
    return file, dset


class HDF5ShardWriter(ShardWriter):
    """Compressed shards: rows written through h5py into the in-memory file, whose image then goes
    to `sink` (HDF5 places each compressed chunk where its size allows)."""

    def __init__(self, sink: ShardSink, file: h5py.File, dset: h5py.Dataset) -> None:
        self._file, self._dset = file, dset
        self._sink = sink
        self._next = 0

    def write(self, block: np.ndarray, checksums: np.ndarray | None = None) -> None:
        # docstring inherited
        self._dset[self._next : self._next + len(block)] = block
        self._next += len(block)

    def close(self) -> WrittenShard:
        # docstring inherited
        if self._next != self._dset.shape[0]:
            raise RuntimeError(f"{self._next} of {self._dset.shape[0]} rows written")
        self._file.flush()
        image = self._file.id.get_file_image()
        self._file.close()
        self._sink.write(image)
        return self._sink.commit()

    def abort(self) -> None:
        # docstring inherited
        with contextlib.suppress(Exception):  # an in-memory file
            self._file.close()
        self._sink.abort()


@dataclasses.dataclass(frozen=True)
class _Template:
    """What an uncompressed shard holds besides its rows: HDF5's metadata, as (chunk, bytes) pairs, each
    to be written just before that chunk (chunk `chunks`: after the last), and the chunks' size."""

    metadata: tuple[tuple[int, bytes], ...]
    chunks: int
    chunk_rows: int
    rows: int
    row_nbytes: int


@functools.lru_cache(maxsize=4)  # a conversion's shards have one or two row counts
def _template(layout: Layout, rows: int) -> _Template:
    """The metadata of an uncompressed shard of `rows` rows, from an image of it with no row written.

    Chunks are allocated at creation and never filled, so the metadata does not depend on the rows,
    and neither do the chunks' places: building the image once per process, not once per shard,
    leaves each row's bytes one copy, from the caller's block into the file."""
    file, dset = _create_shard(layout, rows)
    try:
        chunks = [dset.id.get_chunk_info(i) for i in range(dset.id.get_num_chunks())]
        file.flush()
        image = file.id.get_file_image()
    finally:
        file.close()
    chunk_rows = min(layout.chunk_rows, rows)
    chunk_nbytes = chunk_rows * layout.sample_nbytes
    metadata, end = [], 0
    for i, chunk in enumerate(chunks):
        if chunk.chunk_offset[0] != i * chunk_rows or chunk.byte_offset < end or chunk.size != chunk_nbytes:
            raise RuntimeError(f"HDF5 placed chunk {i} of a new shard at {chunk.byte_offset}, not in row order")
        if chunk.byte_offset > end:
            metadata.append((i, image[end : chunk.byte_offset]))
        end = chunk.byte_offset + chunk_nbytes
    if end < len(image):
        metadata.append((len(chunks), image[end:]))
    return _Template(tuple(metadata), len(chunks), chunk_rows, rows, layout.sample_nbytes)


class HDF5RawShardWriter(ShardWriter):
    """Uncompressed shards: the template's metadata and the rows' bytes, written to `sink` in file
    order, the last chunk's rows past the shard's end zero (as HDF5 writes them)."""

    def __init__(self, sink: ShardSink, template: _Template) -> None:
        self._sink = sink
        self._template = template
        self._metadata = collections.deque(template.metadata)
        self._next = 0  # rows taken

    def write(self, block: np.ndarray, checksums: np.ndarray | None = None) -> None:
        # docstring inherited
        chunk_rows = self._template.chunk_rows
        if self._next % chunk_rows or self._next + len(block) > self._template.rows:
            raise RuntimeError(f"rows {self._next} to {self._next + len(block)} are not whole chunks of the shard")
        rows = np.ascontiguousarray(block)
        start = 0
        while self._metadata and self._metadata[0][0] * chunk_rows < self._next + len(block):
            chunk, metadata = self._metadata.popleft()
            stop = chunk * chunk_rows - self._next
            self._sink.write(rows[start:stop], None if checksums is None else checksums[start:stop].tolist())
            self._sink.write(metadata)
            start = stop
        self._sink.write(rows[start:], None if checksums is None else checksums[start:].tolist())
        self._next += len(block)

    def close(self) -> WrittenShard:
        # docstring inherited
        template = self._template
        if self._next != template.rows:
            raise RuntimeError(f"{self._next} of {template.rows} rows written")
        self._sink.write(bytes((template.chunks * template.chunk_rows - template.rows) * template.row_nbytes))
        for _, metadata in self._metadata:
            self._sink.write(metadata)
        return self._sink.commit()

    def abort(self) -> None:
        # docstring inherited
        self._sink.abort()


def _raw_chunk_placement(layout: Layout, rows: int) -> dict:
    """h5py file options that put a shard's raw chunks back to back in one run, half a page off.

    HDF5 allocates its chunk index nodes (metadata) in 2 KiB blocks between the chunks: a shard
    held a run of chunks per ~60, each starting at another offset modulo 4 KiB, and a gather took
    a step per run. One metadata block sized for the whole index is allocated first and the
    chunks follow it (HDF5 1.14, measured), so they form one run, which one `np.take` reads. Its
    size, 2 KiB past a page, starts rows of page-sized chunks half a page from where allocators
    start buffers (on a page, or 16 or 64 bytes past one): even a caller's own `out` does not
    alias them (see `alignment`). Any HDF5 reader reads such files; only the layout differs.
    """
    chunk_rows = min(layout.chunk_rows, rows)
    chunks, chunk_nbytes = -(-rows // chunk_rows), chunk_rows * layout.sample_nbytes
    # A v1 B-tree entry holds a key of (rank + 1) 8-byte offsets plus 8 bytes and a child address;
    # twice that per chunk covers the nodes' free slots (measured: 57-88 bytes per chunk).
    index_bytes = 2 * (8 * (len(layout.sample_shape) + 2) + 16) * chunks
    if layout.compression != "none" or index_bytes * MAX_INDEX_SHARE > chunks * chunk_nbytes:
        return {}  # compressed chunks are decoded, not gathered; tiny chunks: the index would dominate
    pages = -(-(META_BLOCK_SLACK + index_bytes) // ALIAS_PERIOD)
    return {"meta_block_size": pages * ALIAS_PERIOD + ALIAS_PERIOD // 2}


class HDF5LibraryReader(ShardReader):
    """Reference path: whole chunks through h5py's `read_direct`, never fancy indexing."""

    def __init__(self, path: Path, chunk_rows: int) -> None:
        self._file = h5py.File(path, "r", locking=False)
        self._dset = self._file[DATASET]
        self._chunk_rows = chunk_rows

    def read(self, local_rows: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
        # docstring inherited
        copy_rows_from_chunks(self._read_chunk, local_rows, self._chunk_rows, out, positions)

    def _read_chunk(self, chunk: int) -> np.ndarray:
        start = chunk * self._chunk_rows
        stop = min(start + self._chunk_rows, self._dset.shape[0])
        buf = np.empty((stop - start, *self._dset.shape[1:]), dtype=self._dset.dtype)
        try:
            self._dset.read_direct(buf, np.s_[start:stop])
        except Exception as exc:  # h5py reports damage as OSError, RuntimeError...
            raise StoreFormatError(f"{self._file.filename}: chunk {chunk}: {exc}") from exc
        return buf

    def close(self) -> None:
        # docstring inherited
        self._file.close()


def _checked_dataset(
    f: h5py.File, path: Path, manifest: Manifest, shard: ShardInfo
) -> h5py.Dataset:
    """Refuse a shard whose dataset differs from the manifest, or that points outside the file."""
    link = f.get(DATASET, getlink=True)  # the link itself: following an external one opens a file
    if link is None:
        raise StoreFormatError(f"{path}: no dataset {DATASET!r}")
    if not isinstance(link, h5py.HardLink):
        raise StoreFormatError(f"{path}: {DATASET!r} is an external or soft link, refused")
    dset = f[DATASET]
    if not isinstance(dset, h5py.Dataset):
        raise StoreFormatError(f"{path}: {DATASET!r} is not a dataset")
    expected_shape = (shard.num_rows, *manifest.sample_shape)
    problems = []
    if dset.shape != expected_shape:
        problems.append(f"shape {dset.shape}, expected {expected_shape}")
    if dset.dtype != manifest.np_dtype:
        problems.append(f"dtype {dset.dtype.str}, expected {manifest.dtype}")
    if dset.is_virtual or dset.external:
        problems.append("virtual or external storage")
    expected_chunks = (min(manifest.chunk_rows, shard.num_rows), *manifest.sample_shape)
    if dset.chunks != expected_chunks:
        problems.append(f"chunks {dset.chunks}, expected {expected_chunks}")
    filters, expected_filters = _filters(dset), EXPECTED_FILTERS.get(manifest.compression)
    if filters != expected_filters:
        problems.append(f"filters {filters}, expected {expected_filters} ({manifest.compression})")
    if problems:
        reasons = "; ".join(problems)
        raise StoreFormatError(f"{path}: dataset does not match the manifest: {reasons}")
    return dset


EXPECTED_FILTERS = {"none": [], "gzip": [h5py.h5z.FILTER_DEFLATE]}


def _filters(dset: h5py.Dataset) -> list[int]:
    """The dataset's filter pipeline (any other filter would make raw chunk bytes wrong)."""
    plist = dset.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]


def _chunk_ranges(dset: h5py.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Byte offset and size of each chunk, in row order, from the HDF5 chunk index."""
    num_chunks = -(-dset.shape[0] // dset.chunks[0])
    offsets = np.full(num_chunks, -1, dtype=np.int64)
    sizes = np.full(num_chunks, -1, dtype=np.int64)
    for i in range(dset.id.get_num_chunks()):
        info = dset.id.get_chunk_info(i)
        chunk = info.chunk_offset[0] // dset.chunks[0]
        if info.filter_mask != 0 or not 0 <= chunk < num_chunks:
            raise StoreFormatError(f"{dset.file.filename}: unexpected chunk {info.chunk_offset}")
        offsets[chunk], sizes[chunk] = info.byte_offset, info.size
    return offsets, sizes
