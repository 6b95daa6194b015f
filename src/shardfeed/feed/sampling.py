"""Epoch orders: pure functions of (rows, seed, epoch, mode, rank, world_size).

Every worker process and every host computes the same order without talking to each other,
a run can be reproduced, and training can resume at batch k of epoch e.

- `global`: a fresh permutation of all rows each epoch (the Keras tutorial's behaviour).
- `block`: permute chunk-aligned blocks, then shuffle samples within windows of
  `window_blocks` consecutive blocks. A batch then touches about `window_blocks` chunks instead
  of `batch_size` chunks, which matters for compressed or remote stores and tiny samples; the
  price is that a sample's neighbours in a batch come from a few chunks, not the whole split.
"""

from __future__ import annotations

import json
import os

import numpy as np

MODES = ("global", "block")


def epoch_order(
    rows: np.ndarray,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    mode: str = "global",
    chunk_rows: int = 1,
    window_blocks: int = 8,
    rank: int = 0,
    world_size: int = 1,
) -> np.ndarray:
    """This host's rows for `epoch`, in reading order.

    With `world_size > 1` each rank takes a contiguous, disjoint slice of the same epoch
    order, all of length `len(rows) // world_size`: the `len(rows) % world_size` rows at the
    end of the order are left out of that epoch (different rows each epoch when shuffling).
    """
    if mode not in MODES:
        raise ValueError(f"shuffle mode {mode!r} unknown; expected one of {MODES}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, world_size={world_size})")
    rows = np.asarray(rows, dtype=np.int64)
    if not shuffle:
        order = rows
    else:
        rng = np.random.default_rng([seed, epoch, MODES.index(mode)])
        if mode == "global":
            order = rows[rng.permutation(len(rows))]
        else:
            order = _block_order(rows, rng, chunk_rows, window_blocks)
    share = len(order) // world_size
    return order[rank * share : (rank + 1) * share]


def _block_order(rows: np.ndarray, rng: np.random.Generator, chunk_rows: int, window_blocks: int) -> np.ndarray:
    chunks = rows // chunk_rows
    unique, inverse = np.unique(chunks, return_inverse=True)
    block_rank = np.empty(len(unique), dtype=np.int64)
    block_rank[rng.permutation(len(unique))] = np.arange(len(unique))
    window = block_rank[inverse] // max(1, window_blocks)
    # Sort by (window, random key): blocks of one window are mixed, windows stay in block order.
    key = rng.random(len(rows))
    return rows[np.lexsort((key, window))]


def num_batches(num_rows: int, batch_size: int, drop_remainder: bool) -> int:
    return num_rows // batch_size if drop_remainder else -(-num_rows // batch_size)


def host_share_from_env(env: dict[str, str] | None = None) -> tuple[int, int]:
    """(rank, world_size) of this host from the usual launchers' environment variables.

    `RANK`/`WORLD_SIZE` (torchrun, Slurm wrappers, most launchers), else `TF_CONFIG`
    (tf.distribute's multi-worker setup: the chief, if any, is rank 0), else (0, 1).
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env:
        rank, world = int(env.get("RANK", "0")), int(env["WORLD_SIZE"])
    elif "TF_CONFIG" in env:
        config = json.loads(env["TF_CONFIG"])
        cluster, task = config.get("cluster", {}), config.get("task", {})
        chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
        if kind not in ("chief", "worker"):
            return 0, 1  # parameter servers and evaluators read no training shares
        rank, world = (index if kind == "chief" else chiefs + index), chiefs + workers
    else:
        return 0, 1
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside [0, world_size={world}) in the environment")
    return rank, world
