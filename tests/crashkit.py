"""Helpers shared by the crash, resume and disk-full tests: run the CLI in a subprocess, kill it,
and check what it left behind against an uninterrupted run.

Not a test module. The invariant every helper here serves: at any moment a store at OUT either
has no manifest (readers refuse it, `--resume` finishes it) or is complete and verifies, and a
finished conversion, resumed or not, is byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

import shardfeed
from shardfeed.errors import StoreNotFoundError
from shardfeed.storage.format import LOCK_NAME, MANIFEST_NAME, WORK_DIR

TEMPORARY = ("*.partial", ".*.tmp-*")  # what an interrupted write may leave behind


def trials(variable: str, default: int) -> int:
    """Trial count: `default`, or the environment variable `variable` when set."""
    return int(os.environ.get(variable, default))


@dataclass(frozen=True)
class Inputs:
    """A tutorial-layout source: `src/<ID>.npy`, labels and partition JSON files."""

    src: Path
    labels: Path
    partition: Path

    def args(self) -> list[str]:
        return [str(self.src), "--labels", str(self.labels), "--partition", str(self.partition)]


def make_inputs(root: Path, n: int, shape: tuple[int, ...], seed: int = 0) -> Inputs:
    rng = np.random.default_rng(seed)
    src = root / "src"
    src.mkdir(parents=True)
    ids = [f"id-{k}" for k in range(n)]
    for sample_id in ids:
        np.save(src / f"{sample_id}.npy", rng.standard_normal(shape).astype("float32"))
    labels, partition = root / "labels.json", root / "partition.json"
    labels.write_text(json.dumps({i: ["cat", "dog", "eel"][int(rng.integers(3))] for i in ids}))
    partition.write_text(json.dumps({"train": ids[: n * 3 // 4], "validation": ids[n * 3 // 4 :]}))
    return Inputs(src, labels, partition)


def convert_argv(inputs: Inputs, out: Path, options: dict, *, resume: bool = False) -> list[str]:
    """`shardfeed convert` as a subprocess; `options` are `convert()` keyword arguments."""
    argv = [sys.executable, "-m", "shardfeed.cli", "convert", *inputs.args(), str(out), "--quiet"]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return [*argv, *(["--resume"] if resume else [])]


def convert_api(inputs: Inputs, out: Path, options: dict, **more) -> shardfeed.storage.manifest.Manifest:
    """The same conversion in this process, through the library function."""
    return shardfeed.convert(inputs.src, out, labels=inputs.labels, partition=inputs.partition,
                             **{**options, **more})  # fmt: skip


def start(argv: list[str], fault: str | None = None, preexec=None) -> subprocess.Popen:
    """Start a CLI run in its own session (so a group signal reaches its workers, not pytest)."""
    env = {k: v for k, v in os.environ.items() if k != "SHARDFEED_FAULT"}
    if fault:
        env["SHARDFEED_FAULT"] = fault
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True, preexec_fn=preexec)  # fmt: skip


def run(argv: list[str], fault: str | None = None, timeout: float = 120, preexec=None):
    """Run to the end; returns (returncode, stderr)."""
    proc = start(argv, fault, preexec)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> bool:
    """Wait until `path` exists (True) or the process ended first (False)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.002)
    return True


def descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def assert_all_gone(processes: list[psutil.Process], timeout: float = 10) -> None:
    """Every process (a killed run's workers) ends within `timeout`: no orphans keep writing."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    names = [f"{p.pid} {p.cmdline()[-3:]}" for p in alive if p.is_running()]
    for p in alive:
        p.kill()
    assert not names, f"orphan processes survived their driver: {names}"


def kill_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def leftovers(out: Path) -> list[str]:
    found = [p for pattern in TEMPORARY for p in out.rglob(pattern)]
    found += [out / name for name in (WORK_DIR, LOCK_NAME) if (out / name).exists()]
    return sorted(str(p.relative_to(out)) for p in found)


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def assert_same_store(out: Path, reference: Path) -> None:
    """Byte-identical to the uninterrupted run: index, manifest, every shard and metadata file."""
    got, expected = tree(out), tree(reference)
    assert sorted(got) == sorted(expected), f"{out}: files differ from {reference}"
    assert got["index.npz"] == expected["index.npz"]
    assert json.loads(got[MANIFEST_NAME]) == json.loads(expected[MANIFEST_NAME])
    different = [name for name in expected if got[name] != expected[name]]
    assert not different, f"{out}: bytes differ from the uninterrupted run in {different}"
    with shardfeed.open_store(out) as store:  # closed: a test may unmount or delete it next
        assert shardfeed.verify_store(store).ok


def assert_safe_state(out: Path, reference: Path) -> str:
    """What a killed run left: 'complete' (and correct) or 'unfinished' (and refused by readers).

    Never a manifest over a broken store: a manifest means every file is already in place.
    """
    if (out / MANIFEST_NAME).exists():
        with shardfeed.open_store(out) as store:
            report = shardfeed.verify_store(store)
        assert report.ok, f"{out} has a manifest but fails verification: {report.bad_shards}"
        assert tree(out)[MANIFEST_NAME] == tree(reference)[MANIFEST_NAME]
        return "complete"
    expected = (shardfeed.StoreNotFinalizedError, StoreNotFoundError)
    with pytest.raises(expected) as caught:
        shardfeed.open_store(out)
    if (out / WORK_DIR).exists():
        assert "--resume" in str(caught.value)
    return "unfinished"


def resume_and_compare(inputs: Inputs, out: Path, options: dict, reference: Path, *,
                       cli: bool = False) -> None:  # fmt: skip
    """Finish an interrupted conversion with resume (in this process, or the CLI) and compare."""
    if not ((out / MANIFEST_NAME).exists() and not (out / WORK_DIR).exists()):
        if cli:
            rc, err = run(convert_argv(inputs, out, options, resume=True))
            assert rc == 0, f"resume failed: {err}"
        else:
            convert_api(inputs, out, {**options, "workers": 1}, resume=True)
    assert leftovers(out) == []
    assert_same_store(out, reference)


def interrupt_after(rows: int):
    """A progress callback that interrupts the conversion (like Ctrl-C) after `rows` samples."""
    seen = 0

    def progress(n: int) -> None:
        nonlocal seen
        seen += n
        if seen >= rows:
            raise KeyboardInterrupt

    return progress
