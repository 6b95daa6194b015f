"""Adapters without Keras: `Store` as a sequence, torch's `DataLoader` (worker processes included),
the NumPy `BatchIterator` with exact resume, and Grain's data-source protocol."""

from __future__ import annotations

import importlib
import json
import pickle
import sys

import numpy as np
import pytest

import shardfeed
from shardfeed.feed.batches import BatchSource
from shardfeed.grain import BatchIterator, StoreSource

SEED = 5


def count_reads(monkeypatch, store) -> list[int]:
    """Record the number of rows of each `store.read` call."""
    calls: list[int] = []
    read = store.read

    def counted(rows, out=None):
        calls.append(len(rows))
        return read(rows, out)

    monkeypatch.setattr(store, "read", counted)
    return calls


def rows_of(store, x) -> list[int]:
    """The store rows whose samples are the rows of batch `x` (every sample of the fixtures is distinct)."""
    lookup = {store[r].tobytes(): r for r in range(len(store))}
    return [lookup[np.ascontiguousarray(sample).tobytes()] for sample in np.asarray(x)]


def flat(batches) -> list[int]:
    return [i for batch in batches for i in batch]


def cut(order: np.ndarray, size: int) -> list[list[int]]:
    return [order[k : k + size].tolist() for k in range(0, len(order), size)]


# --- Store: len, [i], [i:j:k] ---------------------------------------------------------------------------


def test_store_indexes_like_a_sequence(small_store, monkeypatch):
    path, arrays = small_store
    store = shardfeed.open_store(path)
    assert len(store) == 40
    for row in (0, 7, 39):
        assert store[row].tobytes() == arrays[store.ids[row]].tobytes()
        assert store[row].shape == (4, 3) and store[row].dtype == np.float32
    assert store[-1].tobytes() == arrays[store.ids[39]].tobytes()
    assert store[-40].tobytes() == arrays[store.ids[0]].tobytes()
    assert store[np.int64(5)].tobytes() == arrays[store.ids[5]].tobytes()
    for key in (slice(3, 9), slice(None, None, -3), slice(-7, None, 2), slice(30, 100), slice(5, 2)):
        rows = list(range(40))[key]
        calls = count_reads(monkeypatch, store)
        got = store[key]
        assert calls == [len(rows)], key  # one read per slice
        monkeypatch.undo()
        assert got.shape == (len(rows), 4, 3)
        assert got.tobytes() == b"".join(arrays[store.ids[r]].tobytes() for r in rows)


def test_store_index_errors_are_one_line(small_store):
    store = shardfeed.open_store(small_store[0])
    with pytest.raises(IndexError, match=r"sample 40 out of range for 40 samples$"):
        store[40]
    with pytest.raises(IndexError, match=r"sample -41 out of range for 40 samples$"):
        store[-41]
    with pytest.raises(TypeError, match=r"indexed by an integer or a slice, not str; use read\(rows\)"):
        store["id-1"]
    with pytest.raises(TypeError, match="not list"):
        store[[1, 2]]


# --- torch -----------------------------------------------------------------------------------------------


@pytest.fixture
def sftorch():
    pytest.importorskip("torch")
    import shardfeed.torch

    return shardfeed.torch


def test_loader_workers_give_each_sample_once_per_epoch(small_store, sftorch):
    import torch
    from torch.utils.data import DataLoader

    ds = sftorch.StoreDataset(small_store[0], split="train")
    store = ds.store
    assert store[0] is not None  # the parent holds open handles: forked workers must open their own
    train = store.split("train")
    sampler = ds.batch_sampler(4, seed=SEED)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, multiprocessing_context="fork")
    epochs = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(loader)
        expected = cut(shardfeed.epoch_order(train, seed=SEED, epoch=epoch), 4)
        assert len(batches) == len(sampler) == len(expected) == 8
        for (x, y), rows in zip(batches, expected):
            assert x.numpy().tobytes() == store.read(rows).tobytes()
            assert y.dtype == torch.int64
            assert y.numpy().tolist() == store.labels[rows].tolist()
        seen = [r for x, _ in batches for r in rows_of(store, x)]
        assert sorted(seen) == train.tolist()  # exactly once, read from the data itself
        epochs.append(seen)
    assert epochs[0] != epochs[1]


