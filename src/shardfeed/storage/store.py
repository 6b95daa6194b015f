"""`Store`: an opened store — its index, and `read(rows, out)` with lazy per-process handles.

A `Store` holds the path and the manifest, never an open file across processes: shard readers
are opened on first use and keyed by the process id, so a forked child that inherited the
parent's readers discards them (without closing the parent's) and opens its own, and
pickling drops them (h5py objects cannot be pickled; see RELIABILITY.md).
"""

from __future__ import annotations

import bisect
import operator
import os
import threading
import weakref
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import (
    ChecksumError,
    ShardNotFoundError,
    StoreFormatError,
    StoreNotFoundError,
    StoreReplacedError,
    UnknownIDError,
    UnknownSplitError,
)
from ..urls import RemoteLocation, is_url, local_root
from .alignment import DEFAULT_RESIDUE, aligned_empty, destination_residue
from .backends import ShardReader, get_backend
from .backends.base import run_jobs
from .backends.rawchunks import ROW_COPY_MIN_BYTES, decode_pool
from .files import checksum
from .format import MANIFEST_NAME, TARGETS_DIR
from .index import Index, label_sets, load_index, load_remote_index
from .manifest import Manifest, load_manifest, load_remote_manifest
from .ragged import RaggedIndex, read_list


