from __future__ import annotations

import contextlib
import gc
import itertools
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shardfeed.errors import OptionError
from shardfeed.feed.ring import SlotRing

TESTS = Path(__file__).parent
SPECS = [((64, 33, 7), np.float32), ((64, 6), np.float32), ((3,), np.int64)]


def open_fds() -> set[str]:
    gc.collect()  # garbage of earlier tests may still hold descriptors
    return set(os.listdir("/proc/self/fd"))


def ring_files() -> list[str]:
    """What this process' descriptors and mappings of shardfeed memory point to."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    with open("/proc/self/maps") as maps:
        links += [line.split(maxsplit=5)[-1].strip() for line in maps if "shardfeed" in line]
    return [link for link in links if "shardfeed" in link]


def take(ring: SlotRing, value: float) -> tuple[np.ndarray, ...]:
    """Acts as worker and trainer: fills a free slot with `value`, then hands out its arrays."""
    slot = ring.acquire_free_slot()
    assert slot is not None, "no free slot: a held batch or a leaked reference pins every slot"
    for array in ring.arrays(slot):
        array[...] = value
    arrays = ring.arrays(slot)
    ring.release(slot)
    return arrays


def holds(kept: object, value: float) -> bool:
    """Whether a kept batch, array or view still holds `value` everywhere."""
    return all((np.asarray(array) == value).all() for array in (kept if isinstance(kept, tuple) else (kept,)))


def test_arrays_are_aligned_disjoint_and_skewed():
    ring = SlotRing(SPECS, slots=5)
    starts = []
    intervals = []
    for slot in range(5):
        for array, (shape, dtype) in zip(ring.arrays(slot), SPECS):
            assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous and array.flags.writeable
            address = array.ctypes.data
            assert address % 64 == 0
            starts.append(address % 4096)
            intervals.append((address, address + array.nbytes))
    assert len(set(starts)) == len(starts)  # no two of the 15 arrays alias modulo 4 KiB
    intervals.sort()
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(intervals))
    ring.close()


@pytest.mark.parametrize(
    "hold",
    [
        lambda batch: batch,
        lambda batch: batch[0],
        lambda batch: batch[1][2:5],
        lambda batch: batch[0][::2, 1],
        lambda batch: batch[0].T,
        lambda batch: batch[0].reshape(-1),
        lambda batch: batch[0].ravel(),
        lambda batch: batch[0].view(np.uint8),
        lambda batch: np.asarray(batch[2]),
        lambda batch: batch[0][None],
        lambda batch: memoryview(batch[1]),
        lambda batch: batch[0].base,
        lambda batch: np.frombuffer(batch[1], np.uint8),
        lambda batch: [batch[0][1:]][0][1:][1:],
    ],
    ids=[
        "tuple", "array", "slice", "strided", "transpose", "reshape", "ravel", "view_dtype", "asarray",
        "newaxis", "memoryview", "base", "frombuffer", "view_of_view_of_view",
    ],
)  # fmt: skip
def test_slot_is_not_reused_while_anything_refers_to_it(hold):
    ring = SlotRing(SPECS, slots=1)
    kept = hold(take(ring, 1.0))
    assert ring.acquire_free_slot() is None
    del kept
    assert ring.acquire_free_slot() == 0
    ring.close()


def test_every_view_counts_once_on_the_slot_owner():
    ring = SlotRing(SPECS, slots=2)
    x, y, z = take(ring, 0.0)
    owner = x.base
    assert y.base is owner and z.base is owner
    before = sys.getrefcount(owner)
    views = [x[1:], x[1:][::2], x.reshape(-1)[3:].view(np.uint8), np.asarray(y)]
    assert all(view.base is owner for view in views[:3]) and views[3] is y
    assert sys.getrefcount(owner) == before + 3  # np.asarray returned y itself
    assert ring.acquire_free_slot() == 1


def test_a_slot_in_flight_is_not_handed_out_twice():
    ring = SlotRing(SPECS, slots=2)
    assert ring.acquire_free_slot() == 0
    assert ring.acquire_free_slot() == 1
    assert ring.acquire_free_slot() is None
    ring.release(0)
    assert ring.acquire_free_slot() == 0
    ring.release(1)
    with pytest.raises(ValueError, match="slot 1 is not in flight"):
        ring.release(1)


def test_held_batches_never_change_over_many_batches():
    ring = SlotRing(SPECS, slots=8)
    first = take(ring, -1.0)  # held for the whole run
    held: list[tuple[int, int, object]] = []  # (batch number, last batch that holds it, reference)
    kinds = [lambda b: b, lambda b: b[0][3:], lambda b: np.asarray(b[1]), lambda b: b[0].reshape(-1)[::7]]
    for number in range(300):
        batch = take(ring, float(number))
        held.append((number, number + number % 6, kinds[number % 4](batch)))
        del batch
        for kept_number, _, kept in held:
            assert holds(kept, kept_number), f"batch {kept_number} was overwritten while held"
        held = [entry for entry in held if entry[1] > number]
    assert holds(first, -1.0)


def test_a_worker_process_shares_the_slots():
    """A fresh interpreter that inherits the ring's descriptor sees and writes the same memory."""
    ring = SlotRing([((16, 5), np.float64), ((1,), np.int64)], slots=3)
    x, flag = ring.arrays(2)
    x[...] = 3.5
    code = f"import sys; sys.path[:0] = [{str(TESTS)!r}]; import batch_makers; batch_makers.write_slot({ring.fd})"
    child = subprocess.run([sys.executable, "-c", code], pass_fds=(ring.fd,), capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert flag[0] == 1, "the worker did not see what the trainer wrote"
    assert (x == 7.25).all(), "the trainer does not see what the worker wrote"
    ring.close()


def test_the_memory_has_no_name_left():
    gc.collect()
    before = ring_files()  # batches of earlier tests' generators may still be alive
    ring = SlotRing(SPECS, slots=2)
    files = ring_files()
    assert len(files) > len(before) and all(file.endswith("(deleted)") for file in files), files
    assert not [name for name in os.listdir("/dev/shm") if name.startswith("shardfeed")]
    ring.close()
    assert ring_files() == before


def test_too_little_memory_is_a_one_line_error_at_creation():
    # RLIMIT_FSIZE makes the reservation fail the way a full memory or /dev/shm would, without exhausting either.
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, limits[1]))
    try:
        with pytest.raises(OptionError, match=r"cannot reserve \d+ bytes \(\d+ MiB\) of shared memory") as info:
            SlotRing([((2**18,), np.float16)], slots=4)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert "\n" not in str(info.value)


def test_close_is_idempotent_and_held_arrays_stay_readable():
    fds = open_fds()
    ring = SlotRing(SPECS, slots=2)
    batch = take(ring, 4.0)
    ring.close()
    ring.close()
    assert all((array == 4.0).all() for array in batch)
    with pytest.raises(ValueError, match="closed"):
        ring.arrays(0)
    del batch
    assert open_fds() == fds  # the mapping went with the last array


def test_garbage_collection_releases_the_memory():
    fds = open_fds()
    ring = SlotRing(SPECS, slots=2)
    take(ring, 1.0)
    del ring
    gc.collect()
    assert open_fds() == fds


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError, match="slots must be >= 1"):
        SlotRing(SPECS, slots=0)
    with pytest.raises(ValueError, match="negative dimension"):
        SlotRing([((4, -1), np.float32)], slots=1)
    with pytest.raises(ValueError, match="Python objects"):
        SlotRing([((4,), object)], slots=1)
