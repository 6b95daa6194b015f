"""The bad-input corpus: every case is refused with a message that names the ID and/or file and
what was expected, before anything is written (no store, not even a directory, at OUT).

Most cases go through `shardfeed.convert`; a few also through the CLI, which must exit 1 with a
single `shardfeed: error: ...` line on stderr and no traceback.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import shardfeed
from shardfeed.cli import main
from shardfeed.errors import InputError
from shardfeed.inputs.ids import all_plain, check_id

pytestmark = pytest.mark.timeout(30)

BAD_ID = "id-3"  # the sample each file-level case corrupts


class _Canary:
    """Unpickling this creates (truncates) a file: proof that a pickle ran code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def assert_refused(src, out: Path, *, match: str, mentions=(), error=shardfeed.InputError, **kw):
    """Conversion raises `error` matching `match`, naming every string in `mentions`; no OUT."""
    with pytest.raises(error, match=match) as excinfo:
        shardfeed.convert(src, out, **kw)
    message = str(excinfo.value)
    for text in mentions:
        assert text in message, f"{text!r} not in {message!r}"
    assert "\n" not in message
    assert not out.exists(), "a refused conversion left something at OUT"
    return message


def _header_bytes(shape, descr="<f4", fortran=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": fortran, "shape": shape}
    )
    return buf.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _write_pickle(path: Path) -> None:
    payload = np.array([_Canary(path.parent.parent / "canary")], dtype=object)
    np.save(path, payload, allow_pickle=True)


def _write_zip(path: Path) -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((4, 3), dtype="float32"))
    path.write_bytes(buf.getvalue())


def _valid(path: Path) -> bytes:
    return _npy_bytes(np.zeros((4, 3), dtype="float32"))


# name -> (write the bad file at `path`, regex for what was expected)
FILE_CASES = {
    "pickle": (_write_pickle, r"object dtype \(a pickle\) refused"),
    "truncated-data": (lambda p: p.write_bytes(_valid(p)[:-5]), r"truncated or corrupt"),
    "truncated-header": (lambda p: p.write_bytes(_valid(p)[:20]), r"invalid \.npy header"),
    "truncated-magic": (lambda p: p.write_bytes(b"\x93NUM"), r"not a \.npy file .*truncated"),
    "empty-file": (lambda p: p.write_bytes(b""), r"not a \.npy file"),
    "text-file": (lambda p: p.write_text("id,label\na,1\n"), r"not a \.npy file \(bad magic\)"),
    "zip-npz": (_write_zip, r"is a ZIP archive \(\.npz\?\), expected a \.npy file"),
    "header-shape-vs-size": (
        lambda p: p.write_bytes(_header_bytes((4, 3)) + b"\0" * 4 * 2 * 4),
        r"header says shape \(4, 3\) <f4 = 48 bytes, but the file holds 32 bytes",
    ),
    "huge-shape": (
        lambda p: p.write_bytes(_header_bytes((10**6, 10**6, 10**3)) + b"\0" * 48),
        r"header says shape \(1000000, 1000000, 1000\).* but the file holds 48 bytes",
    ),
    "negative-dim": (
        lambda p: p.write_bytes(_header_bytes((-4, 3)) + b"\0" * 48),
        r"negative or non-integer dimensions",
    ),
    "zero-size": (lambda p: p.write_bytes(_npy_bytes(np.zeros((0, 3), "f4"))), r"holds no values"),
    "bad-header-dict": (
        lambda p: p.write_bytes(np.lib.format.magic(1, 0) + b"\x10\x00{'descr': <f4}   \n"),
        r"invalid \.npy header",
    ),
    "unknown-version": (
        lambda p: p.write_bytes(b"\x93NUMPY\x09\x00" + _valid(p)[8:]),
        r"invalid \.npy header|unsupported \.npy version",
    ),
    "header-too-long": (
        lambda p: p.write_bytes(
            np.lib.format.magic(2, 0)
            + (20_000).to_bytes(4, "little")
            + b"{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), }".ljust(19_999)
            + b"\n"
            + b"\0" * 48
        ),
        r"invalid \.npy header",
    ),
    "string-dtype": (
        lambda p: p.write_bytes(_npy_bytes(np.array(["abc"] * 12).reshape(4, 3))),
        r"dtype <U3 not supported; expected bool, integer, float or complex",
    ),
    "structured-dtype": (
        lambda p: p.write_bytes(_npy_bytes(np.zeros((4, 3), dtype=[("a", "<f4")]))),
        r"not supported; expected bool, integer, float or complex",
    ),
    "datetime-dtype": (
        lambda p: p.write_bytes(_npy_bytes(np.zeros((4, 3), dtype="M8[s]"))),
        r"dtype <M8\[s\] not supported",
    ),
    "directory": (lambda p: p.mkdir(), r"is not a regular file"),
    "fifo": (lambda p: os.mkfifo(p), r"is not a regular file"),
    "symlink-outside-src": (
        lambda p: p.symlink_to(_outside_file(p)),
        r"is a symlink to .*outside\.npy, outside ",
    ),
    "symlink-etc-passwd": (lambda p: p.symlink_to("/etc/passwd"), r"is a symlink to /etc/passwd"),
    "symlink-dev-zero": (lambda p: p.symlink_to("/dev/zero"), r"is a symlink to /dev/zero"),
    "symlink-to-fifo-inside": (
        lambda p: (os.mkfifo(p.parent / "pipe"), p.symlink_to("pipe")),
        r"is not a regular file",
    ),
    "dangling-symlink": (
        lambda p: p.symlink_to("nowhere.npy"),
        r"is a symlink to .*nowhere\.npy: No such file or directory",
    ),
    "same-file-twice": (
        lambda p: p.symlink_to("id-0.npy"),
        r"samples 'id-0' and 'id-3' are the same file",
    ),
}


