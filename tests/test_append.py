"""`shardfeed append`: new samples as new shards, every existing shard untouched, crash-safe."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from crashkit import run, tree

import shardfeed
from shardfeed.cli import main
from shardfeed.errors import StoreFormatError, StoreReplacedError
from shardfeed.storage.format import MANIFEST_NAME

SHAPE = (5, 3)


def write_samples(folder: Path, prefix: str, n: int, seed: int, classes=("cat", "dog")) -> dict[str, np.ndarray]:
    """`folder/<prefix><k>.npy`, its labels.json and partition.json (the last two samples validate)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    arrays = {f"{prefix}{k}": rng.standard_normal(SHAPE).astype("f4") for k in range(n)}
    for sample_id, x in arrays.items():
        np.save(folder / f"{sample_id}.npy", x)
    ids = list(arrays)
    (folder.parent / f"{prefix}labels.json").write_text(json.dumps({i: classes[k % len(classes)]
                                                                   for k, i in enumerate(ids)}))  # fmt: skip
    (folder.parent / f"{prefix}partition.json").write_text(json.dumps({"train": ids[:-2], "validation": ids[-2:]}))
    return arrays


def inputs(tmp_path: Path, prefix: str) -> list[str]:
    return [str(tmp_path / prefix), "--labels", str(tmp_path / f"{prefix}labels.json"),
            "--partition", str(tmp_path / f"{prefix}partition.json")]  # fmt: skip


