"""Variable-shape samples: how a store holds them, checks their index, and reads them back.

A store of samples whose shapes differ on some axes (same dtype and number of dimensions; the
manifest's `sample_shape` is e.g. `(None, 40)`) keeps, in each shard, its samples' C-order values
back to back: one flat array per shard, cut into chunks of `chunk_elements` values (~256 KiB, 64 KiB
compressed) with the last chunk's tail zero. The backends store that flat array as a fixed-shape
array with one chunk per row, shape `(chunks, chunk_elements)` (`Layout.flat`, `flat_manifest`),
so HDF5's chunk index, Zarr's sharding codec (shard k in cell k, a cell of `shard_elements` values,
chunks past a shard's end absent from its index), the raw mmap reader and the decoders all work
unchanged, and no per-value index array is ever built: a read names whole chunks. The index
records every sample's shape (`shapes`, int64 `(n, ndim)`) and where its values start in its
shard (`offsets`); both are checked when a store opens (`check_shapes`): shapes agree with the
manifest's fixed axes, no dimension below 1, no product that overflows or exceeds a shard cell,
offsets from 0 up, each sample starting where the previous one ends (no overlaps, no gaps), ends
within the shard's cell, and the sum what the manifest says (`data_nbytes`).

Why not bucketed padded arrays: padding costs disk and bandwidth in proportion to the spread of
lengths (measured with `shardfeed inspect` on the README's spectrograms of 50-400 frames: 42.8 % of
a random batch of 32 is padding, 44.1 % padded to the longest), the buckets' bounds are a guess made at conversion,
and a batch of another size or padding rule would have to strip or re-pad anyway. A flat array
reads a sample as one slice of the mapped chunk bytes when uncompressed, and decodes exactly the
chunks a sample spans when compressed; padding happens once, into the batch (`read_padded`).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable

import numpy as np

from ..errors import OptionError, StoreFormatError
from .files import checksum
from .format import FIXED_SHAPE_VERSION

VERIFY_BLOCK_BYTES = 32 * 2**20  # values decoded at once when checking a whole shard

Visit = Callable[[int, np.ndarray], None]  # (position, the sample's values, 1-D, valid during the call)


def flat_manifest(manifest, counts: np.ndarray):
    """The manifest of the fixed-shape array of chunk rows the backends store, shard k holding
    `counts[k]` values: what `Backend.open_reader` checks a shard against."""
    ce = manifest.chunk_elements
    rows = (-(-counts // ce)).tolist()
    firsts = np.concatenate(([0], np.cumsum(rows)[:-1])).tolist()
    shards = tuple(
        dataclasses.replace(s, first_row=f, last_row=f + r - 1) for s, f, r in zip(manifest.shards, firsts, rows)
    )
    return dataclasses.replace(
        manifest, num_samples=int(sum(rows)), sample_shape=(ce,), chunk_rows=1, shards=shards,
        shard_rows=manifest.shard_elements // ce, format_version=FIXED_SHAPE_VERSION,
        chunk_elements=None, shard_elements=None, data_nbytes=None,
    )  # fmt: skip


def check_shapes(shapes, offsets, ids: np.ndarray, manifest, where: str) -> None:
    """Refuse an index whose shapes or offsets disagree with the manifest, or could steer a read
    outside a sample's shard (see the module docstring for what is checked)."""
    if not manifest.variable:
        if shapes is not None or offsets is not None:
            raise StoreFormatError(f"{where}: the index holds shapes or offsets, but the manifest's samples all have "
                                   f"shape {manifest.sample_shape}")  # fmt: skip
        return
    _sizes_and_counts(shapes, offsets, ids, manifest, where)