def _outside_file(path: Path) -> Path:
    target = path.parent.parent / "outside.npy"
    np.save(target, np.zeros((4, 3), dtype="float32"))
    return target


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_convert_refuses_bad_file(tmp_path, make_npy_dir, backend, case):
    write, expected = FILE_CASES[case]
    src, labels, partition, _ = make_npy_dir(n=6, shape=(4, 3), dtype="float32")
    bad = src / f"{BAD_ID}.npy"
    bad.unlink()
    write(bad)
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        message = assert_refused(src, out, match=expected, mentions=[f"'{BAD_ID}'"],
                                 labels=labels, partition=partition, format=backend)  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"refusing {case} allocated {peak} bytes"
    if case not in ("same-file-twice", "symlink-to-fifo-inside"):  # these name the link's target
        assert f"{BAD_ID}.npy" in message
    assert not (tmp_path / "canary").exists(), "the pickle ran code"


@pytest.mark.timeout(30)
def test_a_fifo_among_the_samples_is_refused_without_being_opened(tmp_path, make_npy_dir):
    """Opening a FIFO (or a device) acts on it: a writer waiting on this one would be let go."""
    src, labels, partition, _ = make_npy_dir(n=6, shape=(4, 3), dtype="float32")
    fifo = src / f"{BAD_ID}.npy"
    fifo.unlink()
    os.mkfifo(fifo)
    opened = threading.Event()
    writer = threading.Thread(target=lambda: (os.close(os.open(fifo, os.O_WRONLY)), opened.set()), daemon=True)
    writer.start()  # blocks in open() until a reader opens the FIFO
    assert_refused(src, tmp_path / "out", match="is not a regular file", mentions=[f"'{BAD_ID}'"], labels=labels,
                   partition=partition)  # fmt: skip
    assert not opened.wait(0.5), "the conversion opened the FIFO"
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # let the writer go
    writer.join(10)


