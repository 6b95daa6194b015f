"""Labels (`{id: label}` JSON or `id,label` CSV), partitions (`{split: [ids]}` JSON) and ID lists
(`--ids`: one ID per line, or a JSON list), local or at URLs."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..urls import is_url, local_root, url_fs
from .ids import check_id_list

MAX_LABEL = 2**31 - 1  # labels become one-hot vectors of max(label) + 1 entries
MAX_TEXT_BYTES = 2**30  # a labels or partition file; more is not a file of labels (/dev/zero is endless)
# Integer labels are class numbers: far more classes than distinct labels is a stray value, which
# would make every one-hot batch and every histogram that wide.
SPARSE_CLASSES = 1024
Label = int | float | str | list  # a class number, a regression target, a class name, a label set


def read_labels(path: str | os.PathLike, storage_options: dict | None = None) -> dict[str, Label]:
    """Labels from a JSON object `{id: label}` or a CSV file with columns `id,label` (a path or URL).

    One rule for both: a label that spells an integer (`3`, `"3"`, `-1`) is a class number, one that
    spells another number (`0.25`, `"1e-3"`) a regression target, any other string a class name
    (class names are then numbered in sorted order); a JSON list of classes is a label set.
    """
    pairs = _read_pairs(path, "labels", "label", storage_options)
    return {k: v if type(v) is int else _label_value(v) for k, v in pairs.items()}  # most are ints: as they are


def read_weights(path: str | os.PathLike, storage_options: dict | None = None) -> dict[str, float]:
    """Sample weights from a JSON object `{id: weight}` or a CSV file `id,weight`: finite numbers >= 0."""
    weights = {}
    for sample_id, value in _read_pairs(path, "weights", "weight", storage_options).items():
        number = _label_value(value)
        if type(number) not in (int, float) or not math.isfinite(number) or number < 0:
            raise InputError(f"{path}: ID {sample_id!r} has weight {value!r}; weights are finite numbers >= 0")
        weights[sample_id] = float(number)
    return weights


def _read_pairs(path: str | os.PathLike, what: str, column: str, storage_options: dict | None) -> dict[str, Any]:
    """`{id: value}` from a JSON object or a CSV file with the header `id,<column>` (values as text)."""
    text = _read_text(path, what, storage_options)
    if str(path).lower().endswith(".csv"):
        rows = list(csv.reader(text.splitlines()))
        if not rows or [c.strip().lower() for c in rows[0][:2]] != ["id", column]:
            raise InputError(f"{path}: expected a CSV header 'id,{column}'")
        pairs: dict[str, Any] = {}
        for line_no, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) != 2:
                raise InputError(f"{path}:{line_no}: expected 2 columns 'id,{column}', got {len(row)}")
            sample_id, value = row[0], row[1].strip()
            if sample_id in pairs:
                raise InputError(f"{path}:{line_no}: ID {sample_id!r} has a {column} twice")
            pairs[sample_id] = value
        return pairs
    data = _parse_json(text, path, what)
    if not isinstance(data, dict):
        raise InputError(f"{path}: {what} must be a JSON object {{id: {column}}}, got {type(data).__name__}")
    return data


def _label_value(value: Any) -> Any:
    """The labels file's one rule: text spelling an integer is an int, another number a float."""
    if isinstance(value, list):
        return [_label_value(v) for v in value]
    if not isinstance(value, str):
        return value
    text = value.strip()
    if _is_int(text):
        return int(text)
    return float(text) if _FLOAT.fullmatch(text) else value


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


_FLOAT = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?")  # not "nan" or "inf": names


def _is_int(text: str) -> bool:
    """An optional minus and ASCII digits (str.isdigit() also accepts "²", which int() refuses)."""
    return re.fullmatch(r"-?[0-9]{1,19}", text) is not None
