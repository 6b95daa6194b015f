"""The `Store` API: reading rows, IDs, splits, labels, determinism, and refusing unusable stores."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shardfeed
from shardfeed.storage.format import INDEX_NAME, MANIFEST_NAME, WORK_DIR

N = 23
SHAPE = (3, 2)

# One small store per (backend, compression), shared by the read tests (they never write to it).
READ_STORES = [("hdf5", "none"), ("hdf5", "gzip"), ("zarr", "none"), ("zarr", "zstd")]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """{(backend, compression): (path, {id: array})}: 23 int16 samples, chunks of 3, shards of 9."""
    root = tmp_path_factory.mktemp("stores")
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(7)
    arrays = {f"s{k:02d}": rng.integers(-999, 999, size=SHAPE, dtype=np.int16) for k in range(N)}
    for sample_id, array in arrays.items():
        np.save(src / f"{sample_id}.npy", array)
    ids = list(arrays)
    partition = {"train": ids[5:], "test": ids[:5][::-1]}
    labels = {i: k % 4 for k, i in enumerate(ids)}
    made = {}
    for fmt, compression in READ_STORES:
        out = root / f"{fmt}-{compression}"
        shardfeed.convert(src, out, labels=labels, partition=partition, format=fmt,
                          compression=compression, chunk_rows=3, shard_size=9 * 12)  # fmt: skip
        made[fmt, compression] = out
    return made, arrays, labels, partition


@pytest.fixture(params=READ_STORES, ids=["-".join(p) for p in READ_STORES])
def store_path(request, stores):
    made, arrays, labels, partition = stores
    return made[request.param], arrays, labels, partition


def expected_rows(store, arrays, rows) -> np.ndarray:
    return np.stack([arrays[store.ids[r]] for r in rows]) if len(rows) else np.empty((0, *SHAPE))


def test_store_describes_itself(store_path):
    path = store_path[0]
    store = shardfeed.open_store(path)
    assert len(store) == N
    assert store.sample_shape == SHAPE
    assert store.dtype == np.dtype("<i2")
    assert store.backend == path.name.split("-")[0]
    assert store.splits == {"train": N - 5, "test": 5}
    assert [s.num_rows for s in store.manifest.shards] == [9, 9, 5]
    assert repr(store) == f"Store({str(path)!r}, backend={store.backend!r}, samples={N})"


def test_store_rows_follow_partition_order(store_path):
    path, _, labels, partition = store_path
    store = shardfeed.open_store(path)
    assert store.ids == partition["train"] + partition["test"]
    for name, members in partition.items():
        rows = store.split(name)
        assert rows.dtype == np.int64
        assert [store.ids[r] for r in rows] == members
        assert store.split_of(rows) == [name] * len(members)
    assert store.labels.tolist() == [labels[i] for i in store.ids]
    assert store.class_names is None
    assert store.num_classes == 4


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "library"])
def test_read_returns_rows_in_asked_order(store_path, fast):
    path, arrays, _, _ = store_path
    store = shardfeed.open_store(path, fast=fast)
    rows = [22, 0, 9, 9, 8, 3, 22, 17, 1, 0]  # unsorted, repeats, every shard, last row
    got = store.read(rows)
    assert got.dtype == store.dtype
    assert got.shape == (len(rows), *SHAPE)
    np.testing.assert_array_equal(got, expected_rows(store, arrays, rows))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(0, N - 1), max_size=40), pick=st.sampled_from(READ_STORES))
def test_fast_and_library_reads_are_identical(stores, rows, pick):
    made, arrays, _, _ = stores
    fast = shardfeed.open_store(made[pick])
    library = shardfeed.open_store(made[pick], fast=False)
    a, b = fast.read(rows), library.read(np.array(rows, dtype=np.int32))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() == expected_rows(fast, arrays, rows).astype("<i2").tobytes()


def test_read_writes_into_out(store_path):
    path, arrays, _, _ = store_path
    store = shardfeed.open_store(path)
    rows = np.array([4, 20, 4, 11])
    buf = np.full((4, *SHAPE), -1, dtype=store.dtype)
    result = store.read(rows, out=buf)
    assert result is buf
    np.testing.assert_array_equal(buf, expected_rows(store, arrays, rows))


@pytest.mark.parametrize(
    "make_out",
    [
        lambda: np.empty((3, *SHAPE), dtype="<i2"),
        lambda: np.empty((2, *SHAPE), dtype="<f4"),
        lambda: np.empty((2, 2, 3), dtype="<i2").transpose(0, 2, 1),
        lambda: np.empty((2, 3, 4), dtype="<i2")[:, :, :2],
    ],
    ids=["shape", "dtype", "transposed", "strided"],
)
def test_read_rejects_unsuitable_out(store_path, make_out):
    store = shardfeed.open_store(store_path[0])
    expected = r"out must be a C-contiguous int16 array of shape \(2, 3, 2\)"
    with pytest.raises(ValueError, match=expected):
        store.read([0, 1], out=make_out())


@pytest.mark.parametrize("rows", [[N], [0, -1], [10**12]])
def test_read_rejects_out_of_range_rows(store_path, rows):
    store = shardfeed.open_store(store_path[0])
    with pytest.raises(IndexError, match=r"row -?\d+ out of range for 23 samples"):
        store.read(rows)


def test_read_of_no_rows_is_empty(store_path):
    store = shardfeed.open_store(store_path[0])
    assert store.read([]).shape == (0, *SHAPE)


def test_rows_inverts_ids(store_path):
    store = shardfeed.open_store(store_path[0])
    assert store.rows(store.ids).tolist() == list(range(N))
    rng = np.random.default_rng(1)
    rows = rng.integers(0, N, size=50)
    assert store.rows([store.ids[r] for r in rows]).tolist() == rows.tolist()
    assert store.rows([]).tolist() == []


@pytest.mark.parametrize(
    ("ids", "message"),
    [([17], r"sample IDs are strings; got 17 \(int\)"), (["s00", None], r"got None \(NoneType\)"),
     ("s00", r"not the single ID 's00': rows\(\['s00'\]\)"), (b"s00", "not the single ID")],
)
def test_rows_refuses_non_string_ids(store_path, ids, message):
    with pytest.raises(TypeError, match=message):
        shardfeed.open_store(store_path[0]).rows(ids)


@pytest.mark.parametrize(
    "unknown",
    [["nope"], ["s01", "ghost", "s99"], ["s0"], ["s01 "], ["s01\x00"], [""], ["S01"]],
    ids=["one", "several", "prefix", "trailing-space", "trailing-nul", "empty", "case"],
)
def test_rows_rejects_unknown_ids(store_path, unknown):
    store = shardfeed.open_store(store_path[0])
    with pytest.raises(KeyError) as excinfo:
        store.rows(["s00", *unknown])
    assert isinstance(excinfo.value, shardfeed.UnknownIDError)
    message = str(excinfo.value)
    missing = [u for u in unknown if u not in store.ids]
    assert f"{len(missing)} unknown sample ID(s)" in message
    for sample_id in missing:
        assert repr(sample_id) in message


def test_split_rejects_unknown_split(store_path):
    store = shardfeed.open_store(store_path[0])
    with pytest.raises(KeyError) as excinfo:
        store.split("validation")
    assert isinstance(excinfo.value, shardfeed.UnknownSplitError)
    assert "no split 'validation'; the store has ['train', 'test']" in str(excinfo.value)


def test_pickled_store_reads_the_same(store_path):
    path = store_path[0]
    for fast in (True, False):
        store = shardfeed.open_store(path, fast=fast)
        before = store.read([0, 12, 22])  # opens handles (mmap / h5py / zarr) that cannot pickle
        data = pickle.dumps(store)
        assert len(data) < 20_000
        clone = pickle.loads(data)
        assert clone.read([0, 12, 22]).tobytes() == before.tobytes()
        assert store.read([0, 12, 22]).tobytes() == before.tobytes()


def test_closed_store_reopens_on_read(store_path):
    store = shardfeed.open_store(store_path[0])
    first = store.read([3, 19])
    store.close()
    assert store.read([3, 19]).tobytes() == first.tobytes()
    with shardfeed.open_store(store_path[0]) as again:
        assert again.read([3, 19]).tobytes() == first.tobytes()


def test_verified_reads_match(store_path):
    store = shardfeed.open_store(store_path[0], verify=True)
    assert store.read(np.arange(N)).shape == (N, *SHAPE)
    assert shardfeed.verify_store(store).ok


# Labels and splits from the different kinds of input.


def test_string_labels_map_to_sorted_class_names(tmp_path, make_npy_dir, backend):
    src, _, partition, arrays = make_npy_dir(n=8, num_classes=None)
    names = ["tiger", "Ant", "cat", "tiger", "bee", "cat", "Ant", "cat"]
    labels = dict(zip(arrays, names, strict=True))
    out = tmp_path / "out"
    shardfeed.convert(src, out, labels=labels, partition=partition, format=backend)
    store = shardfeed.open_store(out)
    assert store.class_names == ["Ant", "bee", "cat", "tiger"]
    assert store.num_classes == 4
    assert [store.class_names[k] for k in store.labels[store.rows(list(labels))]] == names


def test_csv_labels(tmp_path, make_npy_dir, backend):
    src, _, partition, arrays = make_npy_dir(n=5, num_classes=None)
    path = tmp_path / "labels.csv"
    path.write_text("ID,Label\n" + "".join(f"{i},{k * 2}\n" for k, i in enumerate(arrays)) + "\n")
    out = tmp_path / "out"
    shardfeed.convert(src, out, labels=path, partition=partition, format=backend)
    store = shardfeed.open_store(out)
    assert store.labels[store.rows(list(arrays))].tolist() == [0, 2, 4, 6, 8]
    assert store.num_classes == 9
    assert store.class_names is None


def test_unlabeled_store_has_no_labels(tmp_path, make_npy_dir, backend):
    src, _, partition, _ = make_npy_dir(n=5, num_classes=None)
    out = tmp_path / "out"
    shardfeed.convert(src, out, partition=partition, format=backend)
    store = shardfeed.open_store(out)
    assert store.labels is None
    assert store.class_names is None
    assert store.num_classes is None
    assert store.manifest.labeled is False
    assert len(store.read([0, 4])) == 2


def test_no_partition_gives_one_split_of_every_file_sorted_by_id(tmp_path, make_npy_dir, backend):
    src, _, _, arrays = make_npy_dir(n=12, num_classes=None)
    (src / "readme.txt").write_text("not a sample")
    out = tmp_path / "out"
    shardfeed.convert(src, out, format=backend)
    store = shardfeed.open_store(out)
    assert store.splits == {"all": 12}
    assert store.ids == sorted(arrays)
    assert store.ids[:4] == ["id-0", "id-1", "id-10", "id-11"]
    assert store.split("all").tolist() == list(range(12))
    got = store.read(np.arange(12))
    for row, sample_id in enumerate(store.ids):
        assert got[row].tobytes() == arrays[sample_id].tobytes()


def test_unlisted_files_are_counted(tmp_path, make_npy_dir):
    src, _, _, _ = make_npy_dir(n=6, num_classes=None)
    out = tmp_path / "out"
    shardfeed.convert(src, out, partition={"train": ["id-4", "id-1"]})
    store = shardfeed.open_store(out)
    assert store.ids == ["id-4", "id-1"]
    assert store.manifest.source["unlisted_files"] == 4


def test_hidden_files_are_not_samples_without_a_partition(tmp_path, make_npy_dir):
    """macOS leaves `._<name>` AppleDouble files beside copied ones; they are not samples."""
    src, _, _, _ = make_npy_dir(n=3, num_classes=None)
    (src / "._id-0.npy").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    shardfeed.convert(src, tmp_path / "out")
    store = shardfeed.open_store(tmp_path / "out")
    assert store.ids == ["id-0", "id-1", "id-2"] and store.manifest.source["unlisted_files"] == 1


# Same inputs and options twice: the same bytes.


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root) -> dict[str, str]:
    return {str(p.relative_to(root)): _digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_convert_is_deterministic(tmp_path, make_npy_dir, backend, compression, monkeypatch):
    src, labels, partition, _ = make_npy_dir(n=11, shape=(5, 2))
    options = dict(labels=labels, partition=partition, format=backend, compression=compression,
                   chunk_rows=2, shard_size=4 * 40)  # fmt: skip
    first = shardfeed.convert(src, tmp_path / "a", **options)
    # A day later: anything that records the time (zip entries, metadata) would differ.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86_400)
    second = shardfeed.convert(src, tmp_path / "b", **options)
    monkeypatch.undo()
    assert first == second
    a, b = tmp_path / "a", tmp_path / "b"
    assert _digest(a / INDEX_NAME) == _digest(b / INDEX_NAME)
    assert _digest(a / MANIFEST_NAME) == _digest(b / MANIFEST_NAME)
    sa, sb = shardfeed.open_store(a), shardfeed.open_store(b)
    assert sa.checksums.tobytes() == sb.checksums.tobytes()
    assert [s.checksum for s in sa.manifest.shards] == [s.checksum for s in sb.manifest.shards]
    assert len(sa.manifest.shards) == 3
    assert _tree(a) == _tree(b)  # every file, shards included, byte for byte
    # Overwriting with the same inputs reproduces them too.
    shardfeed.convert(src, a, overwrite=True, **options)
    assert _digest(a / INDEX_NAME) == _digest(b / INDEX_NAME)
    assert _digest(a / MANIFEST_NAME) == _digest(b / MANIFEST_NAME)


def test_checksums_are_crc32_of_each_sample(small_store):
    import zlib

    path, arrays = small_store
    store = shardfeed.open_store(path)
    for row, sample_id in enumerate(store.ids):
        assert int(store.checksums[row]) == zlib.crc32(arrays[sample_id].tobytes())


# Stores that must not be opened.


def test_open_refuses_unfinished_store(small_store):
    path, _ = small_store
    (path / MANIFEST_NAME).unlink()
    (path / WORK_DIR).mkdir()
    with pytest.raises(shardfeed.StoreNotFinalizedError, match=r"not finalized.*--resume"):
        shardfeed.open_store(path)


def test_open_refuses_newer_format_version(small_store):
    path, _ = small_store
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["format_version"] = 99
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(shardfeed.StoreFormatError, match=r"format version 99 is newer.*version 3"):
        shardfeed.open_store(path)


def test_open_refuses_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such store"):
        shardfeed.open_store(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"not a shardfeed store \(no manifest\.json\)"):
        shardfeed.open_store(tmp_path / "empty")


def test_open_refuses_corrupt_index(small_store):
    path, _ = small_store
    data = bytearray((path / INDEX_NAME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / INDEX_NAME).write_bytes(bytes(data))
    with pytest.raises(shardfeed.StoreFormatError, match=r"index checksum does not match"):
        shardfeed.open_store(path)


def test_read_reports_missing_shard(small_store):
    path, _ = small_store
    store = shardfeed.open_store(path)
    last = store.manifest.shards[-1]
    victim = path / last.path
    if victim.is_dir():
        shutil.rmtree(victim)
    else:
        victim.unlink()
    assert len(store.read([0])) == 1
    with pytest.raises(FileNotFoundError, match=r"shard \d+ is missing"):
        store.read([last.first_row])


@pytest.mark.parametrize("sample_shape", [(3, 5), (64, 64)], ids=["small-rows", "row-per-copy"])
@pytest.mark.parametrize("gap", [0, 24], ids=["one-run", "chunk-per-run"])
def test_raw_chunk_reader_any_layout_any_order(tmp_path, sample_shape, gap):
    """Chunks back to back (one view) or apart (a view per run): rows in any order, repeats too."""
    from shardfeed.storage.backends.rawchunks import RawChunkReader

    chunk_rows, num_chunks = 4, 6
    data = np.random.default_rng(5).standard_normal((chunk_rows * num_chunks, *sample_shape)).astype("<f4")
    chunk_nbytes = data[:chunk_rows].nbytes
    offsets = np.arange(num_chunks) * (chunk_nbytes + gap) + 8
    path = tmp_path / "chunks.bin"
    with open(path, "wb") as f:
        for k, offset in enumerate(offsets):
            f.seek(offset)
            f.write(data[k * chunk_rows : (k + 1) * chunk_rows].tobytes())
    reader = RawChunkReader(path, offsets, np.full(num_chunks, chunk_nbytes), chunk_rows, sample_shape,
                            np.dtype("<f4"), None)  # fmt: skip
    rows = np.random.default_rng(6).integers(0, len(data), 40)
    out = np.empty((len(rows), *sample_shape), "<f4")
    assert reader.gather(rows, out)
    np.testing.assert_array_equal(out, data[rows])
    order = np.argsort(rows, kind="stable")
    out[...] = 0
    reader.read(rows[order], out, order)
    np.testing.assert_array_equal(out, data[rows])
    reader.close()


@pytest.mark.parametrize(("fmt", "compression"), [("hdf5", "none"), ("zarr", "none"), ("zarr", "zstd")])
def test_large_rows_across_shards_in_any_order(tmp_path, make_npy_dir, fmt, compression):
    """16 KiB samples, 2 per shard: a batch spans shards (copied row by row from raw shards,
    grouped by shard otherwise), in the caller's order, repeats included."""
    src, _, _, arrays = make_npy_dir(n=30, shape=(64, 64), num_classes=None)
    shardfeed.convert(src, tmp_path / "s", format=fmt, compression=compression, chunk_rows=1, shard_size=2 * 16384)
    fast, library = shardfeed.open_store(tmp_path / "s"), shardfeed.open_store(tmp_path / "s", fast=False)
    assert len(fast.manifest.shards) == 15
    rows = np.random.default_rng(8).integers(0, 30, 50)
    got = fast.read(rows)
    assert got.tobytes() == library.read(rows).tobytes()
    assert all(got[i].tobytes() == arrays[fast.ids[r]].tobytes() for i, r in enumerate(rows.tolist()))


