"""One `.npy` file of shape (N, ...) as SRC: row k along the first axis is one sample of shape `...`.

Rows are read by offset (`samples.py`), never by loading the array, which may be larger than memory;
the header is checked once here, against the file's size, and again before every read. IDs come
from `--ids` (a text file, one per line, or a JSON list; exactly N of them), or are the row numbers
zero-padded to the width of N - 1 (`000` ... `999` for N = 1000), so that sorting them as text sorts
them as numbers. Rows are converted in the file's order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import InputError
from .finder import Found, Within
from .ids import check_id_list
from .labels import read_id_list
from .npy import NpyHeader, read_npy_header


class StackedFinder:
    """The rows of one `.npy` file, each a sample.

    Args:
        src: the `.npy` file (a link to it is followed).
        ids: the rows' IDs in order: a file (`--ids`), a sequence, or None for zero-padded row numbers.
        storage_options: fsspec options for an `ids` file at a URL.
    """

    def __init__(
        self, src: str | os.PathLike, ids: str | os.PathLike | Sequence[str] | None = None,
        storage_options: dict | None = None,
    ) -> None:  # fmt: skip
        self.path = Path(os.path.realpath(src))
        whole = read_npy_header(self.path, None)
        if not whole.shape:
            raise InputError(f"{self.path}: holds a 0-d array (shape ()), which has no rows; a single .npy "
                             f"SRC holds one sample per row, shape (N, ...)")  # fmt: skip
        self.length = whole.shape[0]
        self._header = NpyHeader(whole.shape[1:], whole.dtype, whole.fortran_order, whole.data_offset)
        info = os.stat(self.path)
        self._stamp = (info.st_size, info.st_mtime_ns)
        self._width = len(str(self.length - 1))
        self._ids, self._rows = None, None
        if ids is not None:
            self._ids = self._named_rows(ids, storage_options)
            self._rows = {sample_id: k for k, sample_id in enumerate(self._ids)}

    def npy_names(self) -> list[str]:
        if self._ids is not None:
            return list(self._ids)
        return [f"{k:0{self._width}d}" for k in range(self.length)]

    def find(self, ids: Sequence[str]) -> Iterator[Found | InputError]:
        for sample_id in ids:
            index = self._row_of(sample_id)
            if index is None:
                yield InputError(self._not_a_row(sample_id))
            else:
                yield Found(self.path, self._header, self._stamp, Within(index=index, length=self.length))

    def _named_rows(self, ids: str | os.PathLike | Sequence[str], storage_options: dict | None) -> list[str]:
        if isinstance(ids, (str, os.PathLike)):
            named, source = read_id_list(ids, storage_options), str(ids)
        else:
            named, source = check_id_list(list(ids), lambda k: f"ids[{k}]"), "ids"
        if len(named) != self.length:
            raise InputError(
                f"{source}: {len(named)} IDs for the {self.length} rows of {self.path} (shape "
                f"{(self.length, *self._header.shape)}); give exactly one ID per row, in row order"
            )
        return named

    def _row_of(self, sample_id: str) -> int | None:
        if self._rows is not None:
            return self._rows.get(sample_id)
        digits = isinstance(sample_id, str) and sample_id.isascii() and sample_id.isdigit()
        if digits and len(sample_id) == self._width and int(sample_id) < self.length:
            return int(sample_id)
        return None

    def _not_a_row(self, sample_id: str) -> str:
        if self._rows is not None:
            return f"{self.path}: sample {sample_id!r} is not one of the IDs given for its {self.length} rows"
        last = f"{self.length - 1:0{self._width}d}"
        return (f"{self.path}: sample {sample_id!r} is not a row of this file: without --ids its rows are "
                f"named {0:0{self._width}d} to {last}; pass the --ids file it was converted with")  # fmt: skip
