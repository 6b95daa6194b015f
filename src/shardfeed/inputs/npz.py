"""One `.npz` archive as SRC (`np.savez` or `np.savez_compressed`): each key an ID, its array one sample.

Every member is read through `zipfile`, stored and compressed alike: one reading path, where
reading stored members by offset would add a second for no gain in correctness. Each member is
an ordinary `.npy` stream, so its header is checked by `npy.py` against the member's size and
checked again before its data is copied (`samples.py`); `zipfile` stops at that size and checks
the member's CRC at its end, so a lying or damaged archive is refused, never inflated.

Opening an archive reads its whole directory (about 8 us per member: 0.8 s for 100,000 keys), so
each process keeps the last archive it read open, and opens it afresh when the file changed or in a
forked child. Members that are not `.npy` are not samples and are left out, as stray files in a
folder are; a key that is not a plain name, or is listed twice in the directory, is refused when
the archive is opened, whether a partition lists it or not: the archive is broken, not a sample.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError
from .finder import Found, Within
from .ids import check_id
from .npy import open_regular, parse_npy_header

# (pid, path, file identity) -> the archive and its file: at most one, see the module docstring.
_open_archives: dict[tuple, tuple[zipfile.ZipFile, BinaryIO]] = {}


class NpzFinder:
    """The arrays of one `.npz` file (a link to it is followed), in the archive's order."""

    def __init__(self, src: str | os.PathLike) -> None:
        self.path = Path(os.path.realpath(src))
        archive, info = open_archive(self.path)
        self._stamp = (info.st_size, info.st_mtime_ns)
        self._members: dict[str, str] = {}
        for member in archive.infolist():
            if member.is_dir() or not member.filename.endswith(".npy"):
                continue
            key = check_id(member.filename[:-4], f"{self.path}: key")  # listed or not: a broken archive
            if key in self._members:
                raise InputError(f"{self.path}: key {key!r} appears twice in the archive; which array is meant?")
            self._members[key] = member.filename

    def npy_names(self) -> list[str]:
        return list(self._members)

    def find(self, ids: Sequence[str]) -> Iterator[Found | InputError]:
        for sample_id in ids:
            try:
                yield self._found(sample_id)
            except InputError as exc:
                yield exc

    def _found(self, sample_id: str) -> Found:
        check_id(sample_id, str(self.path))
        member = self._members.get(sample_id)
        where = f"{self.path}: sample {sample_id!r}"
        if member is None:
            raise InputError(f"{where} has no array (expected key {sample_id!r} in the archive)")
        with open_member(self.path, member, where) as (f, size):
            header = parse_npy_header(f, where, size)
        return Found(self.path, header, self._stamp, Within(member=member))


def open_archive(path: Path) -> tuple[zipfile.ZipFile, os.stat_result]:
    """The archive at `path` and its file's status: this process's open one while the file is unchanged."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from exc
    key = (os.getpid(), str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _open_archives:
        for old_key, (old, old_file) in list(_open_archives.items()):
            del _open_archives[old_key]
            if old_key[0] == key[0]:  # a forked child just drops its parent's (garbage: its own fd copy)
                old.close()
                old_file.close()
        f = open_regular(path, str(path))
        try:
            _open_archives[key] = zipfile.ZipFile(f), f
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
            f.close()
            raise InputError(f"{path}: not a readable .npz (ZIP) archive: {exc}") from exc
    return _open_archives[key][0], info


@contextlib.contextmanager
def open_member(path: Path, member: str, where: str) -> Iterator[tuple[BinaryIO, int]]:
    """One member's stream and its uncompressed size; a damaged, encrypted or vanished member, met
    while opening or reading, is one `InputError` naming `where`."""
    archive, _ = open_archive(path)
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise InputError(f"{where}: the archive changed since it was validated (no member {member}); "
                         f"run again") from None  # fmt: skip
    if info.flag_bits & 0x1:
        raise InputError(f"{where}: member {member} is encrypted; shardfeed reads plain .npz archives")
    try:
        with archive.open(info) as f:
            yield f, info.file_size
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise InputError(f"{where}: member {member} of the archive is damaged or unreadable: {exc}") from exc
