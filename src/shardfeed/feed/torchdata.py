"""PyTorch without Keras: `StoreDataset`, a map-style `Dataset` over a store, and `EpochBatchSampler`,
shardfeed's epoch orders as batches of indices, so that a `DataLoader` reads each batch with one
`Store.read` and trains on the batches `DataGenerator` would give.

Imported only through `shardfeed.torch`, hence only by those who use torch; without torch, importing
it is a `MissingDependencyError` (an `ImportError`) naming `pip install 'shardfeed[torch]'`.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import OptionError, missing_extra
from ..storage.store import Store
from .batches import BatchSource
from .grainsource import StoreSource, shuffle_options

try:
    import torch
    from torch.utils.data import Dataset, Sampler
except ModuleNotFoundError as exc:
    raise missing_extra(exc) from None  # "torch is not installed: pip install 'shardfeed[torch]'"


class StoreDataset(Dataset):
    """A store's samples as a map-style torch `Dataset`: `ds[i]` is `(x, y)` (or `(x,)`) as tensors.

    Args:
        store, split, ids, dtype, storage_options: see `shardfeed.feed.grainsource.StoreSource`.
        labels: "sparse" (default: the int64 class indices torch's losses take), "onehot", "targets"
            (the store's target arrays: a mask per image, say) or None.

    Batches are read with one `Store.read` each in both ways of loading:

    - `DataLoader(ds, batch_sampler=ds.batch_sampler(64, seed=1), num_workers=4)`: the loader gives
      a batch's indices to `__getitems__`, and its default collation stacks the samples (in a
      worker, straight into the shared memory that carries the batch to the trainer).
    - `DataLoader(ds, sampler=ds.batch_sampler(64, seed=1), batch_size=None)`: `ds[indices]` is
      the batch itself and nothing is collated (in-process loading copies least this way).

    A plain `DataLoader(ds, batch_size=64, shuffle=True)` works too, with torch's own order. The
    dataset pickles without file handles: each worker process opens its own.
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
        self.source = StoreSource(store, split=split, ids=ids, labels=labels, dtype=dtype,
                                  storage_options=storage_options)  # fmt: skip

    @property
    def store(self) -> Store:
        return self.source.store

    def __len__(self) -> int:
        return len(self.source)

    def __repr__(self) -> str:
        return f"StoreDataset({str(self.store.path)!r}, split={self.source.split!r}, samples={len(self)})"

    def __getitem__(self, index: int | Sequence[int]) -> tuple[torch.Tensor, ...]:
        """Sample `index` (negative counts from the end); a list of indices gives their batch."""
        try:
            position = operator.index(index)
        except TypeError:  # a batch's indices: from a batch sampler passed as `sampler=`
            return tuple(torch.as_tensor(array) for array in self.source.batch(np.asarray(index)))
        return tuple(torch.as_tensor(array) for array in self.source[position])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, ...]]:
        """The samples at `indices` from one `Store.read` (what `DataLoader` calls for a batch, torch >= 2.2)."""
        tensors = [torch.as_tensor(array) for array in self.source.batch(indices)]
        return [tuple(tensor[i] for tensor in tensors) for i in range(len(indices))]

    def batch_sampler(
        self,
        batch_size: int,
        shuffle: bool | str = True,
        seed: int | None = None,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> EpochBatchSampler:
        """An `EpochBatchSampler` over this dataset (see there for the arguments)."""
        return EpochBatchSampler(self, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                 rank=rank, world_size=world_size)  # fmt: skip


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a `StoreDataset`'s indices in shardfeed's epoch order (`sampling.epoch_order`).

    The batches hold the samples `DataGenerator` gives with the same arguments, in the same order,
    on every process and host that uses the same seed.

    Args:
        dataset: the `StoreDataset` to sample.
        batch_size: samples per batch.
        shuffle: True or "global" (a fresh permutation each epoch), "block" (chunk blocks: fewer
            chunk reads, see `sampling`), or False (the split's order).
        seed: the shuffle seed; None draws one (`sampler.seed`; pass it again to reproduce a run).
        drop_last: drop the last short batch.
        rank, world_size: this process's disjoint, equal share of every epoch (DistributedSampler's
            `rank` and `num_replicas`); by default from `RANK`/`WORLD_SIZE` as torchrun sets
            them, else 0 and 1.

    As with `DistributedSampler`, call `set_epoch(epoch)` before each epoch: iterating again
    without it repeats the epoch.
    """

    def __init__(
        self,
        dataset: StoreDataset,
        batch_size: int,
        *,
        shuffle: bool | str = True,
        seed: int | None = None,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(dataset, StoreDataset):
            raise OptionError(f"EpochBatchSampler samples a StoreDataset, got {type(dataset).__name__}")
        with warnings.catch_warnings():  # the dataset's selection, already warned about when it was made
            warnings.simplefilter("ignore")
            self.source = BatchSource(
                dataset.store, split=dataset.source.split, ids=dataset.source.ids, batch_size=batch_size,
                seed=seed, labels=None, dtype=None, drop_remainder=drop_last, rank=rank, world_size=world_size,
                **shuffle_options(shuffle),
            )  # fmt: skip
        self.epoch = 0
        # The epoch order names rows; the loader wants positions in the dataset's selection.
        self._sorter = np.argsort(self.source.rows, kind="stable")
        self._sorted_rows = self.source.rows[self._sorter]

    @property
    def seed(self) -> int:
        return self.source.seed

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch `epoch` of the shuffle."""
        epoch = operator.index(epoch)
        if epoch < 0:
            raise OptionError(f"epoch must be an integer >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self.source.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        order = self._sorter[np.searchsorted(self._sorted_rows, self.source.order(self.epoch))]
        size = self.source.batch_size
        for k in range(len(self)):
            yield order[k * size : (k + 1) * size].tolist()
