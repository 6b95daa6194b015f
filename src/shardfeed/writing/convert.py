"""Conversion driver: scan -> plan -> write shards (in-process or a process pool) -> index -> manifest.

Nothing is written before every input has been validated. While a conversion runs, the store
holds a work directory (`.convert/`) with the plan and one record per finished shard, and a lock
file; the manifest, written last, is the commit point. `resume=True` keeps finished shards whose
samples still match their checksums and redoes the rest. A kill at any moment (see `writing/faults.py`
for the points the crash tests aim at) leaves either no manifest or a complete store.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from ..errors import InputError, OptionError
from ..inputs.classfolders import is_class_folders
from ..inputs.labels import read_labels, read_partition, read_weights
from ..inputs.scan import SourceSet, scan_sources
from ..storage.backends import Backend, Layout, get_backend
from ..storage.format import COMPRESSIONS
from ..storage.manifest import Manifest
from ..urls import is_url, local_root
from .cluster import dask_client, run_on_dask
from .local import convert_local
from .plan import DEFAULT_SHARD_SIZE, choose_layout, layout_like, make_tasks, parse_size
from .pool import ProgressCallback, refuse_in_worker, run_tasks
from .remote import convert_remote
from .shardtask import ShardRecord, ShardTask
from .targets import convert_targets, scan_targets


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels: str | os.PathLike | Mapping[str, int | str] | None = None,
    partition: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
    ids: str | os.PathLike | Sequence[str] | None = None,
    variable_shapes: bool = False,
    targets: str | os.PathLike | None = None,
    weights: str | os.PathLike | Mapping[str, float] | None = None,
    format: str = "zarr",
    chunk_rows: int | None = None,
    shard_size: str | int = DEFAULT_SHARD_SIZE,
    compression: str = "none",
    workers: int = 1,
    overwrite: bool = False,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    on_start: Callable[[SourceSet, Layout], None] | None = None,
    client=None,
    scheduler: str | None = None,
    storage_options: dict | None = None,
) -> Manifest:
    """Pack the samples of `src` into a store at `out`; returns its manifest.

    `src` is a folder of `<ID>.npy` files; a folder per class, `<class>/<ID>.npy` (the folder names,
    sorted, are the class names and label every sample, so `labels` must be None); one `.npy` file
    of shape (N, ...), each row a sample, named by `ids` (a text file with one ID per line, a
    `.json` list, or a sequence; N of them) or else by zero-padded row numbers (`0000`...`1233`
    for N = 1234); or one `.npz` archive, each key an ID and its array a sample. Only a folder of
    `.npy` files may be a URL. `verify --source` then takes the same `src` (and `ids`).
    `labels` and `partition` are file paths (JSON, or CSV `id,label` for labels) or mappings.
    Samples share one shape, unless `variable_shapes`: then their lengths may differ on some axes
    (same dtype and number of dimensions), and the store records each one's shape (`storage.ragged`).
    `targets` is a second folder of `<ID>.npy` (or `.npy` of shape (N, ...) rows named as SRC's, or
    `.npz`) holding a target array per sample (a segmentation mask, say), validated as the samples
    are; they are stored beside the samples, row for row (`writing.targets`), for
    `DataGenerator(labels="targets")`; `progress` then counts their rows too.
    Labels are class numbers or names, numbers with a fraction (regression targets) or lists of
    classes (multi-label); see `inputs.encoding`. `weights` (JSON or CSV `id,weight`, or a mapping)
    gives every sample a weight >= 0, kept in the index for `DataGenerator(sample_weight=True)`.
    Shards are written by `workers` local processes, or as tasks on a Dask cluster: pass a
    `dask.distributed.Client`, or `scheduler="tcp://host:port"` (or `"local"` for a
    `LocalCluster` of `workers` processes). Dask workers must see `src` and `out` at the same
    paths (a shared file system), or `src` is a URL. This process commits the index and manifest.
    `src`, `labels`, `partition` and, for a Zarr store, `out` may be fsspec URLs
    (`s3://bucket/data`); `storage_options` go to fsspec for each of them (credentials and
    endpoint otherwise come from the usual environment variables).
    `progress(n)` is called with the number of samples written since its last call;
    `on_start(sources, layout)` once every input is validated, before anything is written.
    """
    refuse_in_worker()
    backend = get_backend(format)
    _check_options(format, compression, workers, overwrite=overwrite, resume=resume)
    if not is_url(out):
        out = local_root(out)  # `file:///abs/out` is /abs/out, as for SRC and open_store
        refuse_inputs_inside(out, src, labels, partition, ids, weights, targets)
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels(labels, storage_options)
    if isinstance(weights, (str, os.PathLike)):
        weights = read_weights(weights, storage_options)
    if isinstance(partition, (str, os.PathLike)):
        partition = read_partition(partition, storage_options)
    sources = scan_sources(src, labels, partition, storage_options, ids, weights)
    if not variable_shapes:
        sources.refuse_varying_shapes()
    layout = choose_layout(sources, chunk_rows, parse_size(shard_size), compression)
    _refuse_unstorable(backend, layout, sources)
    target_sources = None
    if targets is not None:
        target_sources = scan_targets(targets, sources, variable_shapes=variable_shapes,
                                      storage_options=storage_options, ids=ids)  # fmt: skip
        _refuse_unstorable(backend, layout_like(target_sources, layout), target_sources)
    if on_start:
        on_start(sources, layout)

    with dask_client(client, scheduler, workers) as cluster:  # a scheduler is reached before OUT is touched

        def run(todo: list[ShardTask]) -> Iterator[ShardRecord]:
            return run_tasks(todo, workers, progress) if cluster is None else run_on_dask(todo, progress, cluster)

        def write_targets(resuming: bool) -> Manifest:
            return convert_targets(out, target_sources, layout, backend, run, progress,
                                   storage_options=storage_options, resume=resuming)  # fmt: skip

        finish = None if target_sources is None else write_targets
        tasks = make_tasks(sources, layout, format, out, storage_options)
        if is_url(out):
            return convert_remote(out, sources, layout, backend, tasks, storage_options=storage_options,
                                  overwrite=overwrite, resume=resume, run=run, write_targets=finish)  # fmt: skip
        return convert_local(out, sources, layout, backend, tasks, run, progress, overwrite=overwrite, resume=resume,
                             targets=None if targets is None else str(targets), write_targets=finish)  # fmt: skip


def _refuse_unstorable(backend: Backend, layout: Layout, sources: SourceSet) -> None:
    problem = backend.unstorable(layout.sample_shape, layout.dtype)
    if problem:
        first = sources.samples[0]
        raise InputError(f"{first.path}: sample {first.id!r} (and every sample) has {problem}")


def _check_options(format: str, compression: str, workers: int, *, overwrite: bool, resume: bool) -> None:
    if compression not in COMPRESSIONS[format]:
        raise OptionError(
            f"compression {compression!r} is not available for {format}; "
            f"choose one of {', '.join(COMPRESSIONS[format])}"
        )
    if workers < 1:
        raise OptionError(f"workers must be >= 1, got {workers}")
    if overwrite and resume:
        raise OptionError("--overwrite and --resume exclude each other")


def refuse_inputs_inside(out: Path, src, labels, partition, ids=None, weights=None, targets=None) -> None:
    """Refuse, before anything is touched, inputs that clearing or writing OUT would destroy: SRC, the
    labels, partition or IDs file inside OUT (links resolved), or OUT itself a `.npy` name in SRC or
    a folder in a SRC of class folders (a resume would scan it as a class)."""
    root = Path(os.path.realpath(out))
    named = [("SRC", src), ("--labels", labels), ("--partition", partition), ("--ids", ids), ("--weights", weights),
             ("--targets", targets)]
    for what, path in named:
        if isinstance(path, (str, os.PathLike)) and not is_url(path):
            resolved = Path(os.path.realpath(local_root(path)))
            if resolved == root or resolved.is_relative_to(root):
                raise OptionError(f"{path}: {what} lies inside OUT {out}, which converting would overwrite; "
                                  f"choose an OUT outside it")  # fmt: skip
    if is_url(src) or root.parent != Path(os.path.realpath(local_root(src))):
        return
    if root.name.endswith(".npy"):
        raise OptionError(f"{out}: OUT would be scanned as a sample of SRC {src}; give it a name not ending in .npy")
    if is_class_folders(root.parent):
        raise OptionError(f"{out}: OUT would be scanned as a class folder of SRC {src}; choose an OUT outside SRC")
