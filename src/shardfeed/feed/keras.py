"""`DataGenerator`: a Keras 3 `PyDataset` over a store, with its own reading ahead.

Keras sees an in-process dataset (`workers=1`, no multiprocessing) and calls `__getitem__` from
its trainer; the generator reads ahead itself, in threads or in worker processes that write whole
batches into shared memory (`readahead`, `workers`, `ring`), so Keras' own pool, which rebuilds
itself every epoch and pickles every batch through a pipe, is never used. `schedule.EpochCursor`
maps each backend's calls to the generator's epochs and batches, so every Keras epoch trains on
exactly one generator epoch, on TensorFlow, JAX and PyTorch alike.
"""

from __future__ import annotations

import json
import os
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from ..errors import OptionError
from ..storage.files import write_atomic
from ..storage.store import Store
from .batches import BatchSource
from .launch import main_path
from .padding import batch_source
from .readahead import ReadAhead
from .schedule import EpochCursor
from .targets import SampleWeight
from .transforms import Transform, check_sendable


class DataGenerator(keras.utils.PyDataset):
    """Shuffled `(x, y)` batches from a store, for `model.fit`.

    Args:
        store, split, ids, batch_size, shuffle, seed, shuffle_mode, labels, dtype, drop_remainder,
            rank, world_size, transform, transform_targets, sample_weight: see
            `shardfeed.feed.batches.BatchSource`.
        workers: threads or processes that make batches ahead of the trainer. Default: 1 (batches
            are made in the trainer when asked for); with a `transform`, one per available core.
        use_multiprocessing: make batches in worker processes (fresh interpreters started on the
            first batch and reused until `close()` or garbage collection) that write into shared
            memory. Default: False; with a `transform` and several workers, True.
        max_queue_size: batches made ahead.
        padding, pad_value, target_pad_value, bucket_by_length: batches of variable-shape samples (or
            target arrays), padded to each batch's largest sample ("batch") or to the store's ("max");
            see `shardfeed.feed.padding`.

    Inside `fit`, batches come in the generator's order: the k-th batch Keras asks for in an
    epoch is batch k of that epoch, whatever index it asks for (`fit(shuffle=True)` permutes
    indices; the generator's own shuffle already permutes samples), so runs are reproducible with
    either setting and workers read ahead exactly. `gen[i]` outside `fit` is batch i of the
    current epoch. A hand-written loop calls `on_epoch_begin()`/`on_epoch_end()` around each epoch.
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
        labels: str | None = "auto",
        dtype: str | np.dtype | None = "float32",
        drop_remainder: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        transform: Transform | None = None,
        transform_targets: bool = False,
        padding: str | None = None,
        pad_value: float = 0,
        target_pad_value: float = 0,
        bucket_by_length: bool = False,
        sample_weight: SampleWeight = None,
        workers: int | None = None,
        use_multiprocessing: bool | None = None,
        max_queue_size: int = 10,
    ) -> None:
        workers, use_multiprocessing = _worker_defaults(transform, workers, use_multiprocessing)
        if type(max_queue_size) is not int or max_queue_size < 1:
            raise OptionError(f"max_queue_size must be an integer >= 1, got {max_queue_size!r}")
        if use_multiprocessing and transform is not None:
            check_sendable(transform)
        # Keras must not start its own pool: the reading ahead is ours.
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=max_queue_size)
        self.source: BatchSource = batch_source(
            store, padding=padding, pad_value=pad_value, target_pad_value=target_pad_value,
            bucket_by_length=bucket_by_length,
            split=split, ids=ids, batch_size=batch_size, shuffle=shuffle, seed=seed,
            shuffle_mode=shuffle_mode, labels=labels, dtype=dtype, drop_remainder=drop_remainder,
            rank=rank, world_size=world_size, transform=transform, sample_weight=sample_weight,
            transform_targets=transform_targets,
        )  # fmt: skip
        self.cursor = EpochCursor(self.source.num_batches)
        self.read_ahead: ReadAhead | None = None
        if workers > 1 or use_multiprocessing:
            self.read_ahead = ReadAhead(self.source, self.cursor.following, workers, use_multiprocessing,
                                        max_queue_size)  # fmt: skip
            self._closer = weakref.finalize(self, self.read_ahead.close)

    @property
    def store(self) -> Store:
        return self.source.store

    @property
    def seed(self) -> int:
        return self.source.seed

    @property
    def epoch(self) -> int:
        """The generator's current epoch (the next `fit` epoch trains on it)."""
        return self.cursor.epoch

    @property
    def start_batch(self) -> int:
        """The first batch of the current epoch: > 0 only in an epoch resumed part way."""
        return self.cursor.start

    def __len__(self) -> int:
        return self.cursor.remaining

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        peeking = self.cursor.peeking
        epoch, batch, in_order = self.cursor.locate(index)
        if in_order and self.read_ahead is not None:
            return self.read_ahead.get((epoch, batch))
        if peeking and index == 1 and self.source.variable_shapes:
            # Keras' TensorFlow trainer takes the batches' shape from its peeks at batches 0 and 1: a
            # padded axis as long in both would be fixed for the whole fit.
            return self.source.unlike(epoch, batch, batch - 1)
        return self.source.batch(epoch, batch)

    def on_epoch_begin(self) -> None:
        self.cursor.begin()

    def on_epoch_end(self) -> None:
        self.cursor.end()

    def close(self) -> None:
        """Stop the worker threads or processes now, and close the store's files (garbage collection
        and exit do it too); a later batch reopens what it needs."""
        if self.read_ahead is not None:
            self.read_ahead.close()
        self.store.close()

    def __enter__(self) -> DataGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get_state(self, next_batch: int = 0) -> dict:
        """Position to resume from: `next_batch` of the current epoch comes next."""
        return {"seed": self.seed, "epoch": self.epoch, "next_batch": self.start_batch + next_batch}

    def set_state(self, state: dict) -> None:
        """Continue where `get_state` was taken; a generator whose seed was drawn takes the saved one."""
        if state["seed"] != self.seed:
            self.source.adopt_seed(state["seed"])
        if self.read_ahead is not None:
            self.read_ahead.close()  # its workers hold the old seed and read ahead of the old position
        self.cursor.move_to(int(state["epoch"]), int(state["next_batch"]))


