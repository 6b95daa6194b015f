"""EpochCursor against the call patterns of Keras' three trainers (measured on Keras 3.15):
each trainer epoch must get exactly the batches of one generator epoch, in the generator's order."""

from __future__ import annotations

import random

import pytest

from shardfeed.feed.schedule import EpochCursor

N = 5


def epoch(cursor: EpochCursor, indices) -> list[tuple[int, int]]:
    cursor.begin()
    served = [cursor.locate(i)[:2] for i in indices]
    cursor.end()
    return served


def whole(e: int) -> list[tuple[int, int]]:
    return [(e, b) for b in range(N)]


def test_tensorflow_peeks_outside_any_epoch_then_reads_in_order():
    cursor = EpochCursor(N)
    assert [cursor.locate(i)[:2] for i in (0, 1)] == [(0, 0), (0, 1)]  # tensor spec, not training
    cursor.end()  # epoch_iterator.reset() at the start of fit
    assert epoch(cursor, range(N)) == whole(0)
    assert epoch(cursor, range(N)) == whole(1)


def test_the_jax_and_torch_build_pass_does_not_count_as_an_epoch():
    cursor = EpochCursor(N)
    assert epoch(cursor, [0]) == [(0, 0)]  # _symbolic_build: begin, one batch, end
    assert epoch(cursor, range(N)) == whole(0)
    assert epoch(cursor, range(N)) == whole(1)


def test_fit_shuffle_true_gets_the_batches_in_the_generators_order():
    cursor, rng = EpochCursor(N), random.Random(0)
    for e in range(3):
        indices = list(range(N))
        rng.shuffle(indices)
        assert epoch(cursor, indices) == whole(e)


def test_a_repeated_index_is_the_same_batch_and_not_in_order():
    cursor = EpochCursor(N)
    cursor.begin()
    assert cursor.locate(3) == (0, 0, True)
    assert cursor.locate(3) == (0, 0, False)
    assert cursor.locate(1) == (0, 1, True)


def test_a_short_steps_per_epoch_goes_on_where_the_last_epoch_stopped():
    cursor = EpochCursor(N)
    assert epoch(cursor, [0, 1]) == [(0, 0), (0, 1)]
    assert epoch(cursor, [2, 3]) == [(0, 2), (0, 3)]
    assert epoch(cursor, [4]) == [(0, 4)]
    assert cursor.epoch == 1  # every batch of epoch 0 was asked for
    assert epoch(cursor, [0, 1]) == [(1, 0), (1, 1)]


def test_a_batch_read_ahead_between_two_epochs_keeps_its_place():
    """TensorFlow's prefetch with steps_per_epoch: a request arrives after `end`, before `begin`."""
    cursor = EpochCursor(N)
    assert epoch(cursor, [0, 1]) == [(0, 0), (0, 1)]
    assert cursor.locate(2) == (0, 2, True)
    assert epoch(cursor, [3, 4]) == [(0, 3), (0, 4)]
    assert cursor.epoch == 1


def test_a_resumed_epoch_starts_at_its_next_batch():
    cursor = EpochCursor(N, epoch=2, start=3)
    assert cursor.remaining == 2
    assert epoch(cursor, range(2)) == [(2, 3), (2, 4)]
    assert cursor.remaining == N and epoch(cursor, range(N)) == whole(3)
    cursor.move_to(1, N)  # a state saved after the last batch: the next epoch
    assert (cursor.epoch, cursor.start) == (2, 0)


def test_out_of_range_indices_are_refused():
    cursor = EpochCursor(N, start=2)
    with pytest.raises(IndexError):
        cursor.locate(N - 2)
    with pytest.raises(IndexError):
        cursor.locate(-1)


def test_a_hand_loop_without_begin_moves_on_at_each_end():
    """The tutorial's loop: every index, then `on_epoch_end()` alone."""
    cursor = EpochCursor(N)
    for e in range(3):
        assert [cursor.locate(i)[:2] for i in range(N)] == whole(e)
        cursor.end()
    assert [cursor.locate(i)[:2] for i in range(N - 1)] == whole(3)[:-1]
    cursor.end()  # not every index: the epoch stays
    assert cursor.epoch == 3


@pytest.mark.parametrize("num_batches", [1, 2, 3])
def test_tensorflows_peeks_are_not_a_hand_loops_epoch_even_when_they_cover_it(num_batches):
    cursor = EpochCursor(num_batches)
    [cursor.locate(i) for i in range(min(num_batches, 2))]  # the tensor spec
    cursor.end()
    assert epoch(cursor, range(num_batches)) == [(0, b) for b in range(num_batches)]
