"""Store files on local disk: checksums, atomic writes, and reads that never block or overrun."""

from __future__ import annotations

import functools
import os
import stat
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import StoreFormatError


def checksum(data: bytes | memoryview | np.ndarray, value: int = 0) -> int:
    """CRC32: cheap, and catches every single-byte flip and every burst up to 32 bits."""
    return zlib.crc32(data, value)


def checksum_extend(value: int, checksums: Sequence[int], nbytes: int) -> int:
    """CRC32 of the bytes that gave `value` followed by blocks of `nbytes` bytes whose CRC32s are
    `checksums`, without reading those bytes again (zlib's `crc32_combine`, once per block).

    A shard's file checksum then costs no pass over rows whose checksums were taken anyway."""
    t0, t1, t2, t3 = _zeros_shift(nbytes)
    for crc in checksums:
        value = t0[value & 255] ^ t1[(value >> 8) & 255] ^ t2[(value >> 16) & 255] ^ t3[value >> 24] ^ crc
    return value


@functools.lru_cache(maxsize=8)
def _zeros_shift(nbytes: int) -> tuple[list[int], ...]:
    """How `nbytes` zero bytes change CRC32's register, a linear map over GF(2), as a table per byte
    of the register: CRC32(a + b) is that map of CRC32(a), xor CRC32(b), for any b of `nbytes` bytes."""
    zeros = bytes(nbytes)
    bits = [~zlib.crc32(zeros, ~(1 << bit) & 0xFFFFFFFF) & 0xFFFFFFFF for bit in range(32)]
    tables = []
    for byte in range(4):
        table = [0] * 256
        for value in range(1, 256):
            low = value & -value  # the lowest set bit: the rest of the entry is already known
            table[value] = table[value ^ low] ^ bits[8 * byte + low.bit_length() - 1]
        tables.append(table)
    return tuple(tables)


def shard_checksum(sample_checksums: np.ndarray) -> int:
    return checksum(np.ascontiguousarray(sample_checksums, dtype="<u4").tobytes())


def file_checksum(path: Path) -> int:
    """CRC32 of a whole file, read in blocks."""
    value = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            value = checksum(block, value)
    return value


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write through a temporary file, fsync, rename, fsync the directory.

    The temporary file (`.NAME.tmp-PID`, a name `--resume` removes) is deleted when writing
    fails, for example when the disk is full.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_store_file(path: Path, what: str, max_bytes: int | None = None) -> bytes:
    """Bytes of a regular file of a store; never blocks on a FIFO or reads a device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise StoreFormatError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreFormatError(f"{path}: {what} is not a regular file")
        if max_bytes is not None and size > max_bytes:
            raise StoreFormatError(f"{path}: {what} of {size} bytes exceeds {max_bytes} bytes")
        try:
            return f.read()
        except OSError as exc:
            raise StoreFormatError(f"{path}: cannot read {what}: {exc.strerror}") from exc
