"""Variable-shape samples (issue #12 item 1): convert, read, verify and resume stores of samples whose
lengths differ on some axes; the errors for what such a store cannot do; padded, bucketed and ragged
batches from `DataGenerator` and `as_tf_dataset`, exactly once per epoch and reproducible.

Crafted variable-shape stores (lying shapes and offsets) are in test_hostile.py's corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import shardfeed
from shardfeed.cli import main
from shardfeed.storage.format import INDEX_NAME, MANIFEST_NAME
from shardfeed.storage.integrity import verify_store

pytestmark = pytest.mark.timeout(120)

BACKEND_COMPRESSIONS = [("hdf5", "none"), ("hdf5", "gzip"), ("zarr", "none"), ("zarr", "zstd")]
# A sample shape per case, each `None` drawn per sample: one varying axis, or several.
SHAPES = {"one-axis": (None, 5), "several-axes": (None, 3, None), "1-d": (None,)}


def ragged_dir(root: Path, n: int = 23, shape=(None, 5), dtype: str = "float32", seed: int = 0, name: str = "data"):
    """`n` samples `<ID>.npy` whose `None` axes have random lengths 1-29; returns (src, {ID: array})."""
    rng = np.random.default_rng(seed)
    src = root / name
    src.mkdir()
    arrays = {}
    for k in range(n):
        dims = tuple(int(rng.integers(1, 30)) if d is None else d for d in shape)
        arrays[f"id-{k:02d}"] = (rng.standard_normal(dims) * 100).astype(dtype)
        np.save(src / f"id-{k:02d}.npy", arrays[f"id-{k:02d}"])
    return src, arrays


def convert(src, out, backend="zarr", compression="none", **options):
    options = {"chunk_rows": 2, "shard_size": 1500, "variable_shapes": True, **options}
    return shardfeed.convert(src, out, format=backend, compression=compression, **options)


def assert_reads_back(out: Path, arrays: dict[str, np.ndarray]) -> None:
    for fast in (True, False):
        with shardfeed.open_store(out, fast=fast) as store:
            rows = np.random.default_rng(1).permutation(len(store))
            rows = np.concatenate([rows, rows[:3]])  # repeats too
            for row, sample in zip(rows, store.read(rows)):
                source = arrays[store.ids[row]]
                assert sample.shape == source.shape and sample.dtype == source.dtype
                assert sample.tobytes() == source.tobytes(), store.ids[row]
            assert store[5].tobytes() == arrays[store.ids[5]].tobytes()


# Converting and reading.


@pytest.mark.parametrize(("backend", "compression"), BACKEND_COMPRESSIONS)
@pytest.mark.parametrize("case", list(SHAPES))
def test_round_trip_is_byte_identical(tmp_path, backend, compression, case):
    src, arrays = ragged_dir(tmp_path, shape=SHAPES[case])
    out = tmp_path / "store"
    manifest = convert(src, out, backend, compression, shard_size=300 if case == "1-d" else 1500)
    assert len(manifest.shards) > 2  # samples cross chunks and shards
    assert_reads_back(out, arrays)
    store = shardfeed.open_store(out)
    assert store.variable and store.sample_shape == SHAPES[case]
    assert store.shapes.dtype == np.int64 and store.shapes.shape == (len(arrays), len(SHAPES[case]))
    assert [tuple(s) for s in store.shapes.tolist()] == [arrays[i].shape for i in store.ids]
    report = verify_store(store, source=src)
    assert report.ok, (report.bad_shards, report.bad_samples)


def test_dtypes_and_big_endian_sources_round_trip(tmp_path):
    for dtype in ("uint8", ">i8", "complex64", "bool"):
        src, arrays = ragged_dir(tmp_path, n=9, dtype=dtype, name=f"data-{dtype}")
        out = tmp_path / f"store-{dtype}"
        convert(src, out, "hdf5")
        with shardfeed.open_store(out) as store:
            for row, sample in enumerate(store.read(np.arange(len(store)))):
                source = arrays[store.ids[row]]
                assert sample.astype(source.dtype).tobytes() == source.tobytes()


def test_verify_names_a_damaged_sample(tmp_path, backend):
    src, _ = ragged_dir(tmp_path)
    out = tmp_path / "store"
    convert(src, out, backend)
    store = shardfeed.open_store(out)
    info = store.manifest.shards[1]
    victim = store.ids[info.last_row]
    shard = out / info.path
    data = bytearray(shard.read_bytes())
    data[data.index(np.load(src / f"{victim}.npy").tobytes()[:8])] ^= 0x40  # its first value, in the file
    shard.write_bytes(bytes(data))
    report = verify_store(shardfeed.open_store(out))
    assert info.path in report.bad_shards and list(report.bad_samples) == [victim]


def test_samples_of_one_shape_keep_the_fixed_format(tmp_path, make_npy_dir, backend):
    """`variable_shapes=True` changes nothing when every shape is the same: byte for byte today's store."""
    src, labels, partition, _ = make_npy_dir(n=10)
    plain, flagged = tmp_path / "plain", tmp_path / "flagged"
    shardfeed.convert(src, plain, labels=labels, partition=partition, format=backend)
    shardfeed.convert(src, flagged, labels=labels, partition=partition, format=backend, variable_shapes=True)
    files = sorted(p.relative_to(plain) for p in plain.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(flagged) for p in flagged.rglob("*") if p.is_file())
    for name in files:
        assert (plain / name).read_bytes() == (flagged / name).read_bytes(), name
    manifest = json.loads((plain / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 1 and "chunk_elements" not in manifest
    with np.load(plain / INDEX_NAME) as index:
        assert "shapes" not in index.files
    store = shardfeed.open_store(plain)
    assert not store.variable and store.shapes.shape == (10, 2) and (store.shapes == [4, 3]).all()


def test_variable_store_is_format_version_2(tmp_path):
    src, _ = ragged_dir(tmp_path, n=5)
    manifest = json.loads(Path(convert(src, tmp_path / "store") and tmp_path / "store" / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 2 and manifest["sample_shape"] == [None, 5]


def test_the_cli_converts_with_variable_shapes(tmp_path):
    src, arrays = ragged_dir(tmp_path, n=6)
    assert main(["convert", str(src), str(tmp_path / "store"), "--variable-shapes", "--quiet"]) == 0
    assert_reads_back(tmp_path / "store", arrays)
    assert main(["verify", str(tmp_path / "store"), "--source", str(src)]) == 0


def test_an_interrupted_conversion_resumes_to_the_same_bytes(tmp_path, backend):
    src, _ = ragged_dir(tmp_path, n=40)
    reference, out = tmp_path / "reference", tmp_path / "out"
    convert(src, reference, backend)

    def interrupt(n, seen=[0]):  # noqa: B006 - the count lives across calls
        seen[0] += n
        if seen[0] >= 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(src, out, backend, progress=interrupt)
    assert not (out / MANIFEST_NAME).exists()
    convert(src, out, backend, resume=True)
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for name in files:
        if name.name != MANIFEST_NAME:  # the manifest records the converter, not the run
            assert (reference / name).read_bytes() == (out / name).read_bytes(), name


# What is refused, in one line naming the sample and the file, leaving no store.


def refused(tmp_path, src, match: str, **options) -> str:
    out = tmp_path / "out"
    with pytest.raises(shardfeed.ShardfeedError, match=match) as info:
        convert(src, out, **options)
    assert not out.exists()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_mixed_number_of_dimensions_is_refused(tmp_path, backend):
    src, _ = ragged_dir(tmp_path, n=4)
    np.save(src / "id-02.npy", np.zeros((3, 5, 1), "float32"))
    message = refused(tmp_path, src, r"sample 'id-02' has shape \(3, 5, 1\) dtype <f4, which differs from shape",
                      backend=backend)  # fmt: skip
    assert "id-02.npy" in message and "id-00.npy" in message and "number of dimensions" in message


def test_mixed_dtypes_are_refused(tmp_path, backend):
    src, _ = ragged_dir(tmp_path, n=4)
    np.save(src / "id-03.npy", np.zeros((7, 5), "float64"))
    message = refused(tmp_path, src, r"sample 'id-03' has shape \(7, 5\) dtype <f8, which differs", backend=backend)
    assert "id-03.npy" in message and "id-00.npy" in message


def test_varying_shapes_without_the_flag_are_refused_with_the_way_out(tmp_path):
    src, _ = ragged_dir(tmp_path, n=4)
    message = refused(tmp_path, src, r"all samples must share shape and dtype, or convert with --variable-shapes",
                      variable_shapes=False)  # fmt: skip
    assert "id-01.npy" in message and "id-00.npy" in message


def test_read_into_out_is_refused(tmp_path):
    src, _ = ragged_dir(tmp_path, n=5)
    convert(src, tmp_path / "store")
    store = shardfeed.open_store(tmp_path / "store")
    with pytest.raises(shardfeed.OptionError, match=r"samples vary in shape \(None, 5\), from \(\d+, 5\) to .*"
                                                     r"read\(rows, out=\.\.\.\) has no one shape"):  # fmt: skip
        store.read([0, 1], out=np.empty((2, 30, 5), "float32"))
    with pytest.raises(IndexError, match="row 5 out of range"):
        store.read([5])


def test_append_to_a_variable_store_is_refused(tmp_path):
    src, _ = ragged_dir(tmp_path, n=5)
    convert(src, tmp_path / "store")
    more, _ = ragged_dir(tmp_path, n=2, name="more", seed=3)
    for path in more.iterdir():
        path.rename(path.with_name("new-" + path.name))
    with pytest.raises(shardfeed.OptionError, match="append adds to stores of one shape only"):
        shardfeed.append(tmp_path / "store", more)
