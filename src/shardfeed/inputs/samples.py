"""Reading sample data from validated inputs into a caller's rows: local files or fetched URLs.

What was validated is what is copied: a file whose size changed since the scan is refused,
naming the sample ID.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..urls import is_url
from .npy import parse_npy_header
from .remote import fetch_samples


@dataclass(frozen=True)
class SampleRef:
    """Where a sample's bytes are: what reading needs of a `scan.Sample`."""

    id: str
    path: str
    data_offset: int
    fortran_order: bool


def read_samples(
    refs: Sequence[SampleRef], dest: np.ndarray, source_dtype: np.dtype, storage_options: dict | None = None
) -> None:
    """Fill the rows of `dest` with the samples of `refs`: from files, or fetched in one batch from URLs."""
    if not refs or not is_url(refs[0].path):
        for i, ref in enumerate(refs):
            read_sample(ref, dest[i, ...], source_dtype)  # [i, ...]: a view even for 0-d samples
        return
    for i, (ref, raw) in enumerate(zip(refs, fetch_samples(refs, dest[0].nbytes, storage_options))):
        _store(np.frombuffer(raw, dtype=source_dtype), dest[i, ...], ref.fortran_order)


def read_sample(ref: SampleRef, dest: np.ndarray, source_dtype: np.dtype) -> None:
    """Read a sample's data into `dest` (C order, stored dtype), refusing a changed file.

    The header is read again from the open file and must promise what the scan validated: a
    file rewritten since with the same size but another dtype or shape would otherwise be copied
    reinterpreted, under a fresh checksum that `verify` could never fault.
    """
    expected = dest.nbytes
    direct = not ref.fortran_order and source_dtype == dest.dtype
    target = dest if direct else np.empty(dest.size, dtype=source_dtype)
    where = f"{ref.path}: sample {ref.id!r}"
    try:
        fd = os.open(ref.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb", buffering=0) as f:
            header = parse_npy_header(f, where, os.fstat(fd).st_size)
            validated = (dest.shape, source_dtype, ref.fortran_order, ref.data_offset)
            if (header.shape, header.dtype, header.fortran_order, header.data_offset) != validated:
                raise InputError(
                    f"{where}: file changed since it was validated: its header now says shape {header.shape} "
                    f"dtype {header.dtype.str}, it said shape {dest.shape} dtype {source_dtype.str}; "
                    f"run the conversion again"
                )
            got = _read_fully(f, memoryview(target.reshape(-1)).cast("B"))
            extra = f.read(1)
    except OSError as exc:
        raise InputError(f"{where}: cannot read: {exc.strerror}") from exc
    if got != expected or extra:
        raise InputError(
            f"{ref.path}: sample {ref.id!r}: file changed since it was validated "
            f"(expected {expected} data bytes)"
        )
    if not direct:
        _store(target, dest, ref.fortran_order)


def _store(data: np.ndarray, dest: np.ndarray, fortran_order: bool) -> None:
    """Copy a sample's flat data (source dtype and order) into `dest` (stored dtype, C order)."""
    dest[...] = data.reshape(dest.shape, order="F" if fortran_order else "C")


def _read_fully(f, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got
