"""Worker benchmark: `model.fit` samples/s of shardfeed's worker processes against in-process
reading and against Keras' own multiprocessing, with and without a CPU-heavy transform.

Keras' own path is a plain `PyDataset` whose `__getitem__` makes the same batch (with the same
transform) and which runs under Keras' `workers=2, use_multiprocessing=True`: Keras' pool,
rebuilt every epoch, every batch pickled back through a pipe.
"""

from __future__ import annotations

import keras
import numpy as np

from ..feed.batches import BatchSource
from ..feed.keras import DataGenerator
from ..storage.store import Store
from .augment import flip_and_noise
from .fit import measure_fit
from .harness import Result, set_ratios


class KerasPoolFeed(keras.utils.PyDataset):
    """The same batches as a generator's source, made in `__getitem__` under Keras' own workers."""

    def __init__(self, source: BatchSource, workers: int) -> None:
        super().__init__(workers=workers, use_multiprocessing=True, max_queue_size=10)
        self.source = source
        self.epoch = 0

    def __len__(self) -> int:
        return self.source.num_batches

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        return tuple(array.copy() for array in self.source.batch(self.epoch, index))

    def on_epoch_end(self) -> None:
        self.epoch += 1


def fit_workers(store: Store, ids: list[str], batch_size: int = 64, workers: int = 2, epochs: int = 3) -> list[Result]:
    """Six feeds, each timed over steady epochs: {no transform, flip+noise} x {in-process,
    shardfeed processes, Keras' processes}. Ratios are to the in-process feed of the same kind."""
    common = {"samples_per_epoch": len(ids) // batch_size * batch_size,
              "sample_nbytes": store.manifest.sample_nbytes, "epochs": epochs}  # fmt: skip
    results = []
    for label, transform in (("no transform", None), ("flip+noise", flip_and_noise)):
        def generator(transform=transform, **kwargs) -> DataGenerator:
            return DataGenerator(store, ids=ids, batch_size=batch_size, seed=0, drop_remainder=True,
                                 transform=transform, **kwargs)  # fmt: skip

        in_process = generator(workers=1, use_multiprocessing=False)
        ours = generator(workers=workers, use_multiprocessing=True)
        keras_pool = KerasPoolFeed(generator(workers=1, use_multiprocessing=False).source, workers)
        group = [
            measure_fit(f"fit, {label}: in-process", in_process, section=f"workers, {label}", **common),
            measure_fit(f"fit, {label}: shardfeed processes (workers={workers})", ours,
                        section=f"workers, {label}", **common),
            measure_fit(f"fit, {label}: Keras' processes (workers={workers})", keras_pool,
                        section=f"workers, {label}", **common),
        ]  # fmt: skip
        ours.close()
        set_ratios(group, None, group[0])
        results += group
    return results
