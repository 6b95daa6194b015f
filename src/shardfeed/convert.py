"""Conversion driver: scan -> plan -> write shards (in-process or a process pool) -> index -> manifest.

Nothing is written before every input has been validated. While a conversion runs, the store
holds a work directory (`.convert/`) with the plan and one record per finished shard, and a lock
file; the manifest, written last, is the commit point. `resume=True` keeps finished shards whose
samples still match their checksums and redoes the rest.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .backends import COMPRESSIONS, Layout, get_backend
from .errors import OptionError, StoreExistsError
from .manifest import (
    INDEX_NAME,
    MANIFEST_NAME,
    WORK_DIR,
    Index,
    Manifest,
    checksum,
    write_atomic,
)
from .shardtask import SampleRef, ShardRecord, ShardTask, write_shard
from .sources import SourceSet, read_labels, read_partition, scan_sources
from .workdir import StoreLock, WorkDir

CHUNK_TARGET_BYTES = 256 * 1024
DEFAULT_SHARD_SIZE = "128MB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip

ProgressCallback = Callable[[int], None]


def parse_size(text: str | int) -> int:
    """Bytes from `256MB`, `1MiB`, `4096`."""
    if isinstance(text, int):
        size = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
        if not match or match.group(2).upper() not in _UNITS:
            raise OptionError(f"size {text!r} not understood; use e.g. 256MB, 1GiB or 4096")
        size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size < 1:
        raise OptionError(f"size {text!r} must be positive")
    return size


def choose_layout(sources: SourceSet, chunk_rows: int | None, shard_size: int, compression: str) -> Layout:
    """Chunks of ~256 KiB (a power of two of rows) unless given; shards a whole number of chunks."""
    n = len(sources.samples)
    nbytes = sources.sample_nbytes
    if chunk_rows is None:
        chunk_rows = 2 ** max(0, int(math.floor(math.log2(max(1, CHUNK_TARGET_BYTES // nbytes)))))
    if chunk_rows < 1:
        raise OptionError(f"chunk rows must be >= 1, got {chunk_rows}")
    chunk_rows = min(chunk_rows, n)
    if chunk_rows * nbytes >= 2**32:
        raise OptionError(f"a chunk of {chunk_rows} samples of {nbytes} bytes exceeds 4 GiB; lower --chunk-rows")
    shard_rows = max(1, shard_size // (nbytes * chunk_rows)) * chunk_rows
    shard_rows = min(shard_rows, math.ceil(n / chunk_rows) * chunk_rows)
    return Layout(n, sources.sample_shape, stored_dtype(sources.dtype), chunk_rows, shard_rows, compression)


def stored_dtype(source: np.dtype) -> np.dtype:
    """Little-endian: what Zarr v3 stores anyway, and what readers on every common CPU want."""
    return source.newbyteorder("<") if source.byteorder == ">" else source


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels: str | os.PathLike | Mapping[str, int | str] | None = None,
    partition: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
    format: str = "zarr",
    chunk_rows: int | None = None,
    shard_size: str | int = DEFAULT_SHARD_SIZE,
    compression: str = "none",
    workers: int = 1,
    overwrite: bool = False,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    on_start: Callable[[SourceSet, Layout], None] | None = None,
) -> Manifest:
    """Pack per-ID `.npy` files under `src` into a store at `out`; returns its manifest.

    `labels` and `partition` are file paths (JSON, or CSV `id,label` for labels) or mappings.
    `progress(n)` is called with the number of samples written since its last call;
    `on_start(sources, layout)` once every input is validated, before anything is written.
    """
    backend = get_backend(format)
    if compression not in COMPRESSIONS[format]:
        raise OptionError(
            f"compression {compression!r} is not available for {format}; "
            f"choose one of {', '.join(COMPRESSIONS[format])}"
        )
    if workers < 1:
        raise OptionError(f"workers must be >= 1, got {workers}")
    if overwrite and resume:
        raise OptionError("--overwrite and --resume exclude each other")
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels(labels)
    if isinstance(partition, (str, os.PathLike)):
        partition = read_partition(partition)
    sources = scan_sources(src, labels, partition)
    layout = choose_layout(sources, chunk_rows, parse_size(shard_size), compression)
    if on_start:
        on_start(sources, layout)
    root = Path(out)
    _prepare_output(root, overwrite=overwrite, resume=resume)
    with StoreLock(root):
        work = WorkDir(root)
        plan = _plan_record(sources, layout, format)
        if resume and work.exists():
            work.check_plan(plan)
            done = work.verified_records(backend, layout, progress)
        else:
            _clear_store(root)
            work.create(plan)
            backend.prepare(root, layout)
            done = {}
        tasks = [t for t in _tasks(sources, layout, format, root) if t.shard not in done]
        for record in _run_tasks(tasks, workers, progress):
            work.save_record(record)
            done[record.info.first_row // layout.shard_rows] = record
        manifest = _commit(root, sources, layout, format, [done[k] for k in sorted(done)])
        work.remove()
    return manifest


def _prepare_output(root: Path, *, overwrite: bool, resume: bool) -> None:
    if not root.exists():
        root.mkdir(parents=True)
        return
    if not root.is_dir():
        raise StoreExistsError(f"{root}: exists and is not a directory")
    ours = (root / MANIFEST_NAME).exists() or (root / WORK_DIR).exists()
    if resume:
        if not (root / WORK_DIR).exists():
            done = "is already complete" if (root / MANIFEST_NAME).exists() else "has no conversion to resume"
            raise StoreExistsError(f"{root}: --resume given but the store {done}")
        return
    if not any(root.iterdir()):
        return
    if not overwrite:
        hint = "pass --resume to finish it" if (root / WORK_DIR).exists() else "pass --overwrite to replace it"
        raise StoreExistsError(f"{root}: output exists; {hint}")
    if not ours:
        raise StoreExistsError(f"{root}: exists and is not a shardfeed store; refusing to delete it")


def _clear_store(root: Path) -> None:
    """Remove a previous store's files (the lock file stays: we hold it)."""
    for child in root.iterdir():
        if child.name == StoreLock.NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _plan_record(sources: SourceSet, layout: Layout, format: str) -> dict:
    """Everything that determines the output: a resume must match it exactly."""
    inputs = [
        [s.id, s.split, s.label, str(s.path), os.stat(s.path).st_size, os.stat(s.path).st_mtime_ns]
        for s in sources.samples
    ]
    return {
        "format": format,
        "num_samples": layout.num_samples,
        "sample_shape": list(layout.sample_shape),
        "dtype": layout.dtype.str,
        "chunk_rows": layout.chunk_rows,
        "shard_rows": layout.shard_rows,
        "compression": layout.compression,
        "class_names": sources.class_names,
        "inputs_checksum": checksum(json.dumps(inputs).encode()),
    }


