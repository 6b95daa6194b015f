"""`convert(..., resume=True)` / `shardfeed convert --resume`: what it keeps, what it redoes, what
it refuses, and the lock that keeps two converters apart.

Interruptions here are made in this process (a progress callback raising KeyboardInterrupt, as
Ctrl-C would) or, where a real kill matters, with SIGKILL at a fault point in a CLI subprocess;
test_crash.py covers random kills and signals.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
from crashkit import (
    assert_safe_state,
    assert_same_store,
    convert_api,
    convert_argv,
    interrupt_after,
    leftovers,
    make_inputs,
    run,
)

import shardfeed
from shardfeed.inputs.finder import Within
from shardfeed.inputs.scan import Sample
from shardfeed.storage.format import LOCK_NAME, MANIFEST_NAME, WORK_DIR
from shardfeed.writing.plan import input_text
from shardfeed.writing.workdir import StoreLock

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("resume"), n=400, shape=(16, 16))


def options(backend: str, **more) -> dict:
    # 1 KiB samples in chunks of 8 and shards of 40: 10 shards
    return {"format": backend, "chunk_rows": 8, "shard_size": "40960", **more}


@pytest.fixture(scope="module", params=["hdf5", "zarr"])
def reference(request, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"reference-{request.param}") / "store"
    convert_api(inputs, out, options(request.param))
    return request.param, out


def interrupted(inputs, out, backend: str, rows: int = 150, **more) -> None:
    with pytest.raises(KeyboardInterrupt):
        convert_api(inputs, out, options(backend, **more), progress=interrupt_after(rows))
    assert not (out / MANIFEST_NAME).exists()


def shard_files(out, backend: str) -> list:
    pattern = "shards/shard-*.h5" if backend == "hdf5" else "x/c/*/0/0"
    return sorted(out.glob(pattern))


def identity(path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_ino, info.st_mtime_ns


def test_resume_keeps_verified_shards_and_writes_the_rest(inputs, reference, tmp_path):
    backend, ref = reference
    out = tmp_path / "out"
    interrupted(inputs, out, backend, rows=150)  # shards 0-2 done (40 rows each), 3 in flight
    kept = {p: identity(p) for p in shard_files(out, backend)}
    assert len(kept) == 3
    reported = []
    convert_api(inputs, out, options(backend), resume=True, progress=reported.append)
    assert {p: identity(p) for p in kept} == kept  # not rewritten
    assert sum(reported) == 400  # kept shards count as progress too
    assert leftovers(out) == []
    assert_same_store(out, ref)


def test_resume_after_sigkill_in_the_cli(inputs, reference, tmp_path):
    backend, ref = reference
    out = tmp_path / "out"
    rc, err = run(convert_argv(inputs, out, options(backend)), fault="record-saved:4")
    assert rc == -9, err
    assert assert_safe_state(out, ref) == "unfinished"
    kept = {p: identity(p) for p in shard_files(out, backend)}
    rc, err = run(convert_argv(inputs, out, options(backend), resume=True))
    assert rc == 0, err
    assert all(identity(p) == kept[p] for p in list(kept)[:4])
    assert_same_store(out, ref)


def test_resume_rewrites_a_damaged_shard(inputs, reference, tmp_path):
    backend, ref = reference
    out = tmp_path / "out"
    interrupted(inputs, out, backend, rows=150)
    damaged = shard_files(out, backend)[1]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x10
    damaged.write_bytes(bytes(data))
    before = identity(damaged)
    convert_api(inputs, out, options(backend), resume=True)
    assert identity(damaged) != before
    assert_same_store(out, ref)


def test_resume_removes_temporary_leftovers(inputs, reference, tmp_path):
    backend, ref = reference
    out = tmp_path / "out"
    interrupted(inputs, out, backend)
    strays = [out / ".index.npz.tmp-4242", out / ".manifest.json.tmp-17",
              shard_files(out, backend)[0].with_name("0.0123abcd.partial")]  # fmt: skip
    for stray in strays:
        stray.write_bytes(b"half a file")
    convert_api(inputs, out, options(backend), resume=True)
    assert not any(stray.exists() for stray in strays)
    assert leftovers(out) == []
    assert_same_store(out, ref)


def test_resume_refuses_a_changed_input_naming_it(inputs, reference, tmp_path):
    backend, _ = reference
    out = tmp_path / "out"
    src = tmp_path / "src"
    shutil.copytree(inputs.src, src)
    moved = type(inputs)(src, inputs.labels, inputs.partition)
    interrupted(moved, out, backend)
    np.save(src / "id-123.npy", np.zeros((16, 16), "float32"))  # same size, new bytes and mtime
    with pytest.raises(shardfeed.OptionError, match=r"id-123\.npy \(sample 'id-123'\) changed"):
        convert_api(moved, out, options(backend), resume=True)
    assert (out / WORK_DIR).exists() and not (out / MANIFEST_NAME).exists()  # still resumable


def test_resume_refuses_a_changed_label_naming_the_sample(inputs, reference, tmp_path):
    backend, _ = reference
    out = tmp_path / "out"
    interrupted(inputs, out, backend)
    labels = json.loads(inputs.labels.read_text())
    labels["id-7"] = "cat" if labels["id-7"] != "cat" else "dog"
    changed = tmp_path / "labels.json"
    changed.write_text(json.dumps(labels))
    moved = type(inputs)(inputs.src, changed, inputs.partition)
    with pytest.raises(shardfeed.OptionError, match=r"sample 'id-7'\) changed"):
        convert_api(moved, out, options(backend), resume=True)


def test_resume_refuses_more_samples(inputs, reference, tmp_path):
    backend, _ = reference
    out = tmp_path / "out"
    interrupted(inputs, out, backend)
    partition = json.loads(inputs.partition.read_text())
    partition["train"] = partition["train"][:-1]
    fewer = tmp_path / "partition.json"
    fewer.write_text(json.dumps(partition))
    moved = type(inputs)(inputs.src, inputs.labels, fewer)
    with pytest.raises(shardfeed.OptionError, match=r"num_samples: was 400, now 399"):
        convert_api(moved, out, options(backend), resume=True)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"chunk_rows": 4}, r"chunk_rows: was 8, now 4"),
        ({"shard_size": "81920"}, r"shard_rows: was 40, now 80"),
        ({"compression": "gzip"}, r"compression: was 'none', now 'gzip'"),
    ],
    ids=["chunk-rows", "shard-size", "compression"],
)
def test_resume_refuses_changed_options_naming_them(inputs, reference, tmp_path, change, expected):
    backend, _ = reference
    out = tmp_path / "out"
    interrupted(inputs, out, backend)
    with pytest.raises(shardfeed.OptionError, match=expected):
        convert_api(inputs, out, options(backend, **change), resume=True)


def test_resume_refuses_another_format(inputs, tmp_path):
    out = tmp_path / "out"
    interrupted(inputs, out, "zarr")
    with pytest.raises(shardfeed.OptionError, match=r"format: was 'zarr', now 'hdf5'"):
        convert_api(inputs, out, options("hdf5"), resume=True)


def test_resume_of_a_conversion_an_earlier_version_started_is_refused_in_one_line(inputs, tmp_path):
    """Its plan's input digests were CRCs of JSON: none would match, and naming a sample would mislead."""
    out = tmp_path / "out"
    interrupted(inputs, out, "zarr")
    plan_path = out / WORK_DIR / "plan.json"
    plan = json.loads(plan_path.read_text())
    del plan["digests_of"]
    plan_path.write_text(json.dumps(plan))
    with pytest.raises(shardfeed.OptionError) as refused:
        convert_api(inputs, out, options("zarr"), resume=True)
    assert str(refused.value) == (f"{out}: cannot resume, the inputs or options differ (the conversion was started "
                                  f"by an earlier version of shardfeed; convert again with --overwrite)")  # fmt: skip


