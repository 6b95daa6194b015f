"""Input layouts beyond a folder of `<ID>.npy` files: one stacked `.npy` of shape (N, ...) (with or
without `--ids`), one `.npz` archive (stored or compressed), and a folder per class
(`SRC/<class>/<ID>.npy`).

For each: convert then read is byte-identical by ID on both backends, labels and class names are
right, `verify --source` passes and names a changed sample, `--resume` finishes an interrupted
conversion identically (and refuses changed inputs), and the CLI takes it. Bad inputs are refused
with one line naming the file, before anything exists at OUT.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from crashkit import assert_same_store, interrupt_after
from test_bad_input import _assert_cli_error, assert_refused

import shardfeed
from shardfeed.cli import main
from shardfeed.storage.format import MANIFEST_NAME

pytestmark = pytest.mark.timeout(60)

SHAPE = (4, 3)
# 48-byte samples in chunks of 2 and shards of 4 rows: runs of rows cross chunk and shard ends.
SMALL = {"chunk_rows": 2, "shard_size": 4 * 48}


def samples(n: int, dtype: str = "float32", shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(dtype)


def make_stack(tmp_path: Path, n: int = 11, *, fortran: bool = False, dtype: str = "float32"):
    data = samples(n, dtype)
    path = tmp_path / "stack.npy"
    np.save(path, np.asfortranarray(data) if fortran else data)
    return path, data


def make_npz(tmp_path: Path, arrays: dict[str, np.ndarray], *, compressed: bool = False, name: str = "set.npz") -> Path:
    path = tmp_path / name
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def make_classes(tmp_path: Path, counts: dict[str, int], dtype: str = "float32") -> tuple[Path, dict[str, np.ndarray]]:
    src, arrays = tmp_path / "classes", {}
    for k, (name, count) in enumerate(counts.items()):
        (src / name).mkdir(parents=True)
        for j, data in enumerate(samples(count, dtype, seed=k)):
            arrays[f"{name}-{j}"] = data
            np.save(src / name / f"{name}-{j}.npy", data)
    return src, arrays


def assert_same_samples(out: Path, arrays: dict[str, np.ndarray]) -> shardfeed.Store:
    """The store at `out` holds exactly `arrays` (ID -> source array), byte for byte in C order."""
    store = shardfeed.open_store(out)
    assert sorted(store.ids) == sorted(arrays)
    got = store.read(store.rows(list(arrays)))
    for k, (sample_id, source) in enumerate(arrays.items()):
        assert got[k, ...].shape == source.shape, sample_id
        assert got[k, ...].astype(source.dtype).tobytes() == source.tobytes(order="C"), sample_id
    return store


def assert_verify_names(store: shardfeed.Store, source, changed: str, **kw) -> None:
    """`verify --source` passes, then (after the caller's change) names exactly `changed`."""
    report = shardfeed.verify_store(store, source, **kw)
    assert list(report.bad_samples) == [changed], report.bad_samples
    assert "differs from its source" in report.bad_samples[changed]


def assert_resumes(tmp_path: Path, src, backend: str, **kw) -> None:
    """Interrupted after 4 rows then resumed: identical to an uninterrupted conversion."""
    reference, out = tmp_path / "reference", tmp_path / "resumed"
    shardfeed.convert(src, reference, format=backend, **SMALL, **kw)
    with pytest.raises(KeyboardInterrupt):
        shardfeed.convert(src, out, format=backend, progress=interrupt_after(4), **SMALL, **kw)
    assert not (out / MANIFEST_NAME).exists()
    shardfeed.convert(src, out, format=backend, resume=True, **SMALL, **kw)
    assert_same_store(out, reference)


# --- a stacked .npy ---------------------------------------------------------------------------


@pytest.mark.parametrize("fortran, dtype", [(False, "float32"), (False, ">i2"), (True, "float64"), (True, ">f4")])
def test_stacked_npy_round_trip_and_verify(tmp_path, backend, fortran, dtype):
    src, data = make_stack(tmp_path, fortran=fortran, dtype=dtype)
    out = tmp_path / "out"
    manifest = shardfeed.convert(src, out, format=backend, **SMALL)
    assert manifest.source["fortran_order_samples"] == (11 if fortran else 0)
    arrays = {f"{k:02d}": row for k, row in enumerate(data)}  # row numbers, zero-padded to the width of 10
    store = assert_same_samples(out, arrays)
    assert store.ids == list(arrays) and store.labels is None  # the file's order
    assert shardfeed.verify_store(store, src).ok
    rows = np.load(src, mmap_mode="r+")  # in place: same header and size, other values
    rows[7] = rows[7] + 1
    rows.flush()
    del rows
    assert_verify_names(store, src, "07")


def test_stacked_npy_with_ids_labels_and_partition_through_cli(tmp_path, backend, capsys):
    src, data = make_stack(tmp_path, n=5)
    names = ["cat-a", "dog-b", "cat-c", "eel-d", "dog-e"]
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(names) + "\n")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({i: i.split("-")[0] for i in names}))
    partition = tmp_path / "partition.json"
    partition.write_text(json.dumps({"train": ["eel-d", "cat-a", "dog-e"], "validation": ["dog-b", "cat-c"]}))
    out = tmp_path / "out"
    argv = ["convert", str(src), str(out), "--ids", str(ids), "--labels", str(labels), "--partition", str(partition),
            "--format", backend, "--quiet", "--chunk-rows", "2"]  # fmt: skip
    assert main(argv) == 0
    store = assert_same_samples(out, dict(zip(names, data)))
    assert store.ids == ["eel-d", "cat-a", "dog-e", "dog-b", "cat-c"]
    assert store.class_names == ["cat", "dog", "eel"]
    assert store.labels[store.rows(names)].tolist() == [0, 1, 0, 2, 1]
    assert main(["verify", str(out), "--source", str(src), "--ids", str(ids), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--source", str(src), "--quiet"]) == 1  # its rows are not named 0-4
    assert "pass the --ids file it was converted with" in capsys.readouterr().out


def test_stacked_npy_ids_from_json_and_a_list(tmp_path):
    src, data = make_stack(tmp_path, n=3)
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(["z", "y", "x"]))
    shardfeed.convert(src, tmp_path / "a", ids=ids)
    shardfeed.convert(src, tmp_path / "b", ids=("z", "y", "x"))
    for out in ("a", "b"):
        store = assert_same_samples(tmp_path / out, {"z": data[0], "y": data[1], "x": data[2]})
        assert store.ids == ["z", "y", "x"]


@pytest.mark.parametrize("shape, ids", [((1, 4, 3), ["0"]), ((12,), [f"{k:02d}" for k in range(12)])])
def test_stacked_npy_of_one_row_or_of_scalars(tmp_path, backend, shape, ids):
    data = np.random.default_rng(0).standard_normal(shape).astype("float32")
    src = tmp_path / "rows.npy"
    np.save(src, data)
    shardfeed.convert(src, tmp_path / "out", format=backend)
    store = assert_same_samples(tmp_path / "out", dict(zip(ids, data)))
    assert store.sample_shape == shape[1:] and shardfeed.verify_store(store, src).ok


@pytest.mark.parametrize("fortran", [False, True])
def test_stacked_npy_resumes(tmp_path, backend, fortran):
    src, _ = make_stack(tmp_path, fortran=fortran)
    assert_resumes(tmp_path, src, backend)


def test_stacked_npy_resume_refuses_reordered_ids(tmp_path):
    """The same IDs, stamps and partition, but the IDs file names other rows: another conversion."""
    src, _ = make_stack(tmp_path, n=8)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(f"s{k}" for k in range(8)))
    partition = {"all": [f"s{k}" for k in range(8)]}
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        shardfeed.convert(src, out, ids=ids, partition=partition, progress=interrupt_after(4), **SMALL)
    ids.write_text("\n".join(f"s{k}" for k in [1, 0, *range(2, 8)]))
    with pytest.raises(shardfeed.OptionError, match=r"cannot resume, the inputs or options differ .*sample 's0'"):
        shardfeed.convert(src, out, ids=ids, partition=partition, resume=True, **SMALL)


