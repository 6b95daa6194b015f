"""The backend interface: how a store lays out shards, writes one, and reads rows from one.

A backend is three small things: a `Backend` that plans the layout and opens writers and
readers, a `ShardWriter` that receives a shard's rows in order, and a `ShardReader` that
copies requested rows into a caller's buffer. Only modules in this package import h5py/zarr.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import OptionError
from ..manifest import Manifest, ShardInfo


@dataclass(frozen=True)
class Layout:
    """Shape of the data to write: what every backend needs to create shards.

    Variable-shape samples (`None` in `sample_shape` for the axes that vary) are stored as each shard's
    values back to back, cut into chunks of `chunk_elements` values, one chunk per row of a 2-D array
    (see `storage.ragged`); `flat` is that array's layout, which is all a backend ever sees.
    """

    num_samples: int
    sample_shape: tuple[int | None, ...]
    dtype: np.dtype
    chunk_rows: int
    shard_rows: int
    compression: str
    chunk_elements: int = 0  # variable-shape samples: values per chunk
    shard_elements: int = 0  # and per shard cell (a multiple of chunk_elements)
    data_nbytes: int = 0  # and the bytes of all samples

    @property
    def variable(self) -> bool:
        return None in self.sample_shape

    @property
    def sample_nbytes(self) -> int:
        """Bytes of a sample; for variable-shape samples, their mean (rounded up)."""
        if self.variable:
            return -(-self.data_nbytes // max(1, self.num_samples))
        return int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize

    def flat(self, shard: int, rows: int) -> Layout:
        """What the backends store for variable-shape samples: a fixed-shape array of chunk rows, shard k
        in cell k of `shard_elements // chunk_elements` rows, up to `rows` rows of shard `shard`."""
        cell_rows = self.shard_elements // self.chunk_elements
        return Layout(shard * cell_rows + rows, (self.chunk_elements,), self.dtype, 1, cell_rows, self.compression)

    def stored(self) -> Layout:
        """The layout `Backend.prepare` creates: this one, or for variable-shape samples every shard's cell."""
        if not self.variable:
            return self
        cells = -(-self.num_samples // self.shard_rows)
        return self.flat(cells - 1, self.shard_elements // self.chunk_elements)


@dataclass(frozen=True)
class WrittenShard:
    """A shard file's size and the CRC32 of its bytes, taken from the bytes as they were written
    (reading the file back would cost a second pass, and a download for a remote store)."""

    nbytes: int
    file_checksum: int


class ShardWriter(ABC):
    """Receives one shard's rows in order; `close` makes the shard durable at its final path."""

    @abstractmethod
    def write(self, block: np.ndarray, checksums: np.ndarray | None = None) -> None:
        """Append `block` (rows, *sample_shape) after the rows already written. `checksums`: each
        row's CRC32, if the caller took them; a writer that stores the rows' bytes as they are
        makes the file's CRC32 from them."""

    @abstractmethod
    def close(self) -> WrittenShard:
        """Flush, fsync and move into place; return what was written."""

    @abstractmethod
    def abort(self) -> None:
        """Drop what was written (best effort): the shard stays absent."""


class ShardReader(ABC):
    """Copies rows of one shard into a caller's buffer."""

    @abstractmethod
    def read(self, local_rows: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
        """Set `out[positions[i]] = sample(local_rows[i])`; `local_rows` is sorted ascending."""

    def raw_runs(self) -> tuple[list[int], list[np.ndarray]] | None:
        """If the shard's chunks are raw: the first row of each run of chunks that lie back to
        back, and a read-only array over each run's mapped bytes. None otherwise."""
        return None

    def decode_jobs(
        self, local_rows: np.ndarray, out: np.ndarray, positions: np.ndarray
    ) -> list[Callable[[], None]] | None:
        """If this reader decodes chunks: `read`'s work as one job per touched chunk, for the caller
        to run in parallel with other shards' (`run_jobs`). None otherwise."""
        return None

    def gather(self, local_rows: np.ndarray, out: np.ndarray) -> bool:
        """Set `out[i] = sample(local_rows[i])` for rows in any order, if this reader can do that
        without sorting them (raw chunks can); returns whether it did."""
        return False

    @abstractmethod
    def close(self) -> None:
        """Release file handles."""


class ShardWriting(ABC):
    """What writing a backend's shards takes: their paths and writers. A process that only writes
    shards (a conversion worker) gets this part alone (`get_shard_writing`), without the rest's imports."""

    name: str

    @abstractmethod
    def shard_path(self, layout: Layout, shard: int) -> str:
        """Path of shard number `shard`, relative to the store root."""

    @abstractmethod
    def open_writer(self, root: Path, layout: Layout, shard: int) -> ShardWriter:
        """A writer for shard number `shard` (rows shard*shard_rows onwards)."""

    def open_remote_writer(self, location, layout: Layout, shard: int) -> ShardWriter:
        """`open_writer` for a store at an fsspec URL."""
        raise OptionError(REMOTE_REFUSAL.format(name=self.name, url=location))


class Backend(ShardWriting):
    def unstorable(self, sample_shape: tuple[int, ...], dtype: np.dtype) -> str | None:
        """Why this backend cannot store such samples, or None: asked while validating, before OUT exists."""
        return None

    def prepare(self, root: Path, layout: Layout) -> None:
        """Create whatever shards share (the driver calls this once, before any writer)."""

    def extend(self, root: Path, layout: Layout) -> None:
        """Make room for an append's shards in an existing store: `layout.num_samples` is the grid's
        new length (shards in cells beyond the old last one). The store must stay readable as it was."""

    @abstractmethod
    def open_reader(self, root: Path, manifest: Manifest, shard: ShardInfo, fast: bool) -> ShardReader:
        """A reader; `fast` reads chunk bytes directly, otherwise through the library."""

    def prepare_remote(self, location, layout: Layout) -> None:
        """`prepare` for a store at an fsspec URL."""
        raise OptionError(REMOTE_REFUSAL.format(name=self.name, url=location))

    def open_remote_reader(self, location, manifest: Manifest, shard: ShardInfo, fast: bool) -> ShardReader:
        """`open_reader` for a store at an fsspec URL."""
        raise OptionError(REMOTE_REFUSAL.format(name=self.name, url=location))


REMOTE_REFUSAL = (
    "{url}: {name} stores must be local paths: reading HDF5 over object storage costs several "
    "small range requests per chunk. Convert with --format zarr for object storage, or copy the "
    "store to a local disk"
)


def chunk_groups(local_rows: np.ndarray, chunk_rows: int) -> list[tuple[int, int, int]]:
    """Split sorted local rows into (chunk, start, stop) runs, one per chunk touched."""
    chunks = local_rows // chunk_rows
    bounds = np.flatnonzero(np.diff(chunks)) + 1
    starts = np.concatenate(([0], bounds))
    stops = np.concatenate((bounds, [len(local_rows)]))
    return [(int(chunks[a]), int(a), int(b)) for a, b in zip(starts, stops)]


def copy_rows_from_chunks(
    read_chunk, local_rows: np.ndarray, chunk_rows: int, out: np.ndarray, positions: np.ndarray, pool=None
) -> None:
    """Read each touched chunk once with `read_chunk(chunk) -> array` and scatter its rows.

    With a `concurrent.futures` executor as `pool`, chunks are read (decoded) in parallel; each
    writes only its own rows of `out`.
    """

    def copy(group: tuple[int, int, int]) -> None:
        chunk, a, b = group
        out[positions[a:b]] = read_chunk(chunk)[local_rows[a:b] - chunk * chunk_rows]

    run_each(copy, chunk_groups(local_rows, chunk_rows), pool)


def run_each(work: Callable, items: Sequence, pool=None) -> None:
    """`work(item)` for each item, on `pool`'s threads when there are several."""
    if pool is None or len(items) < 2:
        for item in items:
            work(item)
    else:
        for _ in pool.map(work, items):  # re-raises the first failure
            pass


def run_jobs(jobs: Sequence[Callable[[], None]], pool=None) -> None:
    """Call each job (`ShardReader.decode_jobs`), on `pool`'s threads when there are several."""
    run_each(_call, jobs, pool)


def _call(job: Callable[[], None]) -> None:
    job()
