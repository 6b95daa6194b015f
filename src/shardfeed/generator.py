"""`DataGenerator`: a Keras 3 `PyDataset` over a store. The only module that imports Keras.

Keras 3 moved `workers`, `use_multiprocessing` and `max_queue_size` from `fit()` onto the
PyDataset, rebuilds its worker pool every epoch, and hands each worker a copy of the dataset
(inherited under fork, pickled under spawn/forkserver). Our state is small and picklable (a
`Store` drops its file handles), and a batch is a pure function of (epoch, index), so every
worker produces the same batches as the main process.

Keras waits for a worker's result with no timeout: a worker killed by the OOM killer hangs
`fit` forever (RELIABILITY.md). `WorkerWatchdog` notices the death and fails the waiting
results with `WorkerDiedError` instead.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras.src.trainers.data_adapters import py_dataset_adapter

from .batches import BatchSource
from .errors import WorkerDiedError
from .manifest import write_atomic
from .store import Store

WATCHDOG_INTERVAL_S = 0.25


class DataGenerator(keras.utils.PyDataset):
    """Shuffled `(x, y)` batches from a store, for `model.fit`.

    Args:
        store, split, ids, batch_size, shuffle, seed, shuffle_mode, labels, dtype,
            drop_remainder, rank, world_size: see `shardfeed.batches.BatchSource`.
        workers, use_multiprocessing, max_queue_size: Keras' PyDataset options. With
            `use_multiprocessing=True`, pass `shuffle=False` to `fit` if the batch order must
            be reproducible: `fit(shuffle=True)` (its default) permutes batch indices itself.

    Batch `i` of epoch `e` is always the same. `fit` moves through epochs by calling
    `on_epoch_begin`/`on_epoch_end`; a hand-written loop calls both around each epoch.
    """

    def __init__(
        self,
        store: str | os.PathLike | Store,
        split: str | None = None,
        ids: Sequence[str] | None = None,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int | None = None,
        shuffle_mode: str = "global",
        labels: str | None = "onehot",
        dtype: str | np.dtype | None = "float32",
        drop_remainder: bool = False,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.source = BatchSource(
            store, split=split, ids=ids, batch_size=batch_size, shuffle=shuffle, seed=seed,
            shuffle_mode=shuffle_mode, labels=labels, dtype=dtype, drop_remainder=drop_remainder,
            rank=rank, world_size=world_size,
        )  # fmt: skip
        self.epoch = 0
        self.start_batch = 0  # > 0 only in an epoch resumed mid-way
        self._in_epoch = False

    @property
    def store(self) -> Store:
        return self.source.store

    @property
    def seed(self) -> int:
        return self.source.seed

    def __len__(self) -> int:
        return self.source.num_batches - self.start_batch

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range [0, {len(self)})")
        return self.source.batch(self.epoch, self.start_batch + index)

    def on_epoch_begin(self) -> None:
        self._in_epoch = True
        if self.use_multiprocessing:
            WorkerWatchdog.ensure_running()

    def on_epoch_end(self) -> None:
        # Keras also calls this once when `fit` starts, before any epoch: only an epoch that
        # began moves us on, so generator epochs match Keras' epoch numbers.
        if not self._in_epoch:
            return
        self._in_epoch = False
        self.epoch += 1
        self.start_batch = 0

    def get_state(self, next_batch: int = 0) -> dict:
        """Position to resume from: `next_batch` of the current epoch comes next."""
        return {"seed": self.seed, "epoch": self.epoch, "next_batch": self.start_batch + next_batch}

    def set_state(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"saved state has seed {state['seed']}, this generator {self.seed}")
        self.epoch, self.start_batch = int(state["epoch"]), int(state["next_batch"])
        if self.start_batch >= self.source.num_batches:
            self.epoch, self.start_batch = self.epoch + 1, 0


class ResumeCallback(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that also saves and restores the generator's position.

    Keras' own callback restores weights and the epoch, then replays that epoch from its
    first batch. This one saves the generator's (seed, epoch, next batch) beside the weights
    at exactly the same moments, so an interrupted `fit` resumed with the same arguments sees
    the batches an uninterrupted run would have seen, from the next batch on.
    """

    def __init__(self, backup_dir: str | os.PathLike, generator: DataGenerator, **kwargs) -> None:
        super().__init__(str(backup_dir), **kwargs)
        self.generator = generator
        self._state_path = Path(backup_dir) / "shardfeed_generator.json"
        self._epoch = 0
        self._first_batch = 0  # the generator's batch that Keras calls batch 0 in this epoch
        self._batches_done = 0
        self._saved_filters: list | None = None

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)
        if self._state_path.exists():
            self.generator.set_state(json.loads(self._state_path.read_text()))
            self.model._initial_epoch = self.generator.epoch
            if self.generator.start_batch:
                # Keras counted the full epoch before we shortened it; it says so, wrongly.
                self._saved_filters = warnings.filters[:]
                warnings.filterwarnings("ignore", message="Your input ran out of data")

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._epoch, self._first_batch, self._batches_done = epoch, self.generator.start_batch, 0

    def on_train_batch_end(self, batch, logs=None) -> None:
        self._batches_done = batch + 1
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None) -> None:
        self._epoch, self._first_batch, self._batches_done = epoch + 1, 0, 0
        if self._saved_filters is not None:
            warnings.filters[:] = self._saved_filters
            self._saved_filters = None
        super().on_epoch_end(epoch, logs)

    def _save_model(self) -> None:
        super()._save_model()
        state = {
            "seed": self.generator.seed,
            "epoch": self._epoch,
            "next_batch": self._first_batch + self._batches_done,
        }
        write_atomic(self._state_path, json.dumps(state).encode())


