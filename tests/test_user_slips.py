"""The slips a new user makes, each met by one line that says what to do instead."""

from __future__ import annotations

import warnings

import pytest

import shardfeed
from shardfeed import CallError, DataGenerator


def test_the_tutorials_positional_call_says_the_new_call(small_store):
    _, arrays = small_store
    partition, labels = {"train": list(arrays)[:8]}, dict.fromkeys(arrays, 0)
    with pytest.raises(TypeError, match=r"DataGenerator\('store.zarr', split='train'\)") as caught:
        DataGenerator(partition["train"], labels)
    assert isinstance(caught.value, CallError) and "\n" not in str(caught.value)
    with pytest.raises(CallError, match="must be a path or a shardfeed Store, got int"):
        DataGenerator(3)


def test_all_splits_at_once_warns_and_one_split_does_not(small_store):
    store, _ = small_store
    expected = r"all 40 samples of its splits train, validation together; pass split='train'"
    with pytest.warns(UserWarning, match=expected):
        DataGenerator(store, batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DataGenerator(store, split="train", batch_size=8)
        DataGenerator(store, ids=shardfeed.open_store(store).ids[:8], batch_size=8)


def test_an_unlabeled_store_warns_unless_labels_none_is_asked(tmp_path, make_npy_dir):
    src, _, _, _ = make_npy_dir(n=8)
    shardfeed.convert(src, tmp_path / "plain.zarr")
    with pytest.warns(UserWarning, match="has no labels, so batches are inputs only"):
        generator = DataGenerator(tmp_path / "plain.zarr", batch_size=4)
    assert len(generator[0]) == 1  # (x,): no targets
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DataGenerator(tmp_path / "plain.zarr", batch_size=4, labels=None)
