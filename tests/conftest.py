"""Shared fixtures: stores and tutorial-layout inputs made fresh in tmp_path (no data is committed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import shardfeed


@pytest.fixture(params=["hdf5", "zarr"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def make_npy_dir(tmp_path):
    """Factory: write `n` samples as `<dir>/<ID>.npy` plus labels/partition JSON files.

    Returns (src, labels_path, partition_path, arrays) where arrays maps ID -> the saved array.
    """

    def make(
        n: int = 20,
        shape: tuple[int, ...] = (4, 3),
        dtype: str = "float32",
        num_classes: int | None = 3,
        splits: dict[str, float] | None = None,
        name: str = "data",
        seed: int = 0,
        fortran: bool = False,
    ):
        rng = np.random.default_rng(seed)
        src = tmp_path / name
        src.mkdir()
        arrays = {}
        for k in range(n):
            sample_id = f"id-{k}"
            arrays[sample_id] = _random_array(rng, shape, dtype)
            to_save = np.asfortranarray(arrays[sample_id]) if fortran else arrays[sample_id]
            np.save(src / f"{sample_id}.npy", to_save)
        ids = list(arrays)
        labels_path = partition_path = None
        if num_classes:
            labels_path = tmp_path / f"{name}-labels.json"
            labels_path.write_text(json.dumps({i: int(rng.integers(num_classes)) for i in ids}))
        splits = splits or {"train": 0.75, "validation": 0.25}
        partition, start = {}, 0
        for k, (split, fraction) in enumerate(splits.items()):
            stop = n if k == len(splits) - 1 else start + round(n * fraction)
            partition[split] = ids[start:stop]
            start = stop
        partition_path = tmp_path / f"{name}-partition.json"
        partition_path.write_text(json.dumps(partition))
        return src, labels_path, partition_path, arrays

    return make


def _random_array(rng, shape, dtype):
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt.newbyteorder("="), endpoint=True).astype(dt)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return rng.standard_normal(shape).astype(dt)


@pytest.fixture
def small_store(tmp_path, make_npy_dir, backend):
    """A converted store of 40 samples (4, 3) float32, 3 classes, train/validation split."""
    src, labels, partition, arrays = make_npy_dir(n=40)
    out = tmp_path / f"store.{backend}"
    shardfeed.convert(src, out, labels=labels, partition=partition, format=backend,
                      chunk_rows=4, shard_size=4 * 12 * 4 * 3)  # fmt: skip
    return out, arrays


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> Path:
    """The README's demo data (smaller): a learnable 6-class problem, converted to Zarr."""
    from shardfeed.inputs.demo import make_tutorial_dataset

    root = tmp_path_factory.mktemp("demo")
    data, labels, partition = make_tutorial_dataset(root, num_samples=600, shape=(16, 16, 16, 1))
    out = root / "demo.zarr"
    shardfeed.convert(data, out, labels=labels, partition=partition, format="zarr", shard_size="1MB")
    return out


@pytest.fixture(scope="session")
def row_store(tmp_path_factory) -> Path:
    """A store where every sample is filled with its own row number: batches name their rows."""
    root = tmp_path_factory.mktemp("rows")
    src = root / "data"
    src.mkdir()
    ids = [f"s{k:03d}" for k in range(46)]
    for k, sample_id in enumerate(ids):
        np.save(src / f"{sample_id}.npy", np.full((2, 3), k, dtype=np.float32))
    labels = {sample_id: k % 3 for k, sample_id in enumerate(ids)}
    partition = {"train": ids[:38], "validation": ids[38:]}
    out = root / "rows.zarr"
    shardfeed.convert(src, out, labels=labels, partition=partition, chunk_rows=4, shard_size=4 * 24 * 3)
    return out
