"""Per-sample transforms: the same random batches in-process, in threads, in worker processes and
after a resume; another output shape and dtype; errors that name the sample and the epoch."""

from __future__ import annotations

import os

import numpy as np
import pytest
from transform_fns import FAILING_ROW, ODD_SHAPE_ROW, crop_to_int16, fail_on_row, noisy_flip, odd_shape_on_row

import shardfeed
from shardfeed import DataGenerator
from shardfeed.errors import OptionError, TransformError
from shardfeed.feed.transforms import sample_rng
from shardfeed.feed.workers import RemoteTraceback

SEED = 5
BATCH = 4  # 38 train samples: 10 batches, the last one short
MODES = {"in-process": {"workers": 1}, "threads": {"workers": 2, "use_multiprocessing": False},
         "processes": {"workers": 2, "use_multiprocessing": True}}  # fmt: skip


def make(row_store, transform, **options) -> DataGenerator:
    return DataGenerator(row_store, split="train", batch_size=BATCH, seed=SEED, transform=transform, **options)


def epoch_batches(gen: DataGenerator) -> list[tuple[np.ndarray, ...]]:
    """One epoch of batches, copied (a batch from worker processes views a reused slot)."""
    gen.on_epoch_begin()
    batches = [tuple(a.copy() for a in gen[i]) for i in range(len(gen))]
    gen.on_epoch_end()
    return batches


def as_bytes(batches: list[tuple[np.ndarray, ...]]) -> list[tuple[bytes, ...]]:
    return [tuple(a.tobytes() for a in batch) for batch in batches]


def rows_of(x: np.ndarray) -> list[int]:
    return [int(v) for v in x.reshape(len(x), -1)[:, 0]]


def reference(row_store, transform, epochs: int) -> list[list[tuple[np.ndarray, ...]]]:
    with make(row_store, transform, workers=1) as gen:
        return [epoch_batches(gen) for _ in range(epochs)]


@pytest.mark.parametrize("mode", list(MODES))
def test_random_transform_gives_the_same_batches_everywhere_and_after_a_resume(row_store, mode):
    expected = reference(row_store, noisy_flip, 3)
    with make(row_store, noisy_flip, **MODES[mode]) as gen:
        assert (gen.read_ahead is not None) == (mode != "in-process")
        got = [epoch_batches(gen) for _ in range(2)]
        assert [as_bytes(e) for e in got] == [as_bytes(e) for e in expected[:2]]
        gen.set_state({"seed": SEED, "epoch": 1, "next_batch": 3})
        assert len(gen) == gen.source.num_batches - 3
        resumed = [epoch_batches(gen) for _ in range(2)]
    assert as_bytes(resumed[0]) == as_bytes(expected[1][3:])
    assert as_bytes(resumed[1]) == as_bytes(expected[2])
    assert as_bytes(expected[0]) != as_bytes(expected[1])  # new noise every epoch


def test_random_transform_draws_from_the_samples_own_stream(row_store):
    """Each sample's output is `fn(sample, sample_rng(seed, epoch, row))`, whichever batch holds it."""
    store = shardfeed.open_store(row_store)
    with make(row_store, noisy_flip, workers=1) as gen:
        for epoch, batches in enumerate(reference(row_store, noisy_flip, 2)):
            for index, (x, y) in enumerate(batches):
                rows = gen.source.batch_rows(epoch, index)
                for i, row in enumerate(rows):
                    sample = np.full((2, 3), row, dtype=np.float32)
                    want = noisy_flip(sample, sample_rng(SEED, epoch, int(row)))
                    np.testing.assert_array_equal(x[i], want)
                    assert not np.array_equal(x[i], sample)
                np.testing.assert_array_equal(y.argmax(axis=1), store.labels[rows])