# --- an .npz archive --------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_round_trip_and_verify(tmp_path, backend, compressed):
    arrays = dict(zip(["b", "a", "c", "e", "d"], samples(5, ">f4")))
    src = make_npz(tmp_path, arrays, compressed=compressed)
    out = tmp_path / "out"
    shardfeed.convert(src, out, format=backend, **SMALL)
    store = assert_same_samples(out, arrays)
    assert store.ids == ["b", "a", "c", "e", "d"]  # the archive's order
    assert shardfeed.verify_store(store, src).ok
    make_npz(tmp_path, {**arrays, "e": (arrays["e"] * 2).astype(">f4")}, compressed=compressed)
    assert_verify_names(store, src, "e")


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_through_cli_with_labels_and_resume(tmp_path, backend, compressed):
    arrays = dict(zip([f"k{k}" for k in range(9)], samples(9)))
    src = make_npz(tmp_path, arrays, compressed=compressed)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"k{k},{k % 2}\n" for k in range(9)))
    out = tmp_path / "out"
    argv = ["convert", str(src), str(out), "--labels", str(labels), "--format", backend, "--quiet",
            "--chunk-rows", "2", "--shard-size", "192", "--workers", "2"]  # fmt: skip  # workers open it too
    assert main(argv) == 0
    store = assert_same_samples(out, arrays)
    assert store.labels.tolist() == [k % 2 for k in range(9)] and len(store.manifest.shards) == 3
    assert main(["verify", str(out), "--source", str(src), "--quiet"]) == 0
    assert_resumes(tmp_path, src, backend, labels=labels)


