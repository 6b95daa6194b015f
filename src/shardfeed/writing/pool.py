"""Shard tasks on local worker processes: spawned, deaf to Ctrl-C, dead with the driver.

One worker runs the tasks in-process; more run them in a spawn process pool (h5py must not
inherit a parent's open handles or HDF5 state, RELIABILITY.md). A worker that dies is a
`WorkerDiedError`; an interrupt terminates the workers at once and `--resume` redoes their shards.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from ..errors import OptionError, WorkerDiedError
from ..storage.backends.shardfile import remove_unfinished
from .shardtask import ShardRecord, ShardTask, write_shard

ProgressCallback = Callable[[int], None]

# Set while workers start: spawn re-runs the driver's main script in each worker (as `__mp_main__`),
# and a script that converts at its top level would convert again there. Its value is a file the
# worker writes the reason into, so the driver can say it instead of "a worker died".
IN_WORKER = "SHARDFEED_CONVERT_WORKER"
UNGUARDED = (
    'convert(workers=N) was called again while a worker process ran the main script: put the code that '
    'converts under `if __name__ == "__main__":` (worker processes are spawned and import the main script)'
)


def refuse_in_worker() -> None:
    """Called first thing by `convert`: a worker importing the main script converts nothing, and ends
    at once, without a traceback: the driver reports why, in one line."""
    report = os.environ.get(IN_WORKER)
    if report:
        Path(report).write_text(UNGUARDED)
        os._exit(1)


def run_tasks(tasks: list[ShardTask], workers: int, progress: ProgressCallback | None):
    """Yield each task's record as it finishes; in-process for one worker, else a process pool."""
    if workers == 1 or len(tasks) <= 1:
        counter = _CallbackCounter(progress)
        for task in tasks:
            yield write_shard(task, counter)
        return
    _refuse_unrunnable_main(workers)
    # spawn: h5py must not inherit a parent's open handles or HDF5 state (RELIABILITY.md).
    context = multiprocessing.get_context("spawn")
    with _starting_workers():  # this starts multiprocessing's resource tracker process
        shared = context.Value("q", 0)
    with tempfile.NamedTemporaryFile(prefix="shardfeed-worker-") as report, cf.ProcessPoolExecutor(
        min(workers, len(tasks)), mp_context=context, initializer=_init_worker,
        initargs=(shared, os.getpid()),
    ) as pool:  # fmt: skip
        reported = 0
        try:
            with _starting_workers(), _environment(IN_WORKER, report.name):  # workers start deaf to Ctrl-C
                pending = {pool.submit(_write_shard_in_worker, t) for t in tasks}
            while pending:
                finished, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                if progress:
                    now = shared.value
                    progress(now - reported)
                    reported = now
                for future in finished:
                    try:
                        record = future.result()
                    except cf.process.BrokenProcessPool as exc:
                        if Path(report.name).read_text():
                            raise OptionError(UNGUARDED) from None
                        raise WorkerDiedError(
                            "a conversion worker process died (killed, for example by the OOM "
                            "killer); finished shards are kept: run the same command with --resume"
                        ) from exc
                    yield record
        except BaseException:
            # Stop at once: shards in flight are redone by --resume. Futures are not cancelled
            # first: Python 3.11's pool then fails them again and prints InvalidStateError.
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            raise


def _refuse_unrunnable_main(workers: int) -> None:
    """Spawned workers run the main script again, from its file: a script read from standard input
    (`python - <<EOF`) has none, and every worker would die before it starts, reported as killed."""
    main = sys.modules["__main__"]
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is None and path is not None and not os.path.isfile(path):
        raise OptionError(f"convert(workers={workers}) starts worker processes, which run the main script "
                          f"again, and it is not a file ({path}: read from standard input?); save the script "
                          f"to a file, or convert with workers=1")  # fmt: skip


class _CallbackCounter:
    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback

    def add(self, n: int) -> None:
        if self._callback:
            self._callback(n)


class _SharedCounter:
    def __init__(self, value) -> None:
        self._value = value

    def add(self, n: int) -> None:
        with self._value.get_lock():
            self._value.value += n


_worker_counter: _SharedCounter | None = None


@contextlib.contextmanager
def _starting_workers():
    """Signals while worker processes are being created.

    SIGINT is ignored: workers inherit that, and Python keeps an inherited SIG_IGN. Ctrl-C
    reaches the whole process group; the driver alone stops the run (terminating its workers),
    without a traceback from every worker. SIGTERM is held and delivered when the workers are
    up: raised in the middle of starting one, it left a child reading half its start-up data
    (printing EOFError) or a pool that could not shut down ("cannot join thread before it is
    started").
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous_int is None else previous_int)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_term is None else previous_term)
        if held:
            os.kill(os.getpid(), signal.SIGTERM)  # the usual handler runs now, at a safe point


@contextlib.contextmanager
def _environment(name: str, value: str):
    """`name=value` in the environment that processes started now inherit."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _init_worker(shared, driver_pid: int) -> None:
    os.environ.pop(IN_WORKER, None)  # this worker is up: what it runs from now on may convert

    global _worker_counter
    _worker_counter = _SharedCounter(shared)
    signal.signal(signal.SIGTERM, _stop)
    _die_with_driver(driver_pid)


def _stop(signum, frame) -> None:
    """SIGTERM, how the driver stops its workers: remove the shard file in flight, then die of it."""
    remove_unfinished()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _die_with_driver(driver_pid: int) -> None:
    """Linux: SIGKILL this worker when the driver dies (kill -9), so no orphan keeps writing
    shards into a store that a `--resume` may already be rewriting."""
    try:
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers end when their task queue closes
        return
    if os.getppid() != driver_pid:  # the driver died before prctl took effect
        os._exit(1)


def _write_shard_in_worker(task: ShardTask) -> ShardRecord:
    return write_shard(task, _worker_counter)
