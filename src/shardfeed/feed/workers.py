"""Worker processes that build whole batches into a `SlotRing`; only slot numbers cross the pipes.

The processes start once (spawn or forkserver: h5py and JAX are not fork-safe) and serve every
epoch. The trainer submits keys in the order it wants them and gets the batches back in that
order, as arrays viewing the ring's slots; a slot is written again only once those arrays are gone.

What the trainer sees when something goes wrong:

- `make_batch` raises: `get` raises the same exception for that batch (a `WorkerError` if it
  cannot be pickled), caused by a `RemoteTraceback` that holds the worker's traceback. The worker
  survives and the pool stays usable: later batches are unaffected.
- A worker dies (the OOM killer, a signal): `get` raises `WorkerDiedError` as soon as the process
  ends, because it waits on every process' sentinel as well as on the pipes. That worker's batches
  are lost, so the pool closes itself, and later calls raise the same error.
- The trainer dies, even by SIGKILL: a thread in each worker waits on a pipe whose only writer is
  the trainer and ends the process when that pipe reaches end of file, even in the middle of
  `make_batch`. `PR_SET_PDEATHSIG` would not do: a forkserver worker's parent is the forkserver,
  which lives on as long as any of its children does (each holds the forkserver's own "alive" fd),
  and under spawn it fires when the *thread* that started the worker ends. The memory is a memfd
  (see `ring`), so no process, descriptor or `/dev/shm` file outlives the trainer.
- Ctrl-C: only the trainer gets `KeyboardInterrupt` (and then closes the pool); workers ignore SIGINT.
"""

from __future__ import annotations

import multiprocessing
import operator
import os
import pickle
import signal
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection, forkserver, resource_tracker

import numpy as np

from ..errors import ShardfeedError, WorkerDiedError
from .ring import SlotRing, Spec

START_METHODS = ("spawn", "forkserver")
STOP_TIMEOUT = 2.0  # seconds close() gives workers to notice before it kills them

MakeBatch = Callable[[object, tuple[np.ndarray, ...]], int | None]


class WorkerError(ShardfeedError, RuntimeError):
    """`make_batch` raised in a worker an exception that cannot be pickled back; the message has its text."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as the cause of the one raised here."""

    def __str__(self) -> str:
        return f"\n\nTraceback in the worker process:\n{self.args[0]}"


@dataclass(eq=False)
class _Worker:
    process: multiprocessing.process.BaseProcess
    pid: int  # kept: a closed Process object no longer tells
    conn: connection.Connection
    ready: bool = False
    tasks: set[int] = field(default_factory=set)  # sequence numbers sent and not answered yet


@dataclass(eq=False)
class _Task:
    key: object
    key_bytes: bytes  # pickled at submit, so that an unpicklable key fails there and changes nothing
    slot: int | None = None
    pid: int | None = None
    outcome: tuple | None = None  # (rows, error) once a worker has answered


