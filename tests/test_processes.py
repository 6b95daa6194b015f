"""A `Store` crosses process boundaries: it pickles without its handles and reads correctly in
forked, spawned and forkserver children, after the parent has opened handles by reading.

Under fork the child inherits the parent's `Store` object (open mmap / h5py / zarr handles
included, nothing pickled); under spawn and forkserver the store is pickled to the child.
"""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest

import shardfeed

pytestmark = pytest.mark.timeout(120)

START_METHODS = ["fork", "spawn", "forkserver"]
ROWS = [39, 0, 17, 17, 5, 22, 38, 1]  # unsorted, a repeat, most shards of the small store


def _read_in_child(store: shardfeed.Store, rows: list[int], queue) -> None:
    """Child: read twice (handles opened, then reused) and send the bytes back."""
    try:
        first = store.read(rows).tobytes()
        second = store.read(rows[::-1]).tobytes()
        queue.put((first, second, None))
    except BaseException as exc:  # report instead of dying silently
        queue.put((None, None, f"{type(exc).__name__}: {exc}"))
        raise


def _read_pickled(payload: bytes, rows: list[int]) -> bytes:
    """Pool worker: unpickle a store and read."""
    return pickle.loads(payload).read(rows).tobytes()


@pytest.mark.parametrize("method", START_METHODS)
def test_store_reads_in_child_processes(small_store, method):
    path, arrays = small_store
    context = multiprocessing.get_context(method)
    stores = [shardfeed.open_store(path), shardfeed.open_store(path, fast=False)]
    expected = np.stack([arrays[shardfeed.open_store(path).ids[r]] for r in ROWS])
    for store in stores:  # the parent reads first: its handles are open when the child starts
        assert store.read(ROWS).tobytes() == expected.tobytes()
    queue = context.Queue()
    children = [context.Process(target=_read_in_child, args=(s, ROWS, queue)) for s in stores]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    for first, second, error in results:
        assert error is None, error
        assert first == expected.tobytes()
        assert second == expected[::-1].tobytes()
    for store in stores:  # the children did not close or disturb the parent's handles
        assert store.read(ROWS).tobytes() == expected.tobytes()
        store.close()


def test_pickled_store_reads_in_pool(small_store):
    path, _ = small_store
    store = shardfeed.open_store(path, fast=False)
    expected = store.read(ROWS).tobytes()
    payload = pickle.dumps(store)
    with multiprocessing.get_context("forkserver").Pool(2) as pool:
        results = pool.starmap(_read_pickled, [(payload, ROWS), (payload, ROWS)])
    assert results == [expected, expected]
    assert store.read(ROWS).tobytes() == expected


def test_forked_child_opens_its_own_handles(small_store):
    """A child that inherited open readers reads through new ones, leaving the parent's alone."""
    path, _ = small_store
    store = shardfeed.open_store(path, fast=False)
    store.read([0])
    inherited = dict(store._readers)
    assert inherited
    queue = multiprocessing.get_context("fork").Queue()

    def child() -> None:
        store.read([0])
        reused = any(store._readers.get(k) is r for k, r in inherited.items())
        queue.put(reused)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    reused = queue.get(timeout=30)
    process.join(timeout=30)
    assert process.exitcode == 0
    assert reused is False
    assert all(store._readers[k] is r for k, r in inherited.items())
