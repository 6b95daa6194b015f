"""`model.fit` timings for the benchmark: a trivial model, steady epochs only. Imports Keras.

A Flatten+Dense model costs almost nothing per step, so its epoch time is the feed's time:
the cheapest model shows the loader's overhead, which a real model would hide on a GPU and
compete with on a CPU. The first epoch (tracing, first pool start) is left out of the
figure; later epochs still include Keras rebuilding its worker pool, as users see it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np

from ..feed.batches import BatchSource
from ..feed.keras import DataGenerator
from ..storage.store import Store
from .harness import CpuMonitor, Result, result_from_rates, set_ratios

FIT_CONFIGS = {
    "in-process": {"workers": 1, "use_multiprocessing": False},
    "threads (workers=2)": {"workers": 2, "use_multiprocessing": False},
    "processes (workers=2)": {"workers": 2, "use_multiprocessing": True},
}


class EpochTimer(keras.callbacks.Callback):
    """Wall time of every epoch, and the CPU used from the second epoch to the last."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.times: list[float] = []
        self.cpu = CpuMonitor()
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None) -> None:
        if epoch == min(1, self.epochs - 1):
            self.cpu.start()
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.times.append(time.perf_counter() - self._start)
        if epoch == self.epochs - 1:
            self.cpu.stop()


def trivial_model(shape: tuple[int, ...], num_classes: int) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, activation="softmax"),
        ]
    )
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    return model


def measure_fit(
    name: str,
    data,
    *,
    samples_per_epoch: int,
    sample_nbytes: int,
    epochs: int = 3,
    batch_size: int | None = None,
    section: str = "fit",
) -> Result:
    """Median samples/s of epochs 2..`epochs` of `fit` on `data`: a PyDataset or an (x, y) pair.

    A fresh model each time, so no measurement inherits another's compiled state.
    """
    first = data if isinstance(data, tuple) else data[0]
    model = trivial_model(first[0].shape[1:], first[1].shape[-1])
    timer = EpochTimer(epochs)
    if isinstance(data, tuple):
        model.fit(
            *data, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=[timer]
        )
    else:
        model.fit(data, epochs=epochs, verbose=0, callbacks=[timer])
    steady = timer.times[1:] or timer.times
    rates = [samples_per_epoch / t for t in steady]
    return result_from_rates(section, name, rates, sample_nbytes, timer.cpu, samples_per_epoch * len(steady))


def in_memory_arrays(
    store: Store, rows: np.ndarray, dtype="float32"
) -> tuple[np.ndarray, np.ndarray]:
    """`rows` of `store` as numpy arrays in RAM: inputs in `dtype`, one-hot float32 labels."""
    x = store.read(rows).astype(dtype, copy=False)
    y = np.zeros((len(rows), store.num_classes), dtype=np.float32)
    y[np.arange(len(rows)), store.labels[rows]] = 1.0
    return x, y


def fit_rows(source: BatchSource, max_samples: int) -> np.ndarray:
    """The first whole batches of `source`'s rows, at most `max_samples` samples."""
    n = min(max_samples, len(source.rows)) // source.batch_size * source.batch_size
    return source.rows[: max(n, source.batch_size)]


def measure_fits(
    feeds: Sequence[tuple[str, Callable[[], object]]],
    *,
    on_result: Callable[[Result], None] | None = None,
    **common,
) -> list[Result]:
    """`measure_fit(name, make(), **common)` for each `(name, make)`: one feed in memory at a time."""
    results = []
    for name, make in feeds:
        results.append(measure_fit(name, make(), **common))
        if on_result is not None:
            on_result(results[-1])
    return results


def store_generator(store: str | os.PathLike | Store, ids: Sequence[str], batch_size: int, **kwargs) -> DataGenerator:
    """`DataGenerator` over `ids` as the benchmark times it: seed 0, whole batches only."""
    return DataGenerator(store, ids=ids, batch_size=batch_size, seed=0, drop_remainder=True, **kwargs)


def fit_in_memory_vs_store(
    store: Store, source: BatchSource, max_samples: int, epochs: int = 3
) -> list[Result]:
    """`fit` on the samples held in memory, then from the store in-process (`bench --fit`)."""
    rows = fit_rows(source, max_samples)
    ids = [store.ids[r] for r in rows.tolist()]
    feeds = [
        ("fit: numpy arrays in memory", lambda: in_memory_arrays(store, rows, source.dtype)),
        (f"fit: DataGenerator {store.backend}, in-process",
         lambda: store_generator(store, ids, source.batch_size, shuffle_mode=source.shuffle_mode)),
    ]  # fmt: skip
    results = measure_fits(
        feeds, samples_per_epoch=len(rows), sample_nbytes=store.manifest.sample_nbytes, epochs=epochs,
        batch_size=source.batch_size,
    )  # fmt: skip
    set_ratios(results, None, results[0])
    return results
