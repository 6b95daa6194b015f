"""Labels (`{id: label}` JSON or `id,label` CSV), partitions (`{split: [ids]}` JSON) and ID lists
(`--ids`: one ID per line, or a JSON list), local or at URLs."""

from __future__ import annotations

import csv
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import InputError
from ..urls import is_url, local_root, url_fs
from .ids import check_id_list, check_name

MAX_LABEL = 2**31 - 1  # labels become one-hot vectors of max(label) + 1 entries
MAX_TEXT_BYTES = 2**30  # a labels or partition file; more is not a file of labels (/dev/zero is endless)
# Integer labels are class numbers: far more classes than distinct labels is a stray value, which
# would make every one-hot batch and every histogram that wide.
SPARSE_CLASSES = 1024


def read_labels(path: str | os.PathLike, storage_options: dict | None = None) -> dict[str, int | str]:
    """Labels from a JSON object `{id: label}` or a CSV file with columns `id,label` (a path or URL).

    One rule for both: a label that spells an integer (`3`, `"3"`, `-1`) is a class number; any
    other string is a class name (class names are then numbered in sorted order).
    """
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
    return {k: int(v) if isinstance(v, str) and _is_int(v.strip()) else v for k, v in data.items()}


def read_partition(path: str | os.PathLike, storage_options: dict | None = None) -> dict[str, list[str]]:
    """A partition: JSON object of split name -> list of IDs (a path or URL)."""
    data = _parse_json(_read_text(path, "partition", storage_options), path, "partition")
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise InputError(f"{path}: partition must be a JSON object {{split: [ids]}}")
    return data


def read_id_list(path: str | os.PathLike, storage_options: dict | None = None) -> list[str]:
    """IDs in order, one per line of a text file or a JSON list (a `.json` file), each checked, none twice."""
    text = _read_text(path, "IDs", storage_options)
    if str(path).lower().endswith(".json"):
        ids = _parse_json(text, path, "IDs")
        if not isinstance(ids, list):
            raise InputError(f"{path}: IDs must be a JSON list of strings, got {type(ids).__name__}")
        return check_id_list(ids, lambda k: f"{path}[{k}]")
    return check_id_list(text.splitlines(), lambda k: f"{path}:{k + 1}")


def encode_labels(
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
        num_classes, distinct = max(values) + 1, len(set(values))
        if num_classes > max(SPARSE_CLASSES, 100 * distinct):
            top = max(ids, key=lambda i: labels[i])
            raise InputError(
                f"labels: ID {top!r} has label {labels[top]}, so there would be {num_classes} classes for "
                f"{distinct} distinct labels; integer labels are class numbers from 0 (a stray value?): "
                f"number the classes 0-{distinct - 1}, or give class names as strings"
            )
        return {i: labels[i] for i in ids}, None, num_classes
    if all(isinstance(v, str) for v in values):
        class_names = [check_name(name, "labels: class name") for name in sorted(set(values))]
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
            fs, fs_path = url_fs(str(path), storage_options)
            data = fs.cat_file(fs_path)
        else:
            data = _read_local(local_root(path), what)
        return data.decode("utf-8-sig")  # a byte-order mark (spreadsheets write one) is not text
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read {what}: {exc}") from exc


def _read_local(path: Path, what: str) -> bytes:
    """A regular file or a pipe (`<(...)`), at most MAX_TEXT_BYTES; never a device."""
    fd = os.open(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        kind = os.fstat(fd).st_mode
        if not (stat.S_ISREG(kind) or stat.S_ISFIFO(kind)):
            raise InputError(f"{path}: {what} is not a regular file or a pipe")
        chunks, size = [], 0
        while chunk := f.read(2**20):  # in pieces: read(n) would allocate n bytes up front
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_TEXT_BYTES:
                raise InputError(f"{path}: {what} is larger than {MAX_TEXT_BYTES} bytes")
    return b"".join(chunks)


def _parse_json(text: str, path: str | os.PathLike, what: str):
    def unique_keys(pairs: list[tuple[str, object]]) -> dict:
        data = dict(pairs)
        if len(data) < len(pairs):
            seen: set[str] = set()
            twice = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise InputError(f"{path}: {what} lists key {twice!r} twice (JSON would keep only the last)")
        return data

    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except (ValueError, RecursionError) as exc:  # ValueError: also huge ints
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: cannot read {what} JSON: {exc}") from exc


def _is_int(text: str) -> bool:
    """An optional minus and ASCII digits (str.isdigit() also accepts "²", which int() refuses)."""
    return re.fullmatch(r"-?[0-9]{1,19}", text) is not None
