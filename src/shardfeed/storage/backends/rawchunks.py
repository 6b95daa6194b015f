"""The fast read path: copy rows straight out of chunk bytes at known file offsets.

Both HDF5 (chunk index) and Zarr's sharding codec (shard index) tell where each chunk's bytes
lie in a shard file. Reading those bytes ourselves skips the libraries' per-call costs
(h5py's global lock, zarr's per-chunk async machinery), which ANCHORS.md measured at
10-200x the cost of the copy itself. Offsets come from an untrusted file, so every range is
checked against the file size and every decoded chunk against its expected size.
"""

from __future__ import annotations

import functools
import mmap
import os
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ...errors import StoreFormatError
from .base import ShardReader, chunk_groups, run_jobs

# Fills `out` (uint8, exactly the chunk's decoded size) from a chunk's bytes, or raises: a chunk
# that would decode to more or fewer bytes is refused, never cut or left part uninitialized.
Decoder = Callable[[bytes, np.ndarray], None]
ROW_COPY_MIN_BYTES = 16 * 1024  # larger rows: a loop of single copies beats gather-then-scatter
MAX_DECODE_THREADS = 8

_decode_pool: ThreadPoolExecutor | None = None
_decode_pool_lock = threading.Lock()


def decode_pool() -> ThreadPoolExecutor:
    """This process's threads for decoding chunks in parallel (zstd, zlib and blosc release the GIL).

    A batch touching many compressed chunks (global shuffle) decodes them on every core.
    """
    global _decode_pool
    with _decode_pool_lock:
        if _decode_pool is None:
            threads = min(MAX_DECODE_THREADS, len(os.sched_getaffinity(0)))
            _decode_pool = ThreadPoolExecutor(threads, thread_name_prefix="shardfeed-decode")
        return _decode_pool


def _forget_decode_pool() -> None:
    """A forked child (a Keras worker) has none of its parent's threads: it starts its own pool."""
    global _decode_pool, _decode_pool_lock
    _decode_pool, _decode_pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_decode_pool)


def zlib_decoder(wbits: int) -> Decoder:
    """Bounded inflate: never produces more than the chunk's size (a chunk bomb stops there)."""

    def decode(data: bytes, out: np.ndarray) -> None:
        inflater = zlib.decompressobj(wbits)
        inflated = inflater.decompress(data, len(out))
        if inflater.unconsumed_tail:
            raise ValueError(f"chunk inflates beyond its expected {len(out)} bytes")
        if len(inflated) != len(out):
            raise ValueError(f"chunk inflates to {len(inflated)} bytes, expected {len(out)}")
        out[:] = np.frombuffer(inflated, dtype=np.uint8)

    return decode


_scratch = threading.local()


def scratch_buffer(nbytes: int) -> np.ndarray:
    """This thread's reusable uint8 buffer of `nbytes` to decode a chunk into.

    A fresh array per chunk cost more than decoding it: 128 KiB is glibc's threshold for mapping
    a block from the kernel, so every chunk paid for faulting in and zeroing 32 pages (zstd chunks
    of 128 KiB: 305 us per chunk into a fresh array, 194 us into a reused one; issue #13). Each
    chunk's rows are copied out before the thread decodes its next one.
    """
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < nbytes:
        buffer = _scratch.buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes]


