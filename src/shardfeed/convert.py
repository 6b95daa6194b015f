"""Conversion driver: scan -> plan -> write shards (in-process or a process pool) -> index -> manifest.

Nothing is written before every input has been validated. While a conversion runs, the store
holds a work directory (`.convert/`) with the plan and one record per finished shard, and a lock
file; the manifest, written last, is the commit point. `resume=True` keeps finished shards whose
samples still match their checksums and redoes the rest. A kill at any moment (see `faults.py`
for the points the crash tests aim at) leaves either no manifest or a complete store.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import math
import multiprocessing
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .backends import COMPRESSIONS, Backend, Layout, get_backend
from .errors import DiskFullError, OptionError, StoreExistsError, WorkerDiedError
from .faults import fault_point
from .location import is_url
from .manifest import (
    INDEX_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    WORK_DIR,
    Index,
    Manifest,
    checksum,
    write_atomic,
)
from .shardtask import DISK_FULL_ERRNOS, SampleRef, ShardRecord, ShardTask, write_shard
from .sources import SourceSet, read_labels, read_partition, scan_sources
from .workdir import StoreLock, WorkDir, input_digests

CHUNK_TARGET_BYTES = 256 * 1024
# A random read decodes a whole compressed chunk for the rows it wants: smaller chunks waste less.
COMPRESSED_CHUNK_TARGET_BYTES = 64 * 1024
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
    """Chunks of ~256 KiB (64 KiB compressed; a power of two of rows) unless given; shards a whole
    number of chunks."""
    n = len(sources.samples)
    nbytes = sources.sample_nbytes
    if chunk_rows is None:
        target = CHUNK_TARGET_BYTES if compression == "none" else COMPRESSED_CHUNK_TARGET_BYTES
        chunk_rows = 2 ** max(0, math.floor(math.log2(max(1, target // nbytes))))
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
    client=None,
    scheduler: str | None = None,
    storage_options: dict | None = None,
) -> Manifest:
    """Pack per-ID `.npy` files under `src` into a store at `out`; returns its manifest.

    `labels` and `partition` are file paths (JSON, or CSV `id,label` for labels) or mappings.
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
    backend = get_backend(format)
    _check_options(format, compression, workers, overwrite=overwrite, resume=resume)
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels(labels, storage_options)
    if isinstance(partition, (str, os.PathLike)):
        partition = read_partition(partition, storage_options)
    sources = scan_sources(src, labels, partition, storage_options)
    layout = choose_layout(sources, chunk_rows, parse_size(shard_size), compression)
    if on_start:
        on_start(sources, layout)

    def run(todo: list[ShardTask]) -> Iterator[ShardRecord]:
        return _shard_records(todo, workers, progress, client, scheduler)

    if is_url(out):
        from .remote_convert import convert_remote

        tasks = _tasks(sources, layout, format, out, storage_options)
        return convert_remote(out, sources, layout, backend, tasks, storage_options=storage_options,
                              overwrite=overwrite, resume=resume, run=run)  # fmt: skip
    tasks = _tasks(sources, layout, format, Path(out), storage_options)
    return _convert_local(Path(out), sources, layout, backend, tasks, run, progress, overwrite=overwrite, resume=resume)


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


