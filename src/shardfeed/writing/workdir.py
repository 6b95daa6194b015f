"""State of an unfinished conversion: the lock file and the `.convert/` work directory.

The lock is an `flock` on a file of our own (HDF5's locking fails on NFS/Lustre); the kernel
drops it when the holder dies, so a kill -9 never leaves a stale lock. The work directory
holds the plan (what the output depends on) and one record per finished shard; `--resume`
trusts a record only after re-reading the shard and matching its file checksum and every
sample checksum. The plan is written once the store's shared metadata exists, so a plan
means a conversion that `--resume` can continue.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import OptionError, StoreFormatError, StoreLockedError
from ..storage.backends import Backend, Layout
from ..storage.files import checksum, file_checksum, write_atomic
from ..storage.format import LOCK_NAME, WORK_DIR
from ..storage.integrity import sample_checksums
from ..storage.manifest import Manifest, ShardInfo
from ..storage.ragged import shard_checksums
from .shardtask import ShardRecord

PLAN = "plan.json"
LEFTOVERS = ("*.partial", ".*.tmp-*")  # zarr's and our temporary files of unfinished writes


class StoreLock:
    """Exclusive, non-blocking lock on `<store>/.lock` for the duration of a conversion."""

    NAME = LOCK_NAME

    def __init__(self, root: Path) -> None:
        self._path = root / self.NAME
        self._fd: int | None = None

    @classmethod
    def check_free(cls, root: Path) -> None:
        """Refuse at once if a conversion holds the lock of `root` (creates nothing)."""
        try:
            fd = os.open(root / cls.NAME, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            _lock_or_refuse(fd, root)
        finally:
            os.close(fd)  # also releases the lock just taken

    def __enter__(self) -> StoreLock:
        while True:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _lock_or_refuse(fd, self._path.parent)
                # A converter that just finished unlinks its lock file: ours must still be there.
                if os.path.samestat(os.fstat(fd), os.stat(self._path)):
                    break
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        completed = exc[0] is None
        if completed:
            self._path.unlink(missing_ok=True)
        os.close(self._fd)


def _lock_or_refuse(fd: int, root: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        raise StoreLockedError(
            f"{root}: another conversion (pid {holder}) is writing this store; "
            f"wait for it to finish or stop it"
        ) from None


class WorkDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / WORK_DIR

    def exists(self) -> bool:
        return (self.path / PLAN).exists()

    def create(self, plan: dict) -> None:
        self.path.mkdir()
        write_atomic(self.path / PLAN, json.dumps(plan, indent=1).encode())

    def check_plan(self, plan: dict, describe_input: Callable[[int], str]) -> None:
        """Refuse to resume with other inputs or options, naming what changed.

        `describe_input(i)` names input number i, for a plan whose `input_digests` differ.
        """
        try:
            old = json.loads((self.path / PLAN).read_text())
        except (OSError, ValueError) as exc:
            raise StoreFormatError(f"{self.path / PLAN}: unreadable ({exc}); convert again "
                                   f"with --overwrite") from exc  # fmt: skip
        changed = [k for k in sorted(set(old) | set(plan)) if old.get(k) != plan.get(k)]
        details = [d for k in changed if (d := _difference(k, old, plan, describe_input))]
        if details:
            raise OptionError(
                f"{self.root}: cannot resume, the inputs or options differ ({'; '.join(details)})"
            )

    def save_record(self, record: ShardRecord) -> None:
        name = f"shard-{record.info.first_row:012d}.json"
        write_atomic(self.path / name, json.dumps(record.to_json_dict()).encode())

    def verified_records(
        self, backend: Backend, layout: Layout, progress=None, shapes: np.ndarray | None = None
    ) -> dict[int, ShardRecord]:
        """Records of shards that re-read correctly; other records and leftovers are removed. `shapes`:
        every sample's, for samples whose shapes vary."""
        kept: dict[int, ShardRecord] = {}
        for path in sorted(self.path.glob("shard-*.json")):
            try:
                record = ShardRecord.from_json_dict(json.loads(path.read_text()))
            except (ValueError, TypeError, KeyError):  # written atomically, so only if damaged
                record = None
            if record is not None and _shard_matches(self.root, backend, layout, record, shapes):
                kept[record.info.first_row // layout.shard_rows] = record
                if progress:
                    progress(record.info.num_rows)
            else:
                path.unlink()
        for pattern in LEFTOVERS:
            for leftover in self.root.rglob(pattern):
                leftover.unlink()
        return kept

    def remove(self) -> None:
        shutil.rmtree(self.path)


def _shard_matches(
    root: Path, backend: Backend, layout: Layout, record: ShardRecord, shapes: np.ndarray | None = None
) -> bool:
    """Re-read a finished shard and compare every sample's checksum with its record."""
    info = record.info
    path = root / info.path
    try:
        if not path.is_file() or file_checksum(path) != info.file_checksum:
            return False
    except OSError:
        return False
    if shapes is not None:  # variable shapes: the shard's values, in chunk rows (`storage.ragged`)
        sizes = shapes[info.first_row : info.last_row + 1].prod(axis=1)
        chunk_rows = -(-int(sizes.sum()) // layout.chunk_elements)
        manifest = provisional_manifest(layout.flat(0, chunk_rows), backend.name,
                                        dataclasses.replace(info, first_row=0, last_row=chunk_rows - 1))  # fmt: skip
    else:
        manifest = provisional_manifest(layout, backend.name, info)
    try:
        reader = backend.open_reader(root, manifest, manifest.shards[0], fast=True)
    except (StoreFormatError, OSError):
        return False
    try:
        if shapes is None:
            actual = sample_checksums(reader, info.num_rows, layout)
        else:
            actual = shard_checksums(reader, np.cumsum(sizes) - sizes, sizes, layout.chunk_elements, layout.dtype)
    except (StoreFormatError, OSError):
        return False
    finally:
        reader.close()
    return np.array_equal(actual, record.checksums)


# How `input_digests` encodes an input before its CRC32: `ascii()`, the same text on every Python
# (json.dumps cost 5 us an input, 0.5 s of a 100,000-file conversion; ascii() 2 us).
DIGESTS_OF = "ascii"


def input_digests(texts: list[str]) -> str:
    """One CRC32 per input's text (`plan.input_text`), as base64 of little-endian uint32s: which inputs
    changed, compactly."""
    digests = np.fromiter((checksum(text.encode()) for text in texts), dtype="<u4", count=len(texts))
    return base64.b64encode(digests.tobytes()).decode("ascii")


def _difference(key: str, old: dict, new: dict, describe_input: Callable[[int], str]) -> str | None:
    """What changed in one plan entry; per-input digests name the first input that differs."""
    if key == "digests_of":  # a plan an earlier shardfeed wrote digests differently for
        return "the conversion was started by an earlier version of shardfeed; convert again with --overwrite"
    if key == "input_digests" and old.get("digests_of") != new.get("digests_of"):
        return None  # said above
    if key != "input_digests":
        return f"{key}: was {old.get(key)!r}, now {new.get(key)!r}"
    if old.get("num_samples") != new.get("num_samples"):
        return None  # the num_samples entry names the difference
    if not isinstance(old.get(key), str):
        return "inputs differ"
    before = np.frombuffer(base64.b64decode(old[key]), dtype="<u4")
    after = np.frombuffer(base64.b64decode(new[key]), dtype="<u4")
    changed = np.flatnonzero(before != after)
    more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
    return f"{describe_input(int(changed[0]))} changed (size, mtime, label or split){more}"


def provisional_manifest(layout: Layout, backend: str, shard: ShardInfo) -> Manifest:
    """A manifest describing one finished shard, enough to open a reader before the commit."""
    return Manifest(
        backend=backend,
        num_samples=layout.num_samples,
        sample_shape=layout.sample_shape,
        dtype=layout.dtype.str,
        chunk_rows=layout.chunk_rows,
        shard_rows=layout.shard_rows,
        compression=layout.compression,
        splits={"all": layout.num_samples},
        shards=(ShardInfo(shard.path, shard.first_row, shard.last_row, shard.nbytes, 0, 0),),
        index_checksum=0,
    )
