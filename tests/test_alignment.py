"""Batch placement against 4K aliasing (issue #13): the bytes read never depend on where the source
rows or the batch arrays start modulo 4 KiB, and arrays start where they were asked to."""

from __future__ import annotations

import gc
import math
import zlib

import numpy as np
import pytest
from batch_makers import fill, value
from hdf5_layouts import rewrite_hdf5_shards, run_starts

import shardfeed
from shardfeed.feed.batches import BatchSource
from shardfeed.feed.buffers import BufferPool
from shardfeed.feed.ring import SlotRing
from shardfeed.feed.workers import WorkerPool
from shardfeed.storage.alignment import ALIAS_PERIOD, ALIGNMENT, DEFAULT_RESIDUE, aligned_empty, destination_residue
from shardfeed.storage.backends.rawchunks import RawChunkReader, zlib_decoder

RESIDUES = [0, 16, 64, 2048, 4032, 4095]  # 4095: not even a multiple of the itemsize
ROW_SHAPES = {
    "60B": ((3, 5), "<f4"),
    "784B": ((28, 28), "u1"),  # the small profile's samples
    "4KiB": ((32, 32), "<f4"),  # a multiple of 4 KiB, gathered
    "16KiB": ((64, 64), "<f4"),  # copied row by row
    "20800B": ((40, 130), "<f4"),  # copied row by row, rows drifting modulo 4 KiB
}


def residue_of(array: np.ndarray) -> int:
    return array.ctypes.data % ALIAS_PERIOD


def apart(a: int, b: int, period: int = ALIAS_PERIOD) -> int:
    """Distance of two residues on the circle of `period` bytes."""
    d = (a - b) % period
    return min(d, period - d)


# --- the helper ------------------------------------------------------------------------------


@pytest.mark.parametrize("residue", RESIDUES)
@pytest.mark.parametrize("dtype", ["u1", "<f4", "<f8", "<c16"])
def test_aligned_empty_starts_at_the_residue_asked_for(residue, dtype):
    for shape in [(3, 5), (64, 28, 28), 7, ()]:
        array = aligned_empty(shape, dtype, residue)
        expected_shape = (shape,) if isinstance(shape, int) else shape
        assert array.shape == expected_shape and array.dtype == np.dtype(dtype) and array.flags.c_contiguous
        assert residue_of(array) == residue and array.flags.writeable
    array = aligned_empty((1000,), dtype, residue)
    array[...] = 3
    gc.collect()
    assert (array == 3).all() and array.base is not None  # the view keeps its buffer


def test_aligned_empty_refuses_a_residue_outside_a_period():
    with pytest.raises(ValueError, match="residue must be in"):
        aligned_empty((2,), "u1", ALIAS_PERIOD)


@pytest.mark.parametrize("row_nbytes", [131072, 100_000, 150_528, 20_800, 784])
def test_destination_residue_keeps_away_from_every_source(row_nbytes):
    period = math.gcd(row_nbytes, ALIAS_PERIOD)
    for starts in ([0], [1152 + 80 * k for k in range(9)], [112, 368, 1328], [4095]):
        sources = [aligned_empty((4, row_nbytes), "u1", s) for s in starts]
        residue = destination_residue(sources, row_nbytes)
        assert residue % ALIGNMENT == 0
        # Every source row and batch row are then `worst` or more apart modulo 4 KiB: mid-way across
        # the widest free arc between the sources' residues (to a multiple of 64 bytes).
        worst = min(apart(residue, s, period) for s in starts)
        ring = sorted({s % period for s in starts})
        widest = max(b - a for a, b in zip(ring, [*ring[1:], ring[0] + period]))
        assert worst >= widest // 2 - ALIGNMENT // 2
    assert destination_residue([aligned_empty((2, 131072), "u1", 0)], 131072) == 2048  # Zarr's raw chunks
    assert destination_residue([], 784) == DEFAULT_RESIDUE  # compressed chunks: no sources known


# --- the reader, at every source and destination residue ---------------------------------------