def test_pickle_payload_is_live(tmp_path):
    """The pickle case is a real attack: loading it with numpy's allow_pickle creates the canary."""
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "x.npy"
    _write_pickle(path)
    loaded = np.load(path, allow_pickle=True)
    loaded[0].close()
    assert (tmp_path / "canary").exists()


@pytest.mark.timeout(10)
def test_convert_does_not_hang_on_fifo_without_partition(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "a.npy", np.zeros(3))
    os.mkfifo(src / "x.npy")
    assert_refused(src, tmp_path / "out", match=r"x\.npy: sample 'x' is not a regular file")


def test_convert_refuses_shape_mismatch_naming_both_files(tmp_path, make_npy_dir, backend):
    src, labels, partition, _ = make_npy_dir(n=6, shape=(4, 3))
    np.save(src / f"{BAD_ID}.npy", np.zeros((4, 2), dtype="float32"))
    message = assert_refused(
        src, tmp_path / "out", match=r"shape \(4, 2\) dtype <f4, which differs from shape \(4, 3\)",
        mentions=["id-3.npy", "id-0.npy", "'id-3'", "'id-0'"],
        labels=labels, partition=partition, format=backend,
    )  # fmt: skip
    assert "all samples must share shape and dtype" in message


def test_convert_refuses_dtype_mismatch_naming_both_files(tmp_path, make_npy_dir, backend):
    src, labels, partition, _ = make_npy_dir(n=6, shape=(4, 3))
    np.save(src / f"{BAD_ID}.npy", np.zeros((4, 3), dtype="float64"))
    assert_refused(
        src, tmp_path / "out", match=r"dtype <f8, which differs from shape \(4, 3\) dtype <f4",
        mentions=["id-3.npy", "id-0.npy"], labels=labels, partition=partition, format=backend,
    )  # fmt: skip


def test_convert_refuses_byte_order_mismatch(tmp_path, make_npy_dir):
    src, labels, partition, _ = make_npy_dir(n=6, shape=(4, 3))
    np.save(src / f"{BAD_ID}.npy", np.zeros((4, 3), dtype=">f4"))
    assert_refused(src, tmp_path / "out", match=r"dtype >f4, which differs", mentions=["id-0.npy"],
                   labels=labels, partition=partition)  # fmt: skip


# name -> (partition, regex): IDs that are not plain file names inside SRC
BAD_IDS = {
    "parent": ("../x", r"ID '\.\./x' starts with '\.'"),
    "absolute": ("/etc/passwd", r"ID '/etc/passwd' contains a path separator"),
    "subdir": ("a/b", r"ID 'a/b' contains a path separator"),
    "backslash": ("a\\b", r"contains a path separator"),
    "nul": ("a\x00b", r"ID 'a\\x00b' contains a control"),
    "newline": ("a\nb", r"contains a control"),
    "empty": ("", r"ID '' is empty"),
    "dot": (".", r"starts with '\.'"),
    "dotdot": ("..", r"starts with '\.'"),
    "hidden": (".hidden", r"starts with '\.'"),
    "too-long": ("x" * 201, r"is longer than 200 bytes"),
    "not-a-string": (17, r"ID 17 is a int, expected a string"),
}


@pytest.mark.parametrize("case", list(BAD_IDS))
def test_convert_refuses_unsafe_id(tmp_path, make_npy_dir, case):
    bad_id, expected = BAD_IDS[case]
    src, _, _, arrays = make_npy_dir(n=3, num_classes=None)
    # A real file where an escaping ID would lead, so only the ID check can refuse it.
    np.save(tmp_path / "x.npy", np.zeros((4, 3), dtype="float32"))
    partition = {"train": [*arrays, bad_id]}
    message = assert_refused(src, tmp_path / "out", match=expected, partition=partition)
    assert "partition['train']" in message
    assert "IDs must be plain file names inside SRC" in message or case == "not-a-string"


