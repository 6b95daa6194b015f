"""The store's manifest (`manifest.json`) and index (`index.npz`).

The manifest is the commit point of a conversion: it is written last, through a temporary
file, fsync and an atomic rename, so a store exists only once its manifest does. Words used
throughout: a *row* is a global position in the store, a *local row* a position in a shard.
"""

from __future__ import annotations

import io
import json
import os
import zlib
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


@dataclass(frozen=True)
class ShardInfo:
    """One shard: rows [first_row, last_row], its path in the store and a content checksum.

    `checksum` is the CRC32 of the shard's per-sample CRC32s (little-endian uint32), so a
    shard verifies by re-reading its samples, independent of the container's own bytes.
    """

    path: str
    first_row: int
    last_row: int
    nbytes: int
    checksum: int

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
    def from_json(cls, text: str, where: str = MANIFEST_NAME) -> Manifest:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreFormatError(f"{where}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise StoreFormatError(f"{where}: not a shardfeed manifest")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreFormatError(
                f"{where}: store format version {version!r} is newer than this shardfeed reads "
                f"(version {FORMAT_VERSION}); upgrade shardfeed"
            )
        try:
            data["sample_shape"] = tuple(int(d) for d in data["sample_shape"])
            data["shards"] = tuple(ShardInfo(**s) for s in data["shards"])
            manifest = cls(**data)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreFormatError(f"{where}: malformed manifest: {exc!r}") from exc
        manifest.validate(where)
        return manifest

    def validate(self, where: str) -> None:
        """Check internal consistency so a crafted manifest cannot steer reads out of range."""
        problems = []
        if self.backend not in ("hdf5", "zarr"):
            problems.append(f"unknown backend {self.backend!r}")
        try:
            dt = np.dtype(self.dtype)
            if dt.kind not in "biufc" or dt.fields is not None:
                problems.append(f"dtype {self.dtype!r} not supported")
        except TypeError:
            problems.append(f"invalid dtype {self.dtype!r}")
        if any(d < 0 for d in self.sample_shape) or self.chunk_rows < 1 or self.shard_rows < 1:
            problems.append("negative shape or non-positive chunk/shard rows")
        expected_first = 0
        for shard in self.shards:
            if shard.first_row != expected_first or shard.last_row < shard.first_row:
                problems.append(f"shard {shard.path!r} rows do not follow on from the previous shard")
                break
            if ".." in Path(shard.path).parts or Path(shard.path).is_absolute():
                problems.append(f"shard path {shard.path!r} leaves the store")
            expected_first = shard.last_row + 1
        if expected_first != self.num_samples:
            problems.append(f"shards cover {expected_first} rows but num_samples is {self.num_samples}")
        if sum(self.splits.values()) != self.num_samples:
            problems.append("split sizes do not add up to num_samples")
        if problems:
            raise StoreFormatError(f"{where}: inconsistent manifest: " + "; ".join(problems))


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
        for name in ("ids", "split_codes", "checksums", "labels"):
            array = getattr(index, name)
            if array is not None and array.shape != (num_samples,):
                raise StoreFormatError(f"{where}: {name} has shape {array.shape}, expected ({num_samples},)")
        if index.ids.dtype.kind != "S":
            raise StoreFormatError(f"{where}: ids have dtype {index.ids.dtype}, expected bytes")
        return index


def checksum(data: bytes | memoryview | np.ndarray, value: int = 0) -> int:
    """CRC32: cheap, and catches every single-byte flip and every burst up to 32 bits."""
    return zlib.crc32(data, value)


def shard_checksum(sample_checksums: np.ndarray) -> int:
    return checksum(np.ascontiguousarray(sample_checksums, dtype="<u4").tobytes())


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
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
    if not path.exists():
        if not root.exists():
            raise StoreNotFoundError(f"{root}: no such store")
        if (root / WORK_DIR).exists():
            raise StoreNotFinalizedError(
                f"{root}: store is not finalized (its conversion was interrupted or is still running); "
                f"finish it with 'shardfeed convert ... --resume'"
            )
        raise StoreNotFoundError(f"{root}: not a shardfeed store (no {MANIFEST_NAME})")
    return Manifest.from_json(path.read_text(encoding="utf-8"), str(path))


def load_index(root: Path, manifest: Manifest) -> Index:
    path = root / INDEX_NAME
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreFormatError(f"{path}: cannot read index: {exc.strerror}") from exc
    if checksum(data) != manifest.index_checksum:
        raise StoreFormatError(f"{path}: index checksum does not match the manifest (corrupt index)")
    return Index.from_bytes(data, manifest.num_samples, str(path))
