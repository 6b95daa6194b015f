"""Shard tasks on a Dask cluster: the same `write_shard` function the local pool runs.

A task that dies with its worker is rescheduled by Dask on another worker; because a shard is
written under a temporary name and renamed only when complete, the redo is safe. The driver
(the caller of `convert`) receives the records and commits the store.
"""

from __future__ import annotations

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


def run_on_dask(
    tasks: list[ShardTask],
    progress: Callable[[int], None] | None,
    *,
    client=None,
    scheduler: str | None = None,
    workers: int = 1,
) -> Iterator[ShardRecord]:
    """Yield each shard's record as its task finishes on the cluster."""
    distributed = _distributed()
    if client is not None:
        yield from _submit(distributed, client, tasks, progress)
    elif scheduler == "local":
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None)  # fmt: skip
        with cluster, distributed.Client(cluster) as own_client:
            yield from _submit(distributed, own_client, tasks, progress)
    else:
        try:
            own_client = distributed.Client(scheduler, timeout="20s")
        except OSError as exc:
            raise OptionError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
        with own_client:
            yield from _submit(distributed, own_client, tasks, progress)


def _submit(distributed, client, tasks, progress) -> Iterator[ShardRecord]:
    futures = [client.submit(write_shard, task, pure=False) for task in tasks]
    try:
        for future in distributed.as_completed(futures):
            record = future.result()
            if progress:
                progress(record.info.num_rows)
            yield record
    finally:
        client.cancel([f for f in futures if not f.done()])