def test_every_ascii_id_is_judged_by_the_same_rules_on_the_fast_path():
    """Plain ASCII IDs pass one pattern match, and lists of them one match over all (`all_plain`);
    every one- and two-character ASCII ID, and IDs either side of 200 bytes, get exactly the verdict
    of the rules above, alone and among plain IDs."""

    def allowed(sample_id: str) -> bool:
        return (0 < len(sample_id) <= 200 and not sample_id.startswith(".")
                and all(" " <= ch <= "~" and ch not in "/\\" for ch in sample_id))  # fmt: skip

    ascii_chars = [chr(c) for c in range(128)]
    for sample_id in [*ascii_chars, *(a + b for a in ascii_chars for b in ascii_chars), "x" * 200, "x" * 201]:
        try:
            check_id(sample_id, "partition['train']")
            verdict = True
        except InputError:
            verdict = False
        assert verdict == allowed(sample_id), repr(sample_id)
        assert all_plain(["id-0", sample_id, "id-1"]) == verdict == all_plain([sample_id]), repr(sample_id)
    assert all_plain(["id-0", "id-1"]) and not all_plain([]) and not all_plain(["id-0", 17])


def test_convert_refuses_unsafe_id_from_json_file(tmp_path, make_npy_dir):
    src, _, _, _ = make_npy_dir(n=3, num_classes=None)
    partition = tmp_path / "partition.json"
    partition.write_text(json.dumps({"train": ["id-0", "a\x00b"]}))
    assert_refused(src, tmp_path / "out", match=r"ID 'a\\x00b' contains a control",
                   partition=partition)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(sample_id=st.text(max_size=40))
def test_convert_refuses_any_missing_id_with_input_error(sample_id):
    """Any ID string without a file is refused with InputError, never another exception."""
    assume(sample_id != "ok")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        np.save(src / "ok.npy", np.zeros(2))
        with pytest.raises(shardfeed.InputError):
            shardfeed.convert(src, Path(tmp) / "out", partition={"all": ["ok", sample_id]})
        assert not (Path(tmp) / "out").exists()
        assert sorted(os.listdir(tmp)) == ["src"]


def test_convert_allows_symlink_inside_src(tmp_path):
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    target = np.arange(12, dtype="float32").reshape(4, 3)
    np.save(src / "real" / "sample.npy", target)
    np.save(src / "plain.npy", target + 1)
    (src / "link.npy").symlink_to(Path("real") / "sample.npy")
    out = tmp_path / "out"
    shardfeed.convert(src, out)
    store = shardfeed.open_store(out)
    assert store.ids == ["link", "plain"]
    assert store.read(store.rows(["link"]))[0].tobytes() == target.tobytes()


def test_convert_refuses_id_without_file(tmp_path, make_npy_dir):
    src, _, _, arrays = make_npy_dir(n=4)
    partition = {"train": [*arrays, "ghost"]}
    assert_refused(src, tmp_path / "out", match=r"sample 'ghost' has no file \(expected ghost\.npy",
                   mentions=["ghost.npy"], partition=partition)  # fmt: skip


def test_convert_refuses_id_without_label(tmp_path, make_npy_dir):
    src, labels, partition, _ = make_npy_dir(n=6)
    values = json.loads(labels.read_text())
    del values[BAD_ID]
    labels.write_text(json.dumps(values))
    assert_refused(src, tmp_path / "out", match=r"1 ID\(s\) have no label, e\.g\. 'id-3'",
                   labels=labels, partition=partition)  # fmt: skip


def test_convert_refuses_id_listed_twice(tmp_path, make_npy_dir):
    src, labels, _, _ = make_npy_dir(n=4)
    partition = {"train": ["id-0", "id-1", "id-0"], "validation": ["id-2"]}
    assert_refused(src, tmp_path / "out", match=r"ID 'id-0' is listed twice in split 'train'",
                   labels=labels, partition=partition)  # fmt: skip


