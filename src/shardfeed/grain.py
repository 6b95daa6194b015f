"""JAX and Grain without Keras: `StoreSource` (a Grain data source) and `BatchIterator` (resumable
NumPy batches for a plain loop); neither needs Grain installed (see `shardfeed.feed.grainsource`).
"""

from __future__ import annotations

from .feed.grainsource import BatchIterator, StoreSource

__all__ = ["BatchIterator", "StoreSource"]