def test_spawned_workers_receive_a_picklable_dataset(row_store, sftorch):
    from torch.utils.data import DataLoader

    ds = sftorch.StoreDataset(row_store, split="validation", labels="onehot")
    sampler = ds.batch_sampler(3, seed=SEED)
    in_process = list(DataLoader(ds, batch_sampler=sampler))
    spawned = list(DataLoader(ds, batch_sampler=sampler, num_workers=1, multiprocessing_context="spawn"))
    assert len(spawned) == len(in_process) == 3
    for (x, y), (x0, y0) in zip(spawned, in_process):
        assert x.numpy().tobytes() == x0.numpy().tobytes() and y.numpy().tobytes() == y0.numpy().tobytes()
    rows = [int(v) for x, _ in spawned for v in x[:, 0, 0]]
    assert sorted(rows) == ds.store.split("validation").tolist()
    labels = np.concatenate([y.numpy() for _, y in spawned])
    assert labels.dtype == np.float32 and labels.sum(axis=1).tolist() == [1.0] * 8
    assert labels.argmax(axis=1).tolist() == ds.store.labels[rows].tolist()


def test_each_batch_is_one_read_in_both_ways_of_loading(row_store, sftorch, monkeypatch):
    import torch
    from torch.utils.data import DataLoader

    ds = sftorch.StoreDataset(row_store, split="train")
    sampler = ds.batch_sampler(5, seed=SEED)
    expected = cut(shardfeed.epoch_order(ds.store.split("train"), seed=SEED, epoch=0), 5)
    for loader in (DataLoader(ds, batch_sampler=sampler), DataLoader(ds, sampler=sampler, batch_size=None)):
        calls = count_reads(monkeypatch, ds.store)
        batches = list(loader)
        monkeypatch.undo()
        assert calls == [len(rows) for rows in expected]  # 8 batches, 8 reads
        for (x, y), rows in zip(batches, expected):
            assert x.dtype == torch.float32 and x.shape == (len(rows), 2, 3)
            assert y.dtype == torch.int64 and y.tolist() == [r % 3 for r in rows]
            assert x[:, 0, 0].tolist() == rows  # row_store: each sample is filled with its row


def test_set_epoch_changes_the_order_reproducibly(row_store, sftorch):
    ds = sftorch.StoreDataset(row_store, split="train")
    sampler = ds.batch_sampler(5, seed=SEED)
    first = list(sampler)
    assert list(sampler) == first  # no set_epoch: the same epoch again, as DistributedSampler does
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(flat(second)) == sorted(flat(first)) == list(range(38))
    sampler.set_epoch(0)
    assert list(sampler) == first
    again = ds.batch_sampler(5, seed=SEED)
    again.set_epoch(1)
    assert list(again) == second
    assert list(ds.batch_sampler(5, seed=SEED + 1)) != first
    with pytest.raises(shardfeed.OptionError, match="epoch must be an integer >= 0, got -1"):
        sampler.set_epoch(-1)


