""".npy headers, read and checked without loading data.

A header is trusted for nothing: its shape times its itemsize must equal the bytes that follow
it in the file, so a 200-byte file claiming a 74 GiB array is refused before anything is
allocated, and pickles are never loaded.
"""

from __future__ import annotations

import io
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import InputError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
MAX_HEADER_BYTES = 10_000
SUPPORTED_KINDS = "biufc"
# Samples of one data set share their header bytes: numpy's parser (literal_eval, ~50 us) and the
# checks of what it found run once per distinct header instead of once per file; each file's size is
# still checked. Only headers that passed are kept, with the data bytes they promise.
HEADER_CACHE_SIZE = 64
_checked_headers: dict[bytes, tuple[NpyHeader, int]] = {}
# The header bytes of the file checked last, its size, and the header they gave: the next file of a data
# set almost always starts with the same bytes and has the same size, and then passes as that one did
# (one comparison instead of finding the header's end, a slice and a lookup: `LocalFinder.find` of
# 100,000 files of 784 bytes took 1.17 s instead of 1.37 s, AMD EPYC).
_last_passed: tuple[bytes, int, NpyHeader | None] = (b"", -1, None)


@dataclass(frozen=True)
class NpyHeader:
    """What a `.npy` header promises, checked against the file's size."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int


FIRST_READ_BYTES = 256  # a header of a few dimensions fits: one read per file in the common case


def read_npy_header(path: Path, sample_id: str | None) -> NpyHeader:
    """Read and check one `.npy` header without loading data (and without following FIFOs).

    `sample_id` is None for a file holding many samples (a stacked `.npy`): errors name the file only.
    """
    return read_npy_header_and_stat(path, sample_id)[0]


def read_npy_header_and_stat(
    path: Path | str, sample_id: str | None, whole_up_to: int = 0
) -> tuple[NpyHeader, os.stat_result, bytes | None]:
    """`read_npy_header`, the file's status as it was opened (its size, mtime and inode), and the whole
    file when it holds at most `whole_up_to` bytes (else None): a scan of many small files pays one
    open, one fstat and usually one read for each, and the writer need not open them again. What a
    message names is made only for a message: ~1 us a file, a twentieth of a small file's scan."""
    fd, info = _open_regular_fd(path, sample_id)
    size = info.st_size
    whole = size <= whole_up_to
    try:
        head = os.pread(fd, size + 1 if whole else FIRST_READ_BYTES, 0)  # + 1: did it grow?
        last_head, last_size, header = _last_passed
        if size != last_size or not head.startswith(last_head):
            head, header = _check_head(fd, head, path, sample_id, size)
    except OSError as exc:
        raise InputError(f"{_where(path, sample_id)}: cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return header, info, head if whole and len(head) == size else None  # a file changing: read later


def _check_head(fd: int, head: bytes, path: Path | str, sample_id: str | None, size: int) -> tuple[bytes, NpyHeader]:
    """The first bytes of an open `.npy` file (read further if its header is longer) and its checked header."""
    global _last_passed
    end = npy_header_end(head)
    if end is not None and len(head) < end <= MAX_HEADER_BYTES + 12:
        head += os.pread(fd, end - len(head), len(head))
    known = _checked_headers.get(head[:end]) if end is not None else None  # these bytes passed before
    if known is None or size - known[0].data_offset != known[1]:
        header = parse_npy_header(io.BytesIO(head), _where(path, sample_id), size)
    else:
        header = known[0]
    _last_passed = (head[: header.data_offset], size, header)
    return head, header


def _where(path: Path | str, sample_id: str | None) -> str:
    """What an error names: the file, and the sample when the file is one (not a stack of many)."""
    return str(path) if sample_id is None else f"{path}: sample {sample_id!r}"


def open_regular(path: Path, where: str) -> BinaryIO:
    """Open a regular file for reading: never through a link, never blocking on a FIFO or a device."""
    return os.fdopen(_open_regular_fd(path, None, where)[0], "rb")


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW


def _open_regular_fd(path: Path | str, sample_id: str | None, where: str | None = None) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise InputError(f"{where or _where(path, sample_id)}: cannot open: {exc.strerror}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InputError(f"{where or _where(path, sample_id)} is not a regular file")
    return fd, info


def parse_npy_header(f: BinaryIO, where: str, file_size: int) -> NpyHeader:
    """Check the header at the start of `f` (a file, or the first bytes of a remote object)."""
    magic = f.read(8)
    if magic[:4] == ZIP_MAGIC:
        raise InputError(f"{where}: is a ZIP archive (.npz?), expected a .npy file")
    if len(magic) < 8 or magic[:6] != NPY_MAGIC:
        raise InputError(f"{where}: not a .npy file (bad magic), or truncated")
    version = (magic[6], magic[7])
    if version not in ((1, 0), (2, 0)):
        raise InputError(f"{where}: unsupported .npy version {version}")
    length = f.read(2 if version == (1, 0) else 4)
    header_len = int.from_bytes(length, "little")
    head = magic + length + (f.read(header_len) if header_len <= MAX_HEADER_BYTES else b"")
    checked = _checked_headers.get(head)
    if checked is None:
        shape, fortran, dtype = _parse_header_bytes(head, version, where)
        checked = _checked_header(where, shape, fortran, dtype, len(head))
        if len(_checked_headers) < HEADER_CACHE_SIZE:
            _checked_headers[head] = checked
    return _size_checked(checked, where, file_size)


def _size_checked(checked: tuple[NpyHeader, int], where: str, file_size: int) -> NpyHeader:
    """A checked header, if the file holds exactly the data bytes it promises."""
    header, expected = checked
    actual = file_size - header.data_offset
    if expected != actual:
        raise InputError(
            f"{where}: header says shape {header.shape} {header.dtype.str} = {expected} bytes, "
            f"but the file holds {actual} bytes after the header (truncated or corrupt)"
        )
    return header


def _parse_header_bytes(head: bytes, version: tuple[int, int], where: str) -> tuple:
    """numpy's own parser (a restricted literal_eval) on the header bytes."""
    f = io.BytesIO(head)
    try:
        np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER_BYTES)
        return np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER_BYTES)
    except Exception as exc:  # numpy raises ValueError, SyntaxError, TypeError... on bad headers
        reason = " ".join(str(exc).split())  # numpy's messages span lines; ours are one line
        raise InputError(f"{where}: invalid .npy header: {reason}") from exc


def npy_header_end(head: bytes) -> int | None:
    """Where the data starts according to the first 12 bytes of a `.npy` file, if they say."""
    if len(head) < 12 or not head.startswith(NPY_MAGIC):
        return None
    if head[6] == 1:
        return 10 + (head[8] | head[9] << 8)  # what int.from_bytes(head[8:10], "little") says, at half its cost
    return 12 + int.from_bytes(head[8:12], "little")


def _checked_header(where, shape, fortran, dtype, data_offset) -> tuple[NpyHeader, int]:
    """The header if what it says is storable, and the data bytes it promises."""
    if dtype.hasobject:
        raise InputError(f"{where}: object dtype (a pickle) refused; shardfeed never loads pickles")
    if dtype.kind not in SUPPORTED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise InputError(f"{where}: dtype {dtype.str} not supported; expected bool, integer, float or complex")
    if not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(f"{where}: header shape {shape} has negative or non-integer dimensions")
    if 0 in shape:
        raise InputError(f"{where}: shape {shape} holds no values; expected non-empty samples")
    return NpyHeader(tuple(shape), dtype, bool(fortran), data_offset), math.prod(shape) * dtype.itemsize
