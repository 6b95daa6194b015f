"""`shardfeed bench STORE` for variable-shape samples: padded batches from the store against the
limit and the tutorial, reading the same samples, each result noting the padding its batches cost.

- the limit: every selected sample's values in one memory-mapped `.npy`, with offsets: a batch is
  one slice per sample, copied into the padded batch (the least work a padded batch can cost);
- the tutorial: one `.npy` per sample (`np.load` each, as the Keras tutorial does), padded;
- shardfeed: `DataGenerator`'s batches (`VariableBatchSource`), padding="batch", with and without
  `bucket_by_length` (which also makes the batches smaller to fill).

All three make `x` only (no labels), padded to each batch's longest sample, in the stored dtype.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..feed.padding import VariableBatchSource
from ..storage.lengths import padding_fraction
from ..storage.ragged import read_values
from ..storage.store import Store
from .harness import LIMIT_NAME, Result, StoreReader, measure_readers, set_ratios

TUTORIAL_NAME = "tutorial (np.load per file)"


class _Padded:
    """Batches of `source`'s rows padded like `VariableBatchSource` pads them, from `sample(row)`."""

    def __init__(self, source: VariableBatchSource) -> None:
        self.source = source
        self.num_batches = source.num_batches
        self._shapes = source.store.shapes

    def sample(self, row: int) -> np.ndarray:
        raise NotImplementedError

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, ...]:
        rows = self.source.batch_rows(epoch, index)
        x = np.zeros(self.source.batch_shape(epoch, index), dtype=self.source.dtype)
        for i, (row, shape) in enumerate(zip(rows.tolist(), self._shapes[rows].tolist())):
            x[(i, *(slice(0, d) for d in shape))] = self.sample(row).reshape(shape)
        return (x,)

    def close(self) -> None:
        pass


class FlatLimit(_Padded):
    """The limit: slices of one memory-mapped `.npy` of every sample's values, found by offsets."""

    def __init__(self, source: VariableBatchSource, path: Path) -> None:
        super().__init__(source)
        self._values = np.load(path, mmap_mode="r")
        sizes = np.zeros(len(source.store), dtype=np.int64)
        sizes[source.rows] = source.store.ragged.sizes[source.rows]
        self._ends = np.cumsum(sizes)
        self._sizes = sizes

    def sample(self, row: int) -> np.ndarray:
        end = int(self._ends[row])
        return self._values[end - int(self._sizes[row]) : end]


class PerFile(_Padded):
    """The tutorial: `np.load` of one file per sample."""

    def __init__(self, source: VariableBatchSource, folder: Path) -> None:
        super().__init__(source)
        self._folder = folder

    def sample(self, row: int) -> np.ndarray:
        return np.load(self._folder / f"{row}.npy")


def bench_variable(
    store: Store, *, batch_size: int, shuffle: str, seconds: float, split: str | None, tmpdir: str | None
) -> list[Result]:
    """Measure padded batches of a variable-shape store against the limit and the tutorial (see above)."""
    options = {"split": split, "batch_size": batch_size, "shuffle_mode": shuffle, "seed": 0, "labels": None,
               "dtype": None, "padding": "batch"}  # fmt: skip
    plain = VariableBatchSource(store, **options)
    bucketed = VariableBatchSource(store, bucket_by_length=True, **options)
    with tempfile.TemporaryDirectory(dir=tmpdir, prefix="shardfeed-bench-") as tmp:
        folder = Path(tmp)
        _write_copies(store, plain.rows, folder)
        readers = [
            (f"{LIMIT_NAME} (flat + offsets, {shuffle})", lambda: FlatLimit(plain, folder / "values.npy")),
            (f"{TUTORIAL_NAME} ({shuffle})", lambda: PerFile(plain, folder)),
            (f"shardfeed {store.backend} padding='batch' ({shuffle})", lambda: StoreReader(plain)),
            (f"shardfeed {store.backend} bucketed ({shuffle})", lambda: StoreReader(bucketed)),
        ]
        results = measure_readers(readers, store.manifest.sample_nbytes, seconds=seconds)
    for result, source in zip(results, (plain, plain, plain, bucketed)):
        share = padding_fraction(store.shapes, source.order(0), batch_size)
        result.note = f"{share:.1%} of the batches' values are padding"
    set_ratios(results, results[1], results[0])
    return results


def _write_copies(store: Store, rows: np.ndarray, folder: Path, block: int = 256) -> None:
    """`values.npy` (every row's values back to back) and `<row>.npy` per row, read from the store."""
    values = np.lib.format.open_memmap(folder / "values.npy", mode="w+", dtype=store.dtype,
                                       shape=(int(store.ragged.sizes[rows].sum()),))  # fmt: skip
    at = 0
    for start in range(0, len(rows), block):
        chunk = rows[start : start + block]
        for row, sample in zip(chunk.tolist(), store.read(chunk)):
            np.save(folder / f"{row}.npy", sample)
        size = int(store.ragged.sizes[chunk].sum())
        read_values(store, chunk, values[at : at + size])
        at += size
    values.flush()
