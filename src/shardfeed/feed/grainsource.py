"""Framework-free access for JAX loops and Grain: `StoreSource` (samples by position) and
`BatchIterator` (resumable NumPy batches).

Neither imports Grain: Grain's data sources are protocols (`__len__`, `__getitem__`, and
`_getitems` for batched reads), so a `StoreSource` is one by its shape, and works whether Grain
is installed or not. The torch `Dataset` (`torchdata`) wraps a `StoreSource` too.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import OptionError
from ..storage.store import Store
from .batches import BatchSource
from .sampling import MODES
from .targets import encode_labels


class StoreSource:
    """Samples of a store by position (0 .. len-1 over the selected rows), read straight from it.

    A Grain `RandomAccessDataSource` with batched reads (`_getitems`): use it with
    `grain.python.MapDataset.source(...)` or `grain.python.DataLoader(data_source=...)`. It is
    picklable (the store drops its file handles and reopens them in each process), as Grain's
    worker processes need.

    Args:
        store: a path or an open `Store`.
        split: a split name; or `ids`: the IDs to use; neither: every row of the store.
        labels: "sparse" (int64, what `optax`'s and torch's losses take), "onehot" (float32, the
            tutorial's), "targets" (the store's target arrays, `convert --targets`), or None (inputs
            only; also what an unlabeled store gives).
        dtype: dtype of the inputs; None keeps the stored dtype.

    A record is `(x, y)`, or `(x,)` without labels, like `DataGenerator`'s batches.
    """

    def __init__(
        self,
        store: str | os.PathLike | Store,
        split: str | None = None,
        ids: Sequence[str] | None = None,
        labels: str | None = "sparse",
        dtype: str | np.dtype | None = "float32",
        storage_options: dict | None = None,
    ) -> None:
        # The generator's own checks and selection, so the options mean what they mean there.
        selected = BatchSource(store, split=split, ids=ids, batch_size=1, shuffle=False, seed=0, labels=labels,
                               dtype=dtype, rank=0, world_size=1, storage_options=storage_options)  # fmt: skip
        self.store = selected.store
        self.split = split
        self.ids = None if ids is None else list(ids)
        self.rows = selected.rows
        self.labels = selected.labels
        self.dtype = selected.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"StoreSource({str(self.store.path)!r}, split={self.split!r}, samples={len(self)})"

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        """Record `index` (negative counts from the end)."""
        return tuple(array[0] for array in self.batch([operator.index(index)]))

    def _getitems(self, indices: Sequence[int]) -> list[tuple[np.ndarray, ...]]:
        """Grain's batched read: the records at `indices`, from one `Store.read`."""
        arrays = self.batch(indices)
        return [tuple(array[i] for array in arrays) for i in range(len(indices))]

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, ...]:
        """`(x, y)` (or `(x,)`) of the samples at `indices`, stacked, from one `Store.read`."""
        positions = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(positions) and not (-len(self) <= positions.min() and positions.max() < len(self)):
            bad = int(positions.min() if positions.min() < -len(self) else positions.max())
            raise IndexError(f"{self!r}: sample {bad} out of range for {len(self)} samples")
        rows = self.rows[positions]
        x = self.store.read(rows)
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        if self.labels is None:
            return (x,)
        if self.labels == "targets":
            return x, self.store.targets.read(rows)
        return x, encode_labels(self.store.labels[rows], self.labels, self.store.num_classes)


def shuffle_options(shuffle: bool | str) -> dict[str, Any]:
    """`BatchSource`'s shuffle arguments from the adapters' one `shuffle`: True ("global"), a mode, or False."""
    if shuffle is True or shuffle is False:
        return {"shuffle": shuffle, "shuffle_mode": "global"}
    if shuffle not in MODES:
        raise OptionError(f"shuffle must be True, False or one of {MODES}, got {shuffle!r}")
    return {"shuffle": True, "shuffle_mode": shuffle}


class BatchIterator:
    """NumPy batches of a store for a plain JAX (or any) training loop; needs no framework.

    Args:
        store, split, batch_size, seed: see `shardfeed.feed.batches.BatchSource`.
        shuffle: True or "global" (a fresh permutation each epoch), "block" (chunk blocks, see
            `sampling`), or False (the split's order).
        labels: "sparse" (int64, default: what JAX and torch losses take), "onehot", "targets" or None.
        **options: `ids`, `dtype`, `drop_remainder`, `rank`, `world_size`, `transform`,
            `storage_options`, as for `BatchSource`.

    A loop over the iterator runs the rest of the current epoch and ends it; the next loop is the
    next epoch, so `for epoch in range(n): for x, y in batches: ...` trains n epochs. Batches are
    the ones `DataGenerator` gives with the same arguments. `get_state()` is the position (seed,
    epoch, next batch); `set_state(state)` on a new iterator continues exactly there.
    """

    def __init__(
        self,
        store: str | os.PathLike | Store,
        split: str | None = None,
        batch_size: int = 32,
        shuffle: bool | str = True,
        seed: int | None = None,
        labels: str | None = "sparse",
        **options: Any,
    ) -> None:
        if "shuffle_mode" in options:
            raise OptionError("give the shuffle mode as shuffle='global' or shuffle='block', not shuffle_mode")
        self.source = BatchSource(store, split=split, batch_size=batch_size, seed=seed, labels=labels,
                                  **shuffle_options(shuffle), **options)  # fmt: skip
        self.epoch = 0
        self.next_batch = 0

    @property
    def seed(self) -> int:
        return self.source.seed

    def __len__(self) -> int:
        """Batches in an epoch."""
        return self.source.num_batches

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> tuple[np.ndarray, ...]:
        if self.next_batch >= self.source.num_batches:
            self.epoch, self.next_batch = self.epoch + 1, 0
            raise StopIteration
        batch = self.source.batch(self.epoch, self.next_batch)
        self.next_batch += 1
        return batch

    def get_state(self) -> dict[str, int]:
        """Where to resume (JSON-serializable): the same keys as `DataGenerator.get_state`."""
        return {"seed": self.seed, "epoch": self.epoch, "next_batch": self.next_batch}

    def set_state(self, state: dict[str, int]) -> None:
        """Continue where `get_state` was taken; an iterator whose seed was drawn takes the saved one."""
        epoch, next_batch = operator.index(state["epoch"]), operator.index(state["next_batch"])
        if epoch < 0 or not 0 <= next_batch <= self.source.num_batches:
            raise OptionError(f"state {state!r} is outside this iterator's epochs of {len(self)} batches")
        if state["seed"] != self.seed:
            self.source.adopt_seed(state["seed"])
        self.epoch, self.next_batch = epoch, next_batch