MAX_DEFAULT_WORKERS = 8  # a default, not a limit: each worker is an interpreter with its own memory


def _worker_defaults(transform: Transform | None, workers: int | None, processes: bool | None) -> tuple[int, bool]:
    """Without a transform, batches are cheap: made in the trainer. With one, a process per core (up
    to 8), or threads for a transform that no fresh process can import (defined in a notebook)."""
    if workers is None:
        workers = 1 if transform is None else min(_available_cores(), MAX_DEFAULT_WORKERS)
    if type(workers) is not int or workers < 1:
        raise OptionError(f"workers must be an integer >= 1, got {workers!r}")
    interactive = transform is not None and getattr(transform, "__module__", None) == "__main__" and main_path() is None
    if processes is None:
        processes = transform is not None and workers > 1 and not interactive
    elif processes and interactive:
        raise OptionError(
            f"transform {getattr(transform, '__qualname__', transform)!r} is defined in an interactive session, "
            f"which worker processes cannot import; define it in a module, or use threads (use_multiprocessing=False)"
        )
    return workers, bool(processes)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ResumeCallback(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that also saves and restores the generator's position.

    Keras' own callback restores weights and the epoch, then replays that epoch from its
    first batch. This one saves the generator's (seed, epoch, next batch) beside the weights
    at exactly the same moments, so an interrupted `fit` resumed with the same arguments sees
    the batches an uninterrupted run would have seen, from the next batch on.

    The position is the generator's own, counted from where this `fit` found it in batches
    trained on: Keras' epoch number is another count once a `fit` is not the first, or takes
    `steps_per_epoch` batches of a longer generator. With `steps_per_epoch`, Keras replays the
    interrupted epoch's full count of steps; the generator still goes on from its next batch, so
    the resumed fit trains on up to `steps_per_epoch` more batches than an uninterrupted one.
    """

    def __init__(self, backup_dir: str | os.PathLike, generator: DataGenerator, **kwargs) -> None:
        super().__init__(str(backup_dir), **kwargs)
        self.generator = generator
        self._state_path = Path(backup_dir) / "shardfeed_generator.json"
        self._start = (0, 0)  # the generator's (epoch, batch) that this fit's first batch is
        self._trained = 0  # batches trained on in this fit's finished epochs
        self._batches_done = 0  # and in the current one
        self._saved_filters: list | None = None

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)  # weights and Keras' epoch
        if self._state_path.exists():
            self.generator.set_state(json.loads(self._state_path.read_text()))
            if self.generator.start_batch:
                # Keras counted the full epoch before we shortened it; it says so, wrongly.
                self._saved_filters = warnings.filters[:]
                warnings.filterwarnings("ignore", message="Your input ran out of data")
        # Keras' first batch is the epoch's first: a batch served before (JAX's and PyTorch's build pass
        # draws one) is served again under the same index.
        self._start, self._trained, self._batches_done = (self.generator.epoch, self.generator.start_batch), 0, 0

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._batches_done = 0

    def on_train_batch_end(self, batch, logs=None) -> None:
        self._batches_done = batch + 1  # Keras' batch of this epoch: steps_per_execution counted
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None) -> None:
        self._trained, self._batches_done = self._trained + self._batches_done, 0
        if self._saved_filters is not None:
            warnings.filters[:] = self._saved_filters
            self._saved_filters = None
        super().on_epoch_end(epoch, logs)

    def _save_model(self) -> None:
        super()._save_model()
        epoch, batch = self._start
        epochs, next_batch = divmod(batch + self._trained + self._batches_done, self.generator.source.num_batches)
        state = {"seed": self.generator.seed, "epoch": epoch + epochs, "next_batch": next_batch}
        write_atomic(self._state_path, json.dumps(state).encode())