def test_convert_refuses_id_in_two_splits(tmp_path, make_npy_dir):
    src, labels, _, _ = make_npy_dir(n=4)
    partition = {"train": ["id-0", "id-1"], "validation": ["id-2", "id-1"]}
    assert_refused(src, tmp_path / "out",
                   match=r"ID 'id-1' is listed in both 'train' and split 'validation'",
                   labels=labels, partition=partition)  # fmt: skip


@pytest.mark.parametrize(
    ("partition", "expected"),
    [
        ({"train": []}, r"partition lists no IDs"),
        ({"": ["id-0"]}, r"split name '' must be a non-empty string"),
        (["id-0"], r"partition must be a JSON object \{split: \[ids\]\}"),
        ({"train": "id-0"}, r"partition must be a JSON object \{split: \[ids\]\}"),
    ],
    ids=["no-ids", "empty-split-name", "list", "split-not-a-list"],
)
def test_convert_refuses_malformed_partition(tmp_path, make_npy_dir, partition, expected):
    src, _, _, _ = make_npy_dir(n=3, num_classes=None)
    path = tmp_path / "partition.json"
    path.write_text(json.dumps(partition))
    assert_refused(src, tmp_path / "out", match=expected, partition=path)


def test_convert_refuses_empty_src(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("no samples here")
    assert_refused(src, tmp_path / "out", match=r"SRC holds no \.npy files", mentions=[str(src)])


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_convert_refuses_src_that_is_not_a_directory(tmp_path, kind):
    src = tmp_path / "src"
    if kind == "file":
        src.write_text("x")
    expected = r"SRC is not a directory" if kind == "file" else r"no such file or directory \(SRC\)"
    assert_refused(src, tmp_path / "out", match=expected, mentions=[str(src)])


def _labels_file(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


LABEL_CASES = {
    "mixed-str-int": (
        "labels.json", json.dumps({"id-0": "cat", "id-1": 1, "id-2": "dog"}),
        r"ID 'id-1' has label 1 \(int\) but ID 'id-0' has 'cat'; labels must all be class numbers, class names",
    ),
    "negative": (
        "labels.json", json.dumps({"id-0": 0, "id-1": -1, "id-2": 2}),
        r"ID 'id-1' has negative label -1",
    ),
    "negative-csv": ("labels.csv", "id,label\nid-0,0\nid-1,-2\nid-2,1\n", r"negative label -2"),
    "float-and-name": (  # numbers with a fraction are regression targets (tests/test_targets.py); names are not
        "labels.json", json.dumps({"id-0": 0.5, "id-1": "cat", "id-2": 2.0}),
        r"ID 'id-1' has label 'cat' \(str\) but ID 'id-0' has 0.5",
    ),
    "bool": (
        "labels.json", json.dumps({"id-0": True, "id-1": False, "id-2": True}),
        r"ID 'id-0' has label True \(bool\).*labels must all be class numbers, class names, numbers",
    ),
    "bad-json": ("labels.json", '{"id-0": 0, "id-1": 1,', r"cannot read labels JSON"),
    "not-utf8": ("labels.json", b'{"id-0": "\xff"}', r"cannot read labels"),
    "json-list": ("labels.json", "[0, 1]", r"labels must be a JSON object \{id: label\}, got list"),
    "csv-no-header": ("labels.csv", "id-0,0\nid-1,1\n", r"expected a CSV header 'id,label'"),
    "csv-columns": ("labels.csv", "id,label\nid-0,0\nid-1,1,7\n", r":3: expected 2 columns"),
    "csv-twice": ("labels.csv", "id,label\nid-0,0\nid-0,1\n", r":3: ID 'id-0' has a label twice"),
}


@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_convert_refuses_bad_labels(tmp_path, make_npy_dir, case):
    name, text, expected = LABEL_CASES[case]
    src, _, _, _ = make_npy_dir(n=3, num_classes=None)
    labels = _labels_file(tmp_path, name, text)
    partition = {"train": ["id-0", "id-1", "id-2"]}
    out = tmp_path / "out"
    message = assert_refused(src, out, match=expected, labels=labels, partition=partition)
    if case.startswith(("bad-json", "not-utf8", "json-list", "csv")):
        assert str(labels) in message


def test_convert_refuses_missing_labels_file(tmp_path, make_npy_dir):
    src, _, partition, _ = make_npy_dir(n=3, num_classes=None)
    missing = tmp_path / "nope.json"
    assert_refused(src, tmp_path / "out", match=r"cannot read labels", mentions=[str(missing)],
                   labels=missing, partition=partition)  # fmt: skip


def test_convert_refuses_bad_partition_json(tmp_path, make_npy_dir):
    src, labels, partition, _ = make_npy_dir(n=3)
    partition.write_text('{"train": ["id-0"')
    assert_refused(src, tmp_path / "out", match=r"cannot read partition JSON",
                   mentions=[str(partition)], labels=labels, partition=partition)  # fmt: skip


# Output paths: refused without touching what is there.


def test_convert_refuses_existing_store_without_overwrite(tmp_path, make_npy_dir, backend):
    src, labels, partition, _ = make_npy_dir(n=4)
    out = tmp_path / "out"
    shardfeed.convert(src, out, labels=labels, partition=partition, format=backend)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(shardfeed.StoreExistsError, match=r"output exists; pass --overwrite"):
        shardfeed.convert(src, out, labels=labels, partition=partition, format=backend)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert len(shardfeed.open_store(out)) == 4


def test_convert_overwrite_replaces_a_store(tmp_path, make_npy_dir, backend):
    src, labels, partition, _ = make_npy_dir(n=4)
    out = tmp_path / "out"
    shardfeed.convert(src, out, partition={"all": ["id-0"]}, format=backend)
    shardfeed.convert(src, out, labels=labels, partition=partition, format=backend, overwrite=True)
    assert len(shardfeed.open_store(out)) == 4


@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_refuses_foreign_directory(tmp_path, make_npy_dir, overwrite):
    src, labels, partition, _ = make_npy_dir(n=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    expected = r"is not a shardfeed store; refusing to delete it" if overwrite else r"output exists"
    with pytest.raises(shardfeed.StoreExistsError, match=expected):
        shardfeed.convert(src, out, labels=labels, partition=partition, overwrite=overwrite)
    assert sorted(os.listdir(out)) == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious"


def test_convert_refuses_output_that_is_a_file(tmp_path, make_npy_dir):
    src, _, partition, _ = make_npy_dir(n=2)
    out = tmp_path / "out"
    out.write_text("x")
    with pytest.raises(shardfeed.StoreExistsError, match=r"exists and is not a directory"):
        shardfeed.convert(src, out, partition=partition, overwrite=True)
    assert out.read_text() == "x"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"format": "parquet"}, r"unknown format 'parquet'; expected one of hdf5, zarr"),
        ({"format": "hdf5", "compression": "zstd"}, r"compression 'zstd' is not available"),
        ({"chunk_rows": 0}, r"chunk rows must be >= 1, got 0"),
        ({"shard_size": "lots"}, r"size 'lots' not understood"),
        ({"shard_size": 0}, r"must be positive"),
        ({"workers": 0}, r"workers must be >= 1, got 0"),
        ({"overwrite": True, "resume": True}, r"--overwrite and --resume exclude each other"),
    ],
    ids=["format", "compression", "chunk-rows", "shard-size", "shard-size-zero", "workers",
         "overwrite-resume"],
)  # fmt: skip
def test_convert_refuses_bad_options(tmp_path, make_npy_dir, options, expected):
    src, labels, partition, _ = make_npy_dir(n=2)
    assert_refused(src, tmp_path / "out", match=expected, error=shardfeed.OptionError,
                   labels=labels, partition=partition, **options)  # fmt: skip