@pytest.mark.parametrize("labels", ["onehot", "sparse"])
def test_output_may_change_shape_and_is_cast_to_dtype(row_store, labels):
    store = shardfeed.open_store(row_store)
    plain = DataGenerator(row_store, split="train", batch_size=BATCH, seed=SEED, labels=labels)
    with make(row_store, crop_to_int16, labels=labels, dtype="float32", workers=2, use_multiprocessing=False) as gen:
        assert gen.source.sample_shape == (2, 2) and gen.store.sample_shape == (2, 3)
        assert gen.source.specs()[0][0] == (BATCH, 2, 2)
        batches = epoch_batches(gen)
    assert len(batches) == 10
    for index, (x, y) in enumerate(batches):
        rows = gen.source.batch_rows(0, index)
        assert x.dtype == np.float32 and x.shape == (len(rows), 2, 2)
        np.testing.assert_array_equal(x, np.broadcast_to(rows[:, None, None], x.shape).astype(np.float32))
        y_plain = plain[index][1]
        assert y.dtype == y_plain.dtype and y.shape == y_plain.shape
        np.testing.assert_array_equal(y, y_plain)  # labels pass through unchanged
        expected_labels = store.labels[rows]
        np.testing.assert_array_equal(y.argmax(axis=1) if labels == "onehot" else y, expected_labels)


def batch_with_row(gen: DataGenerator, epoch: int, row: int) -> int:
    return next(i for i in range(gen.source.num_batches) if row in gen.source.batch_rows(epoch, i))


def test_a_failing_transform_names_the_sample_and_epoch_in_process(row_store):
    with make(row_store, fail_on_row, workers=1) as gen:
        gen.set_state({"seed": SEED, "epoch": 1, "next_batch": 0})
        index = batch_with_row(gen, 1, FAILING_ROW)
        gen.on_epoch_begin()
        for i in range(index):
            gen[i]
        with pytest.raises(TransformError) as info:
            gen[index]
    message = str(info.value)
    assert f"'s{FAILING_ROW:03d}'" in message and "epoch 1" in message and "fail_on_row" in message
    assert "ZeroDivisionError" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert str(info.value.__cause__) == f"no sample {FAILING_ROW}"


def test_a_failing_transform_in_a_worker_process_names_the_sample_and_epoch(row_store):
    with make(row_store, fail_on_row, workers=2, use_multiprocessing=True, max_queue_size=4) as gen:
        gen.set_state({"seed": SEED, "epoch": 1, "next_batch": 0})
        index = batch_with_row(gen, 1, FAILING_ROW)
        gen.on_epoch_begin()
        for i in range(index):
            assert FAILING_ROW not in rows_of(gen[i][0])
        with pytest.raises(TransformError) as info:
            gen[index]
        message = str(info.value)
        assert f"'s{FAILING_ROW:03d}'" in message and "epoch 1" in message and "ZeroDivisionError" in message
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "ZeroDivisionError" in str(cause) and "fail_on_row" in str(cause)
        # The reading starts afresh after a failed batch: the next batches of the epoch come as usual.
        for i in range(index + 1, len(gen)):
            assert rows_of(gen[i][0]) == list(gen.source.batch_rows(1, i))


def test_a_resume_does_not_raise_the_error_of_a_batch_read_ahead_and_dropped(row_store):
    with make(row_store, fail_on_row, workers=2, use_multiprocessing=True) as gen:
        index = batch_with_row(gen, 0, FAILING_ROW)
        gen.on_epoch_begin()
        for i in range(index):
            gen[i]  # batch `index`, whose transform fails, is read ahead meanwhile
        gen.set_state({"seed": SEED, "epoch": 3, "next_batch": 0})
        gen.on_epoch_begin()
        for i in range(2):
            assert rows_of(gen[i][0]) == list(gen.source.batch_rows(3, i))


@pytest.mark.parametrize("mode", ["in-process", "threads"])
def test_a_transform_giving_another_shape_for_one_sample_names_it(row_store, mode):
    with make(row_store, odd_shape_on_row, **MODES[mode]) as gen:
        index = batch_with_row(gen, 0, ODD_SHAPE_ROW)
        gen.on_epoch_begin()
        for i in range(index):
            assert gen[i][0].shape[1:] == (2, 3)
        with pytest.raises(TransformError, match=r"shape \(1, 3\)") as info:
            gen[index]
    message = str(info.value)
    assert f"'s{ODD_SHAPE_ROW:03d}'" in message and "epoch 0" in message and "(2, 3)" in message