class RawChunkReader(ShardReader):
    """Reads rows of one shard file from chunk byte ranges (optionally compressed)."""

    def __init__(
        self,
        path: Path,
        offsets: np.ndarray,
        sizes: np.ndarray,
        chunk_rows: int,
        sample_shape: tuple[int, ...],
        dtype: np.dtype,
        decode: Decoder | None,
    ) -> None:
        self._path = path
        self._chunk_rows = chunk_rows
        self._sample_shape = sample_shape
        self._dtype = dtype
        self._decode = decode
        self._chunk_nbytes = chunk_rows * int(np.prod(sample_shape, dtype=np.int64)) * dtype.itemsize
        self._offsets = offsets.astype(np.int64)
        self._sizes = sizes.astype(np.int64)
        self._sample_nbytes = self._chunk_nbytes // chunk_rows
        # Kept open: a file truncated in place under the mapping would kill this process with SIGBUS
        # at the first read past its new end, so every read first checks the size (one fstat).
        self._fd = os.open(path, os.O_RDONLY)
        try:
            file_size = os.fstat(self._fd).st_size
            self._check_ranges(file_size)
            self._mm = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) if file_size else None
        except BaseException:
            os.close(self._fd)
            raise
        self._needed = int((self._offsets + self._sizes).max(initial=0))
        self._run_first, self._views = self._run_views()
        self._bytes, self._rows = self._row_windows()

    def _check_ranges(self, file_size: int) -> None:
        bad = (self._offsets < 0) | (self._sizes < 0) | (self._offsets + self._sizes > file_size)
        if self._decode is None:
            bad |= self._sizes != self._chunk_nbytes
        if bad.any():
            chunk = int(np.flatnonzero(bad)[0])
            raise StoreFormatError(
                f"{self._path}: chunk {chunk} claims bytes [{self._offsets[chunk]}, "
                f"+{self._sizes[chunk]}) of a {file_size}-byte file with {self._chunk_nbytes}-byte "
                f"chunks; the shard is truncated or corrupt"
            )

    def _run_views(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """Arrays over each run of raw chunks that lie back to back in the file, in order.

        HDF5 puts an index node after every 64 chunks or so, and Zarr shards are contiguous: a few
        views cover a shard (`raw_runs`: where rows start in memory, rows copied across shards).
        Returns the first row of each run and its view.
        """
        if self._decode is not None or self._mm is None or len(self._offsets) == 0:
            return np.empty(0, dtype=np.int64), []
        breaks = np.flatnonzero(np.diff(self._offsets) != self._chunk_nbytes) + 1
        starts = np.r_[0, breaks]
        stops = np.r_[breaks, len(self._offsets)]
        views = [
            np.ndarray(((b - a) * self._chunk_rows, *self._sample_shape), dtype=self._dtype,
                       buffer=self._mm, offset=int(self._offsets[a]))
            for a, b in zip(starts.tolist(), stops.tolist())
        ]
        return starts * self._chunk_rows, views

    def _row_windows(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The file's bytes, and the file seen as an overlapping "row" (a void item of
        `sample_nbytes`) starting at every byte; None for compressed chunks or empty samples.

        A gather is then one fancy index, `rows[byte offsets]`, across every run of a shard, as it
        is over the single view of a Zarr shard: HDF5 shards hold a run per ~60 chunks, and a
        step per run cost small samples 2-3x.
        """
        if not self._views or self._sample_nbytes == 0:
            return None, None
        row = np.dtype((np.void, self._sample_nbytes))
        last = int(self._offsets.max()) + self._chunk_nbytes - self._sample_nbytes  # the last row's start
        rows = np.ndarray((last + 1,), dtype=row, buffer=self._mm, strides=(1,))
        return np.frombuffer(self._mm, dtype=np.uint8), rows

    def _check_size(self) -> None:
        """Refuse to touch a mapping whose file has shrunk below the chunks it must hold."""
        size = os.fstat(self._fd).st_size
        if size < self._needed:
            raise StoreFormatError(
                f"{self._path}: the shard shrank to {size} bytes while open, its chunks need {self._needed} "
                f"(truncated in place?); reading it would crash the process (SIGBUS); restore the store and reopen it"
            )

    def read(self, local_rows: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
        # docstring inherited
        jobs = self.decode_jobs(local_rows, out, positions)
        if jobs is None:
            self._check_size()
            self._copy_raw(local_rows, out, positions)
        else:
            run_jobs(jobs, decode_pool())

    def decode_jobs(
        self, local_rows: np.ndarray, out: np.ndarray, positions: np.ndarray
    ) -> list[Callable[[], None]] | None:
        """Compressed chunks: a job per touched chunk. A chunk of one row is decoded straight into its
        place in `out` (no buffer, no copy: the benchmark's zstd store of 128 KiB samples read 1,913
        samples/s before, 3,254 after), others into the thread's scratch buffer, whose rows are then
        copied out."""
        if self._decode is None:
            return None
        self._check_size()
        out_bytes = out.reshape(len(out), -1).view(np.uint8)

        def decode(chunk: int, a: int, b: int) -> None:
            if self._chunk_rows == 1:
                first = out_bytes[positions[a]]
                self._decode_chunk(chunk, first)
                out_bytes[positions[a + 1 : b]] = first  # the same row asked for again
            else:
                rows = self._decode_chunk(chunk, scratch_buffer(self._chunk_nbytes))
                rows = rows.view(self._dtype).reshape(self._chunk_rows, *self._sample_shape)
                out[positions[a:b]] = rows[local_rows[a:b] - chunk * self._chunk_rows]

        return [functools.partial(decode, *group) for group in chunk_groups(local_rows, self._chunk_rows)]

    def raw_runs(self) -> tuple[list[int], list[np.ndarray]] | None:
        # docstring inherited
        self._check_size()
        return (self._run_first.tolist(), self._views) if self._views else None

    def gather(self, local_rows: np.ndarray, out: np.ndarray) -> bool:
        # docstring inherited
        if not self._views:
            return False
        self._check_size()
        self._copy_raw(local_rows, out, None)
        return True

    def _copy_raw(self, local_rows: np.ndarray, out: np.ndarray, positions: np.ndarray | None) -> None:
        """Copy rows (in any order) out of the mapping; `positions` None means row i to out[i]."""
        if self._rows is None or len(local_rows) == 0:
            return  # nothing to copy: rows of zero bytes
        if len(self._views) == 1 and positions is None:
            # One run (Zarr, HDF5 since issue #13): one gather straight into `out`, whatever the row
            # size (128 KiB rows: 1.13x a loop of row copies, AMD EPYC). "clip" is never used (rows
            # are checked by Store.read); "raise" would buffer `out`.
            self._views[0].take(local_rows, axis=0, out=out, mode="clip")  # the method: np.take adds 1 us
            return
        if len(self._views) == 1:  # one run of chunks: its rows lie back to back from its start
            starts = local_rows * self._sample_nbytes + int(self._offsets[0])
        else:
            chunks, in_chunk = np.divmod(local_rows, self._chunk_rows)
            starts = self._offsets[chunks] + in_chunk * self._sample_nbytes
        out_bytes = out.reshape(len(out), -1).view(np.uint8)
        if self._sample_nbytes >= ROW_COPY_MIN_BYTES:  # one copy per row, not gather + scatter
            nbytes, targets = self._sample_nbytes, range(len(starts)) if positions is None else positions.tolist()
            for pos, start in zip(targets, starts.tolist()):
                out_bytes[pos] = self._bytes[start : start + nbytes]
        else:  # one gather across runs, through a small temporary (fancy indexing has no `out`)
            out_rows = out_bytes.view(self._rows.dtype)[:, 0]
            out_rows[slice(None) if positions is None else positions] = self._rows[starts]

    def _decode_chunk(self, chunk: int, into: np.ndarray) -> np.ndarray:
        """Decode chunk `chunk` into `into` (uint8, the chunk's size); returns `into`."""
        start, size = int(self._offsets[chunk]), int(self._sizes[chunk])
        # A copy of the compressed bytes, not a view: a codec's error keeps its arguments alive in the
        # traceback, and a live view of the mapping would stop close() from unmapping it.
        data = self._mm[start : start + size]
        try:
            self._decode(data, into)
        except Exception as exc:  # codecs raise their own error types on corrupt input
            raise StoreFormatError(f"{self._path}: chunk {chunk} does not decode: {exc}") from exc
        return into

    def close(self) -> None:
        # docstring inherited
        self._views, self._bytes, self._rows = [], None, None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
