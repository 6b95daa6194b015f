"""Batch buffers are reused only when nobody holds them: kept batches never change."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from shardfeed.feed.batches import BatchSource
from shardfeed.feed.buffers import ALIGNMENT, MAX_BUFFERS, BufferPool

SHAPE = (64, 32, 32)  # 256 KiB of float32: large enough to be pooled


def test_a_dropped_buffer_is_reused_and_a_held_one_is_not():
    pool = BufferPool()
    first = pool.take(SHAPE, np.float32)
    address = first.ctypes.data
    held = pool.take(SHAPE, np.float32)
    assert held.ctypes.data != address
    del first
    again = pool.take(SHAPE, np.float32)
    assert again.ctypes.data == address
    assert pool.take(SHAPE, np.float32).ctypes.data not in (address, held.ctypes.data)


def test_a_view_keeps_its_buffer_from_reuse():
    pool = BufferPool()
    buffer = pool.take(SHAPE, np.float32)
    view, address = buffer[3:], buffer.ctypes.data
    del buffer
    assert pool.take(SHAPE, np.float32).ctypes.data != address
    del view
    assert pool.take(SHAPE, np.float32).ctypes.data == address
    reshaped = pool.take(SHAPE, np.float32).reshape(-1)  # a view made at once; the batch itself is gone
    assert pool.take(SHAPE, np.float32).ctypes.data != reshaped.ctypes.data


def test_pool_is_bounded_and_small_unplaced_arrays_are_not_pooled():
    pool = BufferPool()
    held = [pool.take(SHAPE, np.float32) for _ in range(MAX_BUFFERS + 5)]
    assert len(pool._buffers) == MAX_BUFFERS and len({h.ctypes.data for h in held}) == len(held)
    small = pool.take((4, 4), np.float32)
    assert not any(b is small for _, b, _ in pool._buffers)


def test_small_placed_arrays_are_reused_at_their_residue():
    pool = BufferPool()
    placed = pool.take((4, 4), np.float32, residue=64)
    address = placed.ctypes.data
    assert address % 4096 == 64
    other = pool.take((4, 4), np.float32, residue=192)
    assert other.ctypes.data % 4096 == 192 and other.ctypes.data != address
    del placed
    assert pool.take((4, 4), np.float32, residue=192).ctypes.data != other.ctypes.data  # held: not reused
    assert pool.take((4, 4), np.float32, residue=64).ctypes.data == address


def test_buffers_are_aligned_and_contiguous():
    pool = BufferPool()
    for shape in [SHAPE, (3, 5, 8192), (7, 1, 3, 4096)]:
        array = pool.take(shape, np.float64)
        assert array.ctypes.data % ALIGNMENT == 0 and array.flags.c_contiguous and array.shape == shape


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickled_pool_starts_empty_and_works(protocol):
    pool = BufferPool()
    kept = pool.take(SHAPE, np.float32)
    copy = pickle.loads(pickle.dumps(pool, protocol))
    assert copy._buffers == [] and copy.take(SHAPE, np.float32).shape == SHAPE and kept.shape == SHAPE


def test_batches_kept_by_the_caller_never_change(tmp_path, make_npy_dir):
    import shardfeed

    src, labels, partition, _ = make_npy_dir(n=64, shape=(64, 32, 8), dtype="uint8")  # 16 KiB samples
    shardfeed.convert(src, tmp_path / "s", labels=labels, partition=partition)
    source = BatchSource(tmp_path / "s", batch_size=16, seed=3)  # 1 MiB float32 batches, cast from uint8
    kept = [source.batch(epoch, index) for epoch in range(3) for index in range(source.num_batches)]
    snapshots = [x.copy() for x, _ in kept]
    for epoch in range(3, 6):  # more batches, while every earlier one is still held
        for index in range(source.num_batches):
            source.batch(epoch, index)
    assert all(np.array_equal(x, snap) for (x, _), snap in zip(kept, snapshots))
    expected = source.store.read(source.batch_rows(4, 1)).astype(np.float32)
    del kept, snapshots
    assert np.array_equal(source.batch(4, 1)[0], expected)  # now from reused buffers


def test_tensorflow_tensors_that_share_batch_memory_keep_it(tmp_path, make_npy_dir):
    """TensorFlow shares an aligned batch's memory rather than copying it: tensors held past many
    later batches must still hold their own batch (the pool sees TensorFlow's reference)."""
    import shardfeed

    src, labels, partition, _ = make_npy_dir(n=96, shape=(64, 64), dtype="float32")  # 16 KiB samples
    shardfeed.convert(src, tmp_path / "s", labels=labels, partition=partition)
    dataset = shardfeed.as_tf_dataset(tmp_path / "s", split="train", batch_size=24, seed=4)  # 1.5 MiB batches
    reference = BatchSource(tmp_path / "s", split="train", batch_size=24, seed=4)
    for epoch in range(2):
        held = list(dataset)
        assert len(held) == reference.num_batches
        for index, (x, y) in enumerate(held):
            expected_x, expected_y = reference.batch(epoch, index)
            assert np.array_equal(x.numpy(), expected_x) and np.array_equal(y.numpy(), expected_y)
