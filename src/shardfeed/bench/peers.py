"""A peer side by side: grain's `mp_prefetch` against shardfeed's worker processes, same samples,
same transform, same batch size and worker count, loaders alone (no model).

Grain reads the samples from an ArrayRecord file (one record per sample, the raw bytes) through
`MapDataset.source(...).shuffle().random_map(decode + transform).batch()`, then
`.to_iter_dataset().mp_prefetch(num_workers)`; shardfeed reads them from its store through
`ReadAhead` (worker processes writing whole batches into shared memory). The consumer touches
every batch, as a trainer would. Imports grain and array_record: `pip install grain array-record`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from ..feed.batches import BatchSource
from ..feed.readahead import ReadAhead
from ..feed.schedule import EpochCursor
from ..storage.store import Store
from .augment import flip_and_noise


class DecodeAndAugment(grain.transforms.RandomMap):
    """A record's bytes as the stored sample, then the benchmark's augmentation."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape, self.dtype = shape, dtype

    def random_map(self, element: bytes, rng: np.random.Generator) -> np.ndarray:
        sample = np.frombuffer(element, dtype=self.dtype).reshape(self.shape).copy()
        return flip_and_noise(sample, rng)


def write_array_record(store: Store, path: Path) -> Path:
    """Every sample of `store` as one record of its raw bytes."""
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for row in range(len(store)):
        writer.write(store.read([row])[0].tobytes())
    writer.close()
    return path


def grain_batches(path: Path, store: Store, batch_size: int, workers: int) -> Callable[[], Iterator]:
    source = grain.sources.ArrayRecordDataSource([str(path)])
    dataset = (grain.MapDataset.source(source).seed(0).shuffle()
               .random_map(DecodeAndAugment(store.sample_shape, store.dtype)).batch(batch_size, drop_remainder=True))
    if workers == 0:
        return lambda: iter(dataset.to_iter_dataset())
    options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)
    loader = dataset.to_iter_dataset().mp_prefetch(options)
    return lambda: iter(loader)


def shardfeed_batches(store: Store, batch_size: int, workers: int) -> Callable[[], Iterator]:
    source = BatchSource(store, batch_size=batch_size, seed=0, drop_remainder=True, labels=None,
                         transform=flip_and_noise)  # fmt: skip
    cursor = EpochCursor(source.num_batches)
    read_ahead = ReadAhead(source, cursor.following, workers, True, 2 * workers) if workers else None
    epochs = iter(range(10**9))

    def epoch() -> Iterator:
        e = next(epochs)
        for i in range(source.num_batches):
            yield read_ahead.get((e, i))[0] if read_ahead else source.batch(e, i)[0]

    return epoch


def samples_per_second(epoch: Callable[[], Iterator], epochs: int = 3) -> float:
    """Median samples/s over `epochs` after a first (warm-up, worker start) epoch."""
    rates = []
    for k in range(epochs + 1):
        start, samples = time.perf_counter(), 0
        for x in epoch():
            samples += len(x)
            float(x[:, 0].sum())  # the trainer touches the batch
        if k:
            rates.append(samples / (time.perf_counter() - start))
    return float(np.median(rates))


def compare(store: Store, workdir: Path, batch_size: int = 64, workers: int = 2) -> list[tuple[str, float]]:
    """(name, samples/s) for grain and shardfeed, in-process and with `workers` processes."""
    record = write_array_record(store, workdir / "samples.array_record")
    loaders = [
        ("grain, in-process", grain_batches(record, store, batch_size, 0)),
        (f"grain mp_prefetch ({workers} workers)", grain_batches(record, store, batch_size, workers)),
        ("shardfeed, in-process", shardfeed_batches(store, batch_size, 0)),
        (f"shardfeed processes ({workers} workers)", shardfeed_batches(store, batch_size, workers)),
    ]
    return [(name, samples_per_second(epoch)) for name, epoch in loaders]
