"""One conversion task: read a shard's samples from their `.npy` files and write the shard.

Tasks are independent and picklable, so the same function runs in-process, in a local
process pool or on a Dask worker. A task reports progress through a counter it is given and
returns a `ShardRecord`: the shard's manifest entry plus each sample's checksum.
"""

from __future__ import annotations

import base64
import errno
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import DiskFullError
from ..inputs.samples import SampleRef, read_samples
from ..storage.backends import Layout, ShardWriter, get_shard_writing
from ..storage.files import checksum, shard_checksum
from ..storage.manifest import ShardInfo
from ..urls import RemoteLocation, is_url
from .faults import fault_point

WRITE_BLOCK_BYTES = 4 * 2**20

# "No space left", "disk quota exceeded", "file too large" (a file-size limit, `ulimit -f`).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class ShardTask:
    backend: str
    root: str
    layout: Layout
    shard: int
    source_dtype: str
    samples: tuple[SampleRef, ...]
    storage_options: dict | None = None  # for a root or samples at fsspec URLs
    shapes: tuple[tuple[int, ...], ...] | None = None  # each sample's, when shapes vary (`storage.ragged`)

    def without_contents(self) -> ShardTask:
        """This task reading every sample from its file: for a Dask cluster, whose task graph would
        otherwise carry the bytes of the small files that the scan read."""
        return replace(self, samples=tuple(ref.without_content() for ref in self.samples))


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
    backend = get_shard_writing(task.backend)
    if task.shapes is not None:  # variable shapes: the backend stores the shard's values in chunk rows
        values = sum(math.prod(shape) for shape in task.shapes)
        stored = layout.flat(task.shard, -(-values // layout.chunk_elements))
    else:
        stored = layout
    path = backend.shard_path(stored, task.shard)
    location = RemoteLocation(task.root, task.storage_options) if is_url(task.root) else None
    if location is None:
        writer = backend.open_writer(Path(task.root), stored, task.shard)
    else:
        writer = backend.open_remote_writer(location, stored, task.shard)
    checksums = np.empty(len(task.samples), dtype=np.uint32)
    try:
        (_write_rows if task.shapes is None else _write_values)(task, writer, checksums, progress)
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


def _write_rows(task: ShardTask, writer: ShardWriter, checksums: np.ndarray, progress) -> None:
    """Samples of one shape: blocks of whole chunks, ~4 MiB per write call (one h5py call per tiny
    chunk halves throughput)."""
    layout = task.layout
    block_rows = layout.chunk_rows * max(1, WRITE_BLOCK_BYTES // (layout.chunk_rows * layout.sample_nbytes))
    block = np.empty((block_rows, *layout.sample_shape), dtype=layout.dtype)
    source_dtype = np.dtype(task.source_dtype)
    for start in range(0, len(task.samples), block_rows):
        refs = task.samples[start : start + block_rows]
        read_samples(refs, block, source_dtype, task.storage_options)
        for i in range(len(refs)):
            checksums[start + i] = checksum(block[i, ...])
        writer.write(block[: len(refs)], checksums[start : start + len(refs)])
        progress.add(len(refs))


def _write_values(task: ShardTask, writer: ShardWriter, checksums: np.ndarray, progress) -> None:
    """Variable-shape samples: their values back to back, written ~4 MiB of chunk rows at a time, the
    last chunk's tail zero. Consecutive samples of one shape are read in one call."""
    layout = task.layout
    chunk = layout.chunk_elements
    block = np.zeros((max(1, WRITE_BLOCK_BYTES // (chunk * layout.dtype.itemsize)), chunk), dtype=layout.dtype)
    flat, filled = block.reshape(-1), 0
    source_dtype = np.dtype(task.source_dtype)
    start = 0
    while start < len(task.samples):
        stop, most = start + 1, max(1, WRITE_BLOCK_BYTES // (math.prod(task.shapes[start]) * layout.dtype.itemsize))
        while stop < len(task.samples) and task.shapes[stop] == task.shapes[start] and stop - start < most:
            stop += 1
        samples = np.empty((stop - start, *task.shapes[start]), dtype=layout.dtype)
        read_samples(task.samples[start:stop], samples, source_dtype, task.storage_options)
        for i, sample in enumerate(samples):
            checksums[start + i] = checksum(sample)
            values = sample.reshape(-1)
            while len(values):
                take = min(len(values), len(flat) - filled)
                flat[filled : filled + take] = values[:take]
                filled, values = filled + take, values[take:]
                if filled == len(flat):
                    writer.write(block)
                    filled = 0
        progress.add(stop - start)
        start = stop
    if filled:
        flat[filled:] = 0
        writer.write(block[: -(-filled // chunk)])
