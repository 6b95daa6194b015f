"""The end of a conversion: the index and the manifest that commits it, built from the finished shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..inputs.scan import SourceSet
from ..storage.backends import Layout
from ..storage.files import checksum, write_atomic
from ..storage.format import FIXED_SHAPE_VERSION, INDEX_NAME, MANIFEST_NAME, TARGETS_VERSION, VARIABLE_SHAPE_VERSION
from ..storage.index import Index, label_array
from ..storage.manifest import Manifest
from ..version import __version__
from .faults import fault_point
from .shardtask import ShardRecord


def commit_local(
    root: Path, sources: SourceSet, layout: Layout, format: str, records: list[ShardRecord],
    targets: Manifest | None = None,
) -> Manifest:  # fmt: skip
    """Write the index, then the manifest: from this moment the store exists (with its `targets`)."""
    index_bytes, manifest = build_index_and_manifest(sources, layout, format, records, targets)
    write_atomic(root / INDEX_NAME, index_bytes)
    fault_point("index-written")
    write_atomic(root / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
    fault_point("manifest-written")
    return manifest


def build_index_and_manifest(
    sources: SourceSet, layout: Layout, format: str, records: list[ShardRecord], targets: Manifest | None = None
) -> tuple[bytes, Manifest]:
    """The index's bytes and the manifest that commits them, from the finished shards (and the target
    arrays' manifest, when there are targets)."""
    checksums = np.concatenate([r.checksums for r in records]).astype(np.uint32)
    split_names = list(sources.splits)
    code = {name: k for k, name in enumerate(split_names)}
    labeled = sources.samples[0].label is not None
    weighted = sources.samples[0].weight is not None
    labels = [s.label for s in sources.samples]
    index = Index(
        ids=np.array([s.id.encode("utf-8") for s in sources.samples]),
        labels=label_array(labels, sources.label_kind, sources.num_classes) if labeled else None,
        split_codes=np.array([code[s.split] for s in sources.samples], dtype=np.int32),
        checksums=checksums,
        **_shapes_and_offsets(sources, layout),
        weights=np.array([s.weight for s in sources.samples], dtype=np.float32) if weighted else None,
    )
    index_bytes = index.to_bytes()
    manifest = Manifest(
        backend=format,
        num_samples=layout.num_samples,
        sample_shape=layout.sample_shape,
        dtype=layout.dtype.str,
        chunk_rows=layout.chunk_rows,
        shard_rows=layout.shard_rows,
        compression=layout.compression,
        **_flat_arrays(layout),
        format_version=_format_version(layout, targets),
        splits=dict(sources.splits),
        shards=tuple(r.info for r in records),
        index_checksum=checksum(index_bytes),
        class_names=sources.class_names,
        num_classes=sources.num_classes,
        labeled=labeled,
        label_kind=sources.label_kind,
        weighted=weighted,
        targets_checksum=None if targets is None else targets.computed_checksum(),
        source={
            "dtype": sources.dtype.str,
            "fortran_order_samples": sum(s.fortran_order for s in sources.samples),
            "unlisted_files": sources.unlisted_files,
        },
        converter={"shardfeed": __version__},
    )
    return index_bytes, manifest


def _shapes_and_offsets(sources: SourceSet, layout: Layout) -> dict[str, np.ndarray]:
    """Variable-shape samples: each one's shape, and where its values start in its shard (`storage.ragged`)."""
    if sources.shapes is None:
        return {}
    sizes = sources.shapes.prod(axis=1)
    ends = np.cumsum(sizes)
    offsets = ends - sizes  # from the first row ...
    offsets -= np.repeat((ends - sizes)[:: layout.shard_rows], layout.shard_rows)[: len(sizes)]  # ... of each shard
    return {"shapes": sources.shapes.astype(np.int64), "offsets": offsets.astype(np.int64)}


def _format_version(layout: Layout, targets: Manifest | None) -> int:
    """The oldest version that holds what this store has: older readers refuse it in one line."""
    if targets is not None:
        return TARGETS_VERSION
    return VARIABLE_SHAPE_VERSION if layout.variable else FIXED_SHAPE_VERSION


def _flat_arrays(layout: Layout) -> dict:
    """The manifest's fields of variable-shape samples."""
    if not layout.variable:
        return {}
    return {"chunk_elements": layout.chunk_elements, "shard_elements": layout.shard_elements,
            "data_nbytes": layout.data_nbytes}  # fmt: skip
