"""State of an unfinished conversion: the lock file and the `.convert/` work directory.

The lock is an `flock` on a file of our own (HDF5's locking fails on NFS/Lustre); the kernel
drops it when the holder dies, so a kill -9 never leaves a stale lock. The work directory
holds the plan (what the output depends on) and one record per finished shard; `--resume`
trusts a record only after re-reading the shard and matching every sample checksum.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .backends import Backend, Layout
from .errors import OptionError, StoreFormatError, StoreLockedError
from .manifest import WORK_DIR, Manifest, ShardInfo, write_atomic
from .shardtask import ShardRecord

PLAN = "plan.json"


class StoreLock:
    """Exclusive, non-blocking lock on `<store>/.lock` for the duration of a conversion."""

    NAME = ".lock"

    def __init__(self, root: Path) -> None:
        self._path = root / self.NAME
        self._fd: int | None = None

    def __enter__(self) -> StoreLock:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLockedError(
                f"{self._path.parent}: another conversion (pid {holder}) is writing this store; "
                f"wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        completed = exc[0] is None
        if completed:
            self._path.unlink(missing_ok=True)
        os.close(self._fd)


class WorkDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / WORK_DIR

    def exists(self) -> bool:
        return (self.path / PLAN).exists()

    def create(self, plan: dict) -> None:
        self.path.mkdir()
        write_atomic(self.path / PLAN, json.dumps(plan, indent=1).encode())

    def check_plan(self, plan: dict) -> None:
        """Refuse to resume with other inputs or options, naming what changed."""
        old = json.loads((self.path / PLAN).read_text())
        changed = [k for k in sorted(set(old) | set(plan)) if old.get(k) != plan.get(k)]
        if changed:
            details = "; ".join(f"{k}: was {old.get(k)!r}, now {plan.get(k)!r}" for k in changed)
            raise OptionError(f"{self.root}: cannot resume, the inputs or options differ ({details})")

    def save_record(self, record: ShardRecord) -> None:
        name = f"shard-{record.info.first_row:012d}.json"
        write_atomic(self.path / name, json.dumps(record.to_json_dict()).encode())

    def verified_records(self, backend: Backend, layout: Layout, progress=None) -> dict[int, ShardRecord]:
        """Records of shards that re-read correctly; other records and leftovers are removed."""
        kept: dict[int, ShardRecord] = {}
        for path in sorted(self.path.glob("shard-*.json")):
            record = ShardRecord.from_json_dict(json.loads(path.read_text()))
            if _shard_matches(self.root, backend, layout, record):
                kept[record.info.first_row // layout.shard_rows] = record
                if progress:
                    progress(record.info.num_rows)
            else:
                path.unlink()
        for leftover in self.root.rglob("*.partial"):
            leftover.unlink()
        return kept

    def remove(self) -> None:
        shutil.rmtree(self.path)


def _shard_matches(root: Path, backend: Backend, layout: Layout, record: ShardRecord) -> bool:
    """Re-read a finished shard and compare every sample's checksum with its record."""
    from .integrity import sample_checksums  # a cycle otherwise: integrity reads stores

    info = record.info
    if not (root / info.path).is_file():
        return False
    manifest = provisional_manifest(layout, backend.name, info)
    try:
        reader = backend.open_reader(root, manifest, manifest.shards[0], fast=True)
    except (StoreFormatError, OSError):
        return False
    try:
        actual = sample_checksums(reader, info.num_rows, layout)
    except (StoreFormatError, OSError):
        return False
    finally:
        reader.close()
    return np.array_equal(actual, record.checksums)


def provisional_manifest(layout: Layout, backend: str, shard: ShardInfo) -> Manifest:
    """A manifest describing one finished shard, enough to open a reader before the commit."""
    rows = shard.num_rows
    return Manifest(
        backend=backend,
        num_samples=layout.num_samples,
        sample_shape=layout.sample_shape,
        dtype=layout.dtype.str,
        chunk_rows=layout.chunk_rows,
        shard_rows=layout.shard_rows,
        compression=layout.compression,
        splits={"all": layout.num_samples},
        shards=(ShardInfo(shard.path, shard.first_row, shard.first_row + rows - 1, shard.nbytes, 0),),
        index_checksum=0,
    )
