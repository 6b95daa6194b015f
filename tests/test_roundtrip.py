"""Convert then read is byte-identical: every backend, dtype, shape, layout and compression.

Each sample read back (through the fast reader and through the library reader) is compared with
the bytes of its source file in C order, after casting to the source dtype: the stored dtype is
the source dtype made little-endian, so the cast is exact. Conversions run through the API and
through the CLI's `main`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import shardfeed
from shardfeed.cli import main
from shardfeed.inputs import local
from shardfeed.inputs.scan import scan_sources
from shardfeed.storage.format import COMPRESSIONS
from shardfeed.writing.plan import choose_layout, make_tasks

N = 7  # samples per store: small, odd, so chunk and shard boundaries fall mid-way

DTYPES = ["float32", "float16", "uint8", "int64", "bool", "complex64", ">f4", ">i8"]
SHAPES = [(), (5,), (3, 4), (2, 3, 2), (2, 1, 3, 2)]
BACKEND_COMPRESSIONS = [(b, c) for b, names in COMPRESSIONS.items() for c in names]


def little_endian(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def convert(via: str, src, out, **options) -> None:
    """Run a conversion through the library or through the CLI (in-process)."""
    if via == "api":
        shardfeed.convert(src, out, **options)
        return
    argv = ["convert", str(src), str(out), "--quiet", "--format", options.pop("format")]
    for name, value in options.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    assert main(argv) == 0


def assert_roundtrip(out: Path, src: Path, labels_path=None, partition_path=None):
    """Every sample, label and split of the store at `out` matches its source files."""
    partition = json.loads(partition_path.read_text()) if partition_path else None
    labels = json.loads(labels_path.read_text()) if labels_path else None
    ids = [i for split in partition.values() for i in split] if partition else None
    for fast in (True, False):
        store = shardfeed.open_store(out, fast=fast)
        ids = ids or sorted(p.name[:-4] for p in src.glob("*.npy"))
        assert sorted(store.ids) == sorted(ids)
        rows = store.rows(ids)
        got = store.read(rows)
        for k, sample_id in enumerate(ids):
            source = np.load(src / f"{sample_id}.npy", allow_pickle=False)
            assert store.dtype == little_endian(source.dtype), sample_id
            sample = got[k, ...]  # an array even for 0-d samples (a NumPy scalar is native-endian)
            assert sample.shape == source.shape, sample_id
            assert sample.astype(source.dtype).tobytes() == source.tobytes(order="C"), sample_id
        if labels is not None:
            assert store.labels[rows].tolist() == [labels[i] for i in ids]
        else:
            assert store.labels is None
        if partition is not None:
            assert store.splits == {name: len(members) for name, members in partition.items()}
            for name, members in partition.items():
                assert [store.ids[r] for r in store.split(name)] == members
        store.close()
    return store


VIA = pytest.mark.parametrize("via", ["api", "cli"])


@VIA
@pytest.mark.parametrize("shape", [(3, 2), ()], ids=["2d", "0d"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_roundtrip_dtypes(tmp_path, make_npy_dir, backend, dtype, shape, via):
    src, labels, partition, _ = make_npy_dir(n=N, shape=shape, dtype=dtype)
    out = tmp_path / "out"
    convert(via, src, out, labels=labels, partition=partition, format=backend, chunk_rows=3)
    store = assert_roundtrip(out, src, labels, partition)
    assert store.manifest.source["dtype"] == np.dtype(dtype).str


# 0-d and 1-d arrays have no Fortran order of their own.
SHAPE_ORDERS = [(s, f) for s in SHAPES for f in (False, True) if len(s) >= 2 or not f]


@VIA
@pytest.mark.parametrize(
    ("shape", "fortran"), SHAPE_ORDERS, ids=[f"{len(s)}d-{'CF'[f]}" for s, f in SHAPE_ORDERS]
)
def test_roundtrip_shapes(tmp_path, make_npy_dir, backend, shape, fortran, via):
    src, labels, partition, _ = make_npy_dir(n=N, shape=shape, dtype="int64", fortran=fortran)
    if fortran:
        with open(src / "id-0.npy", "rb") as f:
            np.lib.format.read_magic(f)
            _, fortran_order, _ = np.lib.format.read_array_header_1_0(f)
        assert fortran_order, "the fixture did not write a Fortran-ordered file"
    out = tmp_path / "out"
    convert(via, src, out, labels=labels, partition=partition, format=backend, chunk_rows=2)
    store = assert_roundtrip(out, src, labels, partition)
    assert store.sample_shape == shape
    assert store.manifest.source["fortran_order_samples"] == (N if fortran else 0)


# (chunk_rows, shard size in samples or a literal size, expected chunk rows, expected shard sizes)
LAYOUTS = {
    "default": (None, "128MB", N, [N]),
    "one-shard": (3, "1GB", 3, [N]),
    "chunk1-many-shards": (1, 1, 1, [1] * N),
    "chunk3-partial-last-shard": (3, 3, 3, [3, 3, 1]),
    "two-chunks-per-shard": (2, 4, 2, [4, 3]),
    "shard-size-below-one-chunk": (3, "1B", 3, [3, 3, 1]),
    "chunk-larger-than-store": (100, "1GB", N, [N]),
}


@VIA
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_roundtrip_layouts(tmp_path, make_npy_dir, backend, layout, via):
    chunk_rows, shard, expected_chunk, expected_shards = LAYOUTS[layout]
    src, labels, partition, _ = make_npy_dir(n=N, shape=(2, 3), dtype="float32")
    shard_size = shard * 2 * 3 * 4 if isinstance(shard, int) else shard
    out = tmp_path / "out"
    convert(via, src, out, labels=labels, partition=partition, format=backend,
            chunk_rows=chunk_rows, shard_size=shard_size)  # fmt: skip
    store = assert_roundtrip(out, src, labels, partition)
    assert store.manifest.chunk_rows == expected_chunk
    assert [s.num_rows for s in store.manifest.shards] == expected_shards
    assert shardfeed.verify_store(store).ok


@VIA
@pytest.mark.parametrize(("fmt", "compression"), BACKEND_COMPRESSIONS)
def test_roundtrip_compressions(tmp_path, make_npy_dir, fmt, compression, via):
    src, labels, partition, _ = make_npy_dir(n=N, shape=(4, 3), dtype="float32")
    out = tmp_path / "out"
    convert(via, src, out, labels=labels, partition=partition, format=fmt,
            chunk_rows=2, shard_size=3 * 2 * 48, compression=compression)  # fmt: skip
    store = assert_roundtrip(out, src, labels, partition)
    assert store.manifest.compression == compression
    assert len(store.manifest.shards) == 2  # 6 + 1 rows, the last chunk and shard partial


@pytest.mark.parametrize(("fmt", "compression"), BACKEND_COMPRESSIONS)
def test_compression_is_applied(tmp_path, fmt, compression):
    """Compressible samples take much less space on disk, unless compression is 'none'."""
    src = tmp_path / "src"
    src.mkdir()
    for k in range(8):
        np.save(src / f"s{k}.npy", np.full((64, 64), k, dtype="float32"))
    out = tmp_path / "out"
    shardfeed.convert(src, out, format=fmt, compression=compression, chunk_rows=4)
    assert_roundtrip(out, src)
    on_disk = sum(s.nbytes for s in shardfeed.open_store(out).manifest.shards)
    raw = 8 * 64 * 64 * 4
    if compression == "none":
        assert on_disk >= raw
    else:
        assert on_disk < raw / 10


def test_roundtrip_all_zero_shard(tmp_path, backend):
    """Samples equal to the fill value are still written (Zarr skips 'empty' chunks by default)."""
    src = tmp_path / "src"
    src.mkdir()
    for k in range(6):
        np.save(src / f"s{k}.npy", np.zeros((3,), dtype="uint8") + (k >= 3))
    out = tmp_path / "out"
    shardfeed.convert(src, out, format=backend, chunk_rows=3, shard_size=1)
    store = assert_roundtrip(out, src)
    assert len(store.manifest.shards) == 2
    assert shardfeed.verify_store(store).ok


@pytest.mark.parametrize("labels_kind", ["int-json", "str-json", "int-csv", "str-csv"])
def test_roundtrip_label_files(tmp_path, make_npy_dir, backend, labels_kind):
    src, _, partition, arrays = make_npy_dir(n=N, num_classes=None)
    names = ["zebra", "ant", "moose"]
    values = {i: k % 3 for k, i in enumerate(arrays)}
    if labels_kind.startswith("str"):
        values = {i: names[v] for i, v in values.items()}
    if labels_kind.endswith("csv"):
        labels = tmp_path / "labels.csv"
        labels.write_text("id,label\n" + "".join(f"{i},{v}\n" for i, v in values.items()))
    else:
        labels = tmp_path / "labels.json"
        labels.write_text(json.dumps(values))
    out = tmp_path / "out"
    shardfeed.convert(src, out, labels=labels, partition=partition, format=backend)
    store = shardfeed.open_store(out)
    rows = store.rows(list(values))
    if labels_kind.startswith("str"):
        assert store.class_names == sorted(names)
        assert [store.class_names[k] for k in store.labels[rows]] == list(values.values())
    else:
        assert store.class_names is None
        assert store.labels[rows].tolist() == list(values.values())
    assert store.num_classes == 3


# Property: any small array set round-trips, for every dtype kind and layout.
HYPOTHESIS_DTYPES = st.sampled_from(["<f4", ">f4", "<f2", "<f8", "|u1", "<i2", ">i8", "|b1", "<c8"])


@st.composite
def sample_sets(draw):
    dtype = np.dtype(draw(HYPOTHESIS_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4))
    n = draw(st.integers(1, 6))
    arrays = [draw(hnp.arrays(dtype, shape)) for _ in range(n)]
    fortran = draw(st.booleans())
    return arrays, fortran


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=sample_sets(),
    fmt=st.sampled_from(["hdf5", "zarr"]),
    chunk_rows=st.one_of(st.none(), st.integers(1, 4)),
    shard_rows=st.integers(1, 7),
)
def test_roundtrip_property(data, fmt, chunk_rows, shard_rows):
    arrays, fortran = data
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for k, array in enumerate(arrays):
            np.save(src / f"s{k:02d}.npy", np.asfortranarray(array) if fortran else array)
        out = Path(tmp) / "out"
        shardfeed.convert(src, out, format=fmt, chunk_rows=chunk_rows,
                          shard_size=max(1, shard_rows * arrays[0].nbytes))  # fmt: skip
        store = assert_roundtrip(out, src)
        assert store.splits == {"all": len(arrays)}


@pytest.mark.parametrize(("compression", "expected_chunk"), [("none", 16), ("zstd", 4)])
def test_default_chunks_are_smaller_when_compressed(tmp_path, make_npy_dir, compression, expected_chunk):
    """A random read decodes a whole chunk: compressed chunks default to ~64 KiB, raw ones to ~256 KiB."""
    src, _, _, _ = make_npy_dir(n=40, shape=(64, 64), num_classes=None)  # 16 KiB samples
    shardfeed.convert(src, tmp_path / "out", compression=compression)
    store = shardfeed.open_store(tmp_path / "out")
    assert store.manifest.chunk_rows == expected_chunk
    rows = np.random.default_rng(1).permutation(40)
    assert store.read(rows).tobytes() == shardfeed.open_store(tmp_path / "out", fast=False).read(rows).tobytes()


@pytest.mark.parametrize(("dtype", "fortran"), [("float32", False), (">i2", True)])
@pytest.mark.parametrize("workers", [1, 2])
def test_the_scan_keeps_small_files_up_to_its_budget_and_the_rest_are_read_again(
    tmp_path, make_npy_dir, monkeypatch, backend, dtype, fortran, workers
):
    """Small files read whole by the scan are copied from memory; once its budget is spent, files are
    opened again by the writer. Both kinds, in several shards and worker processes, round-trip."""
    src, labels, partition, arrays = make_npy_dir(n=12, shape=(6, 5), dtype=dtype, fortran=fortran)
    file_bytes = (src / "id-0.npy").stat().st_size
    monkeypatch.setattr(local, "KEPT_CONTENT_BYTES", 5 * file_bytes)
    sources = scan_sources(src, json.loads(labels.read_text()), json.loads(partition.read_text()))
    assert [s.content is not None for s in sources.samples] == [True] * 5 + [False] * 7
    assert all(s.content == Path(s.path).read_bytes() for s in sources.samples[:5])
    tasks = make_tasks(sources, choose_layout(sources, 2, 4 * arrays["id-0"].nbytes, "none"), backend, tmp_path)
    assert any(ref.content for task in tasks for ref in task.samples)
    assert not any(ref.content for task in tasks for ref in task.without_contents().samples)
    shardfeed.convert(src, tmp_path / "out", labels=labels, partition=partition, format=backend, chunk_rows=2,
                      shard_size=4 * arrays["id-0"].nbytes, workers=workers)  # fmt: skip
    assert len(shardfeed.open_store(tmp_path / "out").manifest.shards) == 3
    assert_roundtrip(tmp_path / "out", src, labels, partition)


def _save_with_padded_header(path: Path, array: np.ndarray, header_bytes: int) -> None:
    """An `.npy` whose header is padded with spaces to `header_bytes` (valid; NumPy reads it)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
                 "shape": array.shape}).encode()  # fmt: skip
    text += b" " * (header_bytes - 10 - len(text) - 1) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + array.tobytes())


