"""Reading ahead of the trainer: the next batches of the generator's sequence, made by threads or
by worker processes while the trainer trains on the current one.

The sequence is known in advance (`schedule.EpochCursor` serves batches in order, and each batch
is a pure function of (epoch, batch)), so nothing is guessed: `get(key)` expects the key that
follows the previous one, and a key off the sequence (a resume) starts the reading afresh from it.
Processes write into a ring of shared-memory slots (`workers.WorkerPool`); when the trainer still
holds every slot, a batch is made in the trainer instead (and a warning says so, once).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import threading
import warnings
from collections.abc import Callable

import numpy as np

from .batches import BatchSource
from .workers import WorkerPool

Key = tuple[int, int]  # (epoch, batch)
# Slots: the read-ahead depth, as many again for batches the trainer (or a framework's prefetch
# buffer, TensorFlow's for one) still holds, and a few for the batch being handed over.
SPARE_SLOTS = 4


class FillBatch:
    """What a worker process runs: batch `key` of `source` into a slot's arrays (picklable)."""

    def __init__(self, source: BatchSource) -> None:
        self.source = source

    def __call__(self, key: Key, out: tuple[np.ndarray, ...]) -> int:
        return self.source.fill(key[0], key[1], out)


class ReadAhead:
    """Up to `depth` batches made ahead of the trainer, by `workers` threads or processes.

    Args:
        source: what the batches are made from.
        following: the key after a key in the generator's sequence.
        workers: threads or processes making batches.
        processes: use worker processes (started on the first `get`, reused until `close`).
        depth: batches made ahead.
    """

    def __init__(
        self,
        source: BatchSource,
        following: Callable[[Key], Key],
        workers: int,
        processes: bool,
        depth: int,
    ) -> None:
        self.source, self.following = source, following
        self.workers, self.processes = workers, processes
        self.depth = max(depth, workers)
        self._pending: collections.deque[tuple[Key, object]] = collections.deque()  # (key, future or None)
        self._lock = threading.Lock()  # TensorFlow asks from its generator thread
        self._pool: WorkerPool | None = None
        self._threads: cf.ThreadPoolExecutor | None = None
        self._warned = False

    def get(self, key: Key) -> tuple[np.ndarray, ...]:
        """Batch `key`, and the reading of the batches after it started."""
        with self._lock:
            try:
                return self._get(key)
            except BaseException:
                # Ctrl-C, a dead worker, a failed batch: results still in flight would come back one
                # batch out of step with `_pending`, so the reading starts afresh at the next `get`.
                self._stop()
                raise

    def _get(self, key: Key) -> tuple[np.ndarray, ...]:
        if not self._pending or self._pending[0][0] != key:
            self._drop_pending()
            self._submit(key)
        _, handle = self._pending.popleft()
        self._top_up(key)
        if self.processes and handle is None:
            return self._in_trainer(key)
        return handle.result() if isinstance(handle, cf.Future) else self.source.slot_view(key, self._pool.get())

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes (none before the first batch, or with threads)."""
        return [] if self._pool is None else self._pool.pids

    def close(self) -> None:
        """Stop the workers (the next `get` starts them again); batches the trainer holds stay valid."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        self._pending.clear()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None

    def _submit(self, key: Key) -> None:
        if not self.processes:
            if self._threads is None:
                self._threads = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="shardfeed-read")
            self._pending.append((key, self._threads.submit(self.source.batch, *key)))
            return
        if self._pool is None:
            specs = self.source.specs()
            residue = self.source.store.batch_residue  # the slots' samples arrays start where rows copy fast
            self._pool = WorkerPool(FillBatch(self.source), specs, self.workers, self.slots, residue)
        if self._pool.has_free_slot():
            self._pool.submit(key)
            self._pending.append((key, True))
        else:
            self._pending.append((key, None))  # made in the trainer when its turn comes

    @property
    def slots(self) -> int:
        return 2 * self.depth + SPARE_SLOTS

    def _top_up(self, served: Key) -> None:
        if self._pending and self._pending[-1][1] is None and self._pool.has_free_slot():
            self._submit(self._pending.pop()[0])  # a slot is free again: only the last entry waits for one
        last = self._pending[-1][0] if self._pending else served
        while len(self._pending) < self.depth:
            if self._pending and self._pending[-1][1] is None:
                return  # no free slot: try again at the next batch
            last = self.following(last)
            self._submit(last)

    def _drop_pending(self) -> None:
        """Forget batches made for keys the trainer no longer wants (after a resume)."""
        while self._pending:
            _, handle = self._pending.popleft()
            if isinstance(handle, cf.Future):
                handle.cancel()
            elif handle is True:
                with contextlib.suppress(Exception):  # an error of a batch nobody wants is nobody's
                    self._pool.get()  # its slot is free again once the arrays are dropped here

    def _in_trainer(self, key: Key) -> tuple[np.ndarray, ...]:
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"DataGenerator: batches still referenced in the trainer hold all {self.slots} shared-memory "
                f"batch slots, so this batch is made in the trainer instead (slower); keep fewer batches alive",
                RuntimeWarning,
                stacklevel=3,
            )
        return self.source.batch(*key)
