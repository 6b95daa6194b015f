"""What a batch carries besides `x`: its labels in the form the loss wants, and sample weights.

A store's labels are one class per sample, a regression target, or a set of classes
(`Store.label_kind`); each label mode fits some of these, and a mode that does not fit is
refused when the generator is made, not at the first loss. A store converted with `--targets`
also has a target array per sample (`Store.targets`), which `labels="targets"` gives as `y`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import OptionError
from ..storage.store import Store

LABEL_MODES = ("auto", "onehot", "sparse", "multihot", "targets", None)
# label kind -> the modes that fit it, the first being what "auto" picks.
_FITTING = {"class": ("onehot", "sparse"), "float": ("sparse",), "multi": ("multihot",)}
_KIND_WORDS = {"class": "one class per sample", "float": "regression targets", "multi": "label sets"}


def resolve_labels(store: Store, mode: str | None) -> str | None:
    """The concrete mode for this store ("auto": onehot, float targets or multi-hot by its labels; its
    target arrays for a store with those and no labels)."""
    if mode not in LABEL_MODES:
        raise OptionError(f"labels {mode!r} unknown; expected one of {LABEL_MODES}")
    if mode == "targets" or (mode == "auto" and store.labels is None and store.targets is not None):
        if store.targets is None:
            raise OptionError(f"{store.path}: labels='targets' but the store has no target arrays; convert with "
                              f"--targets DIR (a target <ID>.npy per sample)")  # fmt: skip
        return "targets"
    if mode is None or store.labels is None:
        return None
    fitting = _FITTING[store.label_kind]
    if mode == "auto":
        return fitting[0]
    if mode not in fitting:
        kind = _KIND_WORDS[store.label_kind]
        raise OptionError(f"{store.path}: labels={mode!r} does not fit this store's labels ({kind}); use "
                          f"{' or '.join(repr(m) for m in fitting)}")  # fmt: skip
    return mode


def label_spec(store: Store, mode: str, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a batch's labels in `mode` (target arrays of varying shape: the largest)."""
    if mode == "targets":
        targets = store.targets
        shape = targets.ragged.max_shape if targets.variable else targets.sample_shape
        return (batch_size, *shape), targets.dtype
    if mode in ("onehot", "multihot"):
        return (batch_size, store.num_classes), np.dtype(np.float32)
    return (batch_size,), np.dtype(np.float32 if store.label_kind == "float" else np.int64)


def encode_labels(labels: np.ndarray, mode: str, num_classes: int | None, out: np.ndarray | None = None) -> np.ndarray:
    """Labels as `mode` gives them: class numbers int64 or targets float32 ("sparse"), one-hot rows
    ("onehot"), or multi-hot rows from label sets ("multihot"); into `out` if given."""
    if mode == "onehot":
        if out is None:
            out = np.empty((len(labels), num_classes), dtype=np.float32)
        out[...] = 0.0
        out[np.arange(len(labels)), labels] = 1.0
        return out
    if out is None:
        dtype = np.int64 if labels.dtype.kind in "iu" else np.float32
        return labels.astype(dtype)
    out[...] = labels
    return out


SampleWeight = bool | Mapping[str, float] | np.ndarray | None


def sample_weights(store: Store, rows: np.ndarray, sample_weight: SampleWeight) -> np.ndarray | None:
    """A float32 weight per store row (NaN for rows not used), from the store's own weights (True),
    a mapping ID -> weight, or an array of one weight per store row; checked finite and >= 0."""
    if sample_weight is None or sample_weight is False:
        return None
    if store.labels is None and store.targets is None:
        raise OptionError(f"{store.path}: sample weights need labels or target arrays to weigh; this store has none")
    if sample_weight is True:
        if store.weights is None:
            raise OptionError(f"{store.path}: sample_weight=True but the store has no weights; convert with "
                              f"--weights, or pass a mapping ID -> weight")  # fmt: skip
        weights = store.weights.astype(np.float32)
    elif isinstance(sample_weight, Mapping):
        weights = np.full(len(store), np.nan, dtype=np.float32)
        ids = store.ids
        missing = [ids[r] for r in rows.tolist() if ids[r] not in sample_weight]
        if missing:
            raise OptionError(f"sample_weight has no weight for {len(missing)} sample(s), e.g. {missing[0]!r}")
        weights[rows] = [sample_weight[ids[r]] for r in rows.tolist()]
    else:
        weights = np.asarray(sample_weight, dtype=np.float32)
        if weights.shape != (len(store),):
            raise OptionError(f"sample_weight has shape {weights.shape}; expected one weight per store row "
                              f"({len(store)},), or a mapping ID -> weight")  # fmt: skip
    used = weights[rows]
    if not (np.isfinite(used).all() and (used >= 0).all()):
        bad = int(rows[np.flatnonzero(~(np.isfinite(used) & (used >= 0)))[0]])
        raise OptionError(f"sample_weight of sample {store.ids[bad]!r} is {weights[bad]}; weights are finite "
                          f"numbers >= 0")  # fmt: skip
    return weights