def test_npz_ignores_members_that_are_not_arrays(tmp_path):
    import zipfile

    src = make_npz(tmp_path, {"x": samples(1)[0]})
    with zipfile.ZipFile(src, "a") as archive:
        archive.writestr("README.txt", "not an array")
    shardfeed.convert(src, tmp_path / "out")
    assert shardfeed.open_store(tmp_path / "out").ids == ["x"]


# --- a folder per class -----------------------------------------------------------------------


def test_class_folders_round_trip_labels_and_verify(tmp_path, backend):
    src, arrays = make_classes(tmp_path, {"dog": 2, "cat": 3, "eel": 1})
    (src / "README.txt").write_text("stray files are not samples")
    (src / "cat" / "notes.txt").write_text("nor here")
    (src / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    out = tmp_path / "out"
    shardfeed.convert(src, out, format=backend, **SMALL)
    store = assert_same_samples(out, arrays)
    assert store.class_names == ["cat", "dog", "eel"] and store.num_classes == 3
    assert store.ids == ["cat-0", "cat-1", "cat-2", "dog-0", "dog-1", "eel-0"]  # by class, then ID
    assert store.labels.tolist() == [0, 0, 0, 1, 1, 2]
    assert shardfeed.verify_store(store, src).ok
    np.save(src / "dog" / "dog-1.npy", arrays["dog-1"] + 1)
    assert_verify_names(store, src, "dog-1")


def test_class_folders_through_cli_with_partition_and_resume(tmp_path, backend):
    src, _ = make_classes(tmp_path, {"a": 4, "b": 4})
    partition = tmp_path / "partition.json"
    partition.write_text(json.dumps({"train": ["b-0", "b-1", "b-2", "b-3", "a-0", "a-1"], "test": ["a-2"]}))
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), "--partition", str(partition), "--format", backend, "--quiet"]) == 0
    store = shardfeed.open_store(out)
    assert store.splits == {"train": 6, "test": 1} and store.manifest.source["unlisted_files"] == 1
    assert store.labels.tolist() == [1, 1, 1, 1, 0, 0, 0] and store.class_names == ["a", "b"]
    assert main(["verify", str(out), "--source", str(src), "--quiet"]) == 0
    assert_resumes(tmp_path, src, backend)


