"""Scanning and validating inputs: every header, label and partition entry is checked before
anything is written, and the row order is fixed (split by split, then the partition's order).

What SRC is decides how it is read (`open_finder`): a folder of `<id>.npy` files (`local.py`), a
folder per class (`classfolders.py`), one `.npy` file of shape (N, ...) (`stacked.py`), one `.npz`
archive (`npz.py`), or an fsspec URL of a folder of `.npy` files (`remote.py`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, OptionError
from ..urls import is_url, local_root
from .classfolders import ClassFolderFinder, is_class_folders
from .finder import Found, SampleFinder, Within
from .ids import check_id, check_name
from .labels import encode_labels
from .local import LocalFinder
from .npz import NpzFinder
from .remote import RemoteFinder
from .stacked import StackedFinder

DEFAULT_SPLIT = "all"


@dataclass(frozen=True)
class Sample:
    """One input sample: its ID, file, split and label (None for an unlabeled store)."""

    id: str
    path: Path | str  # a str for a sample at an fsspec URL
    split: str
    label: int | None
    fortran_order: bool
    data_offset: int
    stamp: tuple  # size and modification time (or ETag): a resume refuses inputs that changed
    within: Within | None = None  # for a file holding several samples: which one


@dataclass(frozen=True)
class SourceSet:
    """Validated inputs in row order (split by split, then the input's order)."""

    samples: tuple[Sample, ...]
    sample_shape: tuple[int, ...]
    dtype: np.dtype
    splits: dict[str, int]
    class_names: list[str] | None
    num_classes: int | None
    unlisted_files: int

    @property
    def sample_nbytes(self) -> int:
        return int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize


def open_finder(
    src: str | os.PathLike, storage_options: dict | None = None, ids: str | os.PathLike | Sequence[str] | None = None
) -> SampleFinder:
    """The finder for what SRC is; `ids` (a file or a list) names the rows of a stacked `.npy` only."""
    single = str(src).rstrip("/").lower().endswith((".npy", ".npz"))
    if is_url(src):
        if single or ids is not None:
            raise OptionError(f"{src}: a single .npy or .npz SRC (and --ids) must be a local file; "
                              f"at a URL, SRC is a folder of <ID>.npy objects")  # fmt: skip
        return RemoteFinder(str(src), storage_options)
    path = local_root(src)
    if single and not path.is_dir():
        if str(path).lower().endswith(".npy"):
            return StackedFinder(path, ids, storage_options)
        if ids is None:
            return NpzFinder(path)
    if ids is not None:
        raise OptionError(f"{src}: --ids names the rows of a single .npy SRC of shape (N, ...); this SRC is not one")
    if path.is_dir() and is_class_folders(path):
        return ClassFolderFinder(path)
    return LocalFinder(path)


def scan_sources(
    src: str | os.PathLike,
    labels: Mapping[str, int | str] | None = None,
    partition: Mapping[str, Sequence[str]] | None = None,
    storage_options: dict | None = None,
    ids: str | os.PathLike | Sequence[str] | None = None,
) -> SourceSet:
    """Validate every input before anything is written, and fix the row order.

    `src` is a folder, a folder per class, a `.npy` of shape (N, ...) (its rows named by `ids`),
    an `.npz`, or an fsspec URL. Without a partition, every sample in it is converted, except
    hidden ones (`._x.npy` from macOS, editors' backups), which are counted as unlisted files
    like those a partition leaves out.
    """
    finder = open_finder(src, storage_options, ids)
    if isinstance(finder, ClassFolderFinder) and labels is not None:
        raise OptionError(f"{src}: SRC is a folder per class, which labels every sample; drop --labels, "
                          f"or give a flat SRC to label its samples by file")  # fmt: skip
    npy_names = finder.npy_names()
    if partition is None:
        partition = {DEFAULT_SPLIT: [n for n in npy_names if not n.startswith(".")]}
        if not partition[DEFAULT_SPLIT]:
            raise InputError(f"{src}: SRC holds no .npy files")
    ordered = _ordered_ids(partition)
    if not ordered:
        raise InputError("partition lists no IDs")
    if isinstance(finder, ClassFolderFinder):  # every folder is a class, listed or not: numbers stay put
        encoded_labels, class_names, num_classes = finder.labels, finder.class_names, len(finder.class_names)
    else:
        encoded_labels, class_names, num_classes = encode_labels(labels, [i for i, _ in ordered])
    samples: list[Sample] = []
    first: tuple[str, Found] | None = None
    for (sample_id, split), found in zip(ordered, finder.find([i for i, _ in ordered])):
        if isinstance(found, InputError):
            raise found
        if first is None:
            first = (sample_id, found)
        else:
            _check_same_kind(first, sample_id, found)
        label = None if encoded_labels is None else encoded_labels[sample_id]
        h = found.header
        samples.append(Sample(sample_id, found.path, split, label, h.fortran_order, h.data_offset, found.stamp,
                              found.within))  # fmt: skip
    splits = dict.fromkeys(partition, 0)  # an empty split stays, with 0 samples: nothing dropped in silence
    for s in samples:
        splits[s.split] = splits.get(s.split, 0) + 1
    listed = {s.id for s in samples}
    first_header = first[1].header  # type: ignore[index]  # ordered is non-empty
    return SourceSet(
        samples=tuple(samples),
        sample_shape=first_header.shape,
        dtype=first_header.dtype,
        splits=splits,
        class_names=class_names,
        num_classes=num_classes,
        unlisted_files=sum(1 for n in npy_names if n not in listed),
    )


def _check_same_kind(first: tuple[str, Found], sample_id: str, found: Found) -> None:
    (first_id, first_found), header = first, found.header
    expected = first_found.header
    if (header.shape, header.dtype) != (expected.shape, expected.dtype):
        raise InputError(
            f"{found.path}: sample {sample_id!r} has shape {header.shape} dtype {header.dtype.str}, "
            f"which differs from shape {expected.shape} dtype {expected.dtype.str} of {first_found.path} "
            f"(sample {first_id!r}); all samples must share shape and dtype"
        )


def _ordered_ids(partition: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    ordered = []
    for split, ids in partition.items():
        if not isinstance(split, str) or not split:
            raise InputError(f"partition: split name {split!r} must be a non-empty string")
        check_name(split, "partition: split name")
        for sample_id in ids:
            check_id(sample_id, f"partition[{split!r}]")
            if sample_id in seen:
                where = "twice in" if seen[sample_id] == split else f"in both {seen[sample_id]!r} and"
                raise InputError(f"partition: ID {sample_id!r} is listed {where} split {split!r}")
            seen[sample_id] = split
            ordered.append((sample_id, split))
    return ordered
