"""The store's manifest (`manifest.json`) and index (`index.npz`).

The manifest is the commit point of a conversion: it is written last, through a temporary
file, fsync and an atomic rename, so a store exists only once its manifest does. Words used
throughout: a *row* is a global position in the store, a *local row* a position in a shard.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreFormatError, StoreNotFinalizedError, StoreNotFoundError

FORMAT_NAME = "shardfeed"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.npz"
WORK_DIR = ".convert"  # exists only while a conversion is unfinished
LOCK_NAME = ".lock"  # the converter's lock file; left behind by an interrupted conversion
MAX_MANIFEST_BYTES = 256 * 2**20
MAX_CHUNK_BYTES = 2**32  # the converter refuses larger chunks; a reader refuses them too


@dataclass(frozen=True)
class ShardInfo:
    """One shard: rows [first_row, last_row], its path in the store and two checksums.

    `checksum` is the CRC32 of the shard's per-sample CRC32s (little-endian uint32), so a
    shard verifies by re-reading its samples, independent of the container's own bytes.
    `file_checksum` is the CRC32 of the whole file (`nbytes` bytes): it also catches damage
    to container metadata that no sample read would notice (padding, unused index slots).
    """

    path: str
    first_row: int
    last_row: int
    nbytes: int
    checksum: int
    file_checksum: int

    @property
    def num_rows(self) -> int:
        return self.last_row - self.first_row + 1


@dataclass(frozen=True)
class Manifest:
    """Everything needed to read a store, plus how it was made."""

    backend: str
    num_samples: int
    sample_shape: tuple[int, ...]
    dtype: str
    chunk_rows: int
    shard_rows: int
    compression: str
    splits: dict[str, int]
    shards: tuple[ShardInfo, ...]
    index_checksum: int
    class_names: list[str] | None = None
    num_classes: int | None = None
    labeled: bool = True
    source: dict[str, Any] = field(default_factory=dict)
    converter: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def sample_nbytes(self) -> int:
        return int(np.prod(self.sample_shape, dtype=np.int64)) * self.np_dtype.itemsize

    @property
    def shard_starts(self) -> np.ndarray:
        return np.array([s.first_row for s in self.shards], dtype=np.int64)

    def locate(self, rows: np.ndarray) -> np.ndarray:
        """Shard number of each row (rows must be in range)."""
        return np.searchsorted(self.shard_starts, rows, side="right") - 1

    def to_json(self) -> str:
        data = asdict(self)
        data["sample_shape"] = list(self.sample_shape)
        data["shards"] = [asdict(s) for s in self.shards]
        return json.dumps(data, indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = MANIFEST_NAME) -> Manifest:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # also bad UTF-8, huge numbers, deep nesting
            raise StoreFormatError(f"{where}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise StoreFormatError(f"{where}: not a shardfeed manifest")
        version = data.get("format_version")
        if type(version) is not int or version < 1:
            raise StoreFormatError(f"{where}: format_version {version!r} is not a version number")
        if version > FORMAT_VERSION:
            raise StoreFormatError(
                f"{where}: store format version {version} is newer than this shardfeed reads "
                f"(version {FORMAT_VERSION}); upgrade shardfeed"
            )
        _check_fields(data, _MANIFEST_FIELDS, where)
        for k, shard in enumerate(data["shards"]):
            _check_fields(shard, _SHARD_FIELDS, f"{where}: shards[{k}]")
        try:
            data["sample_shape"] = tuple(data["sample_shape"])
            data["shards"] = tuple(ShardInfo(**s) for s in data["shards"])
            manifest = cls(**data)
        except TypeError as exc:  # missing or unknown keys
            raise StoreFormatError(f"{where}: malformed manifest: {exc}") from exc
        manifest.validate(where)
        return manifest

    def validate(self, where: str) -> None:
        """Check internal consistency so a crafted manifest cannot steer reads out of range."""
        from .backends import COMPRESSIONS  # here: the backends import this module

        problems = []
        if self.backend not in COMPRESSIONS:
            problems.append(f"unknown backend {self.backend!r}")
        elif self.compression not in COMPRESSIONS[self.backend]:
            problems.append(f"compression {self.compression!r} unknown to {self.backend}")
        try:
            dt = np.dtype(self.dtype)
        except Exception:  # numpy's dtype parser raises TypeError, ValueError, SyntaxError...
            problems.append(f"invalid dtype {self.dtype!r}")
        else:
            if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
                problems.append(f"dtype {self.dtype!r} not supported")
            elif self.chunk_rows * math.prod(self.sample_shape) * dt.itemsize > MAX_CHUNK_BYTES:
                problems.append(f"chunks of {self.chunk_rows} samples of shape {self.sample_shape} "
                                f"exceed {MAX_CHUNK_BYTES} bytes")  # fmt: skip
        if any(d < 1 for d in self.sample_shape) or self.chunk_rows < 1 or self.shard_rows < 1:
            problems.append("non-positive sample dimensions or chunk/shard rows")
        elif self.shard_rows % self.chunk_rows:
            problems.append(f"shard_rows {self.shard_rows} is not a multiple of chunk_rows")
        problems += self._shard_problems()
        sizes = self.splits.values()
        if any(n < 0 for n in sizes) or sum(sizes) != self.num_samples:
            problems.append("split sizes do not add up to num_samples")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            problems.append(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if problems:
            raise StoreFormatError(f"{where}: inconsistent manifest: " + "; ".join(problems))

    def _shard_problems(self) -> list[str]:
        """Shard k must hold rows [k * shard_rows, ...), all but the last one full."""
        for k, shard in enumerate(self.shards):
            path = Path(shard.path)
            if not shard.path or "\0" in shard.path or path.is_absolute() or ".." in path.parts:
                return [f"shard path {shard.path!r} leaves the store"]
            first = k * self.shard_rows
            rows = min(self.shard_rows, self.num_samples - first)
            if (shard.first_row, shard.num_rows) != (first, rows) or shard.nbytes < 0:
                return [f"shard {shard.path!r} holds rows {shard.first_row}-{shard.last_row}, "
                        f"expected {first}-{first + rows - 1}"]  # fmt: skip
        covered = len(self.shards) * self.shard_rows
        if not covered - self.shard_rows < self.num_samples <= covered:
            return [f"{len(self.shards)} shards of {self.shard_rows} rows cannot hold "
                    f"{self.num_samples} samples"]  # fmt: skip
        return []


def _is_int(value: Any) -> bool:
    return type(value) is int  # JSON true/false are bools, not counts


def _is_str(value: Any) -> bool:
    return type(value) is str


def _is_dict(value: Any) -> bool:
    return type(value) is dict


_MANIFEST_FIELDS: dict[str, Callable[[Any], bool]] = {
    "backend": _is_str,
    "num_samples": _is_int,
    "sample_shape": lambda v: type(v) is list and all(map(_is_int, v)),
    "dtype": _is_str,
    "chunk_rows": _is_int,
    "shard_rows": _is_int,
    "compression": _is_str,
    "splits": lambda v: _is_dict(v) and all(map(_is_int, v.values())),
    "shards": lambda v: type(v) is list and all(map(_is_dict, v)),
    "index_checksum": _is_int,
    "class_names": lambda v: v is None or (type(v) is list and all(map(_is_str, v))),
    "num_classes": lambda v: v is None or _is_int(v),
    "labeled": lambda v: type(v) is bool,
    "source": _is_dict,
    "converter": _is_dict,
}
_SHARD_FIELDS: dict[str, Callable[[Any], bool]] = {
    "path": _is_str,
    "first_row": _is_int,
    "last_row": _is_int,
    "nbytes": _is_int,
    "checksum": _is_int,
    "file_checksum": _is_int,
}


_OPTIONAL = {"class_names", "num_classes", "labeled", "source", "converter"}


def _check_fields(data: dict, fields: dict[str, Callable[[Any], bool]], where: str) -> None:
    """Refuse a JSON object that lacks a required field or has one of the wrong type."""
    missing = [name for name in fields if name not in data and name not in _OPTIONAL]
    if missing:
        raise StoreFormatError(f"{where}: malformed manifest: missing {', '.join(missing)}")
    bad = [name for name, ok in fields.items() if name in data and not ok(data[name])]
    if bad:
        shown = ", ".join(f"{name}={data[name]!r:.60}" for name in bad)
        raise StoreFormatError(f"{where}: malformed manifest: wrong type for {shown}")


@dataclass(frozen=True)
class Index:
    """Per-row IDs, labels, split codes (positions in `Manifest.splits`) and sample checksums."""

    ids: np.ndarray  # bytes, UTF-8, dtype S<n>
    labels: np.ndarray | None  # int64
    split_codes: np.ndarray  # int32
    checksums: np.ndarray  # uint32 CRC32 of each sample's C-order bytes

    def to_bytes(self) -> bytes:
        arrays = {"ids": self.ids, "split_codes": self.split_codes, "checksums": self.checksums}
        if self.labels is not None:
            arrays["labels"] = self.labels
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, num_samples: int, where: str = INDEX_NAME) -> Index:
        try:
            _check_member_sizes(data)
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:  # zipfile/numpy raise many types on corrupt input
            raise StoreFormatError(f"{where}: unreadable index: {exc}") from exc
        try:
            index = cls(
                ids=arrays["ids"],
                labels=arrays.get("labels"),
                split_codes=arrays["split_codes"],
                checksums=arrays["checksums"],
            )
        except KeyError as exc:
            raise StoreFormatError(f"{where}: index lacks array {exc}") from exc
        kinds = {"ids": "S", "split_codes": "iu", "checksums": "u", "labels": "iu"}
        for name, kind in kinds.items():
            array = getattr(index, name)
            if array is None:
                continue
            if array.shape != (num_samples,):
                raise StoreFormatError(
                    f"{where}: {name} has shape {array.shape}, expected ({num_samples},)"
                )
            if array.dtype.kind not in kind:
                raise StoreFormatError(
                    f"{where}: {name} has dtype {array.dtype}, expected kind {kind!r}"
                )
        return index

    def check(self, manifest: Manifest, where: str) -> None:
        """Refuse an index that disagrees with its manifest's splits, classes or labeling."""
        codes, num_splits = self.split_codes, len(manifest.splits)
        if len(codes) and (codes.min() < 0 or codes.max() >= num_splits):
            raise StoreFormatError(f"{where}: split codes outside 0-{num_splits - 1}")
        counts = np.bincount(codes.astype(np.int64), minlength=num_splits).tolist()
        expected = list(manifest.splits.values())
        if counts != expected:
            raise StoreFormatError(f"{where}: split sizes {counts}, manifest: {expected}")
        if (self.labels is not None) != manifest.labeled:
            raise StoreFormatError(f"{where}: labels present: {self.labels is not None}, "
                                   f"but the manifest says labeled={manifest.labeled}")  # fmt: skip
        labels, num_classes = self.labels, manifest.num_classes
        known = labels is not None and len(labels) and num_classes is not None
        if known and (labels.min() < 0 or labels.max() >= num_classes):
            raise StoreFormatError(f"{where}: labels outside 0-{num_classes - 1}")