class Store:
    """A finalized shardfeed store. Open one with `open_store(path)`.

    Args:
        path: the store directory.
        fast: read chunk bytes directly (default) rather than through h5py / zarr calls.
        verify: check each sample read against its CRC32 from the index (costs one CRC pass).

    A store is also a sequence of its samples: `len(store)` rows, `store[i]` one sample (negative
    `i` counts from the end), `store[i:j:k]` those rows from one `read`, for code that indexes
    arrays (a framework's dataset, a notebook) and knows nothing of rows.

    A store of variable-shape samples (`variable`; `sample_shape` such as `(None, 40)`, each row's
    shape in `shapes`) reads a list of arrays, and refuses `out=`; see `ragged`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fast: bool = True,
        verify: bool = False,
        storage_options: dict | None = None,
    ) -> None:
        self.fast = fast
        self.verify = verify
        self.storage_options = storage_options  # also for a `verify --source` at a URL
        if is_url(path):
            self.location: RemoteLocation | None = RemoteLocation(str(path), storage_options)
            self.path: Path | str = self.location.url
            self._manifest_stamp = self._stamp_manifest()
            self.manifest: Manifest = load_remote_manifest(self.location)
            self._index: Index = load_remote_index(self.location, self.manifest)
        else:
            self.location = None
            self.path = local_root(path)
            self._hold_manifest()
            self._manifest_stamp = self._stamp_manifest()
            self.manifest = load_manifest(self.path)
            self._index = load_index(self.path, self.manifest)
        # Variable-shape samples: each row's shape and offset, and the flat arrays the backends hold.
        self.ragged = RaggedIndex(self._index, self.manifest, str(self.path)) if self.manifest.variable else None
        if verify and not self.manifest.content_intact:
            raise ChecksumError(f"{self.path}: {MANIFEST_NAME} does not match its content checksum "
                                f"(edited after conversion?); run 'shardfeed verify {self.path}'")  # fmt: skip
        self._shard_starts = self.manifest.shard_starts
        self._shard_start_list = self._shard_starts.tolist()  # for `bisect`: 0.2 us a look-up, numpy's 5
        self._large_rows = self.manifest.sample_nbytes >= ROW_COPY_MIN_BYTES  # copied one by one
        self._batch_residue: int | None = None  # a property of the files: kept across pickling
        self._readers: dict[int, ShardReader] = {}
        self._readers_pid = os.getpid()
        self._lock = threading.Lock()

    def _hold_manifest(self) -> None:
        """Keep the manifest open while this store reads: its inode then cannot be reused by the next
        conversion's manifest, so (inode, size, mtime) tells them apart even within one clock tick.
        `close()` lets go of it; the next shard opened takes it again."""
        self._manifest_hold = None
        try:
            fd = os.open(self.path / MANIFEST_NAME, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # no store (yet): opening it says so
        self._manifest_hold = weakref.finalize(self, os.close, fd)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_readers"] = {}
        state["_lock"] = None
        state["_manifest_hold"] = None  # an fd of this process; a worker takes its own at its first shard
        for cached in ("ids", "_id_order", "_labels"):  # rebuilt on demand: a worker need not receive millions of IDs
            state.pop(cached, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._readers_pid = os.getpid()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.manifest.num_samples

    def __getitem__(self, key: int | slice) -> np.ndarray:
        """Sample `key`, or the samples of a slice of rows; in the stored dtype, as `read` gives them."""
        if isinstance(key, slice):
            return self.read(np.arange(*key.indices(len(self)), dtype=np.int64))
        try:
            row = operator.index(key)
        except TypeError:
            raise TypeError(f"a store is indexed by an integer or a slice, not {type(key).__name__}; "
                            f"use read(rows) for a list of rows") from None  # fmt: skip
        if not -len(self) <= row < len(self):
            raise IndexError(f"{self.path}: sample {row} out of range for {len(self)} samples")
        return self.read([row % len(self)])[0]

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, backend={self.backend!r}, samples={len(self)})"

    @property
    def backend(self) -> str:
        return self.manifest.backend

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        """The samples' shape; None for each axis whose length varies (see `shapes`)."""
        return self.manifest.sample_shape

    @property
    def variable(self) -> bool:
        """Whether samples differ in shape (then `read` gives a list of arrays)."""
        return self.ragged is not None

    @property
    def shapes(self) -> np.ndarray:
        """Each row's shape, int64 `(len(store), ndim)` (read-only; for one shape, that shape in every row)."""
        if self.ragged is not None:
            return self.ragged.shapes
        return np.broadcast_to(np.array(self.sample_shape, dtype=np.int64), (len(self), len(self.sample_shape)))

    @property
    def dtype(self) -> np.dtype:
        return self.manifest.np_dtype

    @property
    def splits(self) -> dict[str, int]:
        return dict(self.manifest.splits)

    @property
    def labels(self) -> np.ndarray | None:
        """Per row, by `label_kind`: class numbers (int64), regression targets (float64), or label
        sets as multi-hot rows (bool, n x num_classes); None for an unlabeled store."""
        return self._labels

    @cached_property
    def _labels(self) -> np.ndarray | None:
        packed = self._index.labels
        if packed is None or self.manifest.label_kind != "multi":
            return packed
        return label_sets(packed, self.manifest.num_classes)

    @property
    def label_kind(self) -> str:
        """"class" (one class per sample), "float" (regression) or "multi" (a set of classes per sample)."""
        return self.manifest.label_kind

    @property
    def weights(self) -> np.ndarray | None:
        """Each row's sample weight (float32), or None when the store was converted without weights."""
        return self._index.weights

    @cached_property
    def targets(self) -> Store | None:
        """The per-sample target arrays (`convert --targets`; a mask per image, say), or None: a store
        of their own inside this one (`format.TARGETS_DIR`), row for row with this one's samples."""
        if self.manifest.targets_checksum is None:
            return None
        where = f"{self.location.url}/{TARGETS_DIR}" if self.location is not None else self.path / TARGETS_DIR
        if self.location is None and not Path(os.path.realpath(where)).is_relative_to(os.path.realpath(self.path)):
            raise StoreFormatError(f"{where}: the target arrays link to {os.path.realpath(where)}, outside the store")
        try:
            targets = Store(where, fast=self.fast, verify=self.verify, storage_options=self.storage_options)
        except StoreNotFoundError as exc:
            raise StoreFormatError(f"{self.path}: the store's target arrays are missing ({exc})") from exc
        if (targets.manifest.computed_checksum() != self.manifest.targets_checksum or len(targets) != len(self)
                or not np.array_equal(targets._index.ids, self._index.ids)):  # fmt: skip
            raise StoreFormatError(f"{where}: not the target arrays this store was converted with (another "
                                   f"conversion's, or edited); convert again")  # fmt: skip
        return targets

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest.class_names

    @property
    def num_classes(self) -> int | None:
        return self.manifest.num_classes

    @property
    def checksums(self) -> np.ndarray:
        return self._index.checksums

    @cached_property
    def ids(self) -> list[str]:
        return [i.decode("utf-8") for i in self._index.ids.tolist()]

    @cached_property
    def _id_order(self) -> np.ndarray:
        order = np.argsort(self._index.ids, kind="stable")
        ordered = self._index.ids[order]
        twice = np.flatnonzero(ordered[1:] == ordered[:-1])
        if len(twice):  # a crafted index: a lookup would pick one of the rows silently
            raise StoreFormatError(f"{self.path}: the index lists sample ID {ordered[twice[0]].decode()!r} twice")
        return order

    @property
    def batch_residue(self) -> int:
        """Where a batch array should start, in bytes modulo 4096, for rows to be copied into it at
        full speed: away from where this store's rows start (see `alignment`). Known from the first
        shard read, else from shard 0, opened for that and closed again (a trainer whose worker
        processes read keeps no shard open)."""
        if self._batch_residue is None:
            if self.location is not None or not self.manifest.shards:
                return DEFAULT_RESIDUE
            reader = self._open_current(0)
            try:
                self._learn_residue(reader)
            finally:
                reader.close()
        return self._batch_residue

    def empty_batch(self, num_rows: int) -> np.ndarray:
        """An uninitialized array for `read(rows, out=...)` of `num_rows` rows, placed as `batch_residue`
        says. An `out` of the caller's own that starts page-aligned can read several times slower."""
        return aligned_empty((num_rows, *self.sample_shape), self.dtype, self.batch_residue)

    def _learn_residue(self, reader: ShardReader) -> int:
        """`batch_residue`, worked out from one shard's reader (all shards are laid out alike) on first use."""
        if self._batch_residue is None:
            runs = reader.raw_runs()
            nbytes = self.manifest.sample_nbytes
            self._batch_residue = DEFAULT_RESIDUE if runs is None else destination_residue(runs[1], nbytes)
        return self._batch_residue

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        """Rows of `ids` (O(log n) each); unknown IDs raise one KeyError naming them."""
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"rows() takes a list of IDs, not the single ID {ids!r}: rows([{ids!r}])")
        ids = list(ids)
        odd = [i for i in ids if not isinstance(i, str)]
        if odd:
            raise TypeError(f"sample IDs are strings; got {odd[0]!r} ({type(odd[0]).__name__})")
        wanted = [i.encode("utf-8") for i in ids]
        if not wanted:
            return np.empty(0, dtype=np.int64)
        keys = np.array(wanted)
        sorted_ids = self._index.ids[self._id_order]
        pos = np.searchsorted(sorted_ids, keys)
        pos_clipped = np.minimum(pos, len(sorted_ids) - 1)
        found = (pos < len(sorted_ids)) & (sorted_ids[pos_clipped] == keys)
        # NumPy bytes arrays drop trailing NULs, so b"a\x00" would match b"a"; no ID ends in NUL.
        found &= np.array([not w.endswith(b"\x00") for w in wanted])
        if not found.all():
            missing = [wanted[k].decode() for k in np.flatnonzero(~found)[:10]]
            raise UnknownIDError(f"{self.path}: {int((~found).sum())} unknown sample ID(s): {missing}")
        return self._id_order[pos_clipped].astype(np.int64)

    def split(self, name: str) -> np.ndarray:
        """Rows of split `name`, in the order the partition listed its IDs."""
        names = list(self.manifest.splits)
        if name not in names:
            raise UnknownSplitError(f"{self.path}: no split {name!r}; the store has {names}")
        return np.flatnonzero(self._index.split_codes == names.index(name)).astype(np.int64)

    def split_of(self, rows: np.ndarray) -> list[str]:
        names = list(self.manifest.splits)
        return [names[c] for c in self._index.split_codes[rows]]

    def read(self, rows: Sequence[int] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray | list[np.ndarray]:
        """Samples at `rows`, in that order (repeats allowed), in the stored dtype.

        Rows are grouped by shard and chunk and each chunk is read once; with `out` given the
        samples are written straight into it (shape `(len(rows), *sample_shape)`, stored dtype);
        else into an array placed as `empty_batch` places it.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if self.ragged is not None:  # variable-shape samples: a list of arrays
            samples = read_list(self, rows, out)
            if self.verify:
                self._check(rows, samples)
            return samples
        expected = (len(rows), *self.sample_shape)
        if out is not None and (out.shape != expected or out.dtype != self.dtype or not out.flags.c_contiguous):
            raise ValueError(
                f"out must be a C-contiguous {self.dtype} array of shape {expected}, "
                f"got {out.dtype} {out.shape}"
            )
        if len(rows) == 0:
            return aligned_empty(expected, self.dtype) if out is None else out
        lowest, highest = int(rows.min()), int(rows.max())
        if lowest < 0 or highest >= len(self):
            bad = lowest if lowest < 0 else highest
            raise IndexError(f"{self.path}: row {bad} out of range for {len(self)} samples")
        first = bisect.bisect_right(self._shard_start_list, lowest) - 1
        last = bisect.bisect_right(self._shard_start_list, highest) - 1
        if out is None:  # placed for the shard read first: a store missing another shard still reads
            out = aligned_empty(expected, self.dtype, self._learn_residue(self._reader(first)))
        if first == last and self._reader(first).gather(rows - self._shard_start_list[first] if first else rows, out):
            pass  # one shard of raw chunks: rows copied in the caller's order, nothing sorted
        elif first == last or not self._large_rows or not self._copy_each_row(rows, out):
            self._read_sorted(rows, out, first, last)
        if self.verify:
            self._check(rows, out)
        return out

    def _copy_each_row(self, rows: np.ndarray, out: np.ndarray) -> bool:
        """Large samples spread over shards of raw chunks: one copy per row from its shard's mapping.

        Cheaper than grouping by shard, which costs a reader call per shard (a random batch of
        64 large samples touches most shards). False, having copied nothing, for other readers.
        """
        shards = np.searchsorted(self._shard_starts, rows, side="right") - 1
        runs = {shard: self._reader(shard).raw_runs() for shard in set(shards.tolist())}
        if any(r is None for r in runs.values()):
            return False
        local_rows = (rows - self._shard_starts[shards]).tolist()
        for i, (shard, row) in enumerate(zip(shards.tolist(), local_rows)):
            firsts, views = runs[shard]  # type: ignore[misc]  # None was ruled out above
            run = bisect.bisect_right(firsts, row) - 1  # HDF5 shards: a run per ~60 chunks
            out[i] = views[run][row - firsts[run]]
        return True

    def _read_sorted(self, rows: np.ndarray, out: np.ndarray, first: int, last: int) -> None:
        """Rows grouped by shard (`first`..`last`), ascending within each, so that readers read
        each chunk once."""
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        if first == last:
            self._reader(first).read(sorted_rows - self._shard_starts[first], out, order)
        else:
            shards = np.searchsorted(self._shard_starts, sorted_rows, side="right") - 1
            bounds = [0, *(np.flatnonzero(shards[1:] != shards[:-1]) + 1).tolist(), len(rows)]
            local_rows = sorted_rows - self._shard_starts[shards]
            segments = list(zip(shards[bounds[:-1]].tolist(), bounds[:-1], bounds[1:], strict=True))
            if self._gather_segments(segments, local_rows, out, order):
                return
            jobs = []  # compressed chunks of every shard decoded on the threads at once, not shard by shard
            for shard, a, b in segments:
                reader, local = self._reader(shard), local_rows[a:b]
                decoding = reader.decode_jobs(local, out, order[a:b])
                if decoding is None:
                    reader.read(local, out, order[a:b])
                else:
                    jobs += decoding
            run_jobs(jobs, decode_pool())

    def _gather_segments(self, segments: list, local_rows: np.ndarray, out: np.ndarray, order: np.ndarray) -> bool:
        """Raw shards: each shard's rows (`local_rows[a:b]`, sorted) gathered into one array in that
        order, then scattered into `out` at once. A scatter per shard had cost small samples 6 us a
        shard (256 rows over 11 shards: 90 us a batch, now 69). False, having copied nothing, where
        the readers cannot gather: a store's shards share one compression, so all can or none."""
        gathered = np.empty_like(out)
        for k, (shard, a, b) in enumerate(segments):
            if not self._reader(shard).gather(local_rows[a:b], gathered[a:b]):
                if k:
                    raise StoreFormatError(f"{self.path}: shard {shard} cannot be read as the others are")
                return False
        if out.nbytes:
            whole = np.dtype((np.void, out.nbytes // len(out)))  # a row copied whole, not value by value
            out.reshape(len(out), -1).view(whole)[order, 0] = gathered.reshape(len(out), -1).view(whole)[:, 0]
        return True

    def _check(self, rows: np.ndarray, out: np.ndarray) -> None:
        expected = self._index.checksums[rows]
        for i, row in enumerate(rows.tolist()):
            if checksum(out[i]) != expected[i]:
                raise ChecksumError(
                    f"{self.path}: sample {self.ids[row]!r} (row {row}, shard "
                    f"{self.manifest.shards[int(self.manifest.locate(np.array([row]))[0])].path}) "
                    f"does not match its checksum; run 'shardfeed verify {self.path}'"
                )

    def _reader(self, shard: int) -> ShardReader:
        if self._readers_pid != os.getpid():
            # Inherited across fork: the parent's handles are not ours to use or close.
            self._readers = {}
            self._readers_pid = os.getpid()
            self._lock = threading.Lock()
        reader = self._readers.get(shard)
        if reader is None:
            with self._lock:
                reader = self._readers.get(shard)
                if reader is None:
                    reader = self._open_current(shard)
                    self._readers[shard] = reader
        return reader

    def _open_current(self, shard: int) -> ShardReader:
        """A new reader of `shard`, refusing a shard of another conversion than the manifest's."""
        try:
            reader = self._open_reader(shard)
        except (StoreFormatError, ShardNotFoundError):
            self._check_not_replaced(None)  # a shard of the next conversion is not "corrupt"
            raise
        self._check_not_replaced(reader)
        return reader

    def _stamp_manifest(self) -> tuple | str | None:
        """What tells this manifest from the next one: each conversion writes it anew (a new file, a new
        object). Local: inode, size and modification time; at a URL: ETag and size."""
        try:
            if self.location is None:
                info = os.stat(self.path / MANIFEST_NAME)
                return info.st_ino, info.st_size, info.st_mtime_ns
            return self.location.stamp(MANIFEST_NAME)
        except FileNotFoundError:
            return None  # no store (yet): opening it says so

    def _check_not_replaced(self, reader: ShardReader | None) -> None:
        """After a shard is opened, the manifest must be the one this store was opened with: `convert
        --overwrite` removes the manifest before it touches a shard, so a shard of another conversion
        never passes for one of this index (its IDs, labels and checksums)."""
        if self.location is None and getattr(self, "_manifest_hold", None) is None:
            self._hold_manifest()  # after close(), or in a worker: pin the inode again while reading
        if self._stamp_manifest() != self._manifest_stamp:
            if reader is not None:
                reader.close()
            raise StoreReplacedError(
                f"{self.path}: the store was replaced (converted again, or appended to) since it was opened; reopen it "
                f"(open_store, or a new DataGenerator) to read the new one"
            )

    def _open_reader(self, shard: int) -> ShardReader:
        manifest = self.manifest if self.ragged is None else self.ragged.flat  # what the backend holds
        info = manifest.shards[shard]
        if self.location is not None:
            return get_backend(self.backend).open_remote_reader(self.location, manifest, info, self.fast)
        path = self.path / info.path
        if not path.is_file():
            raise ShardNotFoundError(f"{path}: shard {shard} is missing")
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(os.path.realpath(self.path)):
            raise StoreFormatError(f"{path}: shard {shard} links to {target}, outside the store")
        backend = get_backend(self.backend)
        return backend.open_reader(self.path, manifest, info, self.fast)

    def close(self) -> None:
        """Close this process's shard readers and the manifest (they reopen on the next read)."""
        if self._readers_pid == os.getpid():
            for reader in self._readers.values():
                reader.close()
        self._readers = {}
        if self.__dict__.get("targets") is not None:
            self.targets.close()
        if getattr(self, "_manifest_hold", None) is not None:
            self._manifest_hold()
            self._manifest_hold = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(
    path: str | os.PathLike, *, fast: bool = True, verify: bool = False, storage_options: dict | None = None
) -> Store:
    """Open a finalized store (a directory, or for Zarr an fsspec URL such as `s3://bucket/x.zarr`).

    Refuses an unfinished store or one of a newer format version.
    """
    return Store(path, fast=fast, verify=verify, storage_options=storage_options)
