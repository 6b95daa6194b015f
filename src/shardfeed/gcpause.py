"""Python's cyclic garbage collector paused while per-sample records are made in bulk."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic collection inside (also a decorator); a collector the caller had turned off stays off.

    A scan of 100,000 small files makes some 500,000 objects that all live on, and each of the
    collector's full passes walks all of them: 0.7-1.2 s of a 5.5 s scan, and 0.5 s of making the
    shard tasks' 0.7 s. The records hold no reference cycles, so a pass finds nothing to free; they
    are freed by their reference counts as ever.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