# A few cases through the CLI: exit 1, one line on stderr, no traceback, no OUT.

CLI_CASES = {
    "pickle": (lambda src: _write_pickle(src / f"{BAD_ID}.npy"), r"object dtype \(a pickle\)"),
    "shape": (
        lambda src: np.save(src / f"{BAD_ID}.npy", np.zeros((2, 2), "float32")),
        r"id-3\.npy: sample 'id-3' has shape \(2, 2\).*id-0\.npy",
    ),
    "zip": (lambda src: _write_zip(src / f"{BAD_ID}.npy"), r"is a ZIP archive"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_convert_reports_bad_input(tmp_path, make_npy_dir, capsys, case):
    make_bad, expected = CLI_CASES[case]
    src, labels, partition, _ = make_npy_dir(n=6)
    (src / f"{BAD_ID}.npy").unlink()
    make_bad(src)
    out = tmp_path / "out"
    rc = main(["convert", str(src), str(out), "--labels", str(labels),
               "--partition", str(partition)])  # fmt: skip
    _assert_cli_error(capsys, rc, expected)
    assert not out.exists()
    assert not (tmp_path / "canary").exists()


def test_cli_convert_reports_bad_id_and_bad_json(tmp_path, make_npy_dir, capsys):
    src, labels, partition, _ = make_npy_dir(n=4)
    partition.write_text(json.dumps({"train": ["id-0", "../x"]}))
    rc = main(["convert", str(src), str(tmp_path / "out"), "--partition", str(partition)])
    _assert_cli_error(capsys, rc, r"ID '\.\./x' starts with '\.'")
    labels.write_text("{oops")
    rc = main(["convert", str(src), str(tmp_path / "out"), "--labels", str(labels)])
    _assert_cli_error(capsys, rc, r"cannot read labels JSON")
    assert not (tmp_path / "out").exists()


def test_cli_convert_refuses_existing_output(tmp_path, make_npy_dir, capsys):
    src, _, _, _ = make_npy_dir(n=3, num_classes=None)
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), "--quiet"]) == 0
    capsys.readouterr()
    rc = main(["convert", str(src), str(out), "--quiet"])
    _assert_cli_error(capsys, rc, r"output exists; pass --overwrite to replace it")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    rc = main(["convert", str(src), str(foreign), "--overwrite"])
    _assert_cli_error(capsys, rc, r"is not a shardfeed store; refusing to delete it")
    assert os.listdir(foreign) == ["keep.txt"]