def test_sampler_follows_the_generators_orders(row_store, sftorch):
    ds = sftorch.StoreDataset(row_store, split="validation")
    rows = ds.store.split("validation")  # rows 38..45: positions differ from rows
    for shuffle, mode in ((True, "global"), ("global", "global"), ("block", "block"), (False, "global")):
        sampler = ds.batch_sampler(3, shuffle=shuffle, seed=SEED)
        source = BatchSource(row_store, split="validation", batch_size=3, shuffle=bool(shuffle),
                             shuffle_mode=mode, seed=SEED)  # fmt: skip
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            assert [rows[b].tolist() for b in sampler] == cut(source.order(epoch), 3), (shuffle, epoch)
    assert [b for b in ds.batch_sampler(3, shuffle=False)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    with pytest.raises(shardfeed.OptionError, match="shuffle must be True, False or one of"):
        ds.batch_sampler(3, shuffle="random")


def test_sampler_shares_epochs_between_ranks_and_drops_last(row_store, sftorch):
    ds = sftorch.StoreDataset(row_store, split="train")
    shares = [flat(ds.batch_sampler(4, seed=SEED, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 19 and not set(shares[0]) & set(shares[1])
    assert shares[0] + shares[1] == shardfeed.epoch_order(np.arange(38), seed=SEED, epoch=0).tolist()
    sampler = ds.batch_sampler(5, seed=SEED, drop_last=True)
    assert len(sampler) == 7 and [len(b) for b in sampler] == [5] * 7
    assert len(ds.batch_sampler(5, seed=SEED)) == 8


def test_dataset_samples_plain_loader_and_pickling(row_store, sftorch):
    import torch
    from torch.utils.data import DataLoader

    ds = sftorch.StoreDataset(row_store, split="validation")
    assert len(ds) == 8
    x, y = ds[0]
    assert x.shape == (2, 3) and x.dtype == torch.float32 and float(x[0, 0]) == 38.0
    assert y.shape == () and int(y) == 38 % 3
    assert float(ds[-1][0][0, 0]) == 45.0
    with pytest.raises(IndexError, match=r"sample 8 out of range for 8 samples$"):
        ds[8]
    with pytest.raises(IndexError, match=r"sample -9 out of range"):
        ds[-9]
    # torch's own sampler and default collation: `__getitems__` returns samples, collated as usual.
    batches = list(DataLoader(ds, batch_size=3))
    assert [b[0][:, 0, 0].tolist() for b in batches] == [[38, 39, 40], [41, 42, 43], [44, 45]]
    assert [b[1].tolist() for b in batches] == [[2, 0, 1], [2, 0, 1], [2, 0]]
    (x64,) = sftorch.StoreDataset(row_store, split="validation", labels=None, dtype="float64")[1]
    assert x64.dtype == torch.float64 and float(x64[1, 2]) == 39.0
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[[3, 1]][0].numpy().tobytes() == ds[[3, 1]][0].numpy().tobytes()


def test_a_dataset_of_every_split_warns_once(row_store, sftorch):
    with pytest.warns(UserWarning, match=r"using all 46 samples of its splits train, validation together") as caught:
        ds = sftorch.StoreDataset(row_store)
        sampler = ds.batch_sampler(5, seed=SEED)
    assert len(caught) == 1 and len(ds) == 46 and sorted(flat(sampler)) == list(range(46))


def test_missing_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    for name in ("shardfeed.torch", "shardfeed.feed.torchdata"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ImportError) as excinfo:
        importlib.import_module("shardfeed.torch")
    assert isinstance(excinfo.value, shardfeed.MissingDependencyError)
    assert str(excinfo.value) == "torch is not installed: pip install 'shardfeed[torch]'"


# --- NumPy batches for JAX loops -------------------------------------------------------------------------


def test_batch_iterator_gives_each_sample_once_per_epoch(row_store):
    batches = BatchIterator(row_store, split="train", batch_size=5, seed=SEED)
    store = batches.source.store
    train = store.split("train")
    epochs = []
    for epoch in (0, 1):
        got = list(batches)
        expected = cut(shardfeed.epoch_order(train, seed=SEED, epoch=epoch), 5)
        assert len(got) == len(batches) == len(expected) == 8
        for (x, y), rows in zip(got, expected):
            assert x.tobytes() == store.read(rows).tobytes()
            assert y.dtype == np.int64 and y.tolist() == store.labels[rows].tolist()
        seen = [int(v) for x, _ in got for v in x[:, 0, 0]]
        assert sorted(seen) == train.tolist()
        epochs.append(seen)
    assert epochs[0] != epochs[1]
    assert batches.get_state() == {"seed": SEED, "epoch": 2, "next_batch": 0}


def test_batch_iterator_resumes_with_exactly_the_remaining_batches(row_store):
    whole = BatchIterator(row_store, split="train", batch_size=5, seed=SEED, shuffle="block")
    epoch0 = [tuple(a.copy() for a in b) for b in whole]
    epoch1 = [tuple(a.copy() for a in b) for b in whole]
    interrupted = BatchIterator(row_store, split="train", batch_size=5, seed=SEED, shuffle="block")
    for _ in range(3):
        next(interrupted)
    state = json.loads(json.dumps(interrupted.get_state()))
    assert state == {"seed": SEED, "epoch": 0, "next_batch": 3}
    resumed = BatchIterator(row_store, split="train", batch_size=5, shuffle="block")  # seed drawn: takes the saved one
    resumed.set_state(state)
    rest = list(resumed)
    assert len(rest) == 5
    for got, want in zip([*rest, *resumed], epoch0[3:] + epoch1):
        assert [a.tobytes() for a in got] == [a.tobytes() for a in want]
    chosen = BatchIterator(row_store, split="train", batch_size=5, seed=SEED + 1)
    with pytest.raises(shardfeed.OptionError, match=f"create the generator with seed={SEED}"):
        chosen.set_state(state)
    with pytest.raises(shardfeed.OptionError, match="outside this iterator's epochs of 8 batches"):
        chosen.set_state({"seed": SEED + 1, "epoch": 0, "next_batch": 9})


def test_batch_iterator_rejects_two_shuffle_options(row_store):
    with pytest.raises(shardfeed.OptionError, match="shuffle='block', not shuffle_mode"):
        BatchIterator(row_store, batch_size=5, shuffle_mode="block")


# --- Grain -----------------------------------------------------------------------------------------------


def test_store_source_reads_records_and_batches_at_once(row_store, monkeypatch):
    source = StoreSource(row_store, split="validation")
    assert len(source) == 8
    x, y = source[0]
    assert x.shape == (2, 3) and x.dtype == np.float32 and x[0, 0] == 38 and y == 38 % 3
    assert source[-1][0][0, 0] == 45
    with pytest.raises(IndexError, match="sample 8 out of range for 8 samples"):
        source[8]
    calls = count_reads(monkeypatch, source.store)
    records = source._getitems([5, 0, 7])  # Grain's batched-read protocol
    assert calls == [3]
    monkeypatch.undo()
    assert [float(r[0][0, 0]) for r in records] == [43, 38, 45] and [int(r[1]) for r in records] == [1, 2, 0]
    clone = pickle.loads(pickle.dumps(source))
    assert clone.batch([2, 4])[0].tobytes() == source.batch([2, 4])[0].tobytes()


def test_grain_pipelines_read_each_sample_once(row_store):
    gp = pytest.importorskip("grain.python")
    source = StoreSource(row_store, split="train")
    store = source.store
    batches = list(gp.MapDataset.source(source).shuffle(seed=SEED).batch(5))
    assert len(batches) == 8
    seen = []
    for x, y in batches:
        rows = [int(v) for v in x[:, 0, 0]]
        assert x.tobytes() == store.read(rows).tobytes() and y.tolist() == store.labels[rows].tolist()
        seen += rows
    assert sorted(seen) == store.split("train").tolist() and seen != sorted(seen)
    sampler = gp.IndexSampler(len(source), shard_options=gp.NoSharding(), shuffle=True, num_epochs=1, seed=SEED)
    loader = gp.DataLoader(data_source=source, sampler=sampler, operations=[gp.Batch(5)], worker_count=0)
    seen = [int(v) for x, _ in loader for v in x[:, 0, 0]]
    assert sorted(seen) == store.split("train").tolist()
