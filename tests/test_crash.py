"""Crash safety: a conversion killed at any moment never leaves a complete-looking broken store,
and `--resume` then produces exactly the store an uninterrupted run produces.

Every test runs the real CLI in a subprocess (both backends, `--workers 1` and `--workers 2`)
and interrupts it:

- SIGKILL to the driver at random moments (a quarter of them during start-up and scanning, the
  rest while shards are written), as kill -9, the OOM killer or a power cut would;
- SIGKILL at injected fault points (`SHARDFEED_FAULT`, see `shardfeed/writing/faults.py`), which hit the
  narrow windows between the steps of a commit deterministically;
- SIGINT to the whole process group (Ctrl-C in a terminal) and SIGTERM to the driver: exit
  130 / 143 within seconds, no traceback.

After each interruption: a manifest only over a complete, verifying store; readers refuse an
unfinished store (naming --resume); the run's worker processes are gone; and resuming gives a
store byte-identical to the uninterrupted reference, with no temporary file left.

Trial counts are modest by default so that this module takes about a minute on two busy cores.
`SHARDFEED_CRASH_TRIALS=20` runs the RELIABILITY goal (20 random SIGKILLs per backend and
worker count); `SHARDFEED_SIGNAL_TRIALS` repeats the SIGINT / SIGTERM tests likewise.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from crashkit import (
    Inputs,
    assert_all_gone,
    assert_safe_state,
    assert_same_store,
    convert_argv,
    descendants,
    kill_group,
    leftovers,
    make_inputs,
    resume_and_compare,
    run,
    start,
    trials,
    wait_for,
)

pytestmark = pytest.mark.timeout(600)

RANDOM_KILLS = trials("SHARDFEED_CRASH_TRIALS", 3)
SIGNAL_TRIALS = trials("SHARDFEED_SIGNAL_TRIALS", 1)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass(frozen=True)
class Reference:
    """An uninterrupted CLI run: its store, and how long its phases took."""

    backend: str
    path: Path
    plan_seconds: float  # until .convert/plan.json appeared: start-up, scanning, preparing
    write_seconds: dict[int, float]  # workers -> from then until the process ended
    again: Path  # a second uninterrupted run, with two workers


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    # 3000 samples of 4 KiB in ~40 shards: long enough to be killed mid-way, short to run.
    return make_inputs(tmp_path_factory.mktemp("crash"), n=3000, shape=(8, 8, 16))


def options(backend: str, workers: int = 1) -> dict:
    return {"format": backend, "shard_size": "300KB", "workers": workers}


@pytest.fixture(scope="module", params=["hdf5", "zarr"])
def reference(request, inputs, tmp_path_factory) -> Reference:
    backend = request.param
    root = tmp_path_factory.mktemp(f"reference-{backend}")
    plan_seconds, write_seconds = {}, {}
    for workers in (1, 2):
        out = root / f"workers-{workers}"
        started = time.monotonic()
        proc = start(convert_argv(inputs, out, options(backend, workers)))
        assert wait_for(out / ".convert" / "plan.json", proc)
        planned = time.monotonic()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert leftovers(out) == []
        plan_seconds[workers] = planned - started
        write_seconds[workers] = time.monotonic() - planned
    path, again = root / "workers-1", root / "workers-2"
    return Reference(backend, path, plan_seconds[1], write_seconds, again)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_at_random_moments(inputs, reference, workers, tmp_path):
    backend = reference.backend
    opts = options(backend, workers)
    rng = random.Random(f"kill-{backend}-{workers}")
    window = 0.9 * reference.write_seconds[workers]
    outcomes = Counter()
    for trial in range(RANDOM_KILLS):
        early = trial % 4 == 2  # during start-up, scanning and preparing
        delay = rng.uniform(0, reference.plan_seconds if early else window)
        outcomes[_kill_once(inputs, tmp_path / f"out-{trial}", opts, reference, delay, early)] += 1
    # On a loaded machine the timings of the reference run can be off: kill sooner until one
    # kill has landed while shards were being written, so the test always covers that case.
    for extra in range(6):
        if RANDOM_KILLS < 3 or outcomes["unfinished"]:
            break
        delay = window * 0.5 ** (extra + 1)
        outcomes[_kill_once(inputs, tmp_path / f"extra-{extra}", opts, reference, delay, False)] += 1
    print(f"{backend} workers={workers}: {dict(outcomes)}")
    if RANDOM_KILLS >= 3:
        assert outcomes["unfinished"] >= 1, f"no kill landed mid-conversion: {dict(outcomes)}"


def _kill_once(inputs, out, opts, reference, delay: float, early: bool) -> str:
    """SIGKILL the driver `delay` s after start (early) or after its plan exists; check, resume."""
    proc = start(convert_argv(inputs, out, opts))
    if early or wait_for(out / ".convert" / "plan.json", proc):
        time.sleep(delay)
    workers_seen = descendants(proc)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only, as kill -9 or the OOM killer would
    proc.communicate(timeout=60)
    assert_all_gone(workers_seen)
    outcome = assert_safe_state(out, reference.path) if out.exists() else "not started"
    resume_and_compare(inputs, out, opts, reference.path)
    return outcome


FAULTS = ["shard-written:1", "shard-renamed:3", "record-saved:2", "index-written:1",
          "manifest-written:1"]  # fmt: skip


@pytest.mark.parametrize("fault", FAULTS)
def test_sigkill_at_fault_point(inputs, reference, fault, tmp_path):
    opts = options(reference.backend)
    out = tmp_path / "out"
    rc, err = run(convert_argv(inputs, out, opts), fault=fault)
    assert rc == -signal.SIGKILL, err
    state = assert_safe_state(out, reference.path)
    assert state == ("complete" if fault.startswith("manifest-written") else "unfinished")
    resume_and_compare(inputs, out, opts, reference.path)


@pytest.mark.parametrize("fault", ["shard-written:2", "record-saved:3"])
def test_sigkill_at_fault_point_with_two_workers(inputs, reference, fault, tmp_path):
    """A worker killed: the driver stops with a clear error. The driver killed: workers die too."""
    opts = options(reference.backend, workers=2)
    out = tmp_path / "out"
    proc = start(convert_argv(inputs, out, opts), fault=fault)
    wait_for(out / ".convert" / "plan.json", proc)
    workers_seen = []
    while proc.poll() is None and len(workers_seen) < 3:  # the tracker and two workers
        workers_seen = descendants(proc)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    if fault.startswith("record"):  # in the driver
        assert proc.returncode == -signal.SIGKILL, err
    else:
        assert proc.returncode == 1, err
        assert "worker process died" in err and "--resume" in err and "Traceback" not in err
    assert_all_gone(workers_seen)
    assert assert_safe_state(out, reference.path) == "unfinished"
    resume_and_compare(inputs, out, opts, reference.path, cli=fault.startswith("shard"))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_within_seconds_and_resumes(inputs, reference, sig, workers, tmp_path):
    backend = reference.backend
    opts = options(backend, workers)
    rng = random.Random(f"{sig}-{backend}-{workers}")
    window = 0.9 * reference.write_seconds[workers]
    for trial in range(SIGNAL_TRIALS):
        out = tmp_path / f"out-{trial}"
        proc = start(convert_argv(inputs, out, opts))
        if wait_for(out / ".convert" / "plan.json", proc):
            time.sleep(rng.uniform(0, window))
        workers_seen = descendants(proc)
        sent = time.monotonic()
        if sig == signal.SIGINT:
            kill_group(proc, sig)  # Ctrl-C in a terminal reaches the whole process group
        else:
            os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - sent < 5, "took more than 5 s to stop"
        state = assert_safe_state(out, reference.path)
        if proc.returncode == EXIT_CODES[sig]:
            assert "finish with --resume" in err and "Traceback" not in err, err
        else:  # it had finished; a signal during interpreter shutdown meets the default action
            assert proc.returncode in (0, -sig) and state == "complete", (proc.returncode, err)
        assert_all_gone(workers_seen)
        cli = workers > 1 and sig == signal.SIGTERM  # once with the CLI's --resume --workers 2
        resume_and_compare(inputs, out, opts, reference.path, cli=cli)


def test_uninterrupted_runs_are_byte_identical(reference):
    """The premise of every comparison here: one conversion, run twice, gives the same bytes."""
    assert_same_store(reference.again, reference.path)


def test_sigterm_while_workers_start_is_held_until_they_are_up():
    """A SIGTERM raised in the middle of spawning a worker broke the pool ("cannot join thread
    before it is started", or an EOFError from the half-started child): it is held, then delivered."""
    from shardfeed.writing.pool import _starting_workers

    class Stop(BaseException):
        pass

    def stop(signum, frame):
        raise Stop()

    previous = signal.signal(signal.SIGTERM, stop)
    reached_end_of_block = False
    try:
        with pytest.raises(Stop), _starting_workers():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)  # ignored here: workers inherit that
            time.sleep(0.05)  # signal handlers would have run by now
            reached_end_of_block = True
        assert reached_end_of_block
        assert signal.getsignal(signal.SIGTERM) is stop
    finally:
        signal.signal(signal.SIGTERM, previous)
