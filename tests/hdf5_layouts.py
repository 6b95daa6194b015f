"""HDF5 shards laid out as other writers lay them out: what the fast reader must read as well as its own.

shardfeed writes a shard's raw chunks as one page-aligned run (issue #13). Stores written before
that, or by h5py's defaults, hold a run of chunks per ~60 with the chunk index's nodes in between,
each run starting at another offset modulo 4 KiB; `rewrite_hdf5_shards` turns a store's shards into
such files (same dataset, same chunks, same bytes), with h5py `File` options to move them further.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

import shardfeed


def rewrite_hdf5_shards(store: Path, **file_options) -> None:
    """Rewrite every shard of the uncompressed HDF5 store at `store` with h5py's default placement,
    chunks allocated at creation as shardfeed allocates them (`file_options`: e.g. `userblock_size`)."""
    for shard in shardfeed.open_store(store).manifest.shards:
        path = store / shard.path
        with h5py.File(path, "r") as old:
            data, chunks = old["x"][...], old["x"].chunks
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        temporary = path.with_suffix(".rewrite")
        with h5py.File(temporary, "w", libver=("earliest", "v110"), **file_options) as new:
            new.create_dataset("x", shape=data.shape, dtype=data.dtype, chunks=chunks, track_times=False, dcpl=dcpl)
            new["x"][...] = data
        os.replace(temporary, path)


def run_starts(store: shardfeed.Store, shard: int = 0) -> list[int]:
    """Where each run of raw chunks of `shard` starts, modulo 4 KiB."""
    _, views = store._reader(shard).raw_runs()
    return [int(np.asarray(v).ctypes.data % 4096) for v in views]