def _convert_local(
    root: Path,
    sources: SourceSet,
    layout: Layout,
    backend: Backend,
    tasks: list[ShardTask],
    run: Callable[[list[ShardTask]], Iterator[ShardRecord]],
    progress: ProgressCallback | None,
    *,
    overwrite: bool,
    resume: bool,
) -> Manifest:
    """A local store: lock it, start (or resume) its work directory, write the missing shards, commit."""
    if not resume:
        _check_free_space(root, layout, layout.num_samples)
    _prepare_output(root, overwrite=overwrite, resume=resume)
    with StoreLock(root):
        work = WorkDir(root)
        plan = _plan_record(sources, layout, backend.name)
        if resume and work.exists():
            samples = sources.samples
            work.check_plan(plan, lambda i: f"{samples[i].path} (sample {samples[i].id!r})")
            done = work.verified_records(backend, layout, progress)
        else:
            _clear_store(root)
            backend.prepare(root, layout)
            work.create(plan)  # from here on, --resume continues this conversion
            done = {}
        todo = [t for t in tasks if t.shard not in done]
        _check_free_space(root, layout, sum(len(t.samples) for t in todo))
        try:
            for record in run(todo):
                work.save_record(record)
                fault_point("record-saved")
                done[record.info.first_row // layout.shard_rows] = record
            manifest = _commit(root, sources, layout, backend.name, [done[k] for k in sorted(done)])
        except OSError as exc:
            if not isinstance(exc, DiskFullError) and exc.errno not in DISK_FULL_ERRNOS:
                raise
            left = layout.num_samples - sum(r.info.num_rows for r in done.values())
            raise _disk_full_error(exc, root, left * layout.sample_nbytes) from exc
        work.remove()
    return manifest


def _check_free_space(root: Path, layout: Layout, rows: int) -> None:
    """Refuse to start when OUT's file system cannot hold the raw bytes of `rows` samples.

    Skipped for compressed stores, whose size is unknown in advance; running out of space
    later still stops the conversion cleanly (`DiskFullError`), and `--resume` continues it.
    """
    if layout.compression != "none" or rows == 0:
        return
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    needed, free = rows * layout.sample_nbytes, shutil.disk_usage(existing).free
    if needed > free:
        raise DiskFullError(
            f"{root}: {rows} samples need {_mb(needed)} but its file system has {_mb(free)} free; "
            f"free space (then run the same command, with --resume if {root} exists) "
            f"or choose another OUT"
        )


def _disk_full_error(exc: OSError, root: Path, bytes_left: int) -> DiskFullError:
    what = str(exc) if isinstance(exc, DiskFullError) else f"{exc.filename or root}: {exc.strerror}"
    return DiskFullError(
        f"{what}; {_mb(bytes_left)} of samples remain to be written to {root}: free space "
        f"(or raise the file-size limit), then run the same command with --resume"
    )


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB ({nbytes} bytes)"


def _prepare_output(root: Path, *, overwrite: bool, resume: bool) -> None:
    if not root.exists():
        root.mkdir(parents=True)
        return
    if not root.is_dir():
        raise StoreExistsError(f"{root}: exists and is not a directory")
    StoreLock.check_free(root)
    if not any(root.iterdir()):
        return
    has_manifest = (root / MANIFEST_NAME).exists()
    # An interrupted conversion leaves its work directory, or at least its lock file.
    unfinished = (root / WORK_DIR).exists() or ((root / LOCK_NAME).exists() and not has_manifest)
    if resume:
        if unfinished:
            return  # convert() resumes it, or starts afresh if it stopped before its plan
        done = "is already complete" if has_manifest else "has no conversion to resume"
        raise StoreExistsError(f"{root}: --resume given but the store {done}")
    if not overwrite:
        hint = "pass --resume to finish it" if unfinished else "pass --overwrite to replace it"
        raise StoreExistsError(f"{root}: output exists; {hint}")
    if not (has_manifest or unfinished):
        raise StoreExistsError(
            f"{root}: exists and is not a shardfeed store; refusing to delete it"
        )


def _clear_store(root: Path) -> None:
    """Remove a previous store's files (the lock file stays: we hold it).

    The manifest goes first: a store interrupted while being cleared must not look complete.
    """
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    for child in root.iterdir():
        if child.name == StoreLock.NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _plan_record(sources: SourceSet, layout: Layout, format: str) -> dict:
    """Everything that determines the output: a resume must match it exactly."""
    inputs = [[s.id, s.split, s.label, str(s.path), *s.stamp] for s in sources.samples]
    return {
        "format": format,
        "num_samples": layout.num_samples,
        "sample_shape": list(layout.sample_shape),
        "dtype": layout.dtype.str,
        "chunk_rows": layout.chunk_rows,
        "shard_rows": layout.shard_rows,
        "compression": layout.compression,
        "class_names": sources.class_names,
        "input_digests": input_digests(inputs),
    }


def _tasks(
    sources: SourceSet, layout: Layout, format: str, root: Path | str, storage_options: dict | None = None
) -> list[ShardTask]:
    refs = [SampleRef(s.id, str(s.path), s.data_offset, s.fortran_order) for s in sources.samples]
    return [
        ShardTask(format, str(root), layout, k, sources.dtype.str,
                  tuple(refs[first : first + layout.shard_rows]), storage_options)
        for k, first in enumerate(range(0, layout.num_samples, layout.shard_rows))
    ]


def _shard_records(tasks: list[ShardTask], workers: int, progress, client, scheduler):
    """Run the shard tasks on a Dask cluster when one is given, else locally."""
    if client is not None or scheduler is not None:
        from .cluster import run_on_dask

        return run_on_dask(tasks, progress, client=client, scheduler=scheduler, workers=workers)
    return _run_tasks(tasks, workers, progress)


def _run_tasks(tasks: list[ShardTask], workers: int, progress: ProgressCallback | None):
    """Yield each task's record as it finishes; in-process for one worker, else a process pool."""
    if workers == 1 or len(tasks) <= 1:
        counter = _CallbackCounter(progress)
        for task in tasks:
            yield write_shard(task, counter)
        return
    # spawn: h5py must not inherit a parent's open handles or HDF5 state (RELIABILITY.md).
    context = multiprocessing.get_context("spawn")
    with _starting_workers():  # this starts multiprocessing's resource tracker process
        shared = context.Value("q", 0)
    with cf.ProcessPoolExecutor(
        min(workers, len(tasks)), mp_context=context, initializer=_init_worker,
        initargs=(shared, os.getpid()),
    ) as pool:  # fmt: skip
        reported = 0
        try:
            with _starting_workers():  # workers start (and stay) deaf to Ctrl-C, even while importing
                pending = {pool.submit(_write_shard_in_worker, t) for t in tasks}
            while pending:
                finished, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                if progress:
                    now = shared.value
                    progress(now - reported)
                    reported = now
                for future in finished:
                    try:
                        record = future.result()
                    except cf.process.BrokenProcessPool as exc:
                        raise WorkerDiedError(
                            "a conversion worker process died (killed, for example by the OOM "
                            "killer); finished shards are kept: run the same command with --resume"
                        ) from exc
                    yield record
        except BaseException:
            # Stop at once: shards in flight are redone by --resume. Futures are not cancelled
            # first: Python 3.11's pool then fails them again and prints InvalidStateError.
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            raise


def _commit(root: Path, sources: SourceSet, layout: Layout, format: str, records: list[ShardRecord]) -> Manifest:
    """Write the index, then the manifest: from this moment the store exists."""
    index_bytes, manifest = build_index_and_manifest(sources, layout, format, records)
    write_atomic(root / INDEX_NAME, index_bytes)
    fault_point("index-written")
    write_atomic(root / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
    fault_point("manifest-written")
    return manifest


def build_index_and_manifest(
    sources: SourceSet, layout: Layout, format: str, records: list[ShardRecord]
) -> tuple[bytes, Manifest]:
    """The index's bytes and the manifest that commits them, from the finished shards."""
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
    return index_bytes, manifest


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


@contextlib.contextmanager
def _starting_workers():
    """Signals while worker processes are being created.

    SIGINT is ignored: workers inherit that, and Python keeps an inherited SIG_IGN. Ctrl-C
    reaches the whole process group; the driver alone stops the run (terminating its workers),
    without a traceback from every worker. SIGTERM is held and delivered when the workers are
    up: raised in the middle of starting one, it left a child reading half its start-up data
    (printing EOFError) or a pool that could not shut down ("cannot join thread before it is
    started").
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous_int is None else previous_int)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_term is None else previous_term)
        if held:
            os.kill(os.getpid(), signal.SIGTERM)  # the usual handler runs now, at a safe point


def _init_worker(shared, driver_pid: int) -> None:
    global _worker_counter
    _worker_counter = _SharedCounter(shared)
    _die_with_driver(driver_pid)


def _die_with_driver(driver_pid: int) -> None:
    """Linux: SIGKILL this worker when the driver dies (kill -9), so no orphan keeps writing
    shards into a store that a `--resume` may already be rewriting."""
    try:
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers end when their task queue closes
        return
    if os.getppid() != driver_pid:  # the driver died before prctl took effect
        os._exit(1)


def _write_shard_in_worker(task: ShardTask) -> ShardRecord:
    return write_shard(task, _worker_counter)
