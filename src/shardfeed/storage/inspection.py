"""What `shardfeed inspect` shows: a store summary as a dict, and as readable text."""

from __future__ import annotations

import math

import numpy as np

from .format import FORMAT_VERSION
from .lengths import bucket_by_length, padding_fraction
from .store import Store

PADDING_BATCH_SIZE = 32  # the batch size `inspect` reports padding for


def describe(store: Store) -> dict:
    """Summary of a store; the keys are stable (`inspect --json` prints this dict)."""
    m = store.manifest
    targets = _targets(store)
    on_disk = _bytes_on_disk(store) - (targets["bytes_on_disk"] if targets else 0)  # the samples' own
    raw = m.data_nbytes if m.variable else m.num_samples * m.sample_nbytes
    histograms = stats = None
    if store.label_kind == "float" and store.labels is not None:
        stats = {name: _stats(store.labels[store.split(name)]) for name in m.splits}
    elif store.labels is not None:
        histograms = {name: _histogram(store, store.split(name)) for name in m.splits}
    return {
        "path": str(store.path),
        "backend": m.backend,
        "format_version": m.format_version,
        "reader_format_version": FORMAT_VERSION,
        "num_samples": m.num_samples,
        "sample_shape": list(m.sample_shape),
        "variable_shapes": _variable_shapes(store),
        "dtype": m.dtype,
        "source_dtype": m.source.get("dtype", m.dtype),
        "splits": dict(m.splits),
        "class_names": m.class_names,
        "num_classes": m.num_classes,
        "label_kind": m.label_kind if m.labeled else None,
        "label_histogram": histograms,
        "label_stats": stats,
        "weights": None if store.weights is None else _stats(store.weights),
        "targets": targets,
        "num_shards": len(m.shards),
        "chunk_rows": m.chunk_rows,
        "shard_rows": m.shard_rows,
        "compression": m.compression,
        "bytes_raw": raw,
        "bytes_on_disk": on_disk,
        "compression_ratio": round(raw / on_disk, 3) if on_disk else None,
        "shards": [
            {"path": s.path, "first_row": s.first_row, "last_row": s.last_row, "nbytes": s.nbytes}
            for s in m.shards
        ],
    }


def _targets(store: Store) -> dict | None:
    """The target arrays' shape, dtype and size (their own store: `inspect STORE/targets` says all)."""
    targets = store.targets
    if targets is None:
        return None
    m = targets.manifest
    return {"sample_shape": list(m.sample_shape), "dtype": m.dtype, "variable_shapes": _variable_shapes(targets),
            "bytes_on_disk": _bytes_on_disk(targets)}  # fmt: skip


def _histogram(store: Store, rows: np.ndarray) -> dict[str, int]:
    """How many samples of `rows` have each class present (a sample with a label set counts once per
    class in it); the classes present only, so a crafted class count costs nothing."""
    labels, names = store.labels[rows], store.class_names
    if store.label_kind == "multi":
        counts = labels.sum(axis=0)
        present = np.flatnonzero(counts)
        counts = counts[present]
    else:
        present, counts = np.unique(labels, return_counts=True)
    return {(names[k] if names else str(k)): int(c) for k, c in zip(present.tolist(), counts)}


def _stats(values: np.ndarray) -> dict[str, float | None]:
    """Range and mean of regression targets or weights (None for no values)."""
    if not len(values):
        return {"min": None, "max": None, "mean": None}
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean())}


def format_summary(summary: dict, show_shards: bool = False) -> str:
    s = summary
    lines = [
        f"store        {s['path']}",
        f"backend      {s['backend']} (format version {s['format_version']})",
        f"samples      {s['num_samples']:,} of shape {tuple(s['sample_shape'])} {s['dtype']}"
        + (f" (source dtype {s['source_dtype']})" if s["source_dtype"] != s["dtype"] else ""),
        *_shape_lines(s.get("variable_shapes")),
        f"chunks       {s['chunk_rows']} rows; shards of {s['shard_rows']} rows: {s['num_shards']}",
        f"compression  {s['compression']}",
        f"size         {_mb(s['bytes_on_disk'])} on disk, {_mb(s['bytes_raw'])} raw"
        + (f", ratio {s['compression_ratio']:.2f}" if s["compression_ratio"] else ""),
        "classes      " + _labels_line(s),
        *([f"weights      {_stats_text(s['weights'])}"] if s["weights"] else []),
        *_target_lines(s.get("targets")),
        "splits",
    ]  # fmt: skip
    for name, count in s["splits"].items():
        lines.append(f"  {name:<12} {count:>10,}")
        if s["label_histogram"]:
            hist = s["label_histogram"][name]
            lines.append("    labels   " + "  ".join(f"{k}:{v}" for k, v in hist.items()))
        if s["label_stats"]:
            lines.append(f"    targets  {_stats_text(s['label_stats'][name])}")
    if show_shards:
        lines.append("shards")
        for shard in s["shards"]:
            lines.append(f"  {shard['path']:<32} rows {shard['first_row']}-{shard['last_row']}  {_mb(shard['nbytes'])}")
    return "\n".join(lines)


