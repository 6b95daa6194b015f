"""Shard tasks on a Dask cluster: the same `write_shard` function the local pool runs.

A task that dies with its worker is rescheduled by Dask on another worker; because a shard is
written under a temporary name and renamed only when complete, the redo is safe. The driver
(the caller of `convert`) receives the records and commits the store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from ..errors import OptionError
from .shardtask import ShardRecord, ShardTask, write_shard


def _distributed():
    try:
        import dask.distributed
    except ImportError as exc:
        raise OptionError(
            "converting on a Dask cluster needs dask.distributed: pip install 'shardfeed[dask]'"
        ) from exc
    return dask.distributed


@contextlib.contextmanager
def dask_client(client=None, scheduler: str | None = None, workers: int = 1) -> Iterator[object | None]:
    """The client to run shard tasks on: the caller's, a LocalCluster's ("local"), or one connected
    to `scheduler` now, so that an unreachable or malformed address fails before OUT is touched.
    None when the tasks run locally."""
    if client is not None or scheduler is None:
        yield client
        return
    distributed = _distributed()
    if scheduler == "local":
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None)  # fmt: skip
        with cluster, distributed.Client(cluster) as own_client:
            yield own_client
        return
    try:
        own_client = distributed.Client(scheduler, timeout="20s")
    except (OSError, ValueError, TypeError) as exc:  # refused, timed out, or not an address
        raise OptionError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
    with own_client:
        yield own_client


def run_on_dask(tasks: list[ShardTask], progress: Callable[[int], None] | None, client) -> Iterator[ShardRecord]:
    """Yield each shard's record as its task finishes on the cluster."""
    distributed = _distributed()
    yield from _submit(distributed, client, tasks, progress)


def _submit(distributed, client, tasks, progress) -> Iterator[ShardRecord]:
    futures = [client.submit(write_shard, task.without_contents(), pure=False) for task in tasks]
    try:
        for future in distributed.as_completed(futures):
            record = future.result()
            if progress:
                progress(record.info.num_rows)
            yield record
    finally:
        client.cancel([f for f in futures if not f.done()])
