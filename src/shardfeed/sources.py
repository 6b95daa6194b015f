"""Scanning and validating per-ID `.npy` inputs: IDs, labels, partition and headers.

Everything here reads headers only. A header is trusted for nothing: its shape times its
itemsize must equal the bytes that follow it in the file, so a 200-byte file claiming a
74 GiB array is refused before anything is allocated, and pickles are never loaded.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from .errors import InputError
from .location import is_url, local_root

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
MAX_HEADER_BYTES = 10_000
SUPPORTED_KINDS = "biufc"
DEFAULT_SPLIT = "all"
MAX_LABEL = 2**31 - 1  # labels become one-hot vectors of max(label) + 1 entries
# Samples of one data set share their header bytes: numpy's parser (literal_eval, ~50 us) runs
# once per distinct header instead of once per file. Only headers that parsed are kept.
HEADER_CACHE_SIZE = 64
_parsed_headers: dict[bytes, tuple] = {}


@dataclass(frozen=True)
class NpyHeader:
    """What a `.npy` header promises, checked against the file's size."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int


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


def check_id(sample_id: object, where: str) -> str:
    """Refuse IDs that are not plain file names inside the source folder."""
    if not isinstance(sample_id, str):
        raise InputError(f"{where}: ID {sample_id!r} is a {type(sample_id).__name__}, expected a string")
    bad = None
    if not sample_id:
        bad = "is empty"
    elif sample_id in (".", "..") or sample_id.startswith("."):
        bad = "starts with '.' (hidden or parent-directory names are not sample IDs)"
    elif "/" in sample_id or "\\" in sample_id or os.sep in sample_id:
        bad = "contains a path separator"
    elif any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in sample_id):
        bad = "contains a control, format or surrogate character"
    elif len(sample_id.encode("utf-8", "surrogatepass")) > 200:
        bad = "is longer than 200 bytes"
    if bad:
        raise InputError(f"{where}: ID {sample_id!r} {bad}; IDs must be plain file names inside SRC")
    return sample_id


def read_labels(path: str | os.PathLike, storage_options: dict | None = None) -> dict[str, int | str]:
    """Labels from a JSON object `{id: label}` or a CSV file with columns `id,label` (a path or URL)."""
    text = _read_text(path, "labels", storage_options)
    if str(path).lower().endswith(".csv"):
        rows = list(csv.reader(text.splitlines()))
        if not rows or [c.strip().lower() for c in rows[0][:2]] != ["id", "label"]:
            raise InputError(f"{path}: expected a CSV header 'id,label'")
        labels: dict[str, int | str] = {}
        for line_no, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) != 2:
                raise InputError(f"{path}:{line_no}: expected 2 columns 'id,label', got {len(row)}")
            sample_id, value = row[0], row[1].strip()
            if sample_id in labels:
                raise InputError(f"{path}:{line_no}: ID {sample_id!r} is labeled twice")
            labels[sample_id] = int(value) if _is_int(value) else value
        return labels
    data = _parse_json(text, path, "labels")
    if not isinstance(data, dict):
        raise InputError(f"{path}: labels must be a JSON object {{id: label}}, got {type(data).__name__}")
    return data


def read_partition(path: str | os.PathLike, storage_options: dict | None = None) -> dict[str, list[str]]:
    """A partition: JSON object of split name -> list of IDs (a path or URL)."""
    data = _parse_json(_read_text(path, "partition", storage_options), path, "partition")
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise InputError(f"{path}: partition must be a JSON object {{split: [ids]}}")
    return data


