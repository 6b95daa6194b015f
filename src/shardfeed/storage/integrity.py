"""Verification: re-read every sample and compare it with its checksum (and, optionally, its source).

`verify_store` never stops at the first problem: it reports every failing shard and sample ID,
so a user can see the extent of the damage at once. Each shard file is also compared whole
with its size and CRC32 in the manifest, which catches damage no sample read would notice
(container metadata, padding, unused index slots).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, ShardfeedError
from ..inputs.finder import SampleFinder
from ..inputs.samples import SampleRef, read_samples
from ..inputs.scan import ids_for, open_finder
from .backends import Layout, ShardReader
from .files import checksum, file_checksum
from .format import MANIFEST_NAME, TARGETS_DIR
from .manifest import ShardInfo
from .ragged import shard_checksums
from .store import Store

BLOCK_BYTES = 32 * 1024 * 1024
SOURCE_BATCH = 256  # source samples read at once (concurrently, for URLs)


@dataclass
class VerifyReport:
    """What `verify_store` found; `ok` only when every shard and sample matched."""

    samples_checked: int = 0
    targets_checked: int = 0  # target arrays (`Store.targets`), checked as samples are
    bad_shards: dict[str, str] = field(default_factory=dict)  # shard path -> reason
    bad_samples: dict[str, str] = field(default_factory=dict)  # sample ID -> reason

    @property
    def ok(self) -> bool:
        return not self.bad_shards and not self.bad_samples


def sample_checksums(reader: ShardReader, num_rows: int, layout: Layout) -> np.ndarray:
    """CRC32 of every row of one shard, read in blocks of about 32 MiB."""
    block_rows = max(1, BLOCK_BYTES // max(1, layout.sample_nbytes))
    out = np.empty(num_rows, dtype=np.uint32)
    buf = np.empty((min(block_rows, num_rows), *layout.sample_shape), dtype=layout.dtype)
    for start in range(0, num_rows, block_rows):
        rows = np.arange(start, min(start + block_rows, num_rows), dtype=np.int64)
        view = buf[: len(rows)]
        reader.read(rows, view, np.arange(len(rows)))
        for i in range(len(rows)):
            out[start + i] = checksum(view[i])
    return out


def verify_store(
    store: Store,
    source: str | os.PathLike | None = None,
    progress: Callable[[int], None] | None = None,
    ids: str | os.PathLike | Sequence[str] | None = None,
    targets: str | os.PathLike | None = None,
) -> VerifyReport:
    """Check every sample against its checksum, and with `source` against its source; and so the
    target arrays, if the store has them, against their source `targets`.

    `source` is what the store was converted from (a folder, a folder per class, a `.npy` of shape
    (N, ...) with the same `ids` as then, an `.npz`, or an fsspec URL, opened with the store's
    storage options); `targets` likewise what `--targets` was.
    """
    report = VerifyReport()
    finder = None if source is None else open_finder(source, store.storage_options, ids)
    report.samples_checked = _verify_shards(store, finder, progress, report)
    if store.manifest.targets_checksum is not None:
        _verify_targets(store, targets, progress, ids, report)
    elif targets is not None:
        report.bad_shards[MANIFEST_NAME] = f"the store has no target arrays to compare with {targets}"
    return report


def _verify_shards(store: Store, finder: SampleFinder | None, progress, report: VerifyReport, prefix: str = "") -> int:
    """Every shard of `store` and its samples into `report`, shard paths as `prefix` + path (the target
    arrays' shards are `targets/...` of the store the user verifies); returns the samples checked."""
    manifest = store.manifest
    if not manifest.content_intact:
        report.bad_shards[prefix + MANIFEST_NAME] = "its content does not match its checksum (edited after conversion?)"
    checked = 0
    layout = Layout(
        manifest.num_samples, manifest.sample_shape, manifest.np_dtype,
        manifest.chunk_rows, manifest.shard_rows, manifest.compression,
    )  # fmt: skip
    expected = store.checksums
    ids = store.ids
    for k, shard in enumerate(manifest.shards):
        where = prefix + shard.path
        problem = _file_problem(store, shard)
        reasons = [problem] if problem else []
        try:
            actual = _shard_checksums(store, k, layout)
        except Exception as exc:  # any failure to read a shard is a finding, not a crash
            reasons.append(f"{type(exc).__name__}: {exc}")
            for row in range(shard.first_row, shard.last_row + 1):
                _add_reason(report.bad_samples, ids[row], f"in unreadable shard {where}")
        else:
            mismatched = np.flatnonzero(actual != expected[shard.first_row : shard.last_row + 1])
            for local in mismatched:
                bad_id = ids[shard.first_row + local]
                _add_reason(report.bad_samples, bad_id, f"checksum mismatch in shard {where}")
            if len(mismatched):
                reasons.append(f"{len(mismatched)} sample(s) do not match their checksums")
            elif reasons:
                reasons.append("every sample still reads back correctly")
        if reasons:
            report.bad_shards[where] = "; ".join(reasons)
        checked += shard.num_rows
        if finder is not None:
            _compare_with_source(store, finder, shard.first_row, shard.last_row + 1, report)
        if progress:
            progress(shard.num_rows)
    return checked


def _verify_targets(store: Store, source, progress, ids, report: VerifyReport) -> None:
    """The target arrays, verified as a store of their own; what is wrong is reported under their
    shard paths (`targets/...`) and their samples' IDs."""
    try:
        targets = store.targets
    except ShardfeedError as exc:
        report.bad_shards[TARGETS_DIR] = str(exc)
        for sample_id in store.ids:
            _add_reason(report.bad_samples, sample_id, "its target array is unreadable")
        return
    finder = None if source is None else open_finder(source, store.storage_options, ids_for(source, ids))
    found = VerifyReport()
    report.targets_checked = _verify_shards(targets, finder, progress, found, f"{TARGETS_DIR}/")
    report.bad_shards.update(found.bad_shards)
    for sample_id, reason in found.bad_samples.items():
        _add_reason(report.bad_samples, sample_id, f"its target array: {reason}")


def _add_reason(reasons: dict[str, str], sample_id: str, reason: str) -> None:
    reasons[sample_id] = f"{reasons[sample_id]}; {reason}" if sample_id in reasons else reason


def _shard_checksums(store: Store, k: int, layout: Layout) -> np.ndarray:
    shard, ragged = store.manifest.shards[k], store.ragged
    if ragged is None:
        return sample_checksums(store._reader(k), shard.num_rows, layout)
    rows = slice(shard.first_row, shard.last_row + 1)
    return shard_checksums(store._reader(k), ragged.offsets[rows], ragged.sizes[rows], ragged.chunk_elements,
                           store.dtype)  # fmt: skip


def _file_problem(store: Store, shard: ShardInfo) -> str | None:
    """Why the shard file differs from its manifest entry (size, then CRC32), or None."""
    try:
        if store.location is None:
            path = store.path / shard.path
            size, crc = path.stat().st_size, (lambda: file_checksum(path))
        else:
            size = store.location.size(shard.path)
            crc = lambda: checksum(store.location.read_bytes(shard.path))  # noqa: E731
        if size != shard.nbytes:
            return f"file has {size} bytes, the manifest says {shard.nbytes} (truncated?)"
        if crc() != shard.file_checksum:
            return "file bytes do not match the manifest's file checksum (corrupt)"
    except OSError as exc:
        return f"cannot read the shard file: {exc.strerror or exc}"
    return None


def _compare_with_source(store: Store, finder: SampleFinder, start: int, stop: int, report: VerifyReport) -> None:
    """Byte-compare rows [start, stop) with their source files (converted to the stored dtype)."""
    source_dtype = np.dtype(store.manifest.source.get("dtype", store.dtype))
    readable: list[tuple[int, SampleRef]] = []
    shapes = store.shapes  # a property that builds its array: once, not twice per row
    for row, found in zip(range(start, stop), finder.find(store.ids[start:stop])):
        sample_id = store.ids[row]
        if isinstance(found, InputError):
            report.bad_samples.setdefault(sample_id, f"source unreadable: {found}")
        elif (found.header.shape, found.header.dtype) != (shape := tuple(shapes[row].tolist()), source_dtype):
            report.bad_samples.setdefault(
                sample_id, f"source {found.path} holds shape {found.header.shape} dtype {found.header.dtype.str}, "
                f"the store was made from shape {shape} dtype {source_dtype.str}",
            )  # fmt: skip
        else:
            readable.append((row, SampleRef(sample_id, str(found.path), found.header.data_offset,
                                            found.header.fortran_order, found.within, found.content)))  # fmt: skip
    for first in range(0, len(readable), SOURCE_BATCH):
        batch = readable[first : first + SOURCE_BATCH]
        for _, same_shape in itertools.groupby(batch, key=lambda item: shapes[item[0]].tobytes()):
            _compare_batch(store, list(same_shape), source_dtype, report)


def _compare_batch(store: Store, batch: list[tuple[int, SampleRef]], source_dtype: np.dtype, report) -> None:
    """One batch of reads (concurrent for URLs); after a failure, one by one to name each bad source."""
    samples = np.empty((len(batch), *store.shapes[batch[0][0]].tolist()), dtype=store.dtype)  # one shape
    refs = [ref for _, ref in batch]
    try:
        read_samples(refs, samples, source_dtype, store.storage_options)
    except ShardfeedError as exc:
        if len(batch) == 1:
            report.bad_samples.setdefault(refs[0].id, f"source unreadable: {exc}")
        else:
            for item in batch:
                _compare_batch(store, [item], source_dtype, report)
        return
    for i, (row, ref) in enumerate(batch):
        if checksum(samples[i, ...]) != store.checksums[row]:
            report.bad_samples.setdefault(ref.id, f"differs from its source {ref.path}")