def _tasks(sources: SourceSet, layout: Layout, format: str, root: Path) -> list[ShardTask]:
    refs = [SampleRef(s.id, str(s.path), s.data_offset, s.fortran_order) for s in sources.samples]
    return [
        ShardTask(format, str(root), layout, k, sources.dtype.str, tuple(refs[first : first + layout.shard_rows]))
        for k, first in enumerate(range(0, layout.num_samples, layout.shard_rows))
    ]


def _run_tasks(tasks: list[ShardTask], workers: int, progress: ProgressCallback | None):
    """Yield each task's record as it finishes; in-process for one worker, else a process pool."""
    if workers == 1 or len(tasks) <= 1:
        counter = _CallbackCounter(progress)
        for task in tasks:
            yield write_shard(task, counter)
        return
    # spawn: h5py must not inherit a parent's open handles or HDF5 state (RELIABILITY.md).
    context = multiprocessing.get_context("spawn")
    shared = context.Value("q", 0)
    with cf.ProcessPoolExecutor(
        min(workers, len(tasks)), mp_context=context, initializer=_init_worker, initargs=(shared,)
    ) as pool:
        pending = {pool.submit(_write_shard_in_worker, t) for t in tasks}
        reported = 0
        try:
            while pending:
                finished, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                if progress:
                    now = shared.value
                    progress(now - reported)
                    reported = now
                for future in finished:
                    yield future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            raise


def _commit(root: Path, sources: SourceSet, layout: Layout, format: str, records: list[ShardRecord]) -> Manifest:
    """Write the index, then the manifest: from this moment the store exists."""
    checksums = np.concatenate([r.checksums for r in records]).astype(np.uint32)
    split_names = list(sources.splits)
    code = {name: k for k, name in enumerate(split_names)}
    labeled = sources.samples[0].label is not None
    index = Index(
        ids=np.array([s.id.encode("utf-8") for s in sources.samples]),
        labels=np.array([s.label for s in sources.samples], dtype=np.int64) if labeled else None,
        split_codes=np.array([code[s.split] for s in sources.samples], dtype=np.int32),
        checksums=checksums,
    )
    index_bytes = index.to_bytes()
    write_atomic(root / INDEX_NAME, index_bytes)
    manifest = Manifest(
        backend=format,
        num_samples=layout.num_samples,
        sample_shape=layout.sample_shape,
        dtype=layout.dtype.str,
        chunk_rows=layout.chunk_rows,
        shard_rows=layout.shard_rows,
        compression=layout.compression,
        splits=dict(sources.splits),
        shards=tuple(r.info for r in records),
        index_checksum=checksum(index_bytes),
        class_names=sources.class_names,
        num_classes=sources.num_classes,
        labeled=labeled,
        source={
            "dtype": sources.dtype.str,
            "fortran_order_samples": sum(s.fortran_order for s in sources.samples),
            "unlisted_files": sources.unlisted_files,
        },
        converter={"shardfeed": __version__},
    )
    write_atomic(root / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
    return manifest


class _CallbackCounter:
    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback

    def add(self, n: int) -> None:
        if self._callback:
            self._callback(n)


class _SharedCounter:
    def __init__(self, value) -> None:
        self._value = value

    def add(self, n: int) -> None:
        with self._value.get_lock():
            self._value.value += n


_worker_counter: _SharedCounter | None = None


def _init_worker(shared) -> None:
    global _worker_counter
    _worker_counter = _SharedCounter(shared)


def _write_shard_in_worker(task: ShardTask) -> ShardRecord:
    return write_shard(task, _worker_counter)
