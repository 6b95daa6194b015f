"""What a labels file means: one class per sample, a regression target per sample, or a set of
classes per sample. The kind follows from the values (`read_labels` has turned text into numbers):
all integers are class numbers, all strings class names, numbers with a fraction regression
targets, and lists label sets (multi-label). Anything mixed is refused, naming the first odd ID.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import InputError
from .ids import check_name
from .labels import MAX_LABEL, SPARSE_CLASSES, Label

CLASS, FLOAT, MULTI = "class", "float", "multi"
LABEL_KINDS = (CLASS, FLOAT, MULTI)


@dataclass(frozen=True)
class EncodedLabels:
    """Each ID's label as stored: a class number, a float, or a sorted tuple of class numbers."""

    kind: str
    values: dict[str, int | float | tuple[int, ...]]
    class_names: list[str] | None
    num_classes: int | None


def encode_labels(labels: Mapping[str, Label] | None, ids: Iterable[str]) -> EncodedLabels | None:
    """The labels of `ids` (every one must have one), by the kind their values are."""
    if labels is None:
        return None
    ids = list(ids)
    missing = [i for i in ids if i not in labels]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5])
        raise InputError(f"labels: {len(missing)} ID(s) have no label, e.g. {shown}")
    values = {i: labels[i] for i in ids}
    distinct = {_kind_of(t) for t in set(map(type, values.values()))}  # the types in C, then each once
    if distinct == {int}:
        numbers, num_classes = _class_numbers(values)
        return EncodedLabels(CLASS, numbers, None, num_classes)
    if distinct == {str}:
        names = _class_names(values.values())
        code = {name: k for k, name in enumerate(names)}
        return EncodedLabels(CLASS, {i: code[v] for i, v in values.items()}, names, len(names))
    if distinct <= {int, float}:
        return EncodedLabels(FLOAT, {i: _finite(i, v) for i, v in values.items()}, None, None)
    if distinct == {list}:
        return _label_sets(values)
    first = ids[0]
    kind = _kind_of(type(values[first]))
    odd = next(i for i in ids if (k := _kind_of(type(values[i]))) is not kind or k is object)
    versus = "" if odd == first else f" but ID {first!r} has {values[first]!r}"
    raise InputError(
        f"labels: ID {odd!r} has label {values[odd]!r} ({type(values[odd]).__name__}){versus}; labels must all "
        f"be class numbers, class names, numbers (regression) or lists"
    )


def _kind_of(label_type: type) -> type:
    return label_type if label_type in (int, float, str, list) else object


def _class_numbers(values: Mapping[str, int]) -> tuple[dict[str, int], int]:
    """Class numbers, checked: none negative, none huge, no stray value making far more classes."""
    in_range = min(values.values()) >= 0 and max(values.values()) <= MAX_LABEL  # in C; which ID only if not
    for sample_id, v in () if in_range else values.items():
        if v < 0:
            raise InputError(f"labels: ID {sample_id!r} has negative label {v}")
        if v > MAX_LABEL:
            raise InputError(f"labels: ID {sample_id!r} has label {v}; integer labels are class numbers "
                             f"from 0 to {MAX_LABEL}")  # fmt: skip
    num_classes, distinct = max(values.values()) + 1, len(set(values.values()))
    if num_classes > max(SPARSE_CLASSES, 100 * distinct):
        top = max(values, key=values.__getitem__)
        raise InputError(
            f"labels: ID {top!r} has label {values[top]}, so there would be {num_classes} classes for "
            f"{distinct} distinct labels; integer labels are class numbers from 0 (a stray value?): "
            f"number the classes 0-{distinct - 1}, or give class names as strings"
        )
    return dict(values), num_classes


def _class_names(names: Iterable[str]) -> list[str]:
    return [check_name(name, "labels: class name") for name in sorted(set(names))]


def _finite(sample_id: str, value: int | float) -> float:
    if not math.isfinite(value):
        raise InputError(f"labels: ID {sample_id!r} has regression target {value!r}; targets must be finite")
    return float(value)


def _label_sets(values: Mapping[str, list]) -> EncodedLabels:
    """Multi-label: each list all class numbers or all class names (one kind for the whole file)."""
    members = {type(m) for labels in values.values() for m in labels}
    if not members <= {int} and not members <= {str}:
        raise InputError("labels: label lists must hold all class numbers or all class names, not a mix")
    for sample_id, labels in values.items():
        if len(set(labels)) != len(labels):
            raise InputError(f"labels: ID {sample_id!r} lists a class twice: {labels!r}")
    if members <= {str} and members:
        names = _class_names(m for labels in values.values() for m in labels)
        code = {name: k for k, name in enumerate(names)}
        return EncodedLabels(MULTI, {i: tuple(sorted(code[m] for m in v)) for i, v in values.items()},
                             names, len(names))  # fmt: skip
    flat = {f"{i}[{k}]": m for i, v in values.items() for k, m in enumerate(v)}
    if not flat:
        raise InputError("labels: every label list is empty")
    _, num_classes = _class_numbers(flat)
    return EncodedLabels(MULTI, {i: tuple(sorted(v)) for i, v in values.items()}, None, num_classes)