class WorkerPool:
    """Processes that fill ring slots with batches, started once and reused for every epoch.

    Args:
        make_batch: `make_batch(key, out_arrays)` fills `out_arrays` (one per spec) for `key` and
            returns None, or the number of rows it filled along axis 0 (a short last batch). It
            is pickled into every worker: a top-level function or a picklable object.
        ring_specs: (shape, dtype) of each array of a batch; see `SlotRing`.
        workers: number of processes.
        slots: batches that exist at once: being filled, ready, or still held by the caller
            (default: two per worker plus two).
        start_method: "spawn" or "forkserver".

    Call `submit(key)` for each batch, then `get()` once per `submit`: batches come back in
    submission order. Keys and the rows counts cross pipes: keep them small. Not thread-safe.
    """

    def __init__(
        self,
        make_batch: MakeBatch,
        ring_specs: Sequence[Spec],
        workers: int = 2,
        slots: int | None = None,
        start_method: str = "spawn",
    ) -> None:
        if start_method not in START_METHODS:
            raise ValueError(f"start_method {start_method!r} unsupported; expected one of {START_METHODS}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._ring = SlotRing(ring_specs, 2 * workers + 2 if slots is None else slots)
        self._workers: list[_Worker] = []
        self._tasks: dict[int, _Task] = {}  # by sequence number, in submission order
        self._unsent: deque[int] = deque()  # submitted, waiting for a free slot
        self._next_seq = 0
        self._failure: WorkerDiedError | None = None
        context = multiprocessing.get_context(start_method)
        # Never written: the workers see end of file once this process has closed it or is gone.
        self._alive_r, alive_w = context.Pipe(duplex=False)
        self._shut_down = weakref.finalize(self, _shut_down, self._workers, alive_w, self._ring)
        try:
            self._start(context, make_batch, workers)
        except BaseException:
            self.close()
            raise

    def _start(self, context: multiprocessing.context.BaseContext, make_batch: MakeBatch, count: int) -> None:
        # Spawned workers start with SIGINT blocked (the mask survives fork and exec), so a Ctrl-C
        # while they import cannot hit them before they ignore it. multiprocessing's helpers start
        # first: launching the resource tracker unblocks SIGINT, and a forkserver started with it
        # blocked would pass that on to every process it forks, ours or not. (Forkserver workers
        # are forked with SIGINT deliverable, until their first line ignores it.)
        resource_tracker.ensure_running()
        if context.get_start_method() == "forkserver":
            forkserver.ensure_running()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for index in range(count):
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=_serve, args=(theirs, self._alive_r, self._ring, make_batch),
                    name=f"shardfeed-worker-{index}", daemon=True,
                )  # fmt: skip
                try:
                    process.start()
                finally:
                    theirs.close()  # our copy would hide the worker's death from `recv`
                self._workers.append(_Worker(process, process.pid, ours))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._alive_r.close()  # only the workers read it
        while not all(worker.ready for worker in self._workers):
            self._wait()

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [worker.pid for worker in self._workers]

    def has_free_slot(self) -> bool:
        """Whether a batch submitted now gets a slot at once (none is still held by the caller)."""
        return self._ring.has_free_slot()

    def submit(self, key: object) -> None:
        """Schedules the batch for `key`; it goes to the least busy worker as soon as a slot is free."""
        self._check_open()
        self._tasks[self._next_seq] = _Task(key, pickle.dumps(key))
        self._unsent.append(self._next_seq)
        self._next_seq += 1
        self._dispatch()

    def get(self) -> tuple[np.ndarray, ...]:
        """The oldest submitted batch not yet returned, as arrays viewing its slot; waits for it.

        Raises:
            WorkerError: `make_batch` raised for this batch; the pool stays usable.
            WorkerDiedError: a worker died; the pool is closed.
            RuntimeError: nothing is submitted, or every slot is still held by the caller.
        """
        self._check_open()
        if not self._tasks:
            raise RuntimeError("get() called more often than submit()")
        seq, task = next(iter(self._tasks.items()))
        self._dispatch()  # the caller may have dropped batches since the last call
        if task.slot is None:
            raise RuntimeError(
                f"all {self._ring.slots} slots hold batches that are still referenced (arrays from get(), or "
                "views of them): drop old batches, or create the WorkerPool with more slots"
            )
        while task.outcome is None:
            self._wait()
        del self._tasks[seq]
        rows, error = task.outcome
        if error is not None:
            self._ring.release(task.slot)
            raise _rebuilt(error, task) from RemoteTraceback(error[2])
        arrays = self._ring.arrays(task.slot)
        self._ring.release(task.slot)  # after the views exist, so the slot stays taken
        return arrays if rows is None else tuple(array[:rows] for array in arrays)

    def close(self) -> None:
        """Stops and joins the workers and releases the ring; idempotent. Batches still held stay readable."""
        self._shut_down()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if not self._shut_down.alive:
            raise RuntimeError("this WorkerPool is closed")

    def _dispatch(self) -> None:
        while self._unsent:
            slot = self._ring.acquire_free_slot()
            if slot is None:
                return
            seq = self._unsent.popleft()
            task = self._tasks[seq]
            worker = min(self._workers, key=lambda w: len(w.tasks))
            task.slot, task.pid = slot, worker.pid
            worker.tasks.add(seq)
            try:
                worker.conn.send((seq, slot, task.key_bytes))
            except OSError:
                raise self._fail(worker) from None

    def _wait(self) -> None:
        """Takes in what the workers have sent; raises WorkerDiedError if one has ended."""
        by_conn = {worker.conn: worker for worker in self._workers}
        by_sentinel = {worker.process.sentinel: worker for worker in self._workers}
        ready = connection.wait([*by_conn, *by_sentinel])
        for conn in ready:
            if conn in by_conn:
                self._receive(by_conn[conn])
        for sentinel in ready:
            if sentinel in by_sentinel:
                raise self._fail(by_sentinel[sentinel])

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            raise self._fail(worker) from None
        if message is None:
            worker.ready = True
            return
        seq, rows, error = message
        worker.tasks.remove(seq)
        self._tasks[seq].outcome = (rows, error)

    def _fail(self, worker: _Worker) -> WorkerDiedError:
        """Closes the pool after `worker` ended; returns the error to raise, now and on every later call."""
        worker.process.join(timeout=1)  # its pipe can close a moment before it is reaped
        code = worker.process.exitcode
        if not worker.ready:
            when = (
                "before it was ready (its traceback, if any, is on stderr; make_batch must be importable in a "
                "fresh process: a top-level function or object, not one defined in an interactive session)"
            )
        elif worker.tasks:
            when = f"while building the batches for keys {[self._tasks[seq].key for seq in sorted(worker.tasks)]}"
        else:
            when = "while idle"
        self._failure = WorkerDiedError(
            f"a DataGenerator worker process died: pid {worker.pid} {_describe_exit(code)} {when}; "
            f"its batches are lost and the workers are stopped"
        )
        self.close()
        return self._failure


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "closed its pipe but is still running"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    oom = " (the OOM killer sends SIGKILL: lower workers, slots or the batch size if memory is short)"
    return f"was killed by {name}{oom if -code == signal.SIGKILL else ''}"