@pytest.mark.parametrize("source", RESIDUES)
@pytest.mark.parametrize("row", list(ROW_SHAPES))
@pytest.mark.parametrize("gap", [0, 4096 + 40, None], ids=["one-run", "runs", "zlib"])
def test_reader_gives_identical_bytes_at_every_source_and_destination_residue(tmp_path, source, row, gap):
    sample_shape, dtype = ROW_SHAPES[row]
    chunk_rows, num_chunks = 3, 5
    data = random_samples((chunk_rows * num_chunks, *sample_shape), dtype)
    chunks = [data[k * chunk_rows : (k + 1) * chunk_rows].tobytes() for k in range(num_chunks)]
    if gap is None:
        chunks = [zlib.compress(c) for c in chunks]
    offsets, at = [], ALIAS_PERIOD + source
    for chunk in chunks:
        offsets.append(at)
        at += len(chunk) + (gap or 0)
    path = tmp_path / "chunks.bin"
    with open(path, "wb") as f:
        for offset, chunk in zip(offsets, chunks):
            f.seek(offset)
            f.write(chunk)
    reader = RawChunkReader(path, np.array(offsets), np.array([len(c) for c in chunks]), chunk_rows, sample_shape,
                            np.dtype(dtype), zlib_decoder(15) if gap is None else None)  # fmt: skip
    if gap is not None:  # the runs start where they were meant to
        assert run_starts_of(reader) == [offset % ALIAS_PERIOD for offset in (offsets[:1] if gap == 0 else offsets)]
    rows = np.random.default_rng(2).integers(0, len(data), 40)
    order = np.argsort(rows, kind="stable")
    for destination in RESIDUES:
        out = aligned_empty((len(rows), *sample_shape), dtype, destination)
        out.view(np.uint8)[...] = 0
        if reader.gather(rows, out):
            assert out.tobytes() == data[rows].tobytes()
            out.view(np.uint8)[...] = 0
        reader.read(rows[order], out, order)
        assert out.tobytes() == data[rows].tobytes()
    reader.close()


def run_starts_of(reader: RawChunkReader) -> list[int]:
    return [residue_of(v) for v in reader.raw_runs()[1]]


