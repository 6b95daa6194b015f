"""Disk full and file-size limits: a clear error naming the path and the space needed, exit 1 (not
death by SIGXFSZ), no store, nothing temporary left, and `--resume` finishes the conversion once
there is room, identical to an uninterrupted run.

- a free-space check refuses an uncompressed conversion that cannot fit, before writing anything;
- `prlimit --fsize` makes shard writes fail with EFBIG (Python ignores SIGXFSZ, so the process
  gets the error instead of being killed);
- a small tmpfs (mounted here when the test runs as root; skipped otherwise) runs out of space at
  a random point: `SHARDFEED_DISKFULL_TRIALS=10` runs the RELIABILITY goal (default 2 per backend).
"""

from __future__ import annotations

import random
import resource
import shutil
import subprocess
from collections import namedtuple

import pytest
from crashkit import (
    assert_safe_state,
    assert_same_store,
    convert_api,
    convert_argv,
    leftovers,
    make_inputs,
    run,
    trials,
)

import shardfeed
from shardfeed.storage.format import MANIFEST_NAME

pytestmark = pytest.mark.timeout(300)

TMPFS_TRIALS = trials("SHARDFEED_DISKFULL_TRIALS", 2)
DiskUsage = namedtuple("DiskUsage", "total used free")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("diskfull"), n=600, shape=(32, 32))


def options(backend: str, **more) -> dict:
    return {"format": backend, "shard_size": "200KB", **more}  # 4 KiB samples, 12 shards


@pytest.fixture(scope="module", params=["hdf5", "zarr"])
def reference(request, inputs, tmp_path_factory):
    """Uninterrupted stores, uncompressed and compressed, on an ordinary file system."""
    backend = request.param
    root = tmp_path_factory.mktemp(f"reference-{backend}")
    compressed = "gzip" if backend == "hdf5" else "zstd"
    convert_api(inputs, root / "none", options(backend))
    convert_api(inputs, root / compressed, options(backend, compression=compressed))
    return backend, root / "none", root / compressed


def test_free_space_check_refuses_before_writing(inputs, tmp_path, monkeypatch):
    free = 1_000_000
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10**9, 0, free))
    out = tmp_path / "deep" / "out"
    with pytest.raises(shardfeed.ShardfeedError) as caught:
        convert_api(inputs, out, options("zarr"))
    message = str(caught.value)
    assert isinstance(caught.value, OSError)
    assert f"{out}: 600 samples need 2.5 MB (2457600 bytes)" in message
    assert "1.0 MB (1000000 bytes) free" in message
    assert not (tmp_path / "deep").exists()  # refused before creating anything


def test_free_space_check_counts_only_what_resume_still_writes(inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen = 0

    def interrupt(n):
        nonlocal seen
        seen += n
        if seen > 450:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_api(inputs, out, options("hdf5"), progress=interrupt)
    enough_for_the_rest = 600 * 4096 // 2
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10**9, 0, enough_for_the_rest))
    convert_api(inputs, out, options("hdf5"), resume=True)
    assert shardfeed.verify_store(shardfeed.open_store(out)).ok


def _fsize_limit(limit: int) -> list[str]:
    """`prlimit --fsize=LIMIT` in front of a command (util-linux), else an equivalent preexec."""
    return ["prlimit", f"--fsize={limit}"] if shutil.which("prlimit") else []


@pytest.mark.parametrize("workers", [1, 2])
def test_file_size_limit_fails_cleanly_and_resumes(inputs, reference, tmp_path, workers):
    backend, ref, _ = reference
    out = tmp_path / "out"
    limit = 100_000  # below one shard (~200 KB), above the small metadata files
    argv = convert_argv(inputs, out, options(backend, workers=workers))
    prefix = _fsize_limit(limit)

    def preexec():
        if not prefix:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    rc, err = run([*prefix, *argv], preexec=preexec)
    assert rc == 1, f"exit {rc} (a negative code is death by signal): {err}"
    lines = [line for line in err.splitlines() if line.startswith("shardfeed: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    shards = f"{out}/shards/shard-" if backend == "hdf5" else f"{out}/x/c/"
    assert lines[0].startswith(f"shardfeed: error: {shards}"), lines[0]  # names the file
    assert "File too large" in lines[0] and "bytes" in lines[0] and "--resume" in lines[0]
    assert not (out / MANIFEST_NAME).exists()
    assert leftovers(out) == [".convert", ".lock"]  # nothing temporary
    assert assert_safe_state(out, ref) == "unfinished"
    rc, err = run(convert_argv(inputs, out, options(backend, workers=workers), resume=True))
    assert rc == 0, err
    assert_same_store(out, ref)


@pytest.fixture
def tmpfs(tmp_path):
    """A tmpfs mount point and a function to resize it; skipped where mounting is not allowed."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()

    def mount(size: int, *, remount: bool = False) -> None:
        options = f"{'remount,' if remount else ''}size={size}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                       check=True, capture_output=True, text=True)  # fmt: skip

    try:
        mount(1 << 20)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {getattr(exc, 'stderr', exc)!r}")
    try:
        yield mount_point, mount
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True)


def test_full_tmpfs_refuses_uncompressed_conversion_up_front(inputs, tmpfs):
    mount_point, _ = tmpfs
    out = mount_point / "out"
    rc, err = run(convert_argv(inputs, out, options("hdf5")))
    assert rc == 1
    assert f"{out}: 600 samples need 2.5 MB (2457600 bytes)" in err and "free" in err
    assert not out.exists()


def test_full_tmpfs_fails_cleanly_and_resumes(inputs, reference, tmpfs):
    """Compressed (no up-front check): the disk fills at a random point, then gets room."""
    backend, _, ref = reference
    mount_point, mount = tmpfs
    compression = ref.name
    needed = sum(p.stat().st_size for p in ref.rglob("*") if p.is_file())
    rng = random.Random(f"tmpfs-{backend}")
    for trial in range(TMPFS_TRIALS):
        size = int(needed * rng.uniform(0.2, 0.95)) // 4096 * 4096
        mount(size, remount=True)
        out = mount_point / f"out-{trial}"
        opts = options(backend, compression=compression, workers=1 + trial % 2)
        rc, err = run(convert_argv(inputs, out, opts))
        assert rc == 1, err
        assert "No space left on device" in err and str(out) in err and "--resume" in err, err
        assert "Traceback" not in err, err
        assert not (out / MANIFEST_NAME).exists()
        assert leftovers(out) == [".convert", ".lock"]
        assert assert_safe_state(out, ref) == "unfinished"
        mount(64 << 20, remount=True)  # free space
        rc, err = run(convert_argv(inputs, out, opts, resume=True))
        assert rc == 0, err
        assert_same_store(out, ref)
        shutil.rmtree(out)
