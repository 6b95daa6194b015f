"""The `shardfeed` command: convert, inspect and verify through `cli.main` (in-process, with
capsys), once end to end as a real subprocess, and without importing Keras or TensorFlow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shardfeed
from shardfeed.cli import main

N = 10
INSPECT_JSON_KEYS = {"backend", "num_samples", "sample_shape", "dtype", "splits", "num_shards",
                     "class_names"}  # fmt: skip


@pytest.fixture
def inputs(tmp_path):
    """10 samples (2, 3) float32, string labels 'cat'/'dog', train 7 / validation 3."""
    src = tmp_path / "data"
    src.mkdir()
    for k in range(N):
        np.save(src / f"s{k}.npy", np.arange(6, dtype="float32").reshape(2, 3) + 10 * k)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({f"s{k}": ["dog", "cat"][k % 2] for k in range(N)}))
    partition = tmp_path / "partition.json"
    partition.write_text(json.dumps({"train": [f"s{k}" for k in range(7)],
                                     "validation": [f"s{k}" for k in range(7, N)]}))  # fmt: skip
    return src, labels, partition


@pytest.fixture
def cli_store(tmp_path, inputs, backend, capsys) -> Path:
    src, labels, partition = inputs
    out = tmp_path / f"out.{backend}"
    rc = main(["convert", str(src), str(out), "--labels", str(labels),
               "--partition", str(partition), "--format", backend,
               "--chunk-rows", "2", "--shard-size", "96"])  # fmt: skip
    assert rc == 0
    capsys.readouterr()
    return out


def test_convert_prints_summary(tmp_path, inputs, backend, capsys):
    src, labels, partition = inputs
    out = tmp_path / "out"
    rc = main(["convert", str(src), str(out), "--labels", str(labels),
               "--partition", str(partition), "--format", backend,
               "--chunk-rows", "2", "--shard-size", "96"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0
    assert f"{out}: 10 samples (train=7, validation=3) in 3 {backend} shard(s)" in captured.out
    assert "note:" not in captured.out
    assert captured.err == ""  # no progress bar when stderr is not a terminal
    store = shardfeed.open_store(out)
    assert (store.backend, store.manifest.chunk_rows, store.manifest.shard_rows) == (backend, 2, 4)


def test_convert_quiet_and_unlisted_note(tmp_path, inputs, capsys):
    src, _, _ = inputs
    partition = tmp_path / "few.json"
    partition.write_text(json.dumps({"train": ["s1", "s2"]}))
    assert main(["convert", str(src), str(tmp_path / "a"), "--partition", str(partition)]) == 0
    assert "note: 8 .npy file(s) in" in capsys.readouterr().out
    assert main(["convert", str(src), str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert shardfeed.open_store(tmp_path / "b").splits == {"all": N}


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_convert_with_workers_and_compression(tmp_path, inputs, compression, capsys):
    src, labels, partition = inputs
    out = tmp_path / "out"
    rc = main(["convert", str(src), str(out), "--labels", str(labels),
               "--partition", str(partition), "--chunk-rows", "1", "--shard-size", "24",
               "--workers", "2",
               "--compression", compression, "--quiet"])  # fmt: skip
    assert rc == 0
    store = shardfeed.open_store(out)
    assert len(store.manifest.shards) == N
    assert store.manifest.compression == compression
    for row, sample_id in enumerate(store.ids):
        expected = np.load(src / f"{sample_id}.npy")
        assert store.read([row])[0].tobytes() == expected.tobytes()


def test_inspect_text(cli_store, backend, capsys):
    assert main(["inspect", str(cli_store)]) == 0
    out = capsys.readouterr().out
    assert f"backend      {backend} (format version 1)" in out
    assert "samples      10 of shape (2, 3) <f4" in out
    assert "chunks       2 rows; shards of 4 rows: 3" in out
    assert "classes      cat, dog" in out
    assert "train                 7" in out
    assert "validation            3" in out
    assert "labels   cat:3  dog:4" in out  # train: s0..s6, odd ones are cats
    assert "shards/" not in out and "x/c/" not in out


def test_inspect_shards_lists_every_shard(cli_store, capsys):
    assert main(["inspect", str(cli_store), "--shards"]) == 0
    out = capsys.readouterr().out
    shards = shardfeed.open_store(cli_store).manifest.shards
    assert len(shards) == 3
    for shard in shards:
        assert shard.path in out
        assert f"rows {shard.first_row}-{shard.last_row}" in out


def test_inspect_json(cli_store, backend, capsys):
    assert main(["inspect", str(cli_store), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= INSPECT_JSON_KEYS
    assert summary["backend"] == backend
    assert summary["num_samples"] == N
    assert summary["sample_shape"] == [2, 3]
    assert summary["dtype"] == "<f4"
    assert summary["splits"] == {"train": 7, "validation": 3}
    assert summary["num_shards"] == 3
    assert summary["class_names"] == ["cat", "dog"]
    assert summary["label_histogram"] == {"train": {"cat": 3, "dog": 4},
                                          "validation": {"cat": 2, "dog": 1}}  # fmt: skip


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_inspect_one_sample(cli_store, capsys, as_json):
    argv = ["inspect", str(cli_store), "--id", "s3"] + (["--json"] if as_json else [])
    assert main(argv) == 0
    out = capsys.readouterr().out
    if as_json:
        info = json.loads(out)
        assert info["id"] == "s3"
        assert (info["row"], info["split"]) == (3, "train")
        assert (info["label"], info["class_name"]) == (0, "cat")
        assert (info["min"], info["max"], info["shape"]) == (30.0, 35.0, [2, 3])
        assert info["shard"] == shardfeed.open_store(cli_store).manifest.shards[0].path
    else:
        assert "id: s3\nrow: 3\nsplit: train\n" in out
        assert "class_name: cat" in out
        assert "min: 30.0\nmax: 35.0" in out


def test_inspect_unknown_id_is_an_error(cli_store, capsys):
    assert main(["inspect", str(cli_store), "--id", "s99"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("shardfeed: error: ") and err.count("\n") == 1
    assert "unknown sample ID(s): ['s99']" in err


def test_inspect_shows_source_dtype(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "a.npy", np.arange(3, dtype=">i8"))
    assert main(["convert", str(src), str(tmp_path / "out"), "--quiet"]) == 0
    assert main(["inspect", str(tmp_path / "out")]) == 0
    assert "samples      1 of shape (3,) <i8 (source dtype >i8)" in capsys.readouterr().out


def test_verify_good_store(cli_store, inputs, capsys):
    src, _, _ = inputs
    assert main(["verify", str(cli_store)]) == 0
    assert f"{cli_store}: OK, 10 samples match their checksums" in capsys.readouterr().out
    assert main(["verify", str(cli_store), "--source", str(src), "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_verify_reports_changed_source(cli_store, inputs, capsys):
    src, _, _ = inputs
    np.save(src / "s4.npy", np.zeros((2, 3), dtype="float32"))
    assert main(["verify", str(cli_store), "--source", str(src)]) == 1
    out = capsys.readouterr().out
    assert "BAD sample 's4': differs from its source" in out
    assert f"{cli_store}: FAILED, 1 bad sample(s)" in out


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_commands_refuse_unusable_stores(tmp_path, cli_store, capsys, command):
    assert main([command, str(tmp_path / "missing")]) == 1
    assert "no such store" in capsys.readouterr().err
    (cli_store / "manifest.json").unlink()
    (cli_store / ".convert").mkdir()
    assert main([command, str(cli_store)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("shardfeed: error: ") and "--resume" in err
    assert "Traceback" not in err


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main([])
    assert excinfo.value.code == 2
    with pytest.raises(SystemExit) as excinfo:
        main(["--version"])
    assert excinfo.value.code == 0
    assert capsys.readouterr().out.strip() == f"shardfeed {shardfeed.__version__}"


# Real subprocesses: the installed entry point, and what gets imported.


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, env=env, **kw)


def test_cli_end_to_end_in_a_subprocess(tmp_path, inputs):
    src, labels, partition = inputs
    out = tmp_path / "out.zarr"
    cli = [sys.executable, "-m", "shardfeed.cli"]
    done = _run(*cli, "convert", str(src), str(out), "--labels", str(labels),
                "--partition", str(partition), "--compression", "zstd")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "10 samples (train=7, validation=3) in 1 zarr shard(s)" in done.stdout
    done = _run(*cli, "inspect", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert set(summary) >= INSPECT_JSON_KEYS
    assert (summary["num_samples"], summary["compression"]) == (N, "zstd")
    done = _run(*cli, "verify", str(out), "--source", str(src))
    assert (done.returncode, done.stderr) == (0, "")
    assert "OK, 10 samples" in done.stdout
    done = _run(*cli, "convert", str(src), str(out))
    assert done.returncode == 1
    assert done.stderr.startswith("shardfeed: error: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_installed_entry_point(tmp_path, inputs):
    script = shutil.which("shardfeed", path=str(Path(sys.executable).parent))
    assert script, "the shardfeed script is not installed next to the interpreter"
    done = _run(script, "--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"shardfeed {shardfeed.__version__}")
    src, _, _ = inputs
    done = _run(script, "convert", str(src), str(tmp_path / "out"), "--format", "hdf5", "--quiet")
    warning = f"shardfeed: warning: {tmp_path / 'out'} has no labels (no --labels given): its batches are inputs only"
    assert (done.returncode, done.stdout, done.stderr.strip()) == (0, "", warning)
    done = _run(script, "inspect", str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert done.stderr.strip() == f"shardfeed: error: {tmp_path / 'nowhere'}: no such store"


def test_import_does_not_load_keras_or_tensorflow():
    code = ("import shardfeed, sys; "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules")  # fmt: skip
    done = _run(sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr


def test_inspect_does_not_load_keras_or_tensorflow(tmp_path, inputs):
    src, labels, partition = inputs
    out = tmp_path / "out"
    shardfeed.convert(src, out, labels=labels, partition=partition)
    code = (
        "import sys\n"
        "from shardfeed.cli import main\n"
        "rc = main(['inspect', sys.argv[1]]) or main(['inspect', sys.argv[1], '--id', 's1'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow'))\n"
        "assert not heavy, heavy\n"
        "sys.exit(rc)\n"
    )
    done = _run(sys.executable, "-c", code, str(out))
    assert done.returncode == 0, done.stderr
    assert "classes      cat, dog" in done.stdout
    done = _run(sys.executable, "-X", "importtime", "-m", "shardfeed.cli", "inspect", str(out))
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}  # fmt: skip
    assert "shardfeed.storage.store" in imported  # importtime works and shows our own modules
    assert not {m for m in imported if m.split(".")[0] in ("keras", "tensorflow")}


def test_help_is_written_for_users_with_defaults_and_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "Pack per-sample .npy files" in top and "only module" not in top and "shardfeed convert data/" in top
    for command in ("convert", "append", "inspect", "show", "verify", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert f"example:\n  shardfeed {command} " in text, command
        assert "(default" in text or "default:" in text, command
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    assert "(default: 128MB)" in " ".join(capsys.readouterr().out.split())  # argparse wraps lines
