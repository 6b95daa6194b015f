"""The store's index (`index.npz`): per-row IDs, labels, split codes and sample checksums."""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StoreFormatError
from ..urls import RemoteLocation
from .files import checksum, read_store_file
from .format import INDEX_NAME
from .manifest import Manifest
from .ragged import check_shapes


@dataclass(frozen=True)
class Index:
    """Per-row IDs, labels, split codes (positions in `Manifest.splits`) and sample checksums."""

    ids: np.ndarray  # bytes, UTF-8, dtype S<n>
    # By the manifest's label_kind: class numbers int64 (n,); regression targets float64 (n,); label
    # sets as np.packbits of each row's multi-hot vector, uint8 (n, ceil(num_classes / 8)).
    labels: np.ndarray | None
    split_codes: np.ndarray  # int32
    checksums: np.ndarray  # uint32 CRC32 of each sample's C-order bytes
    # Variable-shape samples only (see `ragged`): each sample's shape, int64 (n, ndim), and where its
    # values start in its shard's flat array, int64 (n,).
    shapes: np.ndarray | None = None
    offsets: np.ndarray | None = None
    weights: np.ndarray | None = None  # float32 sample weights

    def to_bytes(self) -> bytes:
        arrays = {"ids": self.ids, "split_codes": self.split_codes, "checksums": self.checksums}
        for name in ("labels", "weights"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        arrays.update({k: getattr(self, k) for k in ("shapes", "offsets") if getattr(self, k) is not None})
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
                shapes=arrays.get("shapes"),
                offsets=arrays.get("offsets"),
                weights=arrays.get("weights"),
            )
        except KeyError as exc:
            raise StoreFormatError(f"{where}: index lacks array {exc}") from exc
        kinds = {"ids": "S", "split_codes": "iu", "checksums": "u", "labels": "iuf", "weights": "f"}
        for name, kind in kinds.items():
            array = getattr(index, name)
            if array is None:
                continue
            if array.shape[:1] != (num_samples,) or (array.ndim != 1 and name != "labels") or array.ndim > 2:
                raise StoreFormatError(
                    f"{where}: {name} has shape {array.shape}, expected ({num_samples},)"
                )
            if array.dtype.kind not in kind:
                raise StoreFormatError(
                    f"{where}: {name} has dtype {array.dtype}, expected kind {kind!r}"
                )
        return index

    def check(self, manifest: Manifest, where: str) -> None:
        """Refuse an index that disagrees with its manifest's splits, classes or labeling, or whose
        IDs are not plain names."""
        check_shapes(self.shapes, self.offsets, self.ids, manifest, where)
        problem = _id_problem(self.ids)
        if problem:
            raise StoreFormatError(f"{where}: {problem}")
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
        if self.labels is not None:
            problem = _label_problem(self.labels, manifest.label_kind, manifest.num_classes)
            if problem:
                raise StoreFormatError(f"{where}: {problem}")
        if (self.weights is not None) != manifest.weighted:
            raise StoreFormatError(f"{where}: weights present: {self.weights is not None}, "
                                   f"but the manifest says weighted={manifest.weighted}")  # fmt: skip
        if self.weights is not None and not (np.isfinite(self.weights).all() and (self.weights >= 0).all()):
            raise StoreFormatError(f"{where}: weights that are not finite numbers >= 0")


def label_array(labels: Sequence, kind: str, num_classes: int | None) -> np.ndarray:
    """The index's labels array for per-sample labels of `kind` (see `Index.labels`)."""
    if kind == "float":
        return np.array(labels, dtype=np.float64)
    if kind == "multi":
        hot = np.zeros((len(labels), num_classes or 0), dtype=bool)
        for row, classes in enumerate(labels):
            hot[row, list(classes)] = True
        return np.packbits(hot, axis=1)
    return np.array(labels, dtype=np.int64)


def label_sets(packed: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot rows (bool, n x num_classes) from the index's packed label sets."""
    return np.unpackbits(packed, axis=1, count=num_classes).astype(bool)


def _label_problem(labels: np.ndarray, kind: str, num_classes: int | None) -> str | None:
    """What is wrong with labels of this kind, or None (a crafted index cannot index past a one-hot row)."""
    if kind == "float":
        ok = labels.ndim == 1 and labels.dtype.kind == "f" and bool(np.isfinite(labels).all())
        return None if ok else "regression labels that are not finite floats"
    if kind == "multi":
        width = -(-(num_classes or 0) // 8)
        if labels.dtype != np.uint8 or labels.shape[1:] != (width,):
            return f"label sets of shape {labels.shape[1:]}, expected ({width},) bytes per sample"
        spare = width * 8 - (num_classes or 0)
        if spare and (labels[:, -1] & ((1 << spare) - 1)).any():
            return f"label sets naming classes past {num_classes - 1}"
        return None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        return f"class labels of dtype {labels.dtype} and shape {labels.shape}, expected integers per sample"
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        return f"labels outside 0-{num_classes - 1}"
    return None


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


def load_index(root: Path, manifest: Manifest) -> Index:
    path = root / manifest.index_name
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


def load_remote_index(location: RemoteLocation, manifest: Manifest) -> Index:
    name = manifest.index_name
    return parse_index(location.read_bytes(name), manifest, location.url_of(name))


def _id_problem(ids: np.ndarray) -> str | None:
    """The conversion's ID rule (`inputs.ids.check_id`), on the index's bytes at once: no empty or
    hidden ID, no path separator, no control byte, valid UTF-8 (a crafted index once steered
    `verify --source` to `../private/secret.npy`). Duplicates are refused by `Store` lookups."""
    if len(ids) == 0:
        return None
    raw = ids.view(np.uint8).reshape(len(ids), ids.dtype.itemsize)  # NUL-padded on the right
    bad = (raw == ord("/")) | (raw == ord("\\")) | ((raw < 0x20) & (raw != 0)) | (raw == 0x7F)
    bad[:, :-1] |= (raw[:, :-1] == 0) & (raw[:, 1:] != 0)  # a NUL inside an ID
    bad[:, 0] |= (raw[:, 0] == 0) | (raw[:, 0] == ord("."))
    rows = np.flatnonzero(bad.any(axis=1))
    if len(rows):
        return f"{len(rows)} sample ID(s) are not plain file names, e.g. row {rows[0]}: {ids[rows[0]]!r}"
    try:
        b"\n".join(ids.tolist()).decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"sample IDs are not UTF-8: {exc}"
    return None