def _shut_down(workers: list[_Worker], alive_w: connection.Connection, ring: SlotRing) -> None:
    alive_w.close()  # every worker exits, busy or not
    deadline = time.monotonic() + STOP_TIMEOUT
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()
        worker.process.close()
        worker.conn.close()
    ring.close()


def _serve(conn: connection.Connection, alive: connection.Connection, ring: SlotRing, make_batch: MakeBatch) -> None:
    """A worker: fill the slot of each task until the pool closes or the trainer is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending Ctrl-C is discarded
    threading.Thread(target=_exit_with_trainer, args=(alive,), name="exit-with-trainer", daemon=True).start()
    ring.attach()
    try:
        conn.send(None)  # ready
        while True:
            seq, slot, key_bytes = conn.recv()
            conn.send((seq, *_build(make_batch, key_bytes, ring.arrays(slot))))
    except (EOFError, OSError):
        return  # the pool is closing, or the trainer is gone


def _exit_with_trainer(alive: connection.Connection) -> None:
    connection.wait([alive])  # nothing is ever written: this returns at end of file
    os._exit(0)  # at once, even while make_batch runs; no cleanup is owed to a trainer that is gone


def _rebuilt(error: tuple, task: _Task) -> BaseException:
    """The worker's exception, unpickled, or a `WorkerError` with its type and message."""
    type_name, message, _, pickled = error
    try:
        return pickle.loads(pickled)
    except Exception:  # not picklable there, or not importable here
        return WorkerError(f"building batch {task.key!r} in worker pid {task.pid} failed: {type_name}: {message}")


def _build(make_batch: MakeBatch, key_bytes: bytes, out: tuple[np.ndarray, ...]) -> tuple:
    """(rows, None) on success, (None, (type name, message, traceback text, pickled exception))."""
    try:
        rows = make_batch(pickle.loads(key_bytes), out)
        if rows is not None and operator.index(rows) < 0:
            raise ValueError(f"make_batch returned {rows} rows; expected None or a count >= 0")
        return (None if rows is None else operator.index(rows)), None
    except Exception as exc:  # whatever make_batch raises belongs to the trainer
        name = type(exc).__qualname__
        if type(exc).__module__ != "builtins":
            name = f"{type(exc).__module__}.{name}"
        try:
            pickled = pickle.dumps(exc)
        except Exception:  # an exception holding unpicklable state
            pickled = b""
        return None, (name, str(exc), traceback.format_exc(), pickled)
