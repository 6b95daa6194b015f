"""The Keras data-generator tutorial's generator, verbatim in behaviour: the baseline we replace.

Kept in the package so tests can show `DataGenerator` yields the same batches, and the
benchmark can measure it side by side. One `np.load` per sample, a float64 batch,
`to_categorical` labels, floor(len / batch_size) batches, `np.random.shuffle` per epoch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import keras
import numpy as np


class TutorialGenerator(keras.utils.Sequence):
    """Generates data for Keras, one `.npy` file per sample (the tutorial's `DataGenerator`)."""

    def __init__(
        self,
        list_ids: Sequence[str],
        labels: Mapping[str, int],
        data_dir: str | os.PathLike,
        batch_size: int = 32,
        dim: tuple[int, ...] = (32, 32, 32),
        n_channels: int = 1,
        n_classes: int = 10,
        shuffle: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.dim = dim
        self.batch_size = batch_size
        self.labels = labels
        self.list_ids = list(list_ids)
        self.data_dir = str(data_dir)
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.shuffle = shuffle
        self.on_epoch_end()

    def __len__(self) -> int:
        return int(np.floor(len(self.list_ids) / self.batch_size))

    def __getitem__(self, index: int):
        indexes = self.indexes[index * self.batch_size : (index + 1) * self.batch_size]
        return self._data_generation([self.list_ids[k] for k in indexes])

    def on_epoch_end(self) -> None:
        self.indexes = np.arange(len(self.list_ids))
        if self.shuffle:
            np.random.shuffle(self.indexes)

    def _data_generation(self, ids: Sequence[str]):
        x = np.empty((self.batch_size, *self.dim, self.n_channels))
        y = np.empty((self.batch_size), dtype=int)
        for i, sample_id in enumerate(ids):
            x[i,] = np.load(os.path.join(self.data_dir, sample_id + ".npy")).reshape(*self.dim, self.n_channels)
            y[i] = self.labels[sample_id]
        return x, keras.utils.to_categorical(y, num_classes=self.n_classes)