def test_class_folders_refuse_out_inside_src(tmp_path):
    src, _ = make_classes(tmp_path, {"a": 1, "b": 1})
    assert_refused(src, src / "out.zarr", error=shardfeed.OptionError, match=r"scanned as a class folder")


# --- bad inputs -------------------------------------------------------------------------------


def test_ids_of_the_wrong_count_are_refused(tmp_path):
    src, _ = make_stack(tmp_path, n=4)
    ids = tmp_path / "ids.txt"
    ids.write_text("a\nb\nc\n")
    assert_refused(src, tmp_path / "out", ids=ids, match=r"3 IDs for the 4 rows of .*shape \(4, 4, 3\)",
                   mentions=[str(ids), str(src)])  # fmt: skip


@pytest.mark.parametrize("text, match", [
    ("a\nb\na\nc\n", r"ids\.txt:3: ID 'a' is listed twice \(also at .*ids\.txt:1\)"),
    ("a\nb/c\nd\ne\n", r"ids\.txt:2: ID 'b/c' contains a path separator"),
    ("a\n\nd\ne\n", r"ids\.txt:2: ID '' is empty"),
])  # fmt: skip
def test_bad_ids_are_refused_naming_the_line(tmp_path, text, match):
    src, _ = make_stack(tmp_path, n=4)
    ids = tmp_path / "ids.txt"
    ids.write_text(text)
    assert_refused(src, tmp_path / "out", ids=ids, match=match)


def test_ids_for_a_src_that_is_not_a_stacked_npy_are_refused(tmp_path):
    src, _ = make_classes(tmp_path, {"a": 1})
    ids = tmp_path / "ids.txt"
    ids.write_text("a-0\n")
    assert_refused(src, tmp_path / "out", ids=ids, error=shardfeed.OptionError, match=r"--ids names the rows of",
                   mentions=[str(src)])  # fmt: skip


@pytest.mark.parametrize("shape", [(), (0, 3)])
def test_stacked_npy_without_rows_is_refused(tmp_path, shape):
    src = tmp_path / "rows.npy"
    np.save(src, np.zeros(shape, dtype="float32"))
    assert_refused(src, tmp_path / "out", match=r"has no rows|holds no values", mentions=[str(src)])


def test_npz_with_mixed_dtypes_is_refused(tmp_path):
    src = make_npz(tmp_path, {"a": samples(1)[0], "b": samples(1, "float64")[0]})
    assert_refused(src, tmp_path / "out", match=r"sample 'b' has shape \(4, 3\) dtype <f8, which differs from "
                   r"shape \(4, 3\) dtype <f4", mentions=[str(src), "'a'"])  # fmt: skip


@pytest.mark.parametrize("key, match", [("a/b", r"contains a path separator"), ("..", r"starts with '\.'")])
def test_npz_key_that_is_not_a_plain_name_is_refused(tmp_path, key, match):
    src = make_npz(tmp_path, {"ok": samples(1)[0], key: samples(1)[0]})
    assert_refused(src, tmp_path / "out", match=match, mentions=[str(src)])


