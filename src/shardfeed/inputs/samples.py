"""Reading sample data from validated inputs into a caller's rows: local files, `.npz` members, rows
of a stacked `.npy`, or fetched URLs.

What was validated is what is copied: a small file the scan read whole is copied from those bytes
(`SampleRef.content`); otherwise, before any data is copied the header is read again from the
open file (or archive member) and must promise what the scan validated, and a file whose size
changed since is refused, naming the sample ID. Consecutive rows of one stacked `.npy` are read in
one call; a Fortran-ordered stack keeps each value's rows together, so a run of rows is read one
value at a time (as many reads as a sample has values) and transposed.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from ..errors import InputError
from ..urls import is_url
from .finder import Within, record_maker
from .npy import NpyHeader, parse_npy_header
from .npz import open_member
from .remote import fetch_samples

# The header bytes that were checked against what the scan validated (with that promise): samples of
# one data set share them, so every file after the first costs a set lookup, not a parse.
CHECKED_HEADS_SIZE = 64
_checked_heads: set[tuple] = set()


class SampleRef(NamedTuple):
    """Where a sample's bytes are: what reading needs of a `scan.Sample` (a named tuple, made per
    sample in bulk: see `scan.Sample`)."""

    id: str
    path: str
    data_offset: int
    fortran_order: bool
    within: Within | None = None  # an `.npz` member or a row of a stacked `.npy`; None: the whole file
    content: bytes | None = None  # the file, as the scan read it

    def without_content(self) -> SampleRef:
        """This sample, read from its file when needed (for a task sent elsewhere, which a copy of the
        bytes would make as big as the data)."""
        return self if self.content is None else self._replace(content=None)

    @property
    def is_row(self) -> bool:
        return self.within is not None and self.within.index is not None


new_ref = record_maker(SampleRef)


def read_samples(
    refs: Sequence[SampleRef], dest: np.ndarray, source_dtype: np.dtype, storage_options: dict | None = None
) -> None:
    """Fill the rows of `dest` with the samples of `refs`: from files, or fetched in one batch from URLs."""
    if refs and is_url(refs[0].path):
        for i, (ref, raw) in enumerate(zip(refs, fetch_samples(refs, dest[0].nbytes, storage_options))):
            _store(np.frombuffer(raw, dtype=source_dtype), dest[i, ...], ref.fortran_order)
        return
    if _copy_contents(refs, dest, source_dtype):
        return
    start = 0
    while start < len(refs):
        stop = _run_end(refs, start)
        _read_run(refs[start:stop], dest[start:stop], source_dtype)
        start = stop


def _copy_contents(refs: Sequence[SampleRef], dest: np.ndarray, source_dtype: np.dtype) -> bool:
    """Small files the scan read whole, all with the same header size and nothing to convert: their
    bytes joined, then their data copied into `dest` in one strided copy (a copy per sample cost
    4 us, a fifth of converting a 784-byte sample). False, having copied nothing, otherwise."""
    if not refs or source_dtype != dest.dtype or not dest.flags.c_contiguous:
        return False
    offset, size = refs[0].data_offset, refs[0].data_offset + dest[0, ...].nbytes
    if any(r.content is None or r.data_offset != offset or len(r.content) != size or r.fortran_order for r in refs):
        return False
    files = np.frombuffer(b"".join([r.content for r in refs]), dtype=np.uint8).reshape(len(refs), -1)
    dest[: len(refs)].reshape(len(refs), -1).view(np.uint8)[...] = files[:, offset:]
    return True


def _read_run(refs: Sequence[SampleRef], dest: np.ndarray, source_dtype: np.dtype) -> None:
    """Read one sample, or consecutive rows of one stacked `.npy`, into `dest` (C order, stored dtype).

    The header is checked again first: a file rewritten since the scan with the same size but another
    dtype or shape would otherwise be copied reinterpreted, under a fresh checksum that `verify`
    could never fault.
    """
    ref = refs[0]
    if ref.content is not None:  # validated by the scan from these very bytes: nothing can have changed
        data = np.frombuffer(ref.content, dtype=source_dtype, count=dest[0, ...].size, offset=ref.data_offset)
        _store(data, dest[0, ...], ref.fortran_order)
        return
    try:
        if ref.within is None:  # a file of its own
            _read_file(ref, dest[0, ...], source_dtype)  # [0, ...]: a view even for 0-d samples
            return
        where, member = _where(refs), ref.within.member
        with open_member(Path(ref.path), member, where) if member else _open_file(ref.path) as (f, size):
            _check_unchanged(ref, parse_npy_header(f, where, size), dest.shape[1:], source_dtype, where)
            if ref.is_row:
                _read_rows(f, ref, dest, source_dtype, where)
            else:
                _read_whole(f, ref, dest[0, ...], source_dtype, where)
    except OSError as exc:
        raise InputError(f"{_where(refs)}: cannot read: {exc.strerror or exc}") from exc


def _where(refs: Sequence[SampleRef]) -> str:
    """The samples, for a message (only made when one is: a small sample costs microseconds)."""
    ref = refs[0]
    return f"{ref.path}: sample {ref.id!r}" if len(refs) == 1 else f"{ref.path}: samples {ref.id!r} to {refs[-1].id!r}"


def _run_end(refs: Sequence[SampleRef], start: int) -> int:
    """The end of the run of consecutive rows of one stacked `.npy` that starts at `start`."""
    first, stop = refs[start], start + 1
    while first.is_row and stop < len(refs) and refs[stop].path == first.path and refs[stop].is_row:
        if refs[stop].within.index != first.within.index + (stop - start):
            break
        stop += 1
    return stop


@contextlib.contextmanager
def _open_file(path: str) -> Iterator[tuple[BinaryIO, int]]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as f:
        yield f, os.fstat(fd).st_size


def _check_unchanged(ref: SampleRef, header: NpyHeader, shape: tuple, source_dtype: np.dtype, where: str) -> None:
    if ref.is_row:
        shape = (ref.within.length, *shape)
    found = (header.shape, header.dtype, header.fortran_order, header.data_offset)
    if found != (shape, source_dtype, ref.fortran_order, ref.data_offset):
        raise InputError(
            f"{where}: file changed since it was validated: its header now says shape {header.shape} "
            f"dtype {header.dtype.str}, it said shape {shape} dtype {source_dtype.str}; "
            f"run the conversion again"
        )


def _read_file(ref: SampleRef, dest: np.ndarray, source_dtype: np.dtype) -> None:
    """A whole `.npy` file with one open and one read: its header, its data (straight into `dest` when
    it needs no conversion) and one byte more, which must not be there; then the header is checked.
    Small samples cost their open and a read, not a read per header field."""
    direct = not ref.fortran_order and source_dtype == dest.dtype
    target = dest if direct else np.empty(dest.size, dtype=source_dtype)
    head = bytearray(ref.data_offset)
    fd = os.open(ref.path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        got = _readv_fully(fd, [head, _bytes_of(target), bytearray(1)])
    finally:
        os.close(fd)
    expected = ref.data_offset + target.nbytes
    if got != expected:
        raise InputError(f"{_where([ref])}: file changed since it was validated (no longer {expected} bytes); "
                         f"run the conversion again")  # fmt: skip
    promise = (bytes(head), dest.shape, source_dtype, ref.fortran_order)
    if promise not in _checked_heads:
        where = _where([ref])
        _check_unchanged(ref, parse_npy_header(io.BytesIO(head), where, got), dest.shape, source_dtype, where)
        if len(_checked_heads) < CHECKED_HEADS_SIZE:
            _checked_heads.add(promise)
    if not direct:
        _store(target, dest, ref.fortran_order)


def _readv_fully(fd: int, buffers: list) -> int:
    """`os.readv` until the buffers are full or the file ends (a read may stop short); bytes read."""
    views = [view for view in (memoryview(b).cast("B") for b in buffers) if len(view)]
    total = 0
    while views:
        n = os.readv(fd, views)
        if not n:
            break
        total += n
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if n:
            views[0] = views[0][n:]
    return total


def _read_whole(f: BinaryIO, ref: SampleRef, dest: np.ndarray, source_dtype: np.dtype, where: str) -> None:
    """The data after the header, which must end the file (or member) exactly."""
    direct = not ref.fortran_order and source_dtype == dest.dtype
    target = dest if direct else np.empty(dest.size, dtype=source_dtype)
    got = _read_fully(f, _bytes_of(target))
    extra = f.read(1)
    if got != dest.nbytes or extra:
        raise InputError(f"{where}: file changed since it was validated (expected {dest.nbytes} data bytes)")
    if not direct:
        _store(target, dest, ref.fortran_order)


def _read_rows(f: BinaryIO, ref: SampleRef, dest: np.ndarray, source_dtype: np.dtype, where: str) -> None:
    """Rows `index` to `index + len(dest)` of a stacked `.npy` of `length` rows, by offset."""
    index, length = ref.within.index, ref.within.length
    values = math.prod(dest.shape[1:])
    itemsize = source_dtype.itemsize
    if not ref.fortran_order:
        target = dest if source_dtype == dest.dtype else np.empty(dest.shape, dtype=source_dtype)
        f.seek(ref.data_offset + index * values * itemsize)
        complete = _read_fully(f, _bytes_of(target)) == target.nbytes
    else:  # value m of row k is item k + m * length: each value's rows are contiguous
        columns = np.empty((values, len(dest)), dtype=source_dtype)
        complete = True
        for m in range(values):
            f.seek(ref.data_offset + (m * length + index) * itemsize)
            if _read_fully(f, _bytes_of(columns[m])) != columns[m].nbytes:
                complete = False
                break
        target = columns.T.reshape(dest.shape, order="F")
    if not complete:
        raise InputError(f"{where}: file changed since it was validated (shorter than its header says)")
    if target is not dest:
        dest[...] = target


def _store(data: np.ndarray, dest: np.ndarray, fortran_order: bool) -> None:
    """Copy a sample's flat data (source dtype and order) into `dest` (stored dtype, C order)."""
    dest[...] = data.reshape(dest.shape, order="F" if fortran_order else "C")


def _bytes_of(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, to read into."""
    return memoryview(array.reshape(-1)).cast("B")


def _read_fully(f, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got
