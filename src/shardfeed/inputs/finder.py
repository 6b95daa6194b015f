"""The interface of a sample finder: where `<id>.npy` files are, local (`local.py`) or at a URL (`remote.py`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import InputError
from .npy import NpyHeader


@dataclass(frozen=True)
class Found:
    """A sample's file as a finder saw it: where it is, its checked header and its stamp."""

    path: Path | str
    header: NpyHeader
    stamp: tuple


class SampleFinder(Protocol):
    """Where `<id>.npy` files are found: a local folder (`LocalFinder`) or an fsspec URL."""

    def npy_names(self) -> list[str]:
        """The IDs of every `.npy` file in SRC, sorted."""

    def find(self, ids: Sequence[str]) -> Iterator[Found | InputError]:
        """For each ID in order, its file, or the error that names what is wrong with it."""