def test_resume_of_a_complete_store_is_refused(reference, inputs):
    backend, ref = reference
    with pytest.raises(shardfeed.StoreExistsError, match=r"store is already complete"):
        convert_api(inputs, ref, options(backend), resume=True)


def test_resume_starts_afresh_when_nothing_was_written(inputs, reference, tmp_path):
    backend, ref = reference
    absent = tmp_path / "absent"
    convert_api(inputs, absent, options(backend), resume=True)
    assert_same_store(absent, ref)
    early = tmp_path / "early"  # killed after taking the lock, before writing its plan
    early.mkdir()
    (early / LOCK_NAME).write_text("12345")
    with pytest.raises(shardfeed.StoreNotFinalizedError, match=r"--resume"):
        shardfeed.open_store(early)
    convert_api(inputs, early, options(backend), resume=True)
    assert_same_store(early, ref)


def test_resume_refuses_a_foreign_directory(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(shardfeed.StoreExistsError, match=r"has no conversion to resume"):
        convert_api(inputs, out, options("zarr"), resume=True)
    assert os.listdir(out) == ["notes.txt"]


def test_plain_convert_over_an_interrupted_one_suggests_resume(inputs, tmp_path):
    out = tmp_path / "out"
    interrupted(inputs, out, "hdf5")
    with pytest.raises(shardfeed.StoreExistsError, match=r"output exists; pass --resume"):
        convert_api(inputs, out, options("hdf5"))


def test_overwrite_interrupted_while_clearing_never_looks_complete(
    inputs, reference, tmp_path, monkeypatch
):
    backend, ref = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)

    def interrupted_rmtree(path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", interrupted_rmtree)  # Ctrl-C while clearing
    with pytest.raises(KeyboardInterrupt):
        convert_api(inputs, out, options(backend), overwrite=True)
    monkeypatch.undo()
    assert not (out / MANIFEST_NAME).exists()  # the manifest went first
    with pytest.raises(shardfeed.StoreNotFinalizedError):
        shardfeed.open_store(out)
    convert_api(inputs, out, options(backend), resume=True)
    assert_same_store(out, ref)


def test_reader_and_cli_refuse_an_unfinished_store(inputs, tmp_path):
    out = tmp_path / "out"
    interrupted(inputs, out, "zarr")
    with pytest.raises(shardfeed.StoreNotFinalizedError, match=r"not finalized.*--resume"):
        shardfeed.open_store(out)
    for command in (["inspect", str(out)], ["verify", str(out)]):
        rc, err = run([*convert_argv(inputs, out, {})[:3], *command])
        assert rc == 1 and "not finalized" in err and "--resume" in err, err


@pytest.mark.parametrize("flags", [[], ["--resume"], ["--overwrite"]], ids=["plain", "res", "ow"])
def test_second_converter_refuses_at_once(inputs, tmp_path, flags):
    """While one conversion holds the store's lock, another refuses within a second or two."""
    out = tmp_path / "out"
    interrupted(inputs, out, "zarr")
    before = sorted(p.name for p in out.iterdir())
    with StoreLock(out):
        argv = convert_argv(inputs, out, options("zarr"))
        started = time.monotonic()
        rc, err = run([*argv, *flags])
        elapsed = time.monotonic() - started
        assert sorted(p.name for p in out.iterdir()) == before  # untouched
    assert rc == 1, err
    assert f"another conversion (pid {os.getpid()}) is writing this store" in err
    assert elapsed < 10  # mostly interpreter start-up; nothing waits for the lock


def test_lock_is_released_by_a_killed_converter(inputs, reference, tmp_path):
    """flock dies with its holder: after kill -9 the next --resume takes the lock at once."""
    backend, ref = reference
    out = tmp_path / "out"
    rc, _ = run(convert_argv(inputs, out, options(backend)), fault="shard-written:2")
    assert rc == -9
    assert (out / LOCK_NAME).exists()
    StoreLock.check_free(out)  # does not raise
    convert_api(inputs, out, options(backend), resume=True)
    assert not (out / LOCK_NAME).exists()
    assert_same_store(out, ref)


@pytest.mark.parametrize("label", [3, -1, 0.25, 1e-300, float("nan"), (0, 2), None, True])
@pytest.mark.parametrize("sample_id", ["id-7", "ünïcode id", "quote'and\"both"])
def test_an_input_s_digest_text_is_the_ascii_of_its_entry(sample_id, label):
    """The text spelled out for a whole local file is what `ascii()` of the entry list gives, so plans
    written before it was spelled out still resume (their digests match)."""
    whole = Sample(sample_id, f"/data/é/{sample_id}.npy", "train", label, False, 128, (784, 1_700_000_000_123_456_789))
    assert input_text(whole) == ascii([sample_id, "train", label, whole.path, 784, 1_700_000_000_123_456_789])
    in_npz = whole._replace(within=Within("x", None), weight=0.5)
    assert input_text(in_npz) == ascii([sample_id, "train", label, whole.path, 784, 1_700_000_000_123_456_789,
                                        "x", None, 0.5])  # fmt: skip