def test_cli_bad_arguments_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["convert", str(tmp_path), str(tmp_path / "out"), "--format", "parquet"])
    assert excinfo.value.code == 2
    assert "invalid choice: 'parquet'" in capsys.readouterr().err


def _assert_cli_error(capsys, rc: int, expected: str) -> None:
    captured = capsys.readouterr()
    assert rc == 1
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("shardfeed: error: ")
    assert "Traceback" not in captured.err
    assert re.search(expected, lines[0]), lines[0]


def test_corpus_leaves_no_temporary_files(tmp_path, make_npy_dir):
    """Refusals write nothing anywhere: the only new entries are the inputs themselves."""
    src, labels, partition, _ = make_npy_dir(n=3)
    _write_zip(src / "id-1.npy")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(shardfeed.InputError):
        shardfeed.convert(src, tmp_path / "nested" / "out", labels=labels, partition=partition)
    assert sorted(os.listdir(tmp_path)) == before


def test_a_partition_s_ids_may_be_a_generator_or_an_array(tmp_path, make_npy_dir):
    src, _, _, arrays = make_npy_dir(n=5, num_classes=None)
    ids = list(arrays)
    manifest = shardfeed.convert(src, tmp_path / "out", partition={"train": (i for i in ids[:3]),
                                                                    "validation": np.array(ids[3:])})  # fmt: skip
    assert manifest.splits == {"train": 3, "validation": 2}
    assert shardfeed.open_store(tmp_path / "out").ids == ids
