"""The interface of a sample finder: where samples are, in a local folder (`local.py`), a folder per
class (`classfolders.py`), one stacked `.npy` (`stacked.py`), one `.npz` (`npz.py`) or at a URL (`remote.py`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

from ..errors import InputError
from .npy import NpyHeader

Record = TypeVar("Record", bound=tuple)


def record_maker(record: type[Record]) -> Callable[[tuple], Record]:
    """A maker of `record` (a named tuple) from one tuple of all its fields, at 0.6 of the cost of
    calling the class (0.37 against 0.6 us): a named tuple's `__new__` is Python code, and a scan of
    small files makes three records a sample (`Found`, `scan.Sample`, `samples.SampleRef`)."""
    return functools.partial(tuple.__new__, record)


@dataclass(frozen=True)
class Within:
    """Where a sample lies in a file that holds several: an `.npz` member, or `index` along the first axis
    of a stacked `.npy` of shape (`length`, *sample_shape). (Not a store row: that is the sample's place
    in the store.)"""

    member: str | None = None
    index: int | None = None
    length: int = 0


class Found(NamedTuple):
    """A sample as a finder saw it: its file, its checked header (the sample's shape, the file's
    dtype, order and data offset), its stamp, where in the file it is when the file holds several, and
    the file's bytes when the finder read a small file whole (`content`). A named tuple: one is made
    per file (see `scan.Sample`)."""

    path: Path | str
    header: NpyHeader
    stamp: tuple
    within: Within | None = None
    content: bytes | None = None


new_found = record_maker(Found)


class SampleFinder(Protocol):
    """Where samples are found: a local folder (`LocalFinder`), a file holding many, or an fsspec URL."""

    def npy_names(self) -> list[str]:
        """Every sample ID in SRC: sorted for a folder, in the file's order for a stacked `.npy` or an `.npz`."""

    def find(self, ids: Sequence[str]) -> Iterator[Found | InputError]:
        """For each ID in order, its file, or the error that names what is wrong with it."""
