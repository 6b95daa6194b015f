"""Planning a conversion: how many shards a data set gets by default, and the collector paused while
per-sample records are made."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest

import shardfeed
from shardfeed.gcpause import paused_gc
from shardfeed.inputs.scan import Sample, SourceSet
from shardfeed.writing.plan import MIN_SHARD_BYTES, MIN_SHARDS, choose_layout, parse_size

MB = 10**6


def source_set(n: int, sample_shape: tuple[int, ...], dtype: str) -> SourceSet:
    """`n` validated samples as the scan describes them (planning reads no file)."""
    samples = tuple(Sample(f"id-{i}", f"/data/id-{i}.npy", "train", 0, False, 128, (0, 0)) for i in range(n))
    return SourceSet(samples, sample_shape, np.dtype(dtype), {"train": n}, None, None, 0)


def shards_of(sources: SourceSet, shard_size: int | None = None) -> tuple[int, int]:
    """(number of shards, bytes per full shard) of the default layout."""
    layout = choose_layout(sources, None, shard_size, "none")
    return math.ceil(layout.num_samples / layout.shard_rows), layout.shard_rows * sources.sample_nbytes


@pytest.mark.parametrize("n, shape, dtype", [(100_000, (28, 28), "uint8"), (4096, (32, 32, 32), "float32")])
def test_a_data_set_under_2_gb_gets_at_least_16_shards_so_every_worker_writes(n, shape, dtype):
    shards, shard_bytes = shards_of(source_set(n, shape, dtype))
    assert MIN_SHARDS <= shards <= MIN_SHARDS + 1  # whole chunks per shard: the last one takes the rest
    assert shard_bytes >= MIN_SHARD_BYTES


def test_shards_are_128_mb_for_large_data_sets_and_never_under_4_mib_for_small_ones():
    large = source_set(32_768, (256, 256), "float32")  # 8.6 GB
    assert shards_of(large)[1] <= parse_size("128MB") < shards_of(large)[1] + 256 * 1024
    shards, shard_bytes = shards_of(source_set(10, (1024, 1024), "uint8"))  # 10 MB: 4 MiB shards, not 16
    assert (shards, shard_bytes) == (3, 4 * 1024 * 1024)


def test_a_given_shard_size_is_kept_whatever_the_data_sets_size():
    sources = source_set(100_000, (28, 28), "uint8")
    assert shards_of(sources, parse_size("128MB")) == (1, math.ceil(100_000 / 256) * 256 * 784)


def test_convert_without_a_shard_size_spreads_a_small_data_set_over_shards(tmp_path, make_npy_dir):
    src, labels, partition, arrays = make_npy_dir(n=20, shape=(256, 1024), num_classes=2)  # 20 x 1 MiB
    default = shardfeed.convert(src, tmp_path / "default.zarr", labels=labels, partition=partition)
    given = shardfeed.convert(src, tmp_path / "given.zarr", labels=labels, partition=partition, shard_size="128MB")
    assert (len(default.shards), len(given.shards)) == (5, 1)  # 21 MB / 16 < 4 MiB: shards of 4 samples
    with shardfeed.open_store(tmp_path / "default.zarr") as store:
        for i, sample_id in enumerate(store.ids[:3]):
            assert store.read(np.array([i]))[0].tobytes() == arrays[sample_id].tobytes()


def test_the_collector_is_paused_inside_and_left_as_the_caller_had_it():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause found it off, and leaves it off
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # a caller's choice stands
    finally:
        gc.enable()
    with pytest.raises(KeyError), paused_gc():
        raise KeyError("an error inside")
    assert gc.isenabled()
