"""Defects from the hostile review (issue: nothing lost, nothing wrong in silence), through the
CLI where a user meets them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import shardfeed
from shardfeed import DataGenerator, OptionError
from shardfeed.cli import main
from shardfeed.inputs.local import LocalFinder
from shardfeed.storage.inspection import describe


def test_overwrite_refuses_an_src_inside_out_and_keeps_the_inputs(tmp_path, make_npy_dir, capsys):
    src, labels, _, _ = make_npy_dir(n=8)
    store = tmp_path / "store"
    assert main(["convert", str(src), str(store), "--labels", str(labels), "--quiet"]) == 0
    inside = store / "raw"
    src.rename(inside)
    before = sorted(p.name for p in inside.iterdir())
    assert main(["convert", str(inside), str(store), "--overwrite", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "SRC lies inside OUT" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in inside.iterdir()) == before  # nothing deleted
    assert (store / "manifest.json").exists()  # and the old store untouched


def test_overwrite_refuses_a_labels_file_inside_out(tmp_path, make_npy_dir, capsys):
    src, labels, _, _ = make_npy_dir(n=8)
    store = tmp_path / "store"
    assert main(["convert", str(src), str(store), "--quiet"]) == 0
    moved = store / "labels.json"
    moved.write_bytes(labels.read_bytes())
    assert main(["convert", str(src), str(store), "--labels", str(moved), "--overwrite", "--quiet"]) == 1
    assert "--labels lies inside OUT" in capsys.readouterr().err
    assert moved.exists()


def test_a_sample_rewritten_with_another_dtype_after_validation_is_refused(tmp_path, make_npy_dir, backend):
    # 80 KiB samples: more than the scan keeps (`SMALL_FILE_BYTES`), so the writer reads the file again
    src, labels, partition, _ = make_npy_dir(n=6, shape=(160, 128), dtype="int32")

    def rewrite(sources, layout) -> None:  # between validation and copying, same byte size
        np.save(src / "id-3.npy", np.zeros((160, 128), dtype=np.float32))

    ids = json.loads(partition.read_text())
    assert any("id-3" in v for v in ids.values())
    with pytest.raises(shardfeed.InputError, match=r"id-3.*changed since it was validated.*<f4.*<i4"):
        shardfeed.convert(src, tmp_path / "out", labels=labels, partition=partition, format=backend, on_start=rewrite)
    with pytest.raises(shardfeed.StoreNotFinalizedError):
        shardfeed.open_store(tmp_path / "out")


def test_a_small_sample_rewritten_after_validation_is_stored_as_it_was_validated(tmp_path, make_npy_dir, backend):
    """The scan read these files whole: the writer copies the bytes it validated, and does not read a
    file rewritten since (with another dtype, here); `verify --source` then names the file that changed."""
    src, labels, partition, arrays = make_npy_dir(n=6, dtype="int32")

    def rewrite(sources, layout) -> None:
        np.save(src / "id-3.npy", np.zeros((4, 3), dtype=np.float32))

    shardfeed.convert(src, tmp_path / "out", labels=labels, partition=partition, format=backend, on_start=rewrite)
    store = shardfeed.open_store(tmp_path / "out")
    assert store.read(store.rows(["id-3"]))[0].tobytes() == arrays["id-3"].tobytes()
    assert shardfeed.verify_store(store).ok
    assert list(shardfeed.verify_store(store, source=src).bad_samples) == ["id-3"]


def test_file_url_out_is_the_absolute_path(tmp_path, make_npy_dir, monkeypatch):
    src, labels, _, _ = make_npy_dir(n=6)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "elsewhere" / "store"
    assert main(["convert", str(src), f"file://{out}", "--labels", str(labels), "--quiet"]) == 0
    assert len(shardfeed.open_store(out)) == 6
    assert not (tmp_path / "file:").exists()


def test_inspect_into_a_closed_pipe_ends_without_a_traceback(small_store):
    store, _ = small_store
    command = f"{sys.executable} -m shardfeed.cli inspect {store} --shards | head -1"
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
    assert done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


@pytest.mark.parametrize("seconds", ["nan", "inf", "-1", "0"])
def test_bench_refuses_a_budget_that_is_not_a_positive_finite_number(small_store, seconds, capsys):
    store, _ = small_store
    assert main(["bench", str(store), "--seconds", seconds]) == 2
    assert "finite" in capsys.readouterr().err


def test_an_interrupted_verify_does_not_suggest_resume(small_store, monkeypatch, capsys):
    store, _ = small_store

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("shardfeed.storage.integrity.verify_store", interrupted)
    assert main(["verify", str(store)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" not in err


@pytest.mark.parametrize(
    ("option", "value"),
    [("seed", -1), ("seed", 1.5), ("seed", "7"), ("batch_size", "32"), ("batch_size", 2.0),
     ("dtype", object), ("dtype", "U5"), ("dtype", "not-a-dtype")],
)  # fmt: skip
def test_generator_options_are_refused_at_construction(small_store, option, value):
    store, _ = small_store
    with pytest.raises(OptionError, match=option):
        DataGenerator(store, split="train", **{option: value})


TRUNCATE_WHILE_OPEN = """
import os, sys
import shardfeed
store = shardfeed.open_store(sys.argv[1], verify=sys.argv[2] == "1")
store.read(list(range(len(store))))  # every shard mapped
for shard in store.manifest.shards:
    os.truncate(os.path.join(sys.argv[1], shard.path), shard.nbytes // 2)
try:
    store.read(list(range(len(store))))
except shardfeed.StoreFormatError as exc:
    print(exc)
"""


@pytest.mark.parametrize("verify", [False, True])
def test_a_shard_truncated_under_a_reader_is_an_error_not_a_sigbus(small_store, verify):
    store, _ = small_store
    done = subprocess.run([sys.executable, "-c", TRUNCATE_WHILE_OPEN, str(store), str(int(verify))],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, f"killed by signal {-done.returncode}" if done.returncode < 0 else done.stderr
    assert "shrank" in done.stdout and "SIGBUS" in done.stdout and "shard" in done.stdout


def test_a_store_opened_before_an_overwrite_refuses_the_new_shards(tmp_path, make_npy_dir, backend):
    src, labels, partition, _ = make_npy_dir(n=16)
    out = tmp_path / "out"
    shardfeed.convert(src, out, labels=labels, partition=partition, format=backend, chunk_rows=4)
    old = shardfeed.open_store(out)  # index and labels loaded, no shard opened yet
    gen = DataGenerator(out, split="train", batch_size=4, labels="sparse")
    relabeled = {k: (v + 1) % 3 for k, v in json.loads(labels.read_text()).items()}
    shardfeed.convert(src, out, labels=relabeled, partition=partition, format=backend, chunk_rows=4, overwrite=True)
    with pytest.raises(shardfeed.StoreReplacedError, match=r"replaced .* since it was opened; reopen it"):
        old.read([0])
    with pytest.raises(shardfeed.StoreReplacedError):
        gen[0]
    fresh = shardfeed.open_store(out)
    assert fresh.labels.tolist() == [relabeled[i] for i in fresh.ids]
    fresh.read([0])


def test_worker_processes_of_a_generator_opened_before_an_overwrite_refuse_it(tmp_path, make_npy_dir):
    src, labels, partition, _ = make_npy_dir(n=16)
    out = tmp_path / "out"
    shardfeed.convert(src, out, labels=labels, partition=partition, chunk_rows=4)
    gen = DataGenerator(out, split="train", batch_size=4, workers=2, use_multiprocessing=True)
    shardfeed.convert(src, out, labels=labels, partition=partition, chunk_rows=2, overwrite=True)
    gen.on_epoch_begin()
    with gen, pytest.raises(shardfeed.StoreReplacedError):
        gen[0]


def test_a_stray_integer_label_is_refused_before_anything_is_written(tmp_path, make_npy_dir, capsys):
    src, labels_path, _, _ = make_npy_dir(n=4, num_classes=2)
    labels = json.loads(labels_path.read_text())
    labels[next(iter(labels))] = 5_000_000
    stray = tmp_path / "stray.json"
    stray.write_text(json.dumps(labels))
    assert main(["convert", str(src), str(tmp_path / "out"), "--labels", str(stray), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "label 5000000" in err and "5000001 classes for 3 distinct labels" in err
    assert not (tmp_path / "out").exists()


def test_inspect_histograms_only_the_labels_present(tmp_path, make_npy_dir):
    src, _, _, _ = make_npy_dir(n=4, num_classes=None)
    ids = sorted(p.stem for p in src.glob("*.npy"))
    labels = dict(zip(ids, [0, 2, 2, 900]))  # 901 classes, 3 present: allowed, and cheap to show
    shardfeed.convert(src, tmp_path / "out", labels=labels)
    summary = describe(shardfeed.open_store(tmp_path / "out"))
    assert summary["num_classes"] == 901
    assert summary["label_histogram"] == {"all": {"0": 1, "2": 2, "900": 1}}


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_labels_from_a_device_are_refused(tmp_path, make_npy_dir, device, capsys):
    src, _, _, _ = make_npy_dir(n=4)
    assert main(["convert", str(src), str(tmp_path / "out"), "--labels", device, "--quiet"]) == 1
    assert "not a regular file or a pipe" in capsys.readouterr().err


def test_labels_may_come_from_a_pipe(tmp_path, make_npy_dir):
    src, labels, _, _ = make_npy_dir(n=4)
    command = (f"{sys.executable} -m shardfeed.cli convert {src} {tmp_path / 'out'} --quiet "
               f"--labels <(cat {labels})")  # fmt: skip
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert shardfeed.open_store(tmp_path / "out").labels is not None


def test_resume_state_restores_a_drawn_seed_but_not_over_a_chosen_one(small_store):
    store, _ = small_store
    first = DataGenerator(store, split="train", batch_size=4)  # seed=None: drawn
    state = {**first.get_state(), "epoch": 1, "next_batch": 2}
    again = DataGenerator(store, split="train", batch_size=4)  # another drawn seed
    again.set_state(state)
    np.testing.assert_array_equal(again[0][0], first.source.batch(1, 2)[0])
    chosen = DataGenerator(store, split="train", batch_size=4, seed=3)
    with pytest.raises(OptionError, match="seed"):
        chosen.set_state(state)


def _rewrite_index(store_path, **arrays) -> None:
    """Replace arrays of a store's index and re-seal it (a crafted store that passes its checksums)."""
    import io

    from shardfeed.storage.files import checksum

    index_path, manifest_path = store_path / "index.npz", store_path / "manifest.json"
    with np.load(index_path) as npz:
        data = {k: npz[k] for k in npz.files}
    data.update(arrays)
    buf = io.BytesIO()
    np.savez(buf, **data)
    index_path.write_bytes(buf.getvalue())
    manifest = json.loads(manifest_path.read_text())
    manifest["index_checksum"] = checksum(buf.getvalue())
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("bad_id", [b"../private/secret", b"a\\b", b".hidden", b"", b"tab\there", b"\xff\xfe"])
def test_an_index_with_an_id_that_is_not_a_plain_name_is_refused(small_store, bad_id, capsys):
    store, _ = small_store
    ids = shardfeed.open_store(store)._index.ids.copy().astype(f"S{max(20, len(bad_id))}")
    ids[0] = bad_id
    _rewrite_index(store, ids=ids)
    assert main(["verify", str(store), "--source", str(store.parent / "data")]) == 1
    err = capsys.readouterr().err
    assert "not plain file names" in err or "not UTF-8" in err


def test_verify_source_never_follows_an_id_out_of_src(tmp_path):
    secret = tmp_path / "private" / "secret.npy"
    secret.parent.mkdir()
    np.save(secret, np.zeros(3))
    (found,) = LocalFinder(tmp_path / "private").find(["../private/secret"])
    assert isinstance(found, shardfeed.InputError) and "plain file names inside SRC" in str(found)


def test_an_index_listing_an_id_twice_is_refused_at_lookup(small_store):
    store, _ = small_store
    ids = shardfeed.open_store(store)._index.ids.copy()
    ids[1] = ids[0]
    _rewrite_index(store, ids=ids)
    with pytest.raises(shardfeed.StoreFormatError, match="twice"):
        shardfeed.open_store(store).rows([ids[2].decode()])


@pytest.mark.parametrize(
    "edit",
    [lambda m: m.update(splits=dict(zip(reversed(list(m["splits"])), m["splits"].values()))),
     lambda m: m.update(class_names=["x", "y", "z"]),
     lambda m: m.update(dtype="<i4")],
    ids=["swapped-splits", "renamed-classes", "redeclared-dtype"],
)  # fmt: skip
def test_an_edited_manifest_fails_verify_and_a_verifying_open(tmp_path, make_npy_dir, edit, capsys):
    src, labels, partition, _ = make_npy_dir(n=12)
    store = tmp_path / "store"
    shardfeed.convert(src, store, labels=labels, partition=partition)
    assert main(["verify", str(store), "--quiet"]) == 0
    path = store / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    assert main(["verify", str(store)]) == 1
    assert "manifest.json: its content does not match its checksum" in capsys.readouterr().out
    with pytest.raises(shardfeed.ChecksumError, match=r"manifest\.json does not match"):
        shardfeed.open_store(store, verify=True)


def _convert_with(tmp_path, make_npy_dir, labels_text: str | bytes, suffix: str, partition_text: str | None = None):
    tmp_path.mkdir()
    src, _, _, _ = make_npy_dir(n=4, num_classes=None, name=f"data-{tmp_path.name}")
    labels = tmp_path / f"labels{suffix}"
    labels.write_bytes(labels_text if isinstance(labels_text, bytes) else labels_text.encode())
    args = ["convert", str(src), str(tmp_path / "out"), "--labels", str(labels), "--quiet"]
    if partition_text is not None:
        (tmp_path / "partition.json").write_text(partition_text)
        args += ["--partition", str(tmp_path / "partition.json")]
    return main(args)


def test_label_parsing_cases(tmp_path, make_npy_dir, capsys):
    ids = [f"id-{k}" for k in range(4)]
    csv = "id,label\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, ["1", "--5", "2", "0"]))
    assert _convert_with(tmp_path / "a", make_npy_dir, csv, ".csv") == 1  # "--5" is a name, not a number
    assert "has label '--5' (str) but ID 'id-0' has 1; labels must all be" in capsys.readouterr().err
    bom = "\ufeffid,label\n" + "".join(f"{i},{k % 2}\n" for k, i in enumerate(ids))
    assert _convert_with(tmp_path / "b", make_npy_dir, bom.encode("utf-8"), ".csv") == 0
    dup = '{"id-0": 1, "id-1": 0, "id-2": 1, "id-3": 0, "id-0": 0}'
    assert _convert_with(tmp_path / "c", make_npy_dir, dup, ".json") == 1
    assert "lists key 'id-0' twice" in capsys.readouterr().err
    empty = json.dumps({"train": ids, "test": []})
    assert _convert_with(tmp_path / "d", make_npy_dir, json.dumps(dict.fromkeys(ids, 0)), ".json", empty) == 0
    store = shardfeed.open_store(tmp_path / "d" / "out")
    assert store.splits == {"train": 4, "test": 0} and len(store.split("test")) == 0  # kept, not dropped
    with pytest.raises(OptionError, match="0 samples give no batch"):
        DataGenerator(store, split="test")


def test_json_string_numbers_and_csv_numbers_are_the_same_class_numbers(tmp_path, make_npy_dir):
    ids = [f"id-{k}" for k in range(4)]
    values = ["10", "2", "10", "0"]
    as_json = json.dumps(dict(zip(ids, values)))
    as_csv = "id,label\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, values))
    assert _convert_with(tmp_path / "j", make_npy_dir, as_json, ".json") == 0
    assert _convert_with(tmp_path / "c", make_npy_dir, as_csv, ".csv") == 0
    stores = [shardfeed.open_store(tmp_path / name / "out") for name in ("j", "c")]
    assert stores[0].labels.tolist() == stores[1].labels.tolist() == [10, 2, 10, 0]
    assert stores[0].class_names is None and stores[1].class_names is None


def test_out_whose_parent_is_a_file_is_one_line(tmp_path, make_npy_dir, capsys):
    src, _, _, _ = make_npy_dir(n=4)
    (tmp_path / "file.txt").write_text("x")
    assert main(["convert", str(src), str(tmp_path / "file.txt" / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "file.txt" in err and "Not a directory" in err


@pytest.mark.parametrize("name", ["bad\nname", "\x1b[31mred", "rtl\u202eevil"])
def test_split_and_class_names_with_control_characters_are_refused(tmp_path, make_npy_dir, name):
    src, _, _, _ = make_npy_dir(n=4, num_classes=None)
    ids = sorted(p.stem for p in src.glob("*.npy"))
    with pytest.raises(shardfeed.InputError, match="control or format character"):
        shardfeed.convert(src, tmp_path / "a", partition={name: ids})
    with pytest.raises(shardfeed.InputError, match="control or format character"):
        shardfeed.convert(src, tmp_path / "b", labels=dict.fromkeys(ids, name))


def test_inspect_sample_json_is_strict(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "s.npy", np.array([1.0, np.nan, np.inf], dtype=np.float32))
    shardfeed.convert(tmp_path / "data", tmp_path / "out")
    assert main(["inspect", str(tmp_path / "out"), "--id", "s", "--json"]) == 0
    info = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert info["min"] == info["max"] == info["mean"] == "nan"  # numpy propagates NaN


def test_resuming_with_worker_processes_running_uses_the_saved_seed(small_store):
    store, _ = small_store
    saved = DataGenerator(store, split="train", batch_size=4)
    state = {**saved.get_state(), "epoch": 1, "next_batch": 1}
    with DataGenerator(store, split="train", batch_size=4, workers=2, use_multiprocessing=True) as gen:
        gen.on_epoch_begin()
        gen[0]  # the workers are up, reading ahead with the generator's own drawn seed
        gen.on_epoch_end()
        gen.set_state(state)
        gen.on_epoch_begin()
        for i in range(len(gen)):
            np.testing.assert_array_equal(gen[i][0], saved.source.batch(1, 1 + i)[0])


UNGUARDED = """
import sys
import shardfeed

def augment(x, rng):
    return x

gen = shardfeed.DataGenerator(sys.argv[1], split="train", batch_size=4, transform=augment, workers=2,
                              use_multiprocessing=True)
gen.on_epoch_begin()
try:
    gen[0]
except shardfeed.WorkerDiedError as exc:
    print(exc)
"""


def test_a_script_that_trains_at_its_top_level_gets_the_main_guard_advice(row_store, tmp_path):
    store = row_store
    script = tmp_path / "train.py"
    script.write_text(UNGUARDED)
    done = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'if __name__ == "__main__":' in done.stdout and "starting workers of its own" in done.stdout


@pytest.mark.parametrize(
    ("fmt", "shape", "dtype", "expected"),
    [("hdf5", (1,) * 32, "float32", "HDF5 datasets hold at most 31"),
     ("zarr", (2,), "longdouble", "Zarr v3 has no float128"),
     ("zarr", (2,), "clongdouble", "Zarr v3 has no complex256")],
)  # fmt: skip
def test_what_a_backend_cannot_store_is_refused_before_out_exists(tmp_path, fmt, shape, dtype, expected, capsys):
    (tmp_path / "data").mkdir()
    for k in range(2):
        np.save(tmp_path / "data" / f"s{k}.npy", np.ones(shape, dtype=dtype))
    assert main(["convert", str(tmp_path / "data"), str(tmp_path / "out"), "--format", fmt, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert expected in err and "sample 's0'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("address", ["nonsense://nowhere", "tcp://127.0.0.1:9"])
def test_an_unreachable_scheduler_is_one_line_and_leaves_no_out(tmp_path, make_npy_dir, address, capsys):
    pytest.importorskip("dask.distributed")
    src, _, _, _ = make_npy_dir(n=4)
    assert main(["convert", str(src), str(tmp_path / "out"), "--scheduler", address, "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"cannot reach the Dask scheduler at {address}" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_storage_options_are_one_line(capsys):
    pytest.importorskip("s3fs")
    assert main(["inspect", "s3://shardfeed-nowhere/x.zarr", "--storage-options", '{"bogus_key": 1}']) == 1
    err = capsys.readouterr().err.strip()
    assert "storage options not understood" in err and "bogus_key" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("side", ["out", "src"])
def test_an_unreachable_s3_endpoint_is_one_line_naming_the_url_and_leaves_no_out(tmp_path, make_npy_dir, side,
                                                                                  monkeypatch, capsys):  # fmt: skip
    s3fs = pytest.importorskip("s3fs")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # The endpoint as options, not AWS_ENDPOINT_URL: fsspec caches file systems by their options, and
    # one made from the environment here would be handed to later tests that use the same variables.
    options = json.dumps({"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
                          "config_kwargs": {"retries": {"max_attempts": 1}}})  # fmt: skip
    src, _, _, _ = make_npy_dir(n=4)
    url = "s3://shardfeed-nowhere/data" if side == "src" else "s3://shardfeed-nowhere/out.zarr"
    argv = ["convert", url, str(tmp_path / "out")] if side == "src" else ["convert", str(src), url]
    try:
        assert main([*argv, "--quiet", "--storage-options", options]) == 1
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"shardfeed: error: {url}: Could not connect to the endpoint") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


CONVERTS_AT_TOP_LEVEL = """
import sys
import numpy as np
import shardfeed

for k in range(8):
    np.save(f"{sys.argv[1]}/s{k}.npy", np.full(100, k, np.float32))
try:
    shardfeed.convert(sys.argv[1], sys.argv[2], workers=2, chunk_rows=2, shard_size=800)
except shardfeed.OptionError as exc:
    print(exc)
"""


def test_a_script_that_converts_at_its_top_level_with_workers_gets_the_main_guard_advice(tmp_path):
    script, src = tmp_path / "pack.py", tmp_path / "src"
    script.write_text(CONVERTS_AT_TOP_LEVEL)
    src.mkdir()
    done = subprocess.run([sys.executable, str(script), str(src), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'under `if __name__ == "__main__":`' in done.stdout and "called again while a worker" in done.stdout
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in src.iterdir()) == [f"s{k}.npy" for k in range(8)]  # the worker converted nothing


def test_a_script_read_from_standard_input_that_converts_with_workers_is_told_why_they_cannot_start(tmp_path):
    """spawn runs the main script again in each worker; `python -` has no file to run, and the workers
    used to die at start, reported as killed by the OOM killer."""
    src = tmp_path / "src"
    src.mkdir()
    done = subprocess.run([sys.executable, "-", str(src), str(tmp_path / "out")], input=CONVERTS_AT_TOP_LEVEL,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "it is not a file (<stdin>: read from standard input?)" in done.stdout
    assert "workers=1" in done.stdout and "Traceback" not in done.stderr
    with pytest.raises(shardfeed.StoreNotFinalizedError):
        shardfeed.open_store(tmp_path / "out")