def _target_lines(targets: dict | None) -> list[str]:
    if targets is None:
        return []
    return [f"targets      a {targets['dtype']} array of shape {tuple(targets['sample_shape'])} per sample, "
            f"{_mb(targets['bytes_on_disk'])} on disk", *_shape_lines(targets["variable_shapes"])]  # fmt: skip


def _labels_line(s: dict) -> str:
    classes = ", ".join(s["class_names"]) if s["class_names"] else f"{s['num_classes']} classes (integer labels)"
    return {None: "unlabeled", "float": "none (regression targets)", "multi": f"{classes} (label sets)"}.get(
        s["label_kind"], classes)  # fmt: skip


def _stats_text(stats: dict) -> str:
    if stats["min"] is None:
        return "none"
    return f"{stats['min']:.6g} to {stats['max']:.6g}, mean {stats['mean']:.6g}"


def describe_sample(store: Store, sample_id: str) -> dict:
    """Row, shard, label, checksum and value statistics of one sample."""
    row = int(store.rows([sample_id])[0])
    shard = store.manifest.shards[int(store.manifest.locate(np.array([row]))[0])]
    data = store.read([row])[0]
    label = _label_of(store, row)
    names = store.class_names
    if isinstance(label, list):
        class_name = [names[k] for k in label] if names else None
    else:
        class_name = names[label] if names and label is not None else None
    return {
        "id": sample_id,
        "row": row,
        "split": store.split_of(np.array([row]))[0],
        "shard": shard.path,
        "label": label,
        "class_name": class_name,
        "weight": None if store.weights is None else float(store.weights[row]),
        "checksum": f"crc32:{int(store.checksums[row]):08x}",
        "shape": list(data.shape),
        "dtype": data.dtype.str,
        "min": _scalar(data.min()),
        "max": _scalar(data.max()),
        "mean": _scalar(data.mean()),
    }


def _scalar(value):
    """A JSON-safe number: complex and non-finite values (NaN, inf) as text, never bare NaN."""
    value = value.item() if np.isrealobj(value) else value
    if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
        return str(value)
    return value


def _bytes_on_disk(store: Store) -> int:
    if store.location is not None:
        return int(store.location.fs.du(store.location.path))
    return sum(p.stat().st_size for p in store.path.rglob("*") if p.is_file())


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _variable_shapes(store: Store, batch_size: int = PADDING_BATCH_SIZE) -> dict | None:
    """For variable-shape samples: their range, and per split the share of a shuffled epoch's padded
    values that is padding, for batches of `batch_size` padded to their largest sample (with and
    without `bucket_by_length`) or to the store's largest shape. None for samples of one shape."""
    if not store.variable:
        return None
    padding = {}
    for name in store.splits:
        order = np.random.default_rng(0).permutation(store.split(name))
        bucketed = bucket_by_length(order, store.shapes, batch_size, seed=0, epoch=0)
        padding[name] = {
            "batch": round(padding_fraction(store.shapes, order, batch_size), 4),
            "batch_bucketed": round(padding_fraction(store.shapes, bucketed, batch_size), 4),
            "max": round(padding_fraction(store.shapes, order, batch_size, store.ragged.max_shape), 4),
        }
    return {"min_shape": list(store.ragged.min_shape), "max_shape": list(store.ragged.max_shape),
            "padding_batch_size": batch_size, "padding": padding}  # fmt: skip


def _shape_lines(shapes: dict | None) -> list[str]:
    if shapes is None:
        return []
    lines = [f"shapes       from {tuple(shapes['min_shape'])} to {tuple(shapes['max_shape'])}",
             f"padding      of batches of {shapes['padding_batch_size']}, share of values: padding='batch' / "
             f"with bucket_by_length=True / padding='max'"]  # fmt: skip
    for name, share in shapes["padding"].items():
        lines.append(f"  {name:<12} {share['batch']:.1%} / {share['batch_bucketed']:.1%} / {share['max']:.1%}")
    return lines


def _label_of(store: Store, row: int) -> int | float | list[int] | None:
    if store.labels is None:
        return None
    if store.label_kind == "multi":
        return np.flatnonzero(store.labels[row]).tolist()
    return float(store.labels[row]) if store.label_kind == "float" else int(store.labels[row])

