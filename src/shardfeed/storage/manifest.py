"""The store's manifest (`manifest.json`): what a store holds and how it was made.

The manifest is the commit point of a conversion: it is written last, through a temporary
file, fsync and an atomic rename, so a store exists only once its manifest does.
"""

from __future__ import annotations

import json
import math
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreFormatError, StoreNotFinalizedError, StoreNotFoundError
from ..inputs.ids import has_control
from ..urls import RemoteLocation
from .files import read_store_file
from .format import (
    COMPRESSIONS,
    FIXED_SHAPE_VERSION,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    MAX_CHUNK_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_SHARD_ELEMENTS_BYTES,
    TARGETS_VERSION,
    VARIABLE_SHAPE_VERSION,
    WORK_DIR,
)


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
    sample_shape: tuple[int | None, ...]  # None for an axis whose length varies (`storage.ragged`)
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
    # The index file this manifest commits: an append writes a new one beside the old, so that the
    # store stays whole until its new manifest replaces the old one in a single rename.
    index_name: str = INDEX_NAME
    # "class" (one class number per sample), "float" (a regression target) or "multi" (a set of classes).
    label_kind: str = "class"
    weighted: bool = False  # the index holds a weight per sample
    # The content checksum of the target arrays' own manifest (`format.TARGETS_DIR`), when the store has
    # them: this manifest commits to exactly those targets, as it does to its index.
    targets_checksum: int | None = None
    format: str = FORMAT_NAME
    format_version: int = FIXED_SHAPE_VERSION
    # CRC32 of everything above, as written (None in stores made before it existed): split names,
    # class names or the dtype edited in manifest.json no longer pass `verify`.
    content_checksum: int | None = None
    # Variable-shape samples only (None otherwise, and then not written): values per chunk and per
    # shard cell of the shards' flat arrays, and the bytes of all samples (see `storage.ragged`).
    chunk_elements: int | None = None
    shard_elements: int | None = None
    data_nbytes: int | None = None

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def variable(self) -> bool:
        """Whether samples differ in shape: `sample_shape` holds None for the axes that vary."""
        return None in self.sample_shape

    @property
    def sample_nbytes(self) -> int:
        """Bytes of a sample; for variable-shape samples, their mean (rounded up)."""
        if self.variable:
            return -(-(self.data_nbytes or 0) // max(1, self.num_samples))
        return int(np.prod(self.sample_shape, dtype=np.int64)) * self.np_dtype.itemsize

    @property
    def grid_rows(self) -> int:
        """Rows of the store's grid of shards up to its last shard (shard k in cell k, from row
        k * shard_rows): the Zarr array's length. More than `num_samples` once an append has
        started after a short last shard."""
        return (len(self.shards) - 1) * self.shard_rows + self.shards[-1].num_rows

    def grid_row(self, shard: ShardInfo) -> int:
        """Where `shard` starts in the grid (the Zarr array's row): k * shard_rows for shard k."""
        return self.shards.index(shard) * self.shard_rows

    @property
    def shard_starts(self) -> np.ndarray:
        return np.array([s.first_row for s in self.shards], dtype=np.int64)

    def locate(self, rows: np.ndarray) -> np.ndarray:
        """Shard number of each row (rows must be in range)."""
        return np.searchsorted(self.shard_starts, rows, side="right") - 1

    def _content(self) -> dict[str, Any]:
        data = asdict(self)
        data["sample_shape"] = list(self.sample_shape)
        data["shards"] = [asdict(s) for s in self.shards]
        data.pop("content_checksum")
        for name in _VARIABLE_SHAPE_FIELDS:  # fixed-shape manifests stay as they were
            if data[name] is None:
                data.pop(name)
        for name, default in _LATER_FIELDS.items():  # as before these existed: older manifests still verify
            if data[name] == default:
                data.pop(name)
        return data

    def computed_checksum(self) -> int:
        """CRC32 of the manifest's content in a canonical form (sorted keys, no spaces)."""
        return zlib.crc32(json.dumps(self._content(), sort_keys=True, separators=(",", ":")).encode())

    @property
    def content_intact(self) -> bool:
        """False when the manifest was edited after it was written (True for unsigned old stores)."""
        return self.content_checksum is None or self.content_checksum == self.computed_checksum()

    def to_json(self) -> str:
        """The manifest as written, signed with its content checksum."""
        data = {**self._content(), "content_checksum": self.computed_checksum()}
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
            elif not self.variable and self.chunk_rows * math.prod(self.sample_shape) * dt.itemsize > MAX_CHUNK_BYTES:
                problems.append(f"chunks of {self.chunk_rows} samples of shape {self.sample_shape} "
                                f"exceed {MAX_CHUNK_BYTES} bytes")  # fmt: skip
        if any(d is not None and d < 1 for d in self.sample_shape) or self.chunk_rows < 1 or self.shard_rows < 1:
            problems.append("non-positive sample dimensions or chunk/shard rows")
        elif self.shard_rows % self.chunk_rows:
            problems.append(f"shard_rows {self.shard_rows} is not a multiple of chunk_rows")
        problems += self._shard_problems()
        problems += self._variable_shape_problems()
        sizes = self.splits.values()
        if any(n < 0 for n in sizes) or sum(sizes) != self.num_samples:
            problems.append("split sizes do not add up to num_samples")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            problems.append(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.label_kind not in ("class", "float", "multi"):
            problems.append(f"label_kind {self.label_kind!r} is not class, float or multi")
        elif (self.label_kind == "float") != (self.labeled and self.num_classes is None):
            problems.append("regression labels (label_kind float) and a class count exclude each other")
        if self.targets_checksum is not None and self.format_version < TARGETS_VERSION:
            problems.append(f"target arrays need format version {TARGETS_VERSION}, not {self.format_version}")
        if not re.fullmatch(r"index(-[1-9][0-9]{0,8})?\.npz", self.index_name):
            problems.append(f"index_name {self.index_name!r} is not index.npz or index-N.npz")
        names = [*self.splits, *(self.class_names or [])]
        if any(not name or has_control(name) for name in names):
            problems.append("a split or class name is empty or holds control characters")
        if problems:
            raise StoreFormatError(f"{where}: inconsistent manifest: " + "; ".join(problems))

    def _shard_problems(self) -> list[str]:
        """Shards hold consecutive rows, 1 to shard_rows each: a conversion fills all but its last
        one, and an append starts a new shard after it (shard k always sits in cell k)."""
        first = 0
        for shard in self.shards:
            path = Path(shard.path)
            if not shard.path or "\0" in shard.path or path.is_absolute() or ".." in path.parts:
                return [f"shard path {shard.path!r} leaves the store"]
            if shard.first_row != first or not 1 <= shard.num_rows <= self.shard_rows or shard.nbytes < 0:
                return [f"shard {shard.path!r} holds rows {shard.first_row}-{shard.last_row}, expected "
                        f"1 to {self.shard_rows} rows from row {first}"]  # fmt: skip
            first = shard.last_row + 1
        if first != self.num_samples:
            return [f"{len(self.shards)} shards hold {first} rows, not {self.num_samples} samples"]
        return []

    def _variable_shape_problems(self) -> list[str]:
        """The flat arrays' sizes of a variable-shape store: integers, chunks no larger than a fixed-shape
        store's, cells bounded, so that offsets read from the index cannot reach far."""
        fields = {name: getattr(self, name) for name in _VARIABLE_SHAPE_FIELDS}
        if not self.variable:
            given = [name for name, value in fields.items() if value is not None]
            return [f"{', '.join(given)} given for fixed-shape samples"] if given else []
        if self.format_version < VARIABLE_SHAPE_VERSION:
            return [f"variable-shape samples (sample_shape {self.sample_shape}) need format version "
                    f"{VARIABLE_SHAPE_VERSION}, not {self.format_version}"]  # fmt: skip
        if not all(map(_is_int, fields.values())):
            return ["variable-shape samples need integer " + ", ".join(f"{k}={v!r:.30}" for k, v in fields.items())]
        chunk, cell, nbytes = fields.values()
        try:
            itemsize = np.dtype(self.dtype).itemsize
        except Exception:  # reported with the dtype
            return []
        if chunk < 1 or cell < chunk or cell % chunk or nbytes < 0:
            return [f"chunk_elements {chunk} and shard_elements {cell} must be positive, the second a multiple "
                    f"of the first, and data_nbytes {nbytes} >= 0"]  # fmt: skip
        if chunk * itemsize > MAX_CHUNK_BYTES or cell * itemsize > MAX_SHARD_ELEMENTS_BYTES:
            return [f"chunks of {chunk} or shard cells of {cell} values exceed {MAX_CHUNK_BYTES} or "
                    f"{MAX_SHARD_ELEMENTS_BYTES} bytes"]  # fmt: skip
        if nbytes > len(self.shards) * cell * itemsize:
            return [f"data_nbytes {nbytes} exceeds the {len(self.shards)} shard cells of {cell} values"]
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
    "sample_shape": lambda v: type(v) is list and all(d is None or _is_int(d) for d in v),
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
    "content_checksum": lambda v: v is None or _is_int(v),
    "index_name": _is_str,
    "label_kind": _is_str,
    "weighted": lambda v: type(v) is bool,
    "targets_checksum": lambda v: v is None or _is_int(v),
}
# Fields added after format version 1 was first written, with their defaults.
_LATER_FIELDS = {"index_name": INDEX_NAME, "label_kind": "class", "weighted": False, "targets_checksum": None}
_VARIABLE_SHAPE_FIELDS = ("chunk_elements", "shard_elements", "data_nbytes")  # checked by `validate`
_SHARD_FIELDS: dict[str, Callable[[Any], bool]] = {
    "path": _is_str,
    "first_row": _is_int,
    "last_row": _is_int,
    "nbytes": _is_int,
    "checksum": _is_int,
    "file_checksum": _is_int,
}


_OPTIONAL = {"class_names", "num_classes", "labeled", "source", "converter", "content_checksum", *_LATER_FIELDS}


def _check_fields(data: dict, fields: dict[str, Callable[[Any], bool]], where: str) -> None:
    """Refuse a JSON object that lacks a required field or has one of the wrong type."""
    missing = [name for name in fields if name not in data and name not in _OPTIONAL]
    if missing:
        raise StoreFormatError(f"{where}: malformed manifest: missing {', '.join(missing)}")
    bad = [name for name, ok in fields.items() if name in data and not ok(data[name])]
    if bad:
        shown = ", ".join(f"{name}={data[name]!r:.60}" for name in bad)
        raise StoreFormatError(f"{where}: malformed manifest: wrong type for {shown}")


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


def load_remote_manifest(location: RemoteLocation) -> Manifest:
    """The manifest of a store at a URL, refusing a missing or unfinished store (as `load_manifest`)."""
    if not location.exists(MANIFEST_NAME):
        if location.exists(WORK_DIR):
            raise StoreNotFinalizedError(
                f"{location.url}: store is not finalized (its conversion was interrupted or is still "
                f"running); finish it with 'shardfeed convert ... --resume'"
            )
        raise StoreNotFoundError(f"{location.url}: no shardfeed store here (no {MANIFEST_NAME})")
    if location.size(MANIFEST_NAME) > MAX_MANIFEST_BYTES:
        raise StoreNotFoundError(f"{location.url_of(MANIFEST_NAME)}: larger than {MAX_MANIFEST_BYTES} bytes")
    return Manifest.from_json(location.read_bytes(MANIFEST_NAME), location.url_of(MANIFEST_NAME))
