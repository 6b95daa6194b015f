"""`DataGenerator`: a Keras 3 `PyDataset` over a store. The only module that imports Keras.

Keras 3 moved `workers`, `use_multiprocessing` and `max_queue_size` from `fit()` onto the
PyDataset, rebuilds its worker pool every epoch, and hands each worker a copy of the dataset
(inherited under fork, pickled under spawn/forkserver). Our state is small and picklable (a
`Store` drops its file handles), and a batch is a pure function of (epoch, index), so every
worker produces the same batches as the main process.

Keras waits for a worker's result with no timeout: a worker killed by the OOM killer hangs
`fit` forever (RELIABILITY.md). Importing this module makes Keras build its PyDataset process
pools as `WatchedPool`, which fails the waiting results with `WorkerDiedError` instead.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.pool
import os
import threading
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras.src.trainers.data_adapters import py_dataset_adapter

from ..errors import WorkerDiedError
from ..storage.files import write_atomic
from ..storage.store import Store
from .batches import BatchSource


class DataGenerator(keras.utils.PyDataset):
    """Shuffled `(x, y)` batches from a store, for `model.fit`.

    Args:
        store, split, ids, batch_size, shuffle, seed, shuffle_mode, labels, dtype,
            drop_remainder, rank, world_size: see `shardfeed.feed.batches.BatchSource`.
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
        rank: int | None = None,
        world_size: int | None = None,
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


class WatchedPool(multiprocessing.pool.Pool):
    """The process pool Keras gets for PyDatasets: fails pending results when a worker dies.

    `multiprocessing.Pool` replaces a dead worker but never completes the task it was running,
    and Keras waits for that result without a timeout. A Keras pool has no task limit per
    worker, so any worker started after the pool is populated (running or closed, not yet
    terminated) replaces one that died: at
    that moment (within 0.1 s of the death) we fail every pending result with
    `WorkerDiedError`, which Keras re-raises from `fit`, and terminate the pool.
    """

    def __init__(self, processes=None, *args, **kwargs) -> None:
        self._populated = False
        pool_ref = weakref.ref(self)

        def start_worker(ctx, *process_args, **process_kwargs):
            pool = pool_ref()
            # Keras closes the pool once every task is queued; a closed pool still replaces a dead
            # worker while results are pending, and workers only exit normally after that.
            if pool is not None and pool._populated and pool._state != "TERMINATE":
                pool._fail_pending()
            return ctx.Process(*process_args, **process_kwargs)

        self.Process = start_worker  # used for the first workers and for every replacement
        super().__init__(processes, *args, **kwargs)
        self._populated = True

    def _fail_pending(self) -> None:
        error = WorkerDiedError(
            "a DataGenerator worker process died (killed by the OOM killer or a signal?); its "
            "batch is lost. Lower workers or max_queue_size, or use threads (use_multiprocessing=False)"
        )
        for job in list(self._cache.values()):
            job._set(0, (False, error))
        # terminate() joins the thread we are called from: let another thread do it.
        threading.Thread(target=self.terminate, name="shardfeed-pool-terminate", daemon=True).start()


def _keras_pool_class(use_multiprocessing: bool):
    pool_class = _keras_get_pool_class(use_multiprocessing)
    return WatchedPool if pool_class is multiprocessing.Pool else pool_class


_keras_get_pool_class = py_dataset_adapter.get_pool_class
py_dataset_adapter.get_pool_class = _keras_pool_class