def _sizes_and_counts(shapes, offsets, ids, manifest, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of each sample and of each shard, from an index `check_shapes` accepts."""
    n, ndim = manifest.num_samples, len(manifest.sample_shape)
    for name, array, shape in (("shapes", shapes, (n, ndim)), ("offsets", offsets, (n,))):
        if array is None:
            raise StoreFormatError(f"{where}: the index lacks {name}, which a store of variable-shape samples needs")
        if array.dtype != np.int64 or array.shape != shape:
            raise StoreFormatError(f"{where}: {name} has dtype {array.dtype} and shape {array.shape}, "
                                   f"expected int64 {shape}")  # fmt: skip
    cell = manifest.shard_elements

    def refuse(rows: np.ndarray, problem: str) -> None:
        if len(rows):
            r = int(rows[0])
            sample_id = ids[r].decode("utf-8", "replace") if len(ids) > r else "?"
            shard = manifest.shards[int(manifest.locate(np.array([r]))[0])].path
            raise StoreFormatError(f"{where}: sample {sample_id!r} (row {r}, shard {shard}) has shape "
                                   f"{tuple(shapes[r].tolist())} and offset {int(offsets[r])}: {problem}")  # fmt: skip

    for axis, length in enumerate(manifest.sample_shape):
        if length is not None:
            refuse(np.flatnonzero(shapes[:, axis] != length), f"axis {axis} must be {length}, as the manifest says")
    refuse(np.flatnonzero((shapes < 1).any(axis=1)), "dimensions must be >= 1")
    sizes = np.ones(n, dtype=np.int64)
    for axis in range(ndim):  # a check before each product: sizes stay <= cell (<= 2**44), never overflow
        too_many = np.flatnonzero(shapes[:, axis] > cell // sizes)
        refuse(too_many, f"more values than a shard cell holds ({cell}): its product overflows, or the index lies")
        sizes *= shapes[:, axis]
    refuse(np.flatnonzero((offsets < 0) | (offsets > cell - sizes)), f"its values would end past its shard's cell "
                                                                     f"of {cell} values")  # fmt: skip
    ends = offsets + sizes
    firsts = np.array([s.first_row for s in manifest.shards], dtype=np.int64)
    refuse(firsts[offsets[firsts] != 0], "the first sample of a shard starts at offset 0")
    same_shard = np.ones(n, dtype=bool)
    same_shard[firsts] = False
    follows = np.flatnonzero(same_shard[1:] & (offsets[1:] != ends[:-1])) + 1
    refuse(follows, f"samples overlap or leave a gap: it must start where the previous one ends "
                    f"({int(ends[follows[0] - 1]) if len(follows) else 0})")  # fmt: skip
    counts = ends[[s.last_row for s in manifest.shards]]
    nbytes = int(counts.sum()) * np.dtype(manifest.dtype).itemsize
    if nbytes != manifest.data_nbytes:
        raise StoreFormatError(f"{where}: the samples' shapes add up to {nbytes} bytes, the manifest says "
                               f"data_nbytes {manifest.data_nbytes}")  # fmt: skip
    return sizes, counts


class RaggedIndex:
    """What reading variable-shape samples needs: each row's shape, offset and number of values, and
    the manifest of the flat arrays the backends store (`flat`). Built from a checked index."""

    def __init__(self, index, manifest, where: str) -> None:
        self.shapes, self.offsets = index.shapes, index.offsets
        self.sizes, self.counts = _sizes_and_counts(index.shapes, index.offsets, index.ids, manifest, where)
        self.chunk_elements = manifest.chunk_elements
        self.flat = flat_manifest(manifest, self.counts)

    @property
    def max_shape(self) -> tuple[int, ...]:
        """The largest length of each axis over the store: what padding="max" pads to."""
        return tuple(self.shapes.max(axis=0, initial=1).tolist())

    @property
    def min_shape(self) -> tuple[int, ...]:
        return tuple(self.shapes.min(axis=0).tolist()) if len(self.shapes) else self.max_shape


def varying_shape_text(store) -> str:
    """`(None, 40), from (12, 40) to (398, 40)`: what a message says about a store's shapes."""
    ragged = store.ragged
    return f"{store.sample_shape}, from {ragged.min_shape} to {ragged.max_shape}"


def padding_needed(store) -> str:
    """Why a variable-shape store cannot make batches of one shape without padding, and what to pass."""
    return (f"{store.path}: samples vary in shape {varying_shape_text(store)}; a batch needs one shape: pass "
            f"padding='batch' (each batch padded to its largest sample) or padding='max' (every batch padded to "
            f"{store.ragged.max_shape}), with bucket_by_length=True to pad less; or read(rows) for a list of arrays")


def read_list(store, rows: np.ndarray, out: np.ndarray | None = None) -> list[np.ndarray]:
    """`Store.read` of variable-shape samples: a list of arrays, views of one buffer (a kept sample keeps
    its batch's buffer alive), each byte for byte its source."""
    if out is not None:
        raise OptionError(f"{store.path}: samples vary in shape {varying_shape_text(store)}, so read(rows, out=...) "
                          f"has no one shape to fill; call read(rows) for a list of arrays, or use "
                          f"DataGenerator(..., padding='batch') for padded batches")  # fmt: skip
    _check_rows(store, rows)
    ragged = store.ragged
    sizes = ragged.sizes[rows]
    flat = np.empty(int(sizes.sum()), dtype=store.dtype)
    read_values(store, rows, flat)
    ends = np.cumsum(sizes).tolist()
    return [flat[e - s : e].reshape(shape) for e, s, shape in zip(ends, sizes.tolist(), ragged.shapes[rows].tolist())]


def read_values(store, rows: np.ndarray, out: np.ndarray) -> None:
    """The samples at `rows`, their values back to back in the 1-D `out` (cast to its dtype)."""
    _check_rows(store, rows)
    sizes = store.ragged.sizes[rows]
    ends = np.cumsum(sizes)
    starts = (ends - sizes).tolist()
    ends = ends.tolist()

    def put(i: int, values: np.ndarray) -> None:
        np.copyto(out[starts[i] : ends[i]], values, casting="unsafe")

    _visit(store, rows, put)


def read_padded(store, rows: np.ndarray, out: np.ndarray, pad_value=0) -> None:
    """The samples at `rows` into `out` (`(len(rows), *shape)`, `shape` at least each sample's), each at
    the start of every axis (post-padding, as Keras' `pad_sequences`), the rest `pad_value`."""
    _check_rows(store, rows)
    shapes = store.ragged.shapes[rows].tolist()
    out[...] = pad_value

    def put(i: int, values: np.ndarray) -> None:
        shape = shapes[i]
        np.copyto(out[(i, *(slice(0, d) for d in shape))], values.reshape(shape), casting="unsafe")

    _visit(store, rows, put)


def _check_rows(store, rows: np.ndarray) -> None:
    if len(rows) and (rows.min() < 0 or rows.max() >= len(store)):
        bad = int(rows.min()) if rows.min() < 0 else int(rows.max())
        raise IndexError(f"{store.path}: row {bad} out of range for {len(store)} samples")


def _visit(store, rows: np.ndarray, visit: Visit) -> None:
    """`visit(i, values)` for each position i of `rows` (in range), shard by shard."""
    if not len(rows):
        return
    ragged = store.ragged
    shards = np.searchsorted(store.manifest.shard_starts, rows, side="right") - 1
    order = np.argsort(shards, kind="stable")
    bounds = np.flatnonzero(np.diff(shards[order])) + 1
    for positions in np.split(order, bounds):
        local = rows[positions]
        reader = store._reader(int(shards[positions[0]]))
        visit_shard(reader, ragged.offsets[local], ragged.sizes[local], ragged.chunk_elements, store.dtype,
                    _relabel(visit, positions.tolist()))  # fmt: skip


def _relabel(visit: Visit, positions: list[int]) -> Visit:
    return lambda j, values: visit(positions[j], values)


def visit_shard(
    reader, starts: np.ndarray, sizes: np.ndarray, chunk_elements: int, dtype: np.dtype, visit: Visit
) -> None:
    """`visit(j, values)` for each sample j of one shard: its `sizes[j]` values from `starts[j]` on.

    Raw chunks: a slice of the mapped file (two pieces joined where a sample crosses from one run of
    chunks to the next). Otherwise the chunks the samples span are read once, in one call, which
    decodes them in parallel.
    """
    runs = reader.raw_runs()
    if runs is not None:
        firsts = [first * chunk_elements for first in runs[0]]
        values = [view.reshape(-1) for view in runs[1]]
        for j, (start, size) in enumerate(zip(starts.tolist(), sizes.tolist())):
            run = bisect.bisect_right(firsts, start) - 1
            lo = start - firsts[run]
            if lo + size <= len(values[run]):
                visit(j, values[run][lo : lo + size])
            else:
                visit(j, _across_runs(firsts, values, start, size))
        return
    first, last = starts // chunk_elements, (starts + sizes - 1) // chunk_elements
    spans = last - first + 1
    within = np.arange(int(spans.sum())) - np.repeat(np.cumsum(spans) - spans, spans)
    chunks = np.unique(np.repeat(first, spans) + within)
    buf = np.empty((len(chunks), chunk_elements), dtype=dtype)
    reader.read(chunks, buf, np.arange(len(chunks)))
    flat = buf.reshape(-1)
    at = (np.searchsorted(chunks, first) * chunk_elements + starts - first * chunk_elements).tolist()
    for j, size in enumerate(sizes.tolist()):
        visit(j, flat[at[j] : at[j] + size])


def _across_runs(firsts: list[int], values: list[np.ndarray], start: int, size: int) -> np.ndarray:
    pieces = []
    while size > 0:
        run = bisect.bisect_right(firsts, start) - 1
        lo = start - firsts[run]
        piece = values[run][lo : lo + size]
        pieces.append(piece)
        start, size = start + len(piece), size - len(piece)
    return np.concatenate(pieces)


def shard_checksums(reader, starts: np.ndarray, sizes: np.ndarray, chunk_elements: int, dtype: np.dtype) -> np.ndarray:
    """CRC32 of each sample of one shard (`verify`, and a resume's check of a finished shard), reading
    about 32 MiB of values at a time."""
    out = np.empty(len(starts), dtype=np.uint32)
    ends = np.cumsum(sizes)
    block = max(1, VERIFY_BLOCK_BYTES // np.dtype(dtype).itemsize)
    first = 0
    while first < len(starts):
        stop = max(first + 1, int(np.searchsorted(ends, ends[first] - sizes[first] + block, side="right")))

        def put(j: int, values: np.ndarray, first=first) -> None:
            out[first + j] = checksum(values)

        visit_shard(reader, starts[first:stop], sizes[first:stop], chunk_elements, dtype, put)
        first = stop
    return out
