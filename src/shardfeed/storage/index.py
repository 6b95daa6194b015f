"""The store's index (`index.npz`): per-row IDs, labels, split codes and sample checksums."""

from __future__ import annotations

import io
import math
import zipfile
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
    labels: np.ndarray | None  # int64
    split_codes: np.ndarray  # int32
    checksums: np.ndarray  # uint32 CRC32 of each sample's C-order bytes
    # Variable-shape samples only (see `ragged`): each sample's shape, int64 (n, ndim), and where its
    # values start in its shard's flat array, int64 (n,).
    shapes: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def to_bytes(self) -> bytes:
        arrays = {"ids": self.ids, "split_codes": self.split_codes, "checksums": self.checksums}
        if self.labels is not None:
            arrays["labels"] = self.labels
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
