"""Planning a conversion: sizes, the chunk and shard layout, the shard tasks, and the plan a
resume must match."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np

from ..errors import OptionError
from ..gcpause import paused_gc
from ..inputs.finder import Within
from ..inputs.samples import new_ref
from ..inputs.scan import Sample, SourceSet
from ..storage.backends import Layout
from .shardtask import ShardTask
from .workdir import DIGESTS_OF, input_digests

CHUNK_TARGET_BYTES = 256 * 1024
# A random read decodes a whole compressed chunk for the rows it wants: smaller chunks waste less.
COMPRESSED_CHUNK_TARGET_BYTES = 64 * 1024
DEFAULT_SHARD_SIZE = "128MB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(text: str | int) -> int:
    """Bytes from `256MB`, `1MiB`, `4096`."""
    if isinstance(text, int):
        size = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
        if not match or match.group(2).upper() not in _UNITS:
            raise OptionError(f"size {text!r} not understood; use e.g. 256MB, 1GiB or 4096")
        size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size < 1:
        raise OptionError(f"size {text!r} must be positive")
    return size


def choose_layout(sources: SourceSet, chunk_rows: int | None, shard_size: int, compression: str) -> Layout:
    """Chunks of ~256 KiB (64 KiB compressed; a power of two of rows) unless given; shards a whole
    number of chunks."""
    n = len(sources.samples)
    nbytes = sources.sample_nbytes
    if chunk_rows is None:
        target = CHUNK_TARGET_BYTES if compression == "none" else COMPRESSED_CHUNK_TARGET_BYTES
        chunk_rows = 2 ** max(0, math.floor(math.log2(max(1, target // nbytes))))
    if chunk_rows < 1:
        raise OptionError(f"chunk rows must be >= 1, got {chunk_rows}")
    chunk_rows = min(chunk_rows, n)
    shard_rows = max(1, shard_size // (nbytes * chunk_rows)) * chunk_rows
    shard_rows = min(shard_rows, math.ceil(n / chunk_rows) * chunk_rows)
    return layout_like(sources, Layout(n, sources.sample_shape, sources.dtype, chunk_rows, shard_rows, compression))


def layout_like(sources: SourceSet, layout: Layout) -> Layout:
    """`layout`'s rows per chunk and shard and its compression, for `sources`' shape and dtype: the
    samples' own, or their target arrays' (`writing.targets`), which share the samples' rows."""
    nbytes = sources.sample_nbytes
    if layout.chunk_rows * nbytes >= 2**32:
        raise OptionError(f"a chunk of {layout.chunk_rows} samples of {nbytes} bytes exceeds 4 GiB; lower --chunk-rows")
    layout = Layout(len(sources.samples), sources.sample_shape, stored_dtype(sources.dtype), layout.chunk_rows,
                    layout.shard_rows, layout.compression)  # fmt: skip
    return layout if sources.shapes is None else _with_flat_arrays(layout, sources)


def _with_flat_arrays(layout: Layout, sources: SourceSet) -> Layout:
    """Variable-shape samples (sizes above are their mean): chunks of about `chunk_rows` mean samples'
    values, and shard cells that hold the largest shard (see `storage.ragged`)."""
    sizes = sources.shapes.prod(axis=1)
    itemsize = layout.dtype.itemsize
    chunk = max(1, round(layout.chunk_rows * float(sizes.mean())))
    if chunk * itemsize >= 2**32:
        raise OptionError(f"a chunk of {chunk} values of {itemsize} bytes exceeds 4 GiB; lower --chunk-rows")
    largest = int(np.add.reduceat(sizes, np.arange(0, len(sizes), layout.shard_rows)).max())
    return dataclasses.replace(layout, chunk_elements=chunk, shard_elements=-(-largest // chunk) * chunk,
                               data_nbytes=int(sizes.sum()) * itemsize)  # fmt: skip


def stored_dtype(source: np.dtype) -> np.dtype:
    """Little-endian: what Zarr v3 stores anyway, and what readers on every common CPU want."""
    return source.newbyteorder("<") if source.byteorder == ">" else source


@paused_gc()
def plan_record(sources: SourceSet, layout: Layout, format: str, targets: str | None = None) -> dict:
    """Everything that determines the output: a resume must match it exactly. A sample in a file
    holding several also has its place in it (an `--ids` file reordered names other rows). The target
    arrays' own plan covers their files; this one names where they come from, if they do."""
    return {
        "format": format,
        "num_samples": layout.num_samples,
        "sample_shape": list(layout.sample_shape),
        "dtype": layout.dtype.str,
        "chunk_rows": layout.chunk_rows,
        "shard_rows": layout.shard_rows,
        **({"chunk_elements": layout.chunk_elements, "shard_elements": layout.shard_elements} if layout.variable
           else {}),
        "compression": layout.compression,
        "class_names": sources.class_names,
        "input_digests": input_digests([input_text(s) for s in sources.samples]),
        "digests_of": DIGESTS_OF,
        **({} if targets is None else {"targets": targets}),
    }


def input_text(s: Sample) -> str:
    """What an input's digest covers: `ascii()` of [id, split, label, path, *stamp, *place, *weight],
    spelled out for a whole local file without a weight (the same text at 0.6 of the cost: a list
    built per sample and its `ascii()` took 0.27 s of a 3 s conversion of 100,000 small files)."""
    if s.within is None and s.weight is None and len(s.stamp) == 2:
        return f"[{s.id!a}, {s.split!a}, {s.label!a}, {str(s.path)!a}, {s.stamp[0]!a}, {s.stamp[1]!a}]"
    return ascii([s.id, s.split, s.label, str(s.path), *s.stamp, *_place(s.within), *_weight(s.weight)])


def _weight(weight: float | None) -> list[float]:
    """A weight, for weighted stores only: the plans of others stay as they were."""
    return [] if weight is None else [weight]


def _place(within: Within | None) -> list:
    """Nothing for a whole file, so that the plans of per-ID files stay as they were."""
    return [] if within is None else [within.member, within.index]


@paused_gc()
def make_tasks(
    sources: SourceSet, layout: Layout, format: str, root: Path | str, storage_options: dict | None = None,
    first_shard: int = 0,
) -> list[ShardTask]:
    """One task per shard of `sources`' samples, in cells `first_shard` onwards (an append's are after
    the store's last shard)."""
    refs = [new_ref((s.id, str(s.path), s.data_offset, s.fortran_order, s.within, s.content)) for s in sources.samples]
    return [
        ShardTask(format, str(root), layout, first_shard + k, sources.dtype.str,
                  tuple(refs[first : first + layout.shard_rows]), storage_options,
                  _shapes(sources, first, layout.shard_rows))
        for k, first in enumerate(range(0, len(refs), layout.shard_rows))
    ]  # fmt: skip


def _shapes(sources: SourceSet, first: int, count: int) -> tuple[tuple[int, ...], ...] | None:
    """The shapes of a task's samples, when shapes vary."""
    return None if sources.shapes is None else tuple(map(tuple, sources.shapes[first : first + count].tolist()))
