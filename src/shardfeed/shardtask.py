"""One conversion task: read a shard's samples from their `.npy` files and write the shard.

Tasks are independent and picklable, so the same function runs in-process, in a local
process pool or on a Dask worker. A task reports progress through a counter it is given and
returns a `ShardRecord`: the shard's manifest entry plus each sample's checksum.
"""

from __future__ import annotations

import base64
import errno
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .backends import Layout, get_backend
from .errors import DiskFullError, InputError
from .faults import fault_point
from .location import RemoteLocation, is_url
from .manifest import ShardInfo, checksum, shard_checksum

WRITE_BLOCK_BYTES = 4 * 2**20

# "No space left", "disk quota exceeded", "file too large" (a file-size limit, `ulimit -f`).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class SampleRef:
    """Where a sample's bytes are: what a task needs of a `sources.Sample`."""

    id: str
    path: str
    data_offset: int
    fortran_order: bool


@dataclass(frozen=True)
class ShardTask:
    backend: str
    root: str
    layout: Layout
    shard: int
    source_dtype: str
    samples: tuple[SampleRef, ...]
    storage_options: dict | None = None  # for a root or samples at fsspec URLs


@dataclass(frozen=True)
class ShardRecord:
    info: ShardInfo
    checksums: np.ndarray  # uint32 per sample

    def to_json_dict(self) -> dict:
        packed = base64.b64encode(self.checksums.astype("<u4").tobytes()).decode("ascii")
        return {"info": asdict(self.info), "checksums": packed}

    @classmethod
    def from_json_dict(cls, data: dict) -> ShardRecord:
        checksums = np.frombuffer(base64.b64decode(data["checksums"]), dtype="<u4").astype(np.uint32)
        return cls(ShardInfo(**data["info"]), checksums)


class _NoProgress:
    def add(self, n: int) -> None:
        pass


def write_shard(task: ShardTask, progress=None) -> ShardRecord:
    """Write one shard; `progress.add(n)` is called as rows are written."""
    progress = progress or _NoProgress()
    layout = task.layout
    backend = get_backend(task.backend)
    path = backend.shard_path(layout, task.shard)
    location = RemoteLocation(task.root, task.storage_options) if is_url(task.root) else None
    if location is None:
        writer = backend.open_writer(Path(task.root), layout, task.shard)
    else:
        writer = backend.open_remote_writer(location, layout, task.shard)
    # Whole chunks, ~4 MiB per write call: one h5py call per tiny chunk halves throughput.
    block_rows = layout.chunk_rows * max(1, WRITE_BLOCK_BYTES // (layout.chunk_rows * layout.sample_nbytes))
    block = np.empty((block_rows, *layout.sample_shape), dtype=layout.dtype)
    checksums = np.empty(len(task.samples), dtype=np.uint32)
    source_dtype = np.dtype(task.source_dtype)
    try:
        for start in range(0, len(task.samples), block_rows):
            refs = task.samples[start : start + block_rows]
            read_samples(refs, block, source_dtype, task.storage_options)
            for i in range(len(refs)):
                checksums[start + i] = checksum(block[i, ...])
            writer.write(block[: len(refs)])
            progress.add(len(refs))
        fault_point("shard-written")
        written = writer.close()
    except BaseException as exc:
        writer.abort()
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(
                f"{Path(task.root) / path}: {exc.strerror} while writing shard {task.shard} "
                f"({len(task.samples) * layout.sample_nbytes} bytes of samples)"
            ) from exc
        raise
    fault_point("shard-renamed")
    first = task.shard * layout.shard_rows
    info = ShardInfo(
        path=path,
        first_row=first,
        last_row=first + len(task.samples) - 1,
        nbytes=written.nbytes,
        checksum=shard_checksum(checksums),
        file_checksum=written.file_checksum,
    )
    return ShardRecord(info, checksums)


def read_samples(
    refs: Sequence[SampleRef], dest: np.ndarray, source_dtype: np.dtype, storage_options: dict | None = None
) -> None:
    """Fill the rows of `dest` with the samples of `refs`: from files, or fetched in one batch from URLs."""
    if not refs or not is_url(refs[0].path):
        for i, ref in enumerate(refs):
            read_sample(ref, dest[i, ...], source_dtype)  # [i, ...]: a view even for 0-d samples
        return
    from .remote_sources import fetch_samples

    for i, (ref, raw) in enumerate(zip(refs, fetch_samples(refs, dest[0].nbytes, storage_options))):
        _store(np.frombuffer(raw, dtype=source_dtype), dest[i, ...], ref.fortran_order)


def read_sample(ref: SampleRef, dest: np.ndarray, source_dtype: np.dtype) -> None:
    """Read a sample's data into `dest` (C order, stored dtype), refusing a changed file."""
    expected = dest.nbytes
    direct = not ref.fortran_order and source_dtype == dest.dtype
    target = dest if direct else np.empty(dest.size, dtype=source_dtype)
    try:
        fd = os.open(ref.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb", buffering=0) as f:
            f.seek(ref.data_offset)
            got = _read_fully(f, memoryview(target.reshape(-1)).cast("B"))
            extra = f.read(1)
    except OSError as exc:
        raise InputError(f"{ref.path}: sample {ref.id!r}: cannot read: {exc.strerror}") from exc
    if got != expected or extra:
        raise InputError(
            f"{ref.path}: sample {ref.id!r}: file changed since it was validated "
            f"(expected {expected} data bytes)"
        )
    if not direct:
        _store(target, dest, ref.fortran_order)


def _store(data: np.ndarray, dest: np.ndarray, fortran_order: bool) -> None:
    """Copy a sample's flat data (source dtype and order) into `dest` (stored dtype, C order)."""
    dest[...] = data.reshape(dest.shape, order="F" if fortran_order else "C")


def _read_fully(f, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got
