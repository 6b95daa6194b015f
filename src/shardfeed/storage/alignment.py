"""Where a batch array starts in memory, so that copying rows into it runs at memory bandwidth.

A copy whose destination lies just past its source modulo 4 KiB runs at a fraction of its speed:
the CPU matches loads against earlier stores by the low 12 address bits, so each load looks as if it
depended on a store that has not finished (4K aliasing). Measured on an AMD EPYC (issue #13), 128 KiB
rows from page-aligned sources: a destination 16 bytes past them copied 12,000-19,000 rows/s, 64 or
more bytes away 45,000-80,000. Zarr's raw chunks start page-aligned in a shard file, and the allocator
hands out large blocks 16 bytes past a page: the worst case is the default unless arrays are placed.

Every batch array is therefore placed at a *residue* (its first byte's address modulo 4096) half a
period away from where its source rows start (`destination_residue`), on every CPU alike: nothing is
detected, the good case is the only case. A store knows its sources (`Store.batch_residue`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import DTypeLike

ALIAS_PERIOD = 4096  # the address bits a load is matched against earlier stores by
ALIGNMENT = 64  # TensorFlow shares, rather than copies, numpy memory aligned to this
DEFAULT_RESIDUE = 2048  # half a period from page-aligned memory (Zarr chunks, the allocator's big blocks)


def aligned_empty(shape: int | Sequence[int], dtype: DTypeLike, residue: int = DEFAULT_RESIDUE) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts at `residue` modulo 4096.

    The array is a view into a slightly larger uint8 buffer, which it keeps alive as its `.base`.
    """
    if not 0 <= residue < ALIAS_PERIOD:
        raise ValueError(f"residue must be in [0, {ALIAS_PERIOD}), got {residue}")
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    owner = np.empty(nbytes + ALIAS_PERIOD, dtype=np.uint8)
    start = (residue - owner.ctypes.data) % ALIAS_PERIOD
    return owner[start : start + nbytes].view(dtype).reshape(shape)


def destination_residue(sources: Sequence[np.ndarray], row_nbytes: int) -> int:
    """The multiple of `ALIGNMENT` farthest from aliasing with rows copied out of `sources`.

    Rows of `row_nbytes` repeat their residue every gcd(row_nbytes, 4096) bytes, in the source as in
    the destination, so source row r and destination row i are (d + k * q) apart modulo 4096 for
    some k, where d is the distance of the arrays' starts and q that gcd: placing the destination so
    that d sits mid-way between multiples of q keeps every pair of rows apart, for every source (each
    run of chunks of a shard) at once where it can. `sources` empty (compressed chunks, decoded into
    fresh buffers; a remote store): `DEFAULT_RESIDUE`.
    """
    if not sources:
        return DEFAULT_RESIDUE
    period = math.gcd(row_nbytes, ALIAS_PERIOD)
    starts = np.array([s.ctypes.data % ALIAS_PERIOD for s in sources], dtype=np.int64)
    weights = np.array([max(1, len(s)) for s in sources], dtype=np.int64)
    candidates = (DEFAULT_RESIDUE + np.arange(0, ALIAS_PERIOD, ALIGNMENT, dtype=np.int64)) % ALIAS_PERIOD
    apart = (candidates[:, None] - starts[None, :]) % period
    distance = np.minimum(apart, period - apart)  # to the nearest aliasing pair, either way
    # The worst source decides; among equals, the rows' mean distance; then the first from DEFAULT_RESIDUE.
    score = distance.min(axis=1) * weights.sum() * period + distance @ weights
    return int(candidates[np.argmax(score)])
