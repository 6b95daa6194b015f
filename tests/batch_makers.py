"""What the test workers run: kept apart from the test modules so that a worker imports only numpy."""

from __future__ import annotations

import os
import time

import numpy as np

SPECS = [((4, 8), np.float32), ((1,), np.int64)]  # a batch: x, and the pid of the worker that built it


def value(key: tuple) -> float:
    """What every element of x holds for `key` = (epoch, index)."""
    return key[0] * 1000 + key[1]


def fill(key: tuple, out: tuple[np.ndarray, ...]) -> int | None:
    """Fills x with `value(key)`; ("fail", n) raises, ("sleep", s) takes s seconds, ("short", rows) is short."""
    x, pid = out
    pid[0] = os.getpid()
    if key[0] == "fail":
        explode(key)
    if key[0] == "sleep":
        time.sleep(key[1])
    if key[0] == "short":
        x[: key[1]] = -1
        return key[1]
    x[...] = value(key)
    return None


def explode(key: tuple) -> None:
    raise ValueError(f"bad sample in batch {key[1]}")


def write_slot(fd: int, slot: int = 2, expected: float = 3.5, written: float = 7.25) -> None:
    """In a child that inherited the ring's `fd`: check what the parent wrote into `slot`, then overwrite it."""
    from shardfeed.feed.ring import SlotRing

    ring = SlotRing.attach_fd([((16, 5), np.float64), ((1,), np.int64)], 3, fd)
    x, flag = ring.arrays(slot)
    flag[0] = int((x == expected).all())
    x[...] = written


class Unloadable:
    """A make_batch whose copy cannot be rebuilt in the worker, so the worker dies while starting."""

    def __reduce__(self):
        return (_refuse, ())

    def __call__(self, key: tuple, out: tuple[np.ndarray, ...]) -> None:
        raise AssertionError("never runs")


def _refuse() -> None:
    raise ImportError("this make_batch cannot be rebuilt in a worker")