@pytest.mark.parametrize("damage", ["not-a-zip", "bad-crc", "pickle"])
def test_damaged_npz_is_refused(tmp_path, damage):
    src = tmp_path / "set.npz"
    if damage == "not-a-zip":
        src.write_bytes(b"not a zip archive at all")
        match = r"not a readable \.npz \(ZIP\) archive"
    elif damage == "pickle":
        np.savez(src, x=np.array([object()], dtype=object), allow_pickle=True)
        match = r"object dtype \(a pickle\) refused"
    else:
        make_npz(tmp_path, {"x": samples(1)[0]})  # stored: the data bytes are in the file as they are
        raw = bytearray(src.read_bytes())
        at = raw.index(samples(1)[0].tobytes())
        raw[at] ^= 0xFF
        src.write_bytes(bytes(raw))
        match = r"member x\.npy of the archive is damaged or unreadable: Bad CRC-32"
    out = tmp_path / "out"
    if damage == "bad-crc":  # found only when the data is read: the conversion fails, leaving no store
        with pytest.raises(shardfeed.InputError, match=match):
            shardfeed.convert(src, out)
        assert not (out / MANIFEST_NAME).exists()
    else:
        assert_refused(src, out, match=match, mentions=[str(src)])


def test_same_id_in_two_class_folders_is_refused_naming_both(tmp_path):
    src, _ = make_classes(tmp_path, {"a": 2, "b": 1})
    np.save(src / "b" / "a-1.npy", samples(1)[0])
    assert_refused(src, tmp_path / "out", match=r"sample 'a-1' is also in class folder 'a'",
                   mentions=[str(src / "a" / "a-1.npy"), str(src / "b" / "a-1.npy")])  # fmt: skip


def test_empty_class_folder_is_refused(tmp_path):
    src, _ = make_classes(tmp_path, {"a": 2})
    (src / "empty").mkdir()
    (src / "empty" / "notes.txt").write_text("no samples")
    assert_refused(src, tmp_path / "out", match=r"class folder 'empty' holds no \.npy files",
                   mentions=[str(src / "empty")])  # fmt: skip


def test_class_folder_link_out_of_src_is_refused(tmp_path):
    src, _ = make_classes(tmp_path, {"a": 1})
    elsewhere, _ = make_classes(tmp_path / "x", {"b": 1})
    (src / "b").symlink_to(elsewhere / "b")
    assert_refused(src, tmp_path / "out", match=r"class folder 'b' is a symlink to .*, outside", mentions=[str(src)])


def test_labels_with_class_folders_are_refused(tmp_path, capsys):
    src, arrays = make_classes(tmp_path, {"a": 1, "b": 1})
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(dict.fromkeys(arrays, 0)))
    assert_refused(src, tmp_path / "out", labels=labels, error=shardfeed.OptionError,
                   match=r"SRC is a folder per class, which labels every sample; drop --labels")  # fmt: skip
    rc = main(["convert", str(src), str(tmp_path / "out"), "--labels", str(labels), "--quiet"])
    _assert_cli_error(capsys, rc, r"folder per class")


@pytest.mark.parametrize("url", ["s3://bucket/data.npy", "s3://bucket/data.npz"])
def test_single_file_src_at_a_url_is_refused(tmp_path, url):
    assert_refused(url, tmp_path / "out", error=shardfeed.OptionError, match=r"must be a local file",
                   mentions=[url])  # fmt: skip


def test_class_folders_at_a_url_are_refused(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/layouts-in/src/cat/c0.npy", b"x")
    try:
        assert_refused("memory://layouts-in/src", tmp_path / "out", error=shardfeed.OptionError,
                       match=r"a folder per class must be a local SRC")  # fmt: skip
    finally:
        fs.rm("/layouts-in", recursive=True)


def test_bad_layout_through_cli_is_one_line(tmp_path, capsys):
    src, _ = make_stack(tmp_path, n=4)
    ids = tmp_path / "ids.txt"
    ids.write_text("a\nb\n")
    rc = main(["convert", str(src), str(tmp_path / "out"), "--ids", str(ids), "--quiet"])
    _assert_cli_error(capsys, rc, r"ids\.txt: 2 IDs for the 4 rows of")
    assert not (tmp_path / "out").exists()
