from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from batch_makers import SPECS, Unloadable, fill, value

from shardfeed.errors import WorkerDiedError
from shardfeed.feed.workers import RemoteTraceback, WorkerPool

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def pool(request):
    """One pool per start method, shared by the tests that leave it usable: started once, like in `fit`."""
    with WorkerPool(fill, SPECS, workers=2) as pool:
        yield pool


def gone(pids: list[int]) -> bool:
    """Whether none of `pids` runs any more (a zombie waiting for a reaper counts as gone)."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def wait_until(condition, timeout: float) -> None:
    """Polls `condition()`; fails the test if it is still false after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {timeout} s")
        time.sleep(0.02)


def test_batches_match_their_keys_in_order_over_epochs_in_the_same_processes(pool):
    pids = pool.pids
    builders = set()
    for epoch in range(3):
        for index in range(10):  # more than the slots: the rest wait for a free one
            pool.submit((epoch, index))
        for index in range(10):
            x, pid = pool.get()
            assert x.shape == (4, 8) and (x == value((epoch, index))).all()
            builders.add(int(pid[0]))
    assert pool.pids == pids
    assert builders == set(pids)  # both workers took part


def test_streaming_keeps_a_few_in_flight(pool):
    ahead = 3
    for index in range(ahead):
        pool.submit((7, index))
    for index in range(40):
        if index + ahead < 40:
            pool.submit((7, index + ahead))
        x, _ = pool.get()
        assert (x == value((7, index))).all()


def test_held_batches_are_never_overwritten(pool):
    held = []
    for index in range(60):
        pool.submit((9, index))
        batch = pool.get()
        if index % 20 == 0:
            held.append((index, batch[0][1:]))  # a view keeps the slot as well as the batch does
    for index, x in held:
        assert (x == value((9, index))).all(), f"held batch {index} was overwritten"


def test_a_short_batch_comes_back_trimmed(pool):
    pool.submit(("short", 3))
    x, pid = pool.get()
    assert x.shape == (3, 8) and (x == -1).all() and pid.shape == (1,)


def test_an_error_names_the_key_and_keeps_the_worker_traceback(pool):
    pids = pool.pids
    pool.submit(("fail", 5))
    pool.submit((1, 1))
    with pytest.raises(ValueError, match="bad sample in batch 5") as info:  # the worker's own exception
        pool.get()
    assert isinstance(info.value.__cause__, RemoteTraceback)
    remote = str(info.value.__cause__)
    assert "Traceback (most recent call last)" in remote and "in explode" in remote
    x, _ = pool.get()  # the pool stays usable
    assert (x == value((1, 1))).all() and pool.pids == pids


def test_workers_ignore_sigint(pool):
    for pid in pool.pids:
        os.kill(pid, signal.SIGINT)
    pool.submit((2, 2))
    x, _ = pool.get()
    assert (x == value((2, 2))).all()
    assert not gone(pool.pids)


def test_a_killed_worker_fails_get_at_once_and_closes_the_pool():
    pool = WorkerPool(fill, SPECS, workers=2)
    pids = pool.pids
    pool.submit(("sleep", 30))  # goes to the first, idle worker
    killed_at = []

    def kill() -> None:
        killed_at.append(time.monotonic())
        os.kill(pids[0], signal.SIGKILL)

    threading.Timer(0.3, kill).start()  # while get() waits
    with pytest.raises(WorkerDiedError, match=rf"pid {pids[0]} was killed by SIGKILL .*\('sleep', 30\)"):
        pool.get()
    assert time.monotonic() - killed_at[0] < 2
    with pytest.raises(WorkerDiedError):
        pool.submit((0, 0))
    assert gone(pids)


def test_a_worker_that_cannot_start_fails_the_constructor():
    with pytest.raises(WorkerDiedError, match="exited with code 1 before it was ready: ImportError: this make_batch"):
        WorkerPool(Unloadable(), SPECS, workers=1)


def test_holding_every_slot_is_reported_instead_of_hanging():
    with WorkerPool(fill, SPECS, workers=1, slots=2) as pool:
        pool.submit((0, 0))
        pool.submit((0, 1))
        pool.submit((0, 2))
        held = [pool.get(), pool.get()]
        with pytest.raises(RuntimeError, match="all 2 slots hold batches that are still referenced"):
            pool.get()
        del held
        x, _ = pool.get()
        assert (x == value((0, 2))).all()


def test_close_leaves_no_process_or_descriptor():
    gc.collect()
    fds, children = set(os.listdir("/proc/self/fd")), psutil.Process().children(recursive=True)
    pool = WorkerPool(fill, SPECS, workers=2)
    pids = pool.pids
    pool.submit((0, 0))
    batch = pool.get()
    pool.close()
    pool.close()
    assert (batch[0] == value((0, 0))).all()  # still readable after close
    del batch
    gc.collect()
    assert gone(pids)
    assert psutil.Process().children(recursive=True) == children
    assert set(os.listdir("/proc/self/fd")) == fds


def test_garbage_collection_closes_the_pool():
    pool = WorkerPool(fill, SPECS, workers=1)
    pids = pool.pids
    del pool
    gc.collect()
    assert gone(pids)


CONSUMER = """
import sys, threading, time
sys.path[:0] = [{root!r}, {tests!r}]
from batch_makers import SPECS, fill
from shardfeed.feed.workers import WorkerPool

pools = []

def start():
    pools.append(WorkerPool(fill, SPECS, workers=2))
    if {busy!r}:
        pools[0].submit(("sleep", 60))

if {in_thread!r}:  # the thread that made the pool ends: its workers must not end with it
    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
else:
    start()
time.sleep(0.5)
print(*pools[0].pids, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize(("in_thread", "busy"), [(False, True), (True, False)],
                         ids=["busy-worker", "pool-made-in-a-thread"])  # fmt: skip
def test_workers_end_when_the_consumer_is_killed(in_thread, busy):
    shm = {name for name in os.listdir("/dev/shm") if name.startswith(("shardfeed", "psm_"))}
    script = CONSUMER.format(
        root=str(TESTS.parent), tests=str(TESTS), in_thread=in_thread, busy=busy
    )
    consumer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in consumer.stdout.readline().split()]
        assert len(workers) == 2, "the consumer did not start its pool"
        everything = [child.pid for child in psutil.Process(consumer.pid).children(recursive=True)]
        assert set(workers) <= set(everything)
        assert set(workers) <= set(everything) and not gone(workers)
    finally:
        consumer.kill()
        consumer.wait()
    wait_until(lambda: gone(everything), timeout=5)
    assert {name for name in os.listdir("/dev/shm") if name.startswith(("shardfeed", "psm_"))} == shm


STORM = """
import os, signal, sys, threading, time
sys.path[:0] = [{root!r}, {tests!r}]
from batch_makers import SPECS, fill, value
from shardfeed.feed.workers import WorkerPool

signal.signal(signal.SIGINT, lambda *_: None)
def storm():
    while True:
        os.killpg(0, signal.SIGINT)
        time.sleep(0.002)
with WorkerPool(fill, SPECS, workers=2) as pool:
    threading.Thread(target=storm, daemon=True).start()
    for index in range(100):
        pool.submit((3, index))
        x, _ = pool.get()
        assert (x == value((3, index))).all()
print("ok")
"""


def test_workers_do_not_get_the_terminals_ctrl_c():
    # A Ctrl-C goes to the terminal's whole process group; here one every 2 ms while batches are made.
    script = STORM.format(root=str(TESTS.parent), tests=str(TESTS))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, start_new_session=True, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
