"""Batching samples of different shapes with little padding: what padding costs, and batches of
similar lengths. Pure functions of shapes and orders, so that `inspect`, `bench` and the loaders
(`feed.padding`) compute the same thing.

Bucketing works inside an epoch's shuffle: the shuffled order is cut into windows of
`BUCKET_WINDOW` batches, each window sorted by shape and cut into batches, and the full batches are
then shuffled again (seeded by the seed and the epoch). Every sample stays in its epoch exactly once,
the order is still a pure function of (seed, epoch), and a batch holds samples of similar lengths
drawn from a window of 100 batches, not the whole epoch (the usual trade of bucketing samplers).
"""

from __future__ import annotations

import numpy as np

BUCKET_WINDOW = 100  # batches per window sorted by length
BUCKET_STREAM = 2  # the batch shuffle's random stream (epoch orders use 0 and 1, see `feed.sampling`)


def bucket_by_length(
    order: np.ndarray, shapes: np.ndarray, batch_size: int, seed: int | None, epoch: int, window: int = BUCKET_WINDOW
) -> np.ndarray:
    """`order` (rows) rearranged into batches of similar shapes (see the module docstring); `shapes` is
    indexed by row. With `seed` None (no shuffling) the batches keep the windows' sorted order."""
    out = np.empty_like(order)
    span = window * batch_size
    for start in range(0, len(order), span):
        rows = order[start : start + span]
        out[start : start + len(rows)] = rows[np.lexsort(shapes[rows].T[::-1])]  # by axis 0, then 1...
    full = len(order) // batch_size
    if seed is not None and full > 1:
        batches = np.random.default_rng([seed, epoch, BUCKET_STREAM]).permutation(full)
        out[: full * batch_size] = out[: full * batch_size].reshape(full, batch_size)[batches].reshape(-1)
    return out


def padding_fraction(shapes: np.ndarray, order: np.ndarray, batch_size: int, shape: tuple | None = None) -> float:
    """The share of a padded epoch's values that are padding: `order` cut into batches of `batch_size`,
    each padded to its largest sample on every axis, or to `shape` (padding="max")."""
    if not len(order):
        return 0.0
    ordered = shapes[order].astype(np.float64)  # products of large shapes stay exact enough, never overflow
    starts = np.arange(0, len(order), batch_size)
    if shape is None:
        largest = np.maximum.reduceat(ordered, starts, axis=0)
    else:
        largest = np.broadcast_to(np.asarray(shape, dtype=np.float64), (len(starts), ordered.shape[1]))
    counts = np.diff(np.append(starts, len(order)))
    padded = float((largest.prod(axis=1) * counts).sum())
    return 1.0 - float(ordered.prod(axis=1).sum()) / padded if padded else 0.0