def test_a_lambda_needs_threads(row_store):
    double = lambda x, rng: x * 2  # noqa: E731
    with pytest.raises(OptionError) as info:
        make(row_store, double, workers=2, use_multiprocessing=True)
    message = str(info.value)
    assert "lambda" in message and "top level" in message and "threads" in message
    with make(row_store, double, workers=2, use_multiprocessing=False) as gen:
        assert gen.read_ahead is not None and not gen.read_ahead.processes
        batches = epoch_batches(gen)
    for index, (x, _) in enumerate(batches):
        assert rows_of(x) == [2 * r for r in gen.source.batch_rows(0, index)]


def test_defaults_with_and_without_a_transform(row_store):
    cores = len(os.sched_getaffinity(0))
    gen = make(row_store, noisy_flip)  # the processes start on the first batch only
    try:
        if cores == 1:
            assert gen.read_ahead is None  # one core: batches are made in the trainer
        else:
            assert gen.read_ahead.processes is True
            assert gen.read_ahead.workers == cores
            assert gen.read_ahead.worker_pids == []
    finally:
        gen.close()
    plain = DataGenerator(row_store, split="train", batch_size=BATCH, seed=SEED)
    assert plain.read_ahead is None
    plain.close()


@pytest.mark.parametrize(
    ("option", "value"),
    [("workers", 0), ("workers", 1.5), ("workers", -2), ("workers", True), ("max_queue_size", 0),
     ("max_queue_size", 2.0)],
)  # fmt: skip
@pytest.mark.parametrize("transform", [None, noisy_flip])
def test_bad_options(row_store, option, value, transform):
    with pytest.raises(OptionError, match=option):
        make(row_store, transform, **{option: value})


@pytest.mark.filterwarnings("error::RuntimeWarning")  # 3 held batches fit in the spare slots: no fallback
def test_held_batches_from_worker_processes_are_never_overwritten(row_store):
    with make(row_store, crop_to_int16, workers=2, use_multiprocessing=True, max_queue_size=2) as gen:
        gen.on_epoch_begin()
        kept = [gen[i] for i in range(3)]
        copies = [tuple(a.copy() for a in batch) for batch in kept]
        rest = [tuple(a.copy() for a in gen[i]) for i in range(3, len(gen))]
        gen.on_epoch_end()
        later = [epoch_batches(gen) for _ in range(2)]
        for batch, saved in zip(kept, copies):
            for array, array_saved in zip(batch, saved):
                np.testing.assert_array_equal(array, array_saved)
    assert [rows_of(b[0]) for b in copies + rest] == [list(gen.source.batch_rows(0, i)) for i in range(10)]
    assert all(x.shape[1:] == (2, 2) and x.dtype == np.float32 for x, _ in copies + rest)
    assert [rows_of(b[0]) for b in later[1]] == [list(gen.source.batch_rows(2, i)) for i in range(10)]


def test_tf_dataset_with_a_transform_gives_the_generators_batches(row_store):
    pytest.importorskip("tensorflow")
    gen = make(row_store, noisy_flip, workers=1)
    dataset = shardfeed.as_tf_dataset(row_store, split="train", batch_size=BATCH, seed=SEED, transform=noisy_flip)
    for epoch in range(2):
        got = [tuple(t.numpy() for t in batch) for batch in dataset]
        assert len(got) == gen.source.num_batches
        for index, batch in enumerate(got):
            assert as_bytes([batch]) == as_bytes([gen.source.batch(epoch, index)])
    cropped = shardfeed.as_tf_dataset(row_store, split="train", batch_size=BATCH, seed=SEED, transform=crop_to_int16)
    assert tuple(cropped.element_spec[0].shape) == (None, 2, 2)
    x, _ = next(iter(cropped))
    assert x.shape == (BATCH, 2, 2) and x.dtype.name == "float32"
