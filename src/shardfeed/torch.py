"""PyTorch without Keras: `StoreDataset` and `EpochBatchSampler` (see `shardfeed.feed.torchdata`).

    from torch.utils.data import DataLoader
    from shardfeed.torch import StoreDataset

    ds = StoreDataset("out.zarr", split="train")
    sampler = ds.batch_sampler(64, seed=1)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=4)

Importing this module imports torch; without it, a `MissingDependencyError` (an `ImportError`) names the extra.
"""

from __future__ import annotations

from .feed.torchdata import EpochBatchSampler, StoreDataset

__all__ = ["EpochBatchSampler", "StoreDataset"]
