"""Epoch orders are pure functions: permutations, reproducible, new each epoch, rank-disjoint."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardfeed.feed.sampling import epoch_order, host_share_from_env, num_batches

rows_strategy = st.integers(1, 300).map(lambda n: np.arange(n, dtype=np.int64) * 3 + 5)


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, seed=st.integers(0, 2**32), epoch=st.integers(0, 1000),
       mode=st.sampled_from(["global", "block"]), chunk_rows=st.integers(1, 17))  # fmt: skip
def test_epoch_order_is_a_deterministic_permutation(rows, seed, epoch, mode, chunk_rows):
    order = epoch_order(rows, seed=seed, epoch=epoch, mode=mode, chunk_rows=chunk_rows)
    assert sorted(order.tolist()) == rows.tolist()
    again = epoch_order(rows, seed=seed, epoch=epoch, mode=mode, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(order, again)


@pytest.mark.parametrize("mode", ["global", "block"])
def test_epoch_order_changes_between_epochs_and_seeds(mode):
    rows = np.arange(1000)
    first = epoch_order(rows, seed=1, epoch=0, mode=mode, chunk_rows=4)
    assert not np.array_equal(first, epoch_order(rows, seed=1, epoch=1, mode=mode, chunk_rows=4))
    assert not np.array_equal(first, epoch_order(rows, seed=2, epoch=0, mode=mode, chunk_rows=4))


def test_unshuffled_order_is_the_given_order():
    rows = np.array([9, 2, 7, 4])
    np.testing.assert_array_equal(epoch_order(rows, seed=0, epoch=3, shuffle=False), rows)


def test_block_order_keeps_batches_within_few_chunks():
    chunk_rows, window, batch = 16, 4, 64
    rows = np.arange(16 * 200)
    order = epoch_order(rows, seed=5, epoch=0, mode="block", chunk_rows=chunk_rows, window_blocks=window)
    chunks_per_batch = [len(np.unique(order[i : i + batch] // chunk_rows)) for i in range(0, len(order), batch)]
    assert max(chunks_per_batch) <= 2 * window
    global_order = epoch_order(rows, seed=5, epoch=0, mode="global")
    global_chunks = [len(np.unique(global_order[i : i + batch] // chunk_rows)) for i in range(0, len(order), batch)]
    assert np.mean(chunks_per_batch) * 5 < np.mean(global_chunks)


@pytest.mark.parametrize("mode", ["global", "block"])
@pytest.mark.parametrize("n", [300, 301, 302])
def test_three_ranks_get_disjoint_equal_shares_covering_the_split(mode, n):
    rows = np.arange(n)
    for epoch in range(3):
        shares = [epoch_order(rows, seed=3, epoch=epoch, mode=mode, chunk_rows=8, rank=r, world_size=3)
                  for r in range(3)]  # fmt: skip
        assert len({len(s) for s in shares}) == 1
        union = np.concatenate(shares)
        assert len(np.unique(union)) == len(union) == n - n % 3
        assert set(union.tolist()) <= set(rows.tolist())


def test_rank_outside_world_is_refused():
    with pytest.raises(ValueError, match="rank 3 outside"):
        epoch_order(np.arange(10), seed=0, epoch=0, rank=3, world_size=3)


def test_num_batches_floor_and_ceil():
    assert num_batches(10, 4, drop_remainder=False) == 3
    assert num_batches(10, 4, drop_remainder=True) == 2


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (0, 1)),
        ({"RANK": "2", "WORLD_SIZE": "3"}, (2, 3)),
        ({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}'}, (1, 2)),
        ({"TF_CONFIG": '{"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:1"]}, '
                       '"task": {"type": "worker", "index": 0}}'}, (1, 3)),
        ({"TF_CONFIG": '{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief"}}'}, (0, 2)),
    ],
)
def test_host_share_comes_from_the_launchers_environment(env, expected):
    assert host_share_from_env(env) == expected


def test_generator_takes_rank_from_the_environment(monkeypatch, small_store):
    from shardfeed.feed.batches import BatchSource

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    source = BatchSource(small_store[0], split="train", batch_size=2, seed=0)
    assert (source.rank, source.world_size) == (1, 2)
    assert source.samples_per_epoch == 30 // 2