@pytest.mark.parametrize("mix", ["same-padded-header", "headers-of-two-sizes", "some-fortran"])
def test_small_files_of_one_shard_copied_in_bulk_or_one_by_one_round_trip(tmp_path, backend, mix):
    """Small files read whole are copied into a block together when their headers are one size and
    their data C order; a shard mixing header sizes or orders is copied file by file. Both exact."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(5)
    for k in range(9):
        array = rng.integers(-1000, 1000, size=(3, 4), dtype="int32")
        if mix == "same-padded-header" or (mix == "headers-of-two-sizes" and k % 2):
            _save_with_padded_header(src / f"s{k}.npy", array, 256)
        else:
            np.save(src / f"s{k}.npy", np.asfortranarray(array) if mix == "some-fortran" and k % 3 == 0 else array)
    offsets = {(src / f"s{k}.npy").stat().st_size - 48 for k in range(9)}
    assert (256 in offsets, len(offsets)) == ({"same-padded-header": (True, 1), "headers-of-two-sizes": (True, 2),
                                               "some-fortran": (False, 1)}[mix])  # fmt: skip
    shardfeed.convert(src, tmp_path / "out", format=backend, chunk_rows=2)
    assert len(shardfeed.open_store(tmp_path / "out").manifest.shards) == 1
    assert_roundtrip(tmp_path / "out", src)
