"""Where a shard's bytes go, in file order: a local file made durable under its final name, or one
object PUT at a URL. Either way the bytes are counted and CRC'd as they pass, while still in cache.

A local shard is written under a temporary name (`.NAME.tmp-PID`, which `--resume` removes), and
the kernel is asked to start writing each block back to disk as soon as it is written, so the disk
works while the next block is read and the closing fsync waits only for the last one; then it is
renamed into place and its directories are fsynced. A power cut before the rename leaves no shard.
"""

from __future__ import annotations

import ctypes
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from ...urls import RemoteLocation
from ..files import checksum, checksum_extend, fsync_dir
from .base import WrittenShard

SYNC_FILE_RANGE_WRITE = 2  # start writeback of the range's dirty pages, do not wait for it


def _sync_file_range():
    """Linux' `sync_file_range`, or None where libc has none (then the closing fsync does it all)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return function


_start_writeback = _sync_file_range()
_unfinished: set[Path] = set()  # temporary files of the shards this process is writing


def remove_unfinished() -> None:
    """Delete the temporary files of the shards this process is writing: for a worker told to stop,
    which leaves no file behind, as it would had it been writing in memory."""
    for path in list(_unfinished):
        path.unlink(missing_ok=True)


class ShardSink(ABC):
    """Takes a shard's bytes in file order; `commit` makes them the shard, `abort` drops them."""

    def __init__(self) -> None:
        self._nbytes = 0
        self._crc = 0

    def write(self, data, row_checksums: Sequence[int] | None = None) -> None:
        """Append `data` (any C-contiguous buffer) to the shard; `row_checksums`: the CRC32 of each of
        its equal parts (rows), if the caller has them, saves reading it again for the shard's."""
        view = memoryview(data)
        if not view.nbytes:
            return
        view = view.cast("B")
        if row_checksums is None:
            self._crc = checksum(view, self._crc)
        else:
            self._crc = checksum_extend(self._crc, row_checksums, len(view) // len(row_checksums))
        self._put(view)
        self._nbytes += len(view)

    @abstractmethod
    def _put(self, view: memoryview) -> None:
        """Store `view` after the bytes already taken."""

    def commit(self) -> WrittenShard:
        """Make the shard durable at its final name; returns its size and CRC32."""
        self._finish()
        return WrittenShard(self._nbytes, self._crc)

    @abstractmethod
    def _finish(self) -> None:
        """Make the bytes taken the shard."""

    @abstractmethod
    def abort(self) -> None:
        """Drop what was written (best effort): the shard stays absent."""


class LocalShardFile(ShardSink):
    """Shard `relative` of the store at `root`, written beside its final name, then renamed."""

    def __init__(self, root: Path, relative: str) -> None:
        super().__init__()
        self._root = root
        self._relative = Path(relative)
        self._final = root / relative
        self._final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self._final.with_name(f".{self._final.name}.tmp-{os.getpid()}")
        _unfinished.add(self._tmp)  # before it exists: a stop while it is created still finds it
        self._file = open(self._tmp, "wb", buffering=0)  # noqa: SIM115 - closed by commit or abort

    def _put(self, view: memoryview) -> None:
        # docstring inherited
        written = 0
        while written < len(view):
            written += self._file.write(view[written:])
        if _start_writeback is not None:  # a hint: errors, if any, come back from the fsync
            _start_writeback(self._file.fileno(), self._nbytes, len(view), SYNC_FILE_RANGE_WRITE)

    def _finish(self) -> None:
        # docstring inherited
        try:
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
        os.replace(self._tmp, self._final)
        _unfinished.discard(self._tmp)
        for directory in self._relative.parents:  # the shard's name, and directories made for it
            fsync_dir(self._root / directory)

    def abort(self) -> None:
        # docstring inherited
        self._file.close()
        self._tmp.unlink(missing_ok=True)
        _unfinished.discard(self._tmp)


class RemoteShardObject(ShardSink):
    """Shard `relative` of a store at a URL: collected in memory, then one PUT, so that the object
    appears whole or not at all (object stores have no rename)."""

    def __init__(self, location: RemoteLocation, relative: str) -> None:
        super().__init__()
        self._location = location
        self._relative = relative
        self._data = bytearray()

    def _put(self, view: memoryview) -> None:
        # docstring inherited
        self._data += view

    def _finish(self) -> None:
        # docstring inherited
        self._location.write_bytes(self._relative, self._data)
        self._data = bytearray()

    def abort(self) -> None:
        # docstring inherited
        self._data = bytearray()