class WorkerWatchdog:
    """Fails Keras' pending worker results when one of its pool's worker processes dies.

    `multiprocessing.Pool` replaces a dead worker but never completes the task it was running,
    and Keras waits for that result without a timeout. Every `WATCHDOG_INTERVAL_S` we compare
    each running Keras pool's worker pids with the last ones seen; a pid that vanished while
    the pool is running means a worker died. We then fail every pending result with
    `WorkerDiedError` (Keras re-raises it from `fit`) and terminate the pool.
    """

    _thread: threading.Thread | None = None
    _lock = threading.Lock()

    @classmethod
    def ensure_running(cls) -> None:
        with cls._lock:
            if cls._thread is None or not cls._thread.is_alive() or cls._thread_pid != os.getpid():
                cls._thread_pid = os.getpid()
                cls._thread = threading.Thread(target=cls._watch, name="shardfeed-watchdog", daemon=True)
                cls._thread.start()

    @classmethod
    def _watch(cls) -> None:
        known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        stop = threading.Event()
        while not stop.wait(WATCHDOG_INTERVAL_S):
            for pool in list(py_dataset_adapter._DATA_POOLS):
                if getattr(pool, "_state", None) != "RUN":
                    continue
                workers = {p.pid: p for p in list(pool._pool)}
                died = [(pid, code) for pid, code in known.get(pool, {}).items() if pid not in workers]
                died += [(p.pid, p.exitcode) for p in workers.values() if p.exitcode not in (None, 0)]
                if died:
                    cls._fail(pool, died)
                else:
                    known[pool] = {pid: p.exitcode for pid, p in workers.items()}

    @staticmethod
    def _fail(pool, died: list) -> None:
        pid = died[0][0]
        error = WorkerDiedError(
            f"a DataGenerator worker process (pid {pid}) died, probably killed by the OOM killer or a "
            f"signal; its batch is lost. Lower workers or max_queue_size, or use threads "
            f"(use_multiprocessing=False)"
        )
        for job in list(pool._cache.values()):
            job._set(0, (False, error))
        pool.terminate()
