"""A fixed ring of batch slots in shared memory: workers build batches there, the trainer reads them in place.

The memory is an anonymous `memfd` (Linux). It has no name, so nothing is left behind when the
processes end, even by SIGKILL, and Docker's 64 MiB `/dev/shm` does not limit it (no file is
created there at all). The pages are reserved at creation (`posix_fallocate`): a lack of memory
is a one-line `OptionError` then, naming the bytes needed, not a SIGBUS in the middle of an epoch.

Workers inherit the memory as a file descriptor (`launch`) and map it with `attach_fd`: nothing
attaches by name, so nothing has to wait to unlink one.

A slot is reused only when nothing in the trainer refers to it. Each array that `arrays()` returns
is a fresh view whose `.base` is the slot's owner, a uint8 array over the slot's bytes; numpy
collapses view chains to the first array that does not own its data, so every view, slice,
reshape or `np.asarray` of a batch has the owner as its `.base`, and a `memoryview` or a
foreign tensor that shares the memory holds one of those arrays. The owner's reference count is
thus the ring's own references plus one per live array of the slot (CPython: the ring's list and
`getrefcount`'s argument make 2 on 3.11; the ring measures that number at creation so that an
interpreter that counts differently still works). Raw addresses (`arr.ctypes.data`) are not
counted: whoever keeps one must keep the array too.
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import weakref
from collections.abc import Sequence

import numpy as np
from numpy.typing import DTypeLike

from ..errors import OptionError
from ..storage.alignment import ALIAS_PERIOD, ALIGNMENT, DEFAULT_RESIDUE

# Where an array starts modulo 4 KiB decides how fast rows are copied into it (4K aliasing, see
# `storage.alignment`): each slot's arrays start near the residue the ring is given (the store's
# `batch_residue`), each at its own multiple of 64 bytes from it, so that no two arrays alias either.

Spec = tuple[Sequence[int], DTypeLike]


def _normalize(specs: Sequence[Spec]) -> tuple[tuple[tuple[int, ...], np.dtype], ...]:
    if not specs:
        raise ValueError("a slot needs at least one (shape, dtype) spec")
    normalized = []
    for shape, dtype in specs:
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        if any(n < 0 for n in shape):
            raise ValueError(f"spec shape {shape} has a negative dimension")
        if dtype.hasobject:
            raise ValueError(f"spec dtype {dtype} holds Python objects, which cannot live in shared memory")
        normalized.append((shape, dtype))
    return tuple(normalized)


def _layout(
    specs: Sequence[tuple[tuple[int, ...], np.dtype]], slots: int, residue: int
) -> tuple[list[list[int]], int]:
    """Byte offset of each array of each slot, and the total size (whole pages).

    Array k (counting over slots) starts on a fresh 4 KiB boundary plus `residue` plus 0, +64,
    -64, +128, ... bytes: 64 arrays apart, all near `residue`.
    """
    offsets, end = [], 0
    for slot in range(slots):
        row = []
        for index, (shape, dtype) in enumerate(specs):
            k = (slot * len(specs) + index) % (ALIAS_PERIOD // ALIGNMENT)
            skew = (k + 1) // 2 * ALIGNMENT * (1 if k % 2 else -1)
            start = -(-end // ALIAS_PERIOD) * ALIAS_PERIOD + (residue + skew) % ALIAS_PERIOD
            row.append(start)
            end = start + math.prod(shape) * dtype.itemsize
        offsets.append(row)
    return offsets, max(-(-end // mmap.PAGESIZE), 1) * mmap.PAGESIZE


def _create_memory(nbytes: int, what: str) -> int:
    """A descriptor of `nbytes` of shared memory, reserved now, whose name (if any) is already gone."""
    mib = -(-nbytes // 2**20)
    if not hasattr(os, "memfd_create"):
        raise OptionError("worker processes need Linux (memfd_create) here; use threads (use_multiprocessing=False)")
    fd = os.memfd_create("shardfeed-ring")  # close-on-exec by default
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        os.close(fd)
        raise OptionError(
            f"cannot reserve {nbytes} bytes ({mib} MiB) of shared memory for {what}: {exc.strerror}; "
            f"free memory, or lower workers, max_queue_size or the batch size"
        ) from exc
    return fd


class SlotRing:
    """`slots` batches of arrays in shared memory, filled by workers and read in place by the trainer.

    Args:
        specs: (shape, dtype) of each array of a batch, e.g. `[((64, 32, 32, 32, 1), "float32"), ((64, 6), "float32")]`.
        slots: batches that exist at once: being filled, waiting, or still held by the trainer.
        residue: where the arrays should start modulo 4096 (give the store's `batch_residue`, the
            samples being copied in); a multiple of 64. A worker attaches with the same.

    The creating process (the trainer) hands slots out (`acquire_free_slot`, `release`) and reads
    them; a worker inherits `fd`, maps the ring with `attach_fd` and writes through `arrays()`.
    Not thread-safe: one trainer thread drives it.
    """

    def __init__(self, specs: Sequence[Spec], slots: int, residue: int = DEFAULT_RESIDUE) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if residue % ALIGNMENT or not 0 <= residue < ALIAS_PERIOD:
            raise ValueError(f"residue must be a multiple of {ALIGNMENT} in [0, {ALIAS_PERIOD}), got {residue}")
        self._plan(_normalize(specs), slots, residue)
        self._adopt(_create_memory(self.nbytes, f"{slots} batch slots of {sum(self._sizes)} bytes"))
        self._creator = True
        self._in_flight: set[int] = set()
        self._map()
        self._free_refs = self._refs(0)  # no array of any slot exists yet

    def _plan(self, specs: tuple[tuple[tuple[int, ...], np.dtype], ...], slots: int, residue: int) -> None:
        self.specs, self.slots, self.residue = specs, slots, residue
        self._sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in specs]
        self._offsets, self.nbytes = _layout(specs, slots, residue)

    def _adopt(self, fd: int) -> None:
        self._fd: int | None = fd
        self._close_fd = weakref.finalize(self, os.close, fd)
        self._owners: list[np.ndarray] | None = None
        self._closed = False

    def _map(self) -> None:
        memory = mmap.mmap(self._fd, self.nbytes)  # the mapping lives until its last array is gone
        self._owners = []
        for row in self._offsets:
            count = row[-1] + self._sizes[-1] - row[0]
            self._owners.append(np.frombuffer(memory, np.uint8, count=count, offset=row[0]))

    def _refs(self, slot: int) -> int:
        return sys.getrefcount(self._owners[slot])

    @property
    def fd(self) -> int:
        """The memory's descriptor, for a worker process to inherit (see `launch`)."""
        if self._fd is None:
            raise ValueError("this SlotRing is closed")
        return self._fd

    @classmethod
    def attach_fd(cls, specs: Sequence[Spec], slots: int, fd: int, residue: int = DEFAULT_RESIDUE) -> SlotRing:
        """In a worker: the ring whose memory `fd` (inherited from the trainer) holds, mapped writable."""
        ring = cls.__new__(cls)
        ring._plan(_normalize(specs), slots, residue)
        ring._adopt(fd)
        ring._creator = False
        ring._map()
        ring._close_fd()  # the mapping holds the memory now
        ring._fd = None
        return ring

    def arrays(self, slot: int) -> tuple[np.ndarray, ...]:
        """Fresh writable views of `slot`'s arrays; each one's `.base` is the slot's owner."""
        if self._owners is None:
            raise ValueError("this SlotRing is closed" if self._closed else "map it first: SlotRing.attach_fd")
        owner, offsets = self._owners[slot], [offset - self._offsets[slot][0] for offset in self._offsets[slot]]
        return tuple(
            owner[offset : offset + size].view(dtype).reshape(shape)
            for offset, size, (shape, dtype) in zip(offsets, self._sizes, self.specs)
        )

    def acquire_free_slot(self) -> int | None:
        """A slot that is not in flight and that no array in this process refers to, now marked in flight.

        Returns None when every slot is in flight or still referenced.
        """
        if not self._creator:
            raise ValueError("only the process that created the SlotRing hands out slots")
        if self._owners is None:
            raise ValueError("this SlotRing is closed")
        for slot in range(self.slots):
            if slot not in self._in_flight and self._refs(slot) == self._free_refs:
                self._in_flight.add(slot)
                return slot
        return None

    def has_free_slot(self) -> bool:
        """Whether `acquire_free_slot` would give a slot now."""
        return any(s not in self._in_flight and self._refs(s) == self._free_refs for s in range(self.slots))

    def release(self, slot: int) -> None:
        """Ends `slot`'s flight (its batch is ready or failed): it is free again once no array of it is alive."""
        if slot not in self._in_flight:
            raise ValueError(f"slot {slot} is not in flight")
        self._in_flight.remove(slot)

    def close(self) -> None:
        """Drops this process's hold on the memory; idempotent, and done on garbage collection too.

        Arrays still alive keep their pages mapped until they are dropped, so they never dangle.
        """
        self._closed = True
        self._owners = None
        self._close_fd()
        self._fd = None
