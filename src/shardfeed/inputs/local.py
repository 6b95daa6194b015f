"""`<id>.npy` files in a local folder: links may not leave it, FIFOs and devices are refused."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import InputError
from .finder import Found, new_found
from .ids import all_plain, check_id
from .npy import read_npy_header_and_stat

# Files this small are read whole by the scan and copied from memory by the writer, up to a budget: for
# 100,000 files of 784 bytes, a second open, read and close of each cost ~2 s of a 9 s conversion.
SMALL_FILE_BYTES = 64 * 2**10
KEPT_CONTENT_BYTES = 128 * 2**20


def resolve_unlisted(src_root: Path, sample_id: str, folder: str | Path, path: str) -> str:
    """`path` (`<id>.npy` in `folder`, for an ID `LocalFinder.find` has checked) as the file to open,
    for a file the directory listing did not find regular by its entry's type: a link must stay
    inside SRC, and anything else must be a regular file. Listed files need no `lstat` (8 us a file
    here): the open that follows refuses links and anything not regular that replaced them since, as
    it does after an `lstat`. (Not every file opened first: opening a device or a FIFO acts on it: a
    watchdog arms, a waiting writer is let go.) A str, not a Path: a scan of 100,000 small files spent
    a fifth of its time building Paths.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: sample {sample_id!r} has no file (expected {sample_id}.npy in {folder})") from None
    except OSError as exc:
        raise InputError(f"{path}: sample {sample_id!r}: {exc.strerror}") from exc
    if stat.S_ISLNK(info.st_mode):
        target = os.path.realpath(path)
        if not Path(target).is_relative_to(src_root):
            raise InputError(f"{path}: sample {sample_id!r} is a symlink to {target}, outside {src_root}")
        try:
            info = os.lstat(target)
        except OSError as exc:
            raise InputError(f"{path}: sample {sample_id!r} is a symlink to {target}: {exc.strerror}") from exc
        path = target
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: sample {sample_id!r} is not a regular file")
    return path


class LocalFinder:
    """`<id>.npy` files in a local folder; links may not leave it, and no file counts twice."""

    def __init__(self, src: str | os.PathLike) -> None:
        self.root = Path(os.path.realpath(src))
        if not self.root.exists():
            raise InputError(f"{src}: no such file or directory (SRC)")
        if not self.root.is_dir():
            raise InputError(f"{src}: SRC is not a directory (nor a .npy or .npz file)")
        self._inodes: dict[tuple[int, int], str] = {}
        self._listed_files: set[str] = set()  # regular files by their directory entries' types
        self._root_name = str(self.root)  # os.path.join converts a Path on every call
        self._content_budget = KEPT_CONTENT_BYTES

    def npy_names(self) -> list[str]:
        with os.scandir(self.root) as entries:
            found = [entry for entry in entries if entry.name.endswith(".npy")]
        self._listed_files = {entry.path for entry in found if entry.is_file(follow_symlinks=False)}
        return sorted(entry.name[:-4] for entry in found)

    def find(self, ids: Sequence[str]) -> Iterator[Found | InputError]:
        listed, inodes, sep = self._listed_files, self._inodes, os.sep  # ~4 us a file beside its system calls
        plain = all_plain(ids)  # a partition's IDs, or a store's for `verify --source`: checked again here
        for sample_id in ids:
            try:
                if not plain:
                    check_id(sample_id, self._root_name)
                folder = self._folder_of(sample_id)
                path = f"{folder}{sep}{sample_id}.npy"  # os.path.join of a checked ID, at a third of its cost
                if path not in listed:
                    path = resolve_unlisted(self.root, sample_id, folder, path)
                budget = self._content_budget
                header, info, content = read_npy_header_and_stat(path, sample_id, SMALL_FILE_BYTES if budget >=
                                                                 SMALL_FILE_BYTES else budget)  # fmt: skip
            except InputError as exc:
                yield exc
                continue
            if inodes.setdefault((info.st_dev, info.st_ino), sample_id) != sample_id:
                yield InputError(f"{path}: samples {inodes[info.st_dev, info.st_ino]!r} and {sample_id!r} are "
                                 f"the same file")  # fmt: skip
                continue
            if content is not None:
                self._content_budget = budget - len(content)
            yield new_found((path, header, (info.st_size, info.st_mtime_ns), None, content))

    def _folder_of(self, sample_id: str) -> str | Path:
        """The folder holding `<id>.npy`: SRC itself here, the sample's class folder in `ClassFolderFinder`."""
        return self._root_name