def random_samples(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    rng = np.random.default_rng(sum(shape))
    return rng.integers(0, 256, shape, dtype=np.uint8) if dtype == "u1" else rng.standard_normal(shape).astype(dtype)


# --- stores, both backends --------------------------------------------------------------------

STORES = {
    "hdf5": ("hdf5", "none", {}),
    "hdf5-index-between-runs": ("hdf5", "none", {"rewrite": {}}),  # as written before issue #13
    "hdf5-userblock": ("hdf5", "none", {"rewrite": {"userblock_size": 512}}),  # runs shifted by 512 bytes
    "hdf5-gzip": ("hdf5", "gzip", {}),
    "zarr": ("zarr", "none", {}),
    "zarr-zstd": ("zarr", "zstd", {}),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """{(store kind, row name): (path, samples in row order)}: 216 samples, a chunk each, 3 shards
    (of 72 chunks: HDF5's default layout puts an index node after ~60)."""
    root = tmp_path_factory.mktemp("aligned")
    made = {}
    for row in ("784B", "16KiB", "20800B"):
        sample_shape, dtype = ROW_SHAPES[row]
        src = root / f"src-{row}"
        src.mkdir()
        samples = random_samples((216, *sample_shape), dtype)
        for k, sample in enumerate(samples):
            np.save(src / f"s{k:02d}.npy", sample)
        for kind, (fmt, compression, extra) in STORES.items():
            out = root / f"{kind}-{row}"
            shard_size = 72 * samples[0].nbytes
            shardfeed.convert(src, out, format=fmt, compression=compression, chunk_rows=1, shard_size=shard_size)
            if "rewrite" in extra:
                rewrite_hdf5_shards(out, **extra["rewrite"])
            order = [int(i[1:]) for i in shardfeed.open_store(out).ids]
            made[kind, row] = out, samples[order]
    return made


@pytest.mark.parametrize("kind", list(STORES))
@pytest.mark.parametrize("row", ["784B", "16KiB", "20800B"])
def test_store_read_gives_identical_bytes_at_every_destination_residue(stores, kind, row):
    path, samples = stores[kind, row]
    store = shardfeed.open_store(path)
    assert len(store.manifest.shards) == 3
    rng = np.random.default_rng(4)
    for rows in (rng.integers(0, 216, 100), rng.integers(72, 144, 40)):  # across shards (repeats), within one
        expected = samples[rows].tobytes()
        for destination in RESIDUES:
            out = aligned_empty((len(rows), *store.sample_shape), store.dtype, destination)
            assert store.read(rows, out=out) is out and out.tobytes() == expected
        assert store.read(rows).tobytes() == expected


@pytest.mark.parametrize("kind", list(STORES))
def test_store_places_its_batches_away_from_its_rows(stores, kind):
    path, _ = stores[kind, "16KiB"]
    store = shardfeed.open_store(path)
    residue = store.batch_residue
    assert residue % ALIGNMENT == 0
    assert residue_of(store.read([3, 200, 7])) == residue == residue_of(store.empty_batch(5))
    if STORES[kind][1] != "none":
        assert residue == DEFAULT_RESIDUE  # decoded chunks: nothing to keep away from
        return
    starts = run_starts(store)
    if kind == "hdf5" or kind == "zarr":  # one run per shard: batches half a period away from it
        assert starts == [2048 if kind == "hdf5" else 0] and apart(residue, starts[0]) == 2048
    else:
        assert len(starts) > 1 and len(set(starts)) > 1
        assert min(apart(residue, s) for s in starts) >= 1024


def test_a_store_pickles_its_residue_and_opens_no_shard_for_it_again(stores):
    import pickle

    store = shardfeed.open_store(stores["hdf5-userblock", "16KiB"][0])
    residue = store.batch_residue
    assert store._readers == {}  # shard 0 was opened for it and closed
    copy = pickle.loads(pickle.dumps(store))
    assert copy._batch_residue == residue and copy.batch_residue == residue and copy._readers == {}


def test_small_samples_from_hdf5_runs_equal_a_per_row_read(stores):
    """Small rows across the runs of old HDF5 shards: one gather per shard, the same bytes as reading
    each row alone and as the library's own reads."""
    store = shardfeed.open_store(stores["hdf5-index-between-runs", "784B"][0])
    library = shardfeed.open_store(stores["hdf5-index-between-runs", "784B"][0], fast=False)
    assert len(run_starts(store)) > 1
    rng = np.random.default_rng(5)
    for rows in (rng.integers(0, 72, 60), rng.integers(0, 216, 100)):
        got = store.read(rows)
        assert got.tobytes() == b"".join(store.read([r]).tobytes() for r in rows.tolist())
        assert got.tobytes() == library.read(rows).tobytes()


# --- batch buffers, the ring and its workers ------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 32, 32), (4, 8)], ids=["pooled", "small"])
def test_buffer_pool_hands_out_arrays_at_the_residue_asked_for(shape):
    pool = BufferPool()
    for residue in (0, 64, 2048, 4032):
        array = pool.take(shape, np.float32, residue)
        assert residue_of(array) == residue and array.shape == shape
        address = array.ctypes.data
        del array
        again = pool.take(shape, np.float32, residue)
        assert residue_of(again) == residue
        if shape == (64, 32, 32):
            assert again.ctypes.data == address  # reused for the same residue
            assert pool.take(shape, np.float32, (residue + 64) % 4096).ctypes.data != address


def test_generator_batches_start_at_the_store_residue(stores):
    path, samples = stores["hdf5-userblock", "16KiB"]
    source = BatchSource(shardfeed.open_store(path), batch_size=16, seed=1, dtype=None, labels=None)
    (x,) = source.batch(0, 1)
    assert residue_of(x) == source.store.batch_residue
    assert x.tobytes() == samples[source.batch_rows(0, 1)].tobytes()


@pytest.mark.parametrize("residue", [0, 64, 2048, 4032])
def test_ring_slots_start_near_their_residue_and_read_identical_bytes(stores, residue):
    path, samples = stores["zarr", "16KiB"]
    source = BatchSource(shardfeed.open_store(path), batch_size=8, seed=2, dtype=None, labels=None)
    ring = SlotRing(source.specs(), slots=4, residue=residue)
    starts = [residue_of(ring.arrays(slot)[0]) for slot in range(4)]
    assert all(s % ALIGNMENT == 0 and apart(s, residue) <= 4 * ALIGNMENT for s in starts) and len(set(starts)) == 4
    for slot in range(4):
        (x,) = ring.arrays(slot)
        rows = source.fill(0, slot, (x,))
        assert x[:rows].tobytes() == samples[source.batch_rows(0, slot)].tobytes()
    ring.close()


def test_ring_refuses_a_residue_off_the_alignment():
    with pytest.raises(ValueError, match="multiple of 64"):
        SlotRing([((4,), np.float32)], slots=1, residue=16)


def test_workers_attach_the_ring_at_its_residue():
    """A worker lays the ring out as the trainer did: what it writes is where the trainer reads."""
    with WorkerPool(fill, [((64, 1024), np.float32), ((1,), np.int64)], workers=1, residue=1088) as pool:
        pool.submit((1, 2))
        x, _ = pool.get()
        assert apart(residue_of(x), 1088) <= ALIGNMENT and (x == value((1, 2))).all()
