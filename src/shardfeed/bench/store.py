"""`shardfeed bench STORE`: a store's reads against the memory-mapped limit of its own data and the
machine's own limits (one large copy, and a copy a batch at a time), each read given as a ratio to
the best of them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import OptionError
from ..feed.batches import BatchSource
from ..storage.store import open_store
from .harness import (
    LIMIT_NAME,
    MmapLimit,
    Result,
    StoreReader,
    batch_copy_rate,
    measure_readers,
    memory_bandwidth,
    set_ratios,
    write_limit_npy,
)
from .variable import bench_variable


def bench_store(
    path: str | os.PathLike,
    *,
    batch_size: int = 64,
    shuffle: str = "global",
    seconds: float = 10.0,
    split: str | None = None,
    fit: bool = False,
    fit_samples: int = 16384,
    tmpdir: str | None = None,
) -> list[Result]:
    """Measure the store at `path` in-process against the memory-mapped limit of its own data and
    the machine's memory bandwidth (`memory_bandwidth`, `batch_copy_rate`: 1 GiB of buffers for a
    moment); `vs_best` is each row's ratio to the fastest of these limits.

    The limit's `.npy` (a copy of the selected rows) is written to a temporary file under
    `tmpdir` and removed afterwards. With `fit`, also time `model.fit` of a trivial model from
    the store and from the same samples held in memory (imports Keras).
    """
    if fit:  # Keras first: a missing framework is said now, not after the reads were timed
        from .fit import fit_in_memory_vs_store
    store = open_store(path)
    if store.variable:  # padded batches, against one flat file of values + offsets and the tutorial
        if fit:
            raise OptionError(f"{path}: bench --fit does not time variable-shape samples yet; drop --fit")
        return bench_variable(store, batch_size=batch_size, shuffle=shuffle, seconds=seconds, split=split,
                              tmpdir=tmpdir)  # fmt: skip
    source = BatchSource(store, split=split, batch_size=batch_size, shuffle_mode=shuffle, seed=0)
    nbytes = store.manifest.sample_nbytes
    label = f"shardfeed {store.backend}" + (
        "" if store.manifest.compression == "none" else f" {store.manifest.compression}"
    )
    with tempfile.TemporaryDirectory(dir=tmpdir, prefix="shardfeed-bench-") as tmp:
        npy = Path(tmp) / "limit.npy"
        positions = write_limit_npy(store, source.rows, npy)
        readers = [
            (f"{LIMIT_NAME} ({shuffle})", lambda: MmapLimit(npy, source, positions)),
            (f"{label} ({shuffle})", lambda: StoreReader(source)),  # its close() shuts shard readers; --fit reopens
        ]
        results = measure_readers(readers, nbytes, seconds=seconds)
    machine = [memory_bandwidth(nbytes), batch_copy_rate(nbytes, batch_size * nbytes)]
    results += machine
    set_ratios(results, None, results[0], limits=machine)
    if fit:
        results += fit_in_memory_vs_store(store, source, fit_samples)
    store.close()
    return results
