"""Batch arrays that are reused once nobody holds them any more, aligned for TensorFlow.

A fresh multi-MiB array is mapped in by the kernel page by page on its first write: for a batch
of 64 samples of 128 KiB that costs about as much as copying the samples (1.4 ms against
0.7 ms per batch, measured here), and it happens again for every batch because the allocator
returns such blocks to the system when they are freed. Reusing batch arrays removes that cost.
TensorFlow shares a numpy array's memory instead of copying it when the data is 64-byte
aligned (numpy only guarantees 16): `tf.data.Dataset.from_generator`, which Keras feeds a
PyDataset through, then costs 0.74 instead of 1.6 ms per 8 MiB batch here. Beyond that, where a
batch starts modulo 4 KiB decides how fast rows are copied into it (`storage.alignment`): callers
pass the residue their source wants (`Store.batch_residue`), and a buffer is reused only for the same.

A buffer is handed out again only when this pool holds the only references to it and to its
memory, so a batch that the caller keeps, or that a TensorFlow tensor still shares, is never
overwritten (CPython's reference counts tell: views of a batch refer to its memory's owner).
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

from ..storage.alignment import ALIGNMENT, DEFAULT_RESIDUE, aligned_empty

__all__ = ["ALIGNMENT", "BufferPool", "aligned_empty"]

MAX_BUFFERS = 16
MAX_POOLED_BYTES = 256 * 2**20
MIN_POOLED_BYTES = 256 * 2**10  # below this, malloc reuses memory by itself (arrays placed anywhere)

# References seen from `take` to a free buffer: the pool's entry, the loop variable, getrefcount's
# argument; its memory's owner also has the buffer's `base`.
_FREE_ARRAY_REFS, _FREE_OWNER_REFS = 3, 4


class BufferPool:
    """Placed arrays handed out again once their users have dropped them. Thread-safe."""

    def __init__(self) -> None:
        # (memory owner, array, residue): the residue kept, since asking an array its address
        # (`.ctypes.data`) costs 3 us, more than the rest of a `take`
        self._buffers: list[tuple[np.ndarray, np.ndarray, int]] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: np.dtype, residue: int | None = None) -> np.ndarray:
        """An uninitialized C-contiguous array starting at `residue` modulo 4096 (see `aligned_empty`),
        a free pooled one when there is one; `residue` None: anywhere (nothing is copied in by rows)."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if residue is None and nbytes < MIN_POOLED_BYTES:  # cheap to fault in, and to copy where TensorFlow must
            return np.empty(shape, dtype)  # (placing one costs its address: pooled, whatever its size)
        with self._lock:
            for owner, array, placed in self._buffers:
                if (
                    array.shape == shape
                    and array.dtype == dtype
                    and (residue is None or placed == residue)
                    and sys.getrefcount(array) == _FREE_ARRAY_REFS
                    and sys.getrefcount(owner) == _FREE_OWNER_REFS
                ):
                    return array
            placed = DEFAULT_RESIDUE if residue is None else residue
            fresh = aligned_empty(shape, dtype, placed)
            pooled = sum(a.nbytes for _, a, _ in self._buffers)
            if len(self._buffers) < MAX_BUFFERS and pooled + nbytes <= MAX_POOLED_BYTES:
                self._buffers.append((fresh.base, fresh, placed))
            return fresh

    def __reduce__(self):
        return (BufferPool, ())  # a copy in another process starts empty
