"""Scanning and validating inputs: every header, label and partition entry is checked before
anything is written, and the row order is fixed (split by split, then the partition's order).

What SRC is decides how it is read (`open_finder`): a folder of `<id>.npy` files (`local.py`), a
folder per class (`classfolders.py`), one `.npy` file of shape (N, ...) (`stacked.py`), one `.npz`
archive (`npz.py`), or an fsspec URL of a folder of `.npy` files (`remote.py`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import InputError, OptionError
from ..gcpause import paused_gc
from ..urls import is_url, local_root
from .classfolders import ClassFolderFinder, is_class_folders
from .encoding import CLASS, EncodedLabels, encode_labels
from .finder import Found, SampleFinder, Within, record_maker
from .ids import all_plain, check_id, check_name
from .labels import Label
from .local import LocalFinder
from .npz import NpzFinder
from .remote import RemoteFinder
from .stacked import StackedFinder

DEFAULT_SPLIT = "all"


class Sample(NamedTuple):
    """One input sample: its ID, file, split and label (None for an unlabeled store).

    A named tuple, not a frozen dataclass: a scan makes one per file, and a frozen dataclass costs
    3.5 us to make (a setattr per field), a named tuple 0.4 us."""

    id: str
    path: Path | str  # a str for a sample at an fsspec URL
    split: str
    label: int | float | tuple[int, ...] | None  # a class, a regression target or a label set
    fortran_order: bool
    data_offset: int
    stamp: tuple  # size and modification time (or ETag): a resume refuses inputs that changed
    within: Within | None = None  # for a file holding several samples: which one
    weight: float | None = None  # its sample weight, when the store has weights
    content: bytes | None = None  # a small file, as validated


new_sample = record_maker(Sample)


@dataclass(frozen=True)
class SourceSet:
    """Validated inputs in row order (split by split, then the input's order)."""

    samples: tuple[Sample, ...]
    sample_shape: tuple[int | None, ...]  # None for an axis whose length varies (see `shapes`)
    dtype: np.dtype
    splits: dict[str, int]
    class_names: list[str] | None
    num_classes: int | None
    unlisted_files: int
    shapes: np.ndarray | None = None  # each sample's shape, int64 (n, ndim), when shapes differ
    label_kind: str = CLASS  # see `encoding`: "class", "float" or "multi"

    @property
    def sample_nbytes(self) -> int:
        """Bytes of a sample; for samples whose shapes differ, their mean (rounded up)."""
        if self.shapes is not None:
            return -(-self.data_nbytes // len(self.samples))
        return int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def data_nbytes(self) -> int:
        """Bytes of all samples."""
        if self.shapes is None:
            return len(self.samples) * self.sample_nbytes
        return int(self.shapes.prod(axis=1).sum()) * self.dtype.itemsize

    def refuse_varying_shapes(self) -> None:
        """The rule unless variable shapes are asked for: one shape for all samples (a sample of another
        shape is more often a broken file than a wish)."""
        if self.shapes is None:
            return
        k = int(np.flatnonzero((self.shapes != self.shapes[0]).any(axis=1))[0])
        first, other = self.samples[0], self.samples[k]
        shape, first_shape = tuple(self.shapes[k].tolist()), tuple(self.shapes[0].tolist())
        dtype = self.dtype
        raise InputError(_differs(other.path, other.id, shape, dtype, first.path, first.id, first_shape, dtype)
                         + "; all samples must share shape and dtype, or convert with --variable-shapes "
                           "(variable_shapes=True) to store samples whose lengths differ on some axes")  # fmt: skip


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


def ids_for(src: str | os.PathLike, ids: str | os.PathLike | Sequence[str] | None):
    """`ids` if `src` is one `.npy` of shape (N, ...), whose rows they name; else None. Target arrays
    may be a stacked `.npy` beside a stacked SRC (named by the same IDs) or a folder beside any SRC."""
    return ids if str(src).rstrip("/").lower().endswith(".npy") else None


def scan_sources(
    src: str | os.PathLike,
    labels: Mapping[str, Label] | None = None,
    partition: Mapping[str, Sequence[str]] | None = None,
    storage_options: dict | None = None,
    ids: str | os.PathLike | Sequence[str] | None = None,
    weights: Mapping[str, float] | None = None,
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
    # A split's IDs are counted and matched at once, then walked: an iterator is read into a list once.
    partition = {split: ids if isinstance(ids, Sequence) else list(ids) for split, ids in partition.items()}
    ordered = _ordered_ids(partition)
    if not ordered:
        raise InputError("partition lists no IDs")
    row_ids = [i for i, _ in ordered]
    if isinstance(finder, ClassFolderFinder):  # every folder is a class, listed or not: numbers stay put
        encoded = EncodedLabels(CLASS, finder.labels, finder.class_names, len(finder.class_names))
    else:
        encoded = encode_labels(labels, row_ids)
    _check_weighted(weights, row_ids)
    samples: list[Sample] = []
    shapes: list[tuple[int, ...]] = []
    first: tuple[str, Found] | None = None
    one_header = True  # every sample's header the first's: one shape, no array of shapes to build
    # Not for a URL: fsspec's asynchronous reads make reference cycles, which the collector must free.
    with contextlib.nullcontext() if isinstance(finder, RemoteFinder) else paused_gc():
        for (sample_id, split), found in zip(ordered, finder.find(row_ids)):
            if isinstance(found, InputError):
                raise found
            h = found.header
            if first is None:
                first = (sample_id, found)
            elif h is not first[1].header:  # the same header bytes give the same object (`npy`)
                _check_same_kind(first, sample_id, found)
                one_header = False
            shapes.append(h.shape)
            label = None if encoded is None else encoded.values[sample_id]
            weight = None if weights is None else weights[sample_id]
            samples.append(new_sample((sample_id, found.path, split, label, h.fortran_order, h.data_offset,
                                       found.stamp, found.within, weight, found.content)))  # fmt: skip
    # Every listed ID is a sample now; an empty split stays, with 0 samples: nothing dropped in silence.
    splits = {split: len(ids) for split, ids in partition.items()}
    first_header = first[1].header  # type: ignore[index]  # ordered is non-empty
    sample_shape, varying = (first_header.shape, None) if one_header else _shape_of(shapes)
    return SourceSet(
        samples=tuple(samples),
        sample_shape=sample_shape,
        dtype=first_header.dtype,
        splits=splits,
        class_names=None if encoded is None else encoded.class_names,
        num_classes=None if encoded is None else encoded.num_classes,
        unlisted_files=len(set(npy_names).difference(row_ids)),
        shapes=varying,
        label_kind=CLASS if encoded is None else encoded.kind,
    )


def _check_weighted(weights: Mapping[str, float] | None, ids: list[str]) -> None:
    missing = [] if weights is None else [i for i in ids if i not in weights]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5])
        raise InputError(f"weights: {len(missing)} ID(s) have no weight, e.g. {shown}")


def _check_same_kind(first: tuple[str, Found], sample_id: str, found: Found) -> None:
    """Refuse another dtype or number of dimensions than the first sample's; other lengths are refused
    after the scan, unless variable shapes are asked for (`SourceSet.refuse_varying_shapes`)."""
    (first_id, first_found), header = first, found.header
    expected = first_found.header
    if header.dtype != expected.dtype or len(header.shape) != len(expected.shape):
        raise InputError(
            _differs(found.path, sample_id, header.shape, header.dtype, first_found.path, first_id, expected.shape,
                     expected.dtype)
            + "; all samples must share shape and dtype (variable-shape samples: dtype and number of dimensions)"
        )  # fmt: skip


def _differs(path, sample_id: str, shape: tuple, dtype: np.dtype, first_path, first_id: str, first_shape: tuple,
             first_dtype: np.dtype) -> str:  # fmt: skip
    return (f"{path}: sample {sample_id!r} has shape {shape} dtype {dtype.str}, which differs from shape "
            f"{first_shape} dtype {first_dtype.str} of {first_path} (sample {first_id!r})")  # fmt: skip


def _shape_of(shapes: list[tuple[int, ...]]) -> tuple[tuple[int | None, ...], np.ndarray | None]:
    """The samples' common shape (None for the axes whose lengths differ), and every shape if any do."""
    array = np.array(shapes, dtype=np.int64).reshape(len(shapes), len(shapes[0]))
    varies = (array != array[0]).any(axis=0)
    if not varies.any():
        return shapes[0], None
    return tuple(None if v else int(d) for v, d in zip(varies.tolist(), array[0].tolist())), array


def _ordered_ids(partition: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    ordered = []
    for split, ids in partition.items():
        if not isinstance(split, str) or not split:
            raise InputError(f"partition: split name {split!r} must be a non-empty string")
        check_name(split, "partition: split name")
        listed_in, plain = f"partition[{split!r}]", all_plain(ids)
        for sample_id in ids:
            if not plain:
                check_id(sample_id, listed_in)
            if sample_id in seen:
                where = "twice in" if seen[sample_id] == split else f"in both {seen[sample_id]!r} and"
                raise InputError(f"partition: ID {sample_id!r} is listed {where} split {split!r}")
            seen[sample_id] = split
            ordered.append((sample_id, split))
    return ordered