def _check_member_sizes(data: bytes) -> None:
    """Read each array's header first: numpy allocates what a header claims before reading, so a
    member claiming more than the whole index file holds is refused before any allocation."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.infolist():
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"{member.filename}: .npy version {version} not supported")
                read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
                shape, _, dtype = read_header(f, max_header_size=10_000)
            if dtype.hasobject:
                raise ValueError(f"{member.filename}: object array (a pickle) refused")
            if math.prod(shape) * dtype.itemsize > len(data):
                raise ValueError(f"{member.filename}: header claims {shape} {dtype.str}, more than "
                                 f"the whole {len(data)}-byte index holds")  # fmt: skip


def checksum(data: bytes | memoryview | np.ndarray, value: int = 0) -> int:
    """CRC32: cheap, and catches every single-byte flip and every burst up to 32 bits."""
    return zlib.crc32(data, value)


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


def load_manifest(root: Path) -> Manifest:
    """The manifest of the store at `root`, refusing a missing or unfinished store."""
    path = root / MANIFEST_NAME
    if not os.path.lexists(path):
        if not root.exists():
            raise StoreNotFoundError(f"{root}: no such store")
        if (root / WORK_DIR).exists() or (root / LOCK_NAME).exists():
            raise StoreNotFinalizedError(
                f"{root}: store is not finalized (its conversion was interrupted or is still "
                f"running); finish it with 'shardfeed convert ... --resume'"
            )
        raise StoreNotFoundError(f"{root}: not a shardfeed store (no {MANIFEST_NAME})")
    return Manifest.from_json(read_store_file(path, "manifest", MAX_MANIFEST_BYTES), str(path))


def load_index(root: Path, manifest: Manifest) -> Index:
    path = root / INDEX_NAME
    return parse_index(read_store_file(path, "index"), manifest, str(path))


def parse_index(data: bytes, manifest: Manifest, path: str) -> Index:
    """The index from its bytes, checked against the manifest's checksum and sizes."""
    if checksum(data) != manifest.index_checksum:
        raise StoreFormatError(
            f"{path}: index checksum does not match the manifest (corrupt index)"
        )
    index = Index.from_bytes(data, manifest.num_samples, path)
    index.check(manifest, path)
    return index


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
