"""Appending samples to a finished local store: new shards after the last one, a new index beside
the old one, and a new manifest that switches to both in one rename.

Until that rename the store is exactly what it was: the new shards sit in cells no manifest names
yet (for Zarr, rows past the old manifest's, in an array grown first), and the new index has a name
of its own (`index-N.npz`). A crash at any moment leaves the previous store whole and openable;
running the same append again starts over, writing over what the interrupted one left. Readers
opened before an append get `StoreReplacedError` ("reopen it") at their next shard, never a mix.
The index the previous manifest named stays until the next append, for readers opening just then.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError, OptionError, StoreReplacedError
from ..inputs.labels import read_labels, read_partition, read_weights
from ..inputs.scan import DEFAULT_SPLIT, SourceSet, scan_sources
from ..storage.backends import Layout, get_backend
from ..storage.files import checksum, write_atomic
from ..storage.format import INDEX_NAME, MANIFEST_NAME
from ..storage.index import Index, label_array, load_index
from ..storage.manifest import Manifest, load_manifest
from ..urls import is_url, local_root
from ..version import __version__
from .convert import refuse_inputs_inside
from .faults import fault_point
from .local import check_free_space
from .plan import make_tasks, stored_dtype
from .pool import ProgressCallback, refuse_in_worker, run_tasks
from .workdir import StoreLock


def append(
    store: str | os.PathLike,
    src: str | os.PathLike,
    *,
    labels: str | os.PathLike | Mapping[str, int | str] | None = None,
    partition: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
    weights: str | os.PathLike | Mapping[str, float] | None = None,
    workers: int = 1,
    progress: ProgressCallback | None = None,
    on_start: Callable[[SourceSet, Layout], None] | None = None,
) -> Manifest:
    """Add the `.npy` samples under `src` (new IDs only, the store's shape and dtype) to the local
    store at `store`; returns its new manifest. `labels`, `partition` and `weights` are as for
    `convert`; labels must be of the store's kind and classes, a store with weights needs weights,
    and a store with named splits needs a partition."""
    refuse_in_worker()
    if is_url(store):
        raise OptionError(f"{store}: append works on local stores; convert again to write one at a URL")
    if workers < 1:
        raise OptionError(f"workers must be >= 1, got {workers}")
    root = local_root(store)
    refuse_inputs_inside(root, src, labels, partition, weights=weights)
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels(labels)
    if isinstance(weights, (str, os.PathLike)):
        weights = read_weights(weights)
    if isinstance(partition, (str, os.PathLike)):
        partition = read_partition(partition)
    # Everything is validated before the lock file is made: a refused append leaves no trace.
    old = load_manifest(root)
    if old.targets_checksum is not None:
        raise OptionError(f"{root}: the store has target arrays (--targets), which append does not extend; "
                          f"convert again with all samples and --targets")  # fmt: skip
    index = load_index(root, old)
    sources = scan_sources(src, labels, partition, weights=weights)
    _refuse_variable_shapes(old, sources, root)
    _check_compatible(old, sources, src, partition is not None)
    _refuse_known_ids(index, sources)
    new_labels = _labels_in_store_classes(old, sources)
    backend = get_backend(old.backend)
    first_shard, n = len(old.shards), len(sources.samples)
    layout = Layout(first_shard * old.shard_rows + n, old.sample_shape, old.np_dtype,
                    old.chunk_rows, old.shard_rows, old.compression)  # fmt: skip
    check_free_space(root, layout, n)
    if on_start:
        on_start(sources, layout)
    with StoreLock(root):
        if load_manifest(root) != old:
            raise StoreReplacedError(f"{root}: the store changed while this append checked its inputs "
                                     f"(another append or conversion); run it again")  # fmt: skip
        _remove_unnamed_indexes(root, old)
        backend.extend(root, layout)
        tasks = make_tasks(sources, layout, old.backend, root, first_shard=first_shard)
        records = sorted(run_tasks(tasks, workers, progress), key=lambda r: r.info.first_row)
        shards, checksums = [], [index.checksums]
        for record in records:  # cell rows (k * shard_rows) become the store's consecutive rows
            first = old.num_samples + sum(s.num_rows for s in shards)
            shards.append(dataclasses.replace(record.info, first_row=first, last_row=first + record.info.num_rows - 1))
            checksums.append(record.checksums)
        splits = dict(old.splits)
        for name, count in sources.splits.items():
            splits[name] = splits.get(name, 0) + count
        code = {name: k for k, name in enumerate(splits)}
        merged = Index(
            ids=np.concatenate([index.ids, np.array([s.id.encode("utf-8") for s in sources.samples])]),
            labels=None if index.labels is None else np.concatenate([index.labels, new_labels]),
            split_codes=np.concatenate([index.split_codes, [code[s.split] for s in sources.samples]]).astype(np.int32),
            checksums=np.concatenate(checksums).astype(np.uint32),
            weights=None if index.weights is None else np.concatenate(
                [index.weights, np.array([s.weight for s in sources.samples], dtype=np.float32)]),
        )  # fmt: skip
        index_bytes = merged.to_bytes()
        index_name = _next_index_name(old.index_name)
        write_atomic(root / index_name, index_bytes)
        fault_point("index-written")
        history = [*old.converter.get("appended", []), {"samples": n, "shardfeed": __version__}]
        manifest = dataclasses.replace(
            old, num_samples=old.num_samples + n, splits=splits, shards=(*old.shards, *shards),
            index_checksum=checksum(index_bytes), index_name=index_name,
            converter={**old.converter, "appended": history}, content_checksum=None,
        )  # fmt: skip
        manifest.validate(str(root / MANIFEST_NAME))
        write_atomic(root / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
        fault_point("manifest-written")
    return manifest


def _check_compatible(old: Manifest, sources: SourceSet, src: str | os.PathLike, partitioned: bool) -> None:
    first = sources.samples[0]
    if sources.sample_shape != old.sample_shape or stored_dtype(sources.dtype) != old.np_dtype:
        raise InputError(
            f"{first.path}: sample {first.id!r} has shape {sources.sample_shape} dtype {sources.dtype.str}; "
            f"the store holds shape {old.sample_shape} dtype {old.dtype}"
        )
    if old.labeled != (first.label is not None):
        need = "the store is labeled: give --labels for the new samples" if old.labeled else (
            "the store is unlabeled: append without --labels")  # fmt: skip
        raise InputError(f"{src}: {need}")
    if old.weighted != (first.weight is not None):
        need = "the store has sample weights: give --weights for the new samples" if old.weighted else (
            "the store has no sample weights: append without --weights")  # fmt: skip
        raise InputError(f"{src}: {need}")
    if not partitioned and set(old.splits) != {DEFAULT_SPLIT}:
        raise InputError(f"{src}: the store has splits {', '.join(old.splits)}: give --partition to say "
                         f"which split each new sample joins")  # fmt: skip


def _refuse_known_ids(index: Index, sources: SourceSet) -> None:
    new = np.array([s.id.encode("utf-8") for s in sources.samples])
    known = np.isin(new, index.ids)
    if known.any():
        sample = sources.samples[int(np.argmax(known))]
        raise InputError(f"{sample.path}: sample {sample.id!r} is already in the store "
                         f"({int(known.sum())} of the new IDs are); append adds new IDs only")  # fmt: skip


def _labels_in_store_classes(old: Manifest, sources: SourceSet) -> np.ndarray:
    """The new samples' labels in the store's terms: class numbers (names mapped to the store's
    numbers), regression targets, or label sets; a class the store lacks is refused."""
    if not old.labeled:
        return np.zeros(0, dtype=np.int64)
    if sources.label_kind != old.label_kind:
        raise InputError(f"labels: the new labels are {sources.label_kind!r} labels; the store's are "
                         f"{old.label_kind!r}")  # fmt: skip
    if old.label_kind == "float":
        return label_array([s.label for s in sources.samples], "float", None)
    store_code = {name: k for k, name in enumerate(old.class_names or [])}

    def in_store(s, number: int) -> int:
        if sources.class_names is not None:
            name = sources.class_names[number]
            if name not in store_code:
                known = ", ".join(old.class_names) if old.class_names else f"numbers 0-{old.num_classes - 1}"
                raise InputError(f"{s.path}: sample {s.id!r} has label {name!r}, not one of the store's "
                                 f"classes ({known})")  # fmt: skip
            number = store_code[name]
        if number >= old.num_classes:
            raise InputError(f"{s.path}: sample {s.id!r} has label {number}; the store's classes are "
                             f"0-{old.num_classes - 1}")  # fmt: skip
        return number

    if old.label_kind == "multi":
        labels = [tuple(in_store(s, k) for k in s.label) for s in sources.samples]
    else:
        labels = [in_store(s, s.label) for s in sources.samples]
    return label_array(labels, old.label_kind, old.num_classes)


def _next_index_name(current: str) -> str:
    generation = 0 if current == INDEX_NAME else int(current[len("index-") : -len(".npz")])
    return f"index-{generation + 1}.npz"


def _remove_unnamed_indexes(root: Path, manifest: Manifest) -> None:
    """Every index but the one the current manifest names: what earlier appends left for readers
    that were opening then (and an interrupted append's)."""
    for path in root.glob("index*.npz"):
        if path.name != manifest.index_name:
            path.unlink()


def _refuse_variable_shapes(old: Manifest, sources: SourceSet, root: Path) -> None:
    """New samples have the store's one shape: a store of variable-shape samples is not appended to (yet)."""
    if old.variable:
        raise OptionError(f"{root}: its samples vary in shape {old.sample_shape}, and append adds to stores of one "
                          f"shape only; convert the old and the new samples again with --variable-shapes")  # fmt: skip
    sources.refuse_varying_shapes()
