"""A conversion into a local directory: free-space checks, the output's preparation, the lock,
the work directory that makes it resumable, and the commit."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import DiskFullError, StoreExistsError
from ..inputs.scan import SourceSet
from ..storage.backends import Backend, Layout
from ..storage.format import LOCK_NAME, MANIFEST_NAME, WORK_DIR
from ..storage.manifest import Manifest
from .commit import commit_local
from .faults import fault_point
from .plan import plan_record
from .pool import ProgressCallback
from .shardtask import DISK_FULL_ERRNOS, ShardRecord, ShardTask
from .workdir import StoreLock, WorkDir


def convert_local(
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
    targets: str | None = None,
    write_targets: Callable[[bool], Manifest] | None = None,
) -> Manifest:
    """A local store: lock it, start (or resume) its work directory, write the missing shards, commit.
    `write_targets(resuming)` converts the target arrays (from `targets`) before the commit."""
    if not resume:
        check_free_space(root, layout, layout.num_samples)
    _prepare_output(root, overwrite=overwrite, resume=resume)
    with StoreLock(root):
        work = WorkDir(root)
        plan = plan_record(sources, layout, backend.name, targets)
        resuming = resume and work.exists()
        if resuming:
            samples = sources.samples
            work.check_plan(plan, lambda i: f"{samples[i].path} (sample {samples[i].id!r})")
            done = work.verified_records(backend, layout, progress, sources.shapes)
        else:
            _clear_store(root)
            backend.prepare(root, layout.stored())
            work.create(plan)  # from here on, --resume continues this conversion
            done = {}
        todo = [t for t in tasks if t.shard not in done]
        check_free_space(root, layout, sum(len(t.samples) for t in todo))
        try:
            for record in run(todo):
                work.save_record(record)
                fault_point("record-saved")
                done[record.info.first_row // layout.shard_rows] = record
            target_manifest = None if write_targets is None else write_targets(resuming)
            manifest = commit_local(root, sources, layout, backend.name, [done[k] for k in sorted(done)],
                                    target_manifest)  # fmt: skip
        except OSError as exc:
            if not isinstance(exc, DiskFullError) and exc.errno not in DISK_FULL_ERRNOS:
                raise
            left = layout.num_samples - sum(r.info.num_rows for r in done.values())
            raise _disk_full_error(exc, root, left * layout.sample_nbytes) from exc
        work.remove()
    return manifest


def check_free_space(root: Path, layout: Layout, rows: int) -> None:
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