def read_npy_header(path: Path, sample_id: str) -> NpyHeader:
    """Read and check one `.npy` header without loading data (and without following FIFOs)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        raise InputError(f"{path}: sample {sample_id!r}: cannot open: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{path}: sample {sample_id!r}: not a regular file")
        return parse_npy_header(f, f"{path}: sample {sample_id!r}", info.st_size)


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
    parsed = _parsed_headers.get(head)
    if parsed is None:
        parsed = _parse_header_bytes(head, version, where)
        if len(_parsed_headers) < HEADER_CACHE_SIZE:
            _parsed_headers[head] = parsed
    shape, fortran, dtype = parsed
    return _checked_header(where, shape, fortran, dtype, len(head), file_size)


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
    if len(head) < 12 or head[:6] != NPY_MAGIC:
        return None
    if head[6] == 1:
        return 10 + int.from_bytes(head[8:10], "little")
    return 12 + int.from_bytes(head[8:12], "little")


def _checked_header(where, shape, fortran, dtype, data_offset, file_size) -> NpyHeader:
    if dtype.hasobject:
        raise InputError(f"{where}: object dtype (a pickle) refused; shardfeed never loads pickles")
    if dtype.kind not in SUPPORTED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise InputError(f"{where}: dtype {dtype.str} not supported; expected bool, integer, float or complex")
    if not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(f"{where}: header shape {shape} has negative or non-integer dimensions")
    if 0 in shape:
        raise InputError(f"{where}: shape {shape} holds no values; expected non-empty samples")
    expected = math.prod(shape) * dtype.itemsize
    actual = file_size - data_offset
    if expected != actual:
        raise InputError(
            f"{where}: header says shape {shape} {dtype.str} = {expected} bytes, "
            f"but the file holds {actual} bytes after the header (truncated or corrupt)"
        )
    return NpyHeader(tuple(shape), dtype, bool(fortran), data_offset)


def resolve_sample_path(src_root: Path, sample_id: str) -> Path:
    """Path of `<id>.npy`, refusing links that leave SRC and anything that is not a regular file."""
    path = src_root / f"{sample_id}.npy"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: sample {sample_id!r} has no file (expected {sample_id}.npy in {src_root})") from None
    except OSError as exc:
        raise InputError(f"{path}: sample {sample_id!r}: {exc.strerror}") from exc
    if stat.S_ISLNK(info.st_mode):
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(src_root):
            raise InputError(f"{path}: sample {sample_id!r} is a symlink to {target}, outside {src_root}")
        try:
            info = os.lstat(target)
        except OSError as exc:
            raise InputError(f"{path}: sample {sample_id!r} is a symlink to {target}: {exc.strerror}") from exc
        path = target
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: sample {sample_id!r} is not a regular file")
    return path


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


class LocalFinder:
    """`<id>.npy` files in a local folder; links may not leave it, and no file counts twice."""

    def __init__(self, src: str | os.PathLike) -> None:
        self.root = Path(os.path.realpath(src))
        if not self.root.is_dir():
            raise InputError(f"{src}: SRC is not a directory")
        self._inodes: dict[tuple[int, int], str] = {}

    def npy_names(self) -> list[str]:
        return sorted(p.name[:-4] for p in self.root.iterdir() if p.name.endswith(".npy"))

    def find(self, ids: Sequence[str]) -> Iterator[Found | InputError]:
        for sample_id in ids:
            try:
                path = resolve_sample_path(self.root, sample_id)
                header = read_npy_header(path, sample_id)
                info = os.stat(path)
            except InputError as exc:
                yield exc
                continue
            inode = (info.st_dev, info.st_ino)
            if self._inodes.setdefault(inode, sample_id) != sample_id:
                yield InputError(f"{path}: samples {self._inodes[inode]!r} and {sample_id!r} are the same file")
                continue
            yield Found(path, header, (info.st_size, info.st_mtime_ns))


def open_finder(src: str | os.PathLike, storage_options: dict | None = None) -> SampleFinder:
    if is_url(src):
        from .remote_sources import RemoteFinder

        return RemoteFinder(str(src), storage_options)
    return LocalFinder(local_root(src))


def scan_sources(
    src: str | os.PathLike,
    labels: Mapping[str, int | str] | None = None,
    partition: Mapping[str, Sequence[str]] | None = None,
    storage_options: dict | None = None,
) -> SourceSet:
    """Validate every input before anything is written, and fix the row order.

    `src` is a folder or an fsspec URL. Without a partition, every `.npy` file in it is a
    sample, except hidden ones (`._x.npy` from macOS, editors' backups), which are counted as
    unlisted files like those a partition leaves out.
    """
    finder = open_finder(src, storage_options)
    npy_names = finder.npy_names()
    if partition is None:
        partition = {DEFAULT_SPLIT: [n for n in npy_names if not n.startswith(".")]}
        if not partition[DEFAULT_SPLIT]:
            raise InputError(f"{src}: SRC holds no .npy files")
    ordered = _ordered_ids(partition)
    if not ordered:
        raise InputError("partition lists no IDs")
    encoded_labels, class_names, num_classes = _encode_labels(labels, [i for i, _ in ordered])
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
        samples.append(Sample(sample_id, found.path, split, label, h.fortran_order, h.data_offset, found.stamp))
    splits: dict[str, int] = {}
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
        for sample_id in ids:
            check_id(sample_id, f"partition[{split!r}]")
            if sample_id in seen:
                where = "twice in" if seen[sample_id] == split else f"in both {seen[sample_id]!r} and"
                raise InputError(f"partition: ID {sample_id!r} is listed {where} split {split!r}")
            seen[sample_id] = split
            ordered.append((sample_id, split))
    return ordered


def _encode_labels(
    labels: Mapping[str, int | str] | None, ids: Iterable[str]
) -> tuple[dict[str, int] | None, list[str] | None, int | None]:
    """Integer labels per ID; string labels become indices into sorted class names."""
    if labels is None:
        return None, None, None
    ids = list(ids)
    missing = [i for i in ids if i not in labels]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5])
        raise InputError(f"labels: {len(missing)} ID(s) have no label, e.g. {shown}")
    values = [labels[i] for i in ids]
    if all(type(v) is int for v in values):
        negative = [i for i in ids if labels[i] < 0]
        if negative:
            raise InputError(f"labels: ID {negative[0]!r} has negative label {labels[negative[0]]}")
        huge = [i for i in ids if labels[i] > MAX_LABEL]
        if huge:
            raise InputError(f"labels: ID {huge[0]!r} has label {labels[huge[0]]}; integer labels "
                             f"are class numbers from 0 to {MAX_LABEL}")  # fmt: skip
        return {i: labels[i] for i in ids}, None, max(values) + 1
    if all(isinstance(v, str) for v in values):
        class_names = sorted(set(values))
        code = {name: k for k, name in enumerate(class_names)}
        return {i: code[labels[i]] for i in ids}, class_names, len(class_names)
    first_kind = type(values[0])
    bad = next(i for i in ids if type(labels[i]) is not first_kind or first_kind not in (int, str))
    raise InputError(
        f"labels: ID {bad!r} has label {labels[bad]!r} ({type(labels[bad]).__name__}); "
        f"labels must be all integers or all strings (first label: {values[0]!r})"
    )


def _read_text(path: str | os.PathLike, what: str, storage_options: dict | None) -> str:
    try:
        if is_url(path):
            import fsspec

            with fsspec.open(str(path), "rb", **(storage_options or {})) as f:
                data = f.read()
        else:
            data = local_root(path).read_bytes()
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read {what}: {exc}") from exc


def _parse_json(text: str, path: str | os.PathLike, what: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also huge ints
        raise InputError(f"{path}: cannot read {what} JSON: {exc}") from exc


def _is_int(text: str) -> bool:
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    return text.lstrip("-").isascii() and text.lstrip("-").isdigit() and len(text) < 20