@pytest.fixture
def base(tmp_path, backend):
    """A store of 10 samples in shards of 4 rows (its last shard short), and 7 more to append."""
    first = write_samples(tmp_path / "a", "a", 10, seed=0)
    more = write_samples(tmp_path / "b", "b", 7, seed=1)
    store = tmp_path / f"s.{backend}"
    argv = ["convert", *inputs(tmp_path, "a"), str(store), "--format", backend, "--chunk-rows", "2",
            "--shard-size", str(4 * 60), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return store, first, more


def shard_files(store: Path) -> dict[str, tuple[bytes, int, int]]:
    """Each shard file's bytes, inode and modification time: what "untouched" means."""
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    stats = {s["path"]: os.stat(store / s["path"]) for s in manifest["shards"]}
    return {p: ((store / p).read_bytes(), st.st_ino, st.st_mtime_ns) for p, st in stats.items()}


def assert_holds(store: Path, arrays: dict[str, np.ndarray], splits: dict[str, int]) -> None:
    with shardfeed.open_store(store) as opened:
        assert sorted(opened.ids) == sorted(arrays) and opened.splits == splits
        for fast in (True, False):
            with shardfeed.open_store(store, fast=fast) as s:
                got = s.read(np.arange(len(s)))
                assert all(got[row].tobytes() == arrays[i].tobytes() for row, i in enumerate(s.ids))
        names = opened.manifest.class_names
        expected = {i: ["cat", "dog"][int(i[1:]) % 2] for i in arrays}
        assert {i: names[label] for i, label in zip(opened.ids, opened.labels)} == expected
        assert shardfeed.verify_store(opened).ok


def test_append_adds_new_shards_and_leaves_every_old_one_untouched(base, tmp_path, capsys):
    store, first, more = base
    before = shard_files(store)
    assert main(["append", str(store), *inputs(tmp_path, "b")]) == 0
    assert "7 samples appended, 17 in all (train=13, validation=4)" in capsys.readouterr().out
    after = shard_files(store)
    assert {p: after[p] for p in before} == before  # same bytes, same inode, same mtime
    assert len(after) == len(before) + 2
    assert_holds(store, {**first, **more}, {"train": 13, "validation": 4})
    assert main(["verify", str(store)]) == 0
    # A second append: a third index generation; the first one goes, the one before the current stays.
    write_samples(tmp_path / "c", "c", 3, seed=2)
    assert main(["append", str(store), *inputs(tmp_path, "c"), "--quiet"]) == 0
    assert sorted(p.name for p in store.glob("index*.npz")) == ["index-1.npz", "index-2.npz"]
    with shardfeed.open_store(store) as s:
        assert len(s) == 20 and s.manifest.converter["appended"][-1]["samples"] == 3
        assert s.manifest.content_intact


@pytest.mark.parametrize("backend", ["zarr"])
def test_appending_with_worker_processes_gives_the_same_store(base, tmp_path):
    store, _, _ = base
    twin = tmp_path / "twin.zarr"
    shutil.copytree(store, twin)
    assert main(["append", str(store), *inputs(tmp_path, "b"), "--quiet"]) == 0
    assert main(["append", str(twin), *inputs(tmp_path, "b"), "--quiet", "--workers", "2"]) == 0
    assert tree(store) == tree(twin)


def test_a_reader_opened_before_an_append_gets_a_clear_error_not_a_mix(base, tmp_path):
    store, _, _ = base
    old = shardfeed.open_store(store)
    assert main(["append", str(store), *inputs(tmp_path, "b"), "--quiet"]) == 0
    with pytest.raises(StoreReplacedError, match="appended to"):
        old.read([len(old) - 1])
    with shardfeed.open_store(store) as new:
        assert len(new) == 17


@pytest.mark.parametrize("point", ["shard-written:1", "shard-written:2", "index-written:1"])
def test_an_interrupted_append_leaves_the_store_as_it_was_and_can_be_run_again(base, tmp_path, point):
    store, first, more = base
    manifest_before = (store / MANIFEST_NAME).read_bytes()
    argv = [sys.executable, "-m", "shardfeed.cli", "append", str(store), *inputs(tmp_path, "b"), "--quiet"]
    code, err = run(argv, fault=point)
    assert code == -9, err
    assert (store / MANIFEST_NAME).read_bytes() == manifest_before
    assert_holds(store, first, {"train": 8, "validation": 2})
    code, err = run(argv)
    assert code == 0, err
    assert_holds(store, {**first, **more}, {"train": 13, "validation": 4})


@pytest.mark.parametrize("backend", ["hdf5"])
@pytest.mark.parametrize(
    ("damage", "message"),
    [("known-id", "sample 'a3' is already in the store"),
     ("shape", "has shape (6, 3) dtype <f4; the store holds shape (5, 3) dtype <f4"),
     ("dtype", "has shape (5, 3) dtype <f8; the store holds shape (5, 3) dtype <f4"),
     ("class", "has label 'eel', not one of the store's classes (cat, dog)"),
     ("no-labels", "the store is labeled: give --labels for the new samples"),
     ("no-partition", "the store has splits train, validation: give --partition"),
     ("no-store", "no such store")],
)  # fmt: skip
def test_bad_appends_are_one_line_and_change_nothing(base, tmp_path, damage, message, capsys):
    store, _, _ = base
    new = tmp_path / "b"
    argv = ["append", str(store), *inputs(tmp_path, "b"), "--quiet"]
    if damage == "known-id":
        np.save(new / "a3.npy", np.zeros(SHAPE, "f4"))
        partition = json.loads((tmp_path / "bpartition.json").read_text())
        partition["train"].append("a3")
        (tmp_path / "bpartition.json").write_text(json.dumps(partition))
        labels = json.loads((tmp_path / "blabels.json").read_text())
        (tmp_path / "blabels.json").write_text(json.dumps({**labels, "a3": "cat"}))
    elif damage in ("shape", "dtype"):
        wrong = np.zeros((6, 3), "f4") if damage == "shape" else np.zeros(SHAPE, "f8")
        for k in range(7):
            np.save(new / f"b{k}.npy", wrong)
    elif damage == "class":
        labels = json.loads((tmp_path / "blabels.json").read_text())
        (tmp_path / "blabels.json").write_text(json.dumps({**labels, "b4": "eel"}))
    elif damage == "no-labels":
        argv = [a for a in argv if a not in ("--labels", str(tmp_path / "blabels.json"))]
    elif damage == "no-partition":
        argv = [a for a in argv if a not in ("--partition", str(tmp_path / "bpartition.json"))]
    elif damage == "no-store":
        argv[1] = str(tmp_path / "nowhere.hdf5")
    files_before = tree(store)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert tree(store) == files_before


def test_append_refuses_a_store_at_a_url(capsys, tmp_path):
    assert main(["append", "s3://bucket/x.zarr", str(tmp_path)]) == 1
    assert "append works on local stores" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../index.npz", "index-0.npz", "other.npz", "index-1.npz/.."])
def test_a_manifest_naming_another_index_file_is_refused(base, name):
    store, _, _ = base
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    manifest["index_name"] = name
    (store / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(StoreFormatError, match="index_name"):
        shardfeed.open_store(store)