@pytest.mark.parametrize("fmt", ["hdf5", "zarr"])
def test_small_rows_across_shards_in_any_order(tmp_path, make_npy_dir, fmt):
    """48-byte samples, 4 chunks of 2 per shard: a batch spans shards, each shard's rows gathered
    from its one run of chunks into the caller's positions, repeats included."""
    src, _, _, arrays = make_npy_dir(n=40, shape=(4, 3), num_classes=None)
    shardfeed.convert(src, tmp_path / "s", format=fmt, chunk_rows=2, shard_size=8 * 48)
    fast, library = shardfeed.open_store(tmp_path / "s"), shardfeed.open_store(tmp_path / "s", fast=False)
    assert len(fast.manifest.shards) == 5 and len(fast._reader(1).raw_runs()[0]) == 1
    rows = np.random.default_rng(10).integers(0, 40, 64)
    got = fast.read(rows)
    assert got.tobytes() == library.read(rows).tobytes()
    assert all(got[i].tobytes() == arrays[fast.ids[r]].tobytes() for i, r in enumerate(rows.tolist()))


def test_large_rows_across_hdf5_shards_with_several_runs(tmp_path, make_npy_dir):
    """HDF5 puts chunk index nodes between runs of chunks (shards written before issue #13, or by
    h5py's defaults): rows come from the right run."""
    from hdf5_layouts import rewrite_hdf5_shards

    src, _, _, arrays = make_npy_dir(n=300, shape=(64, 64), num_classes=None)  # 16 KiB samples
    shardfeed.convert(src, tmp_path / "s", format="hdf5", chunk_rows=1, shard_size=150 * 16384)
    rewrite_hdf5_shards(tmp_path / "s")
    store = shardfeed.open_store(tmp_path / "s")
    assert len(store.manifest.shards) == 2 and len(store._reader(0).raw_runs()[0]) > 1
    rows = np.random.default_rng(9).integers(0, 300, 200)
    got = store.read(rows)
    assert all(got[i].tobytes() == arrays[store.ids[r]].tobytes() for i, r in enumerate(rows.tolist()))
