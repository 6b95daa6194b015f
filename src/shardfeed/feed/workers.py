"""Worker processes that build whole batches into a `SlotRing`; only slot numbers cross the pipes.

The processes start once, as fresh interpreters (`launch`: h5py and JAX are not fork-safe, and
the trainer's main script is not re-run), and serve every epoch. The trainer submits keys in
the order it wants them and gets the batches back in that order, as arrays viewing the ring's
slots; a slot is written again only once those arrays are gone.

What the trainer sees when something goes wrong:

- `make_batch` raises: `get` raises the same exception for that batch (a `WorkerError` if it
  cannot be pickled), caused by a `RemoteTraceback` that holds the worker's traceback. The worker
  survives and the pool stays usable: later batches are unaffected.
- A worker dies (the OOM killer, a signal): `get` raises `WorkerDiedError` as soon as the process
  ends: its socket reaches end of file. That worker's batches are lost, so the pool closes itself,
  and later calls raise the same error.
- The trainer dies, even by SIGKILL: a thread in each worker waits on a pipe whose only writer is
  the trainer and ends the process when that pipe reaches end of file, even in the middle of
  `make_batch` (`PR_SET_PDEATHSIG` fires when the *thread* that started a worker ends, not the
  process). The memory is a memfd (see `ring`), so no process, descriptor or `/dev/shm` file
  outlives the trainer.
- Ctrl-C: only the trainer gets `KeyboardInterrupt` (and then closes the pool); workers run in a
  session of their own, and ignore SIGINT sent to them directly.
"""

from __future__ import annotations

import operator
import os
import pickle
import signal
import subprocess
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection

import numpy as np

from ..errors import ShardfeedError, WorkerDiedError
from ..storage.alignment import DEFAULT_RESIDUE
from . import launch
from .ring import SlotRing, Spec

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
    process: subprocess.Popen
    pid: int
    conn: connection.Connection
    ready: bool = False
    startup_error: str = ""  # why it could not load its batch maker
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
        residue: where the slots' arrays start modulo 4096 (see `SlotRing`).

    Call `submit(key)` for each batch, then `get()` once per `submit`: batches come back in
    submission order. Keys and the rows counts cross pipes: keep them small. Not thread-safe.
    """

    def __init__(
        self,
        make_batch: MakeBatch,
        ring_specs: Sequence[Spec],
        workers: int = 2,
        slots: int | None = None,
        residue: int = DEFAULT_RESIDUE,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        launch.refuse_in_worker()
        payload = pickle.dumps(make_batch)  # before the ring: an unpicklable one fails here, holding nothing
        self._ring = SlotRing(ring_specs, 2 * workers + 2 if slots is None else slots, residue)
        self._workers: list[_Worker] = []
        self._tasks: dict[int, _Task] = {}  # by sequence number, in submission order
        self._unsent: deque[int] = deque()  # submitted, waiting for a free slot
        self._next_seq = 0
        self._failure: WorkerDiedError | None = None
        # Never written: the workers see end of file once this process has closed it or is gone.
        alive_r, alive_w = os.pipe()
        self._shut_down = weakref.finalize(self, _shut_down, self._workers, alive_w, self._ring)
        try:
            self._start(payload, workers, alive_r)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(alive_r)  # only the workers read it

    def _start(self, payload: bytes, count: int, alive_r: int) -> None:
        boot = pickle.dumps((self._ring.specs, self._ring.slots, self._ring.residue, launch.main_script(), payload))
        for _ in range(count):  # all start first, so that their interpreters boot in parallel
            process, conn = launch.start(alive_r, self._ring.fd)
            self._workers.append(_Worker(process, process.pid, conn))
        for worker in self._workers:
            try:
                worker.conn.send_bytes(boot)
            except OSError:  # it died at once
                raise self._fail(worker) from None
        while not all(worker.ready for worker in self._workers):
            self._wait()

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [worker.pid for worker in self._workers]

    def has_free_slot(self) -> bool:
        """Whether a batch submitted now gets a slot at once (none is still held by the caller)."""
        self._check_open()
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
        for conn in connection.wait(list(by_conn)):
            self._receive(by_conn[conn])

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            raise self._fail(worker) from None
        if message is None:
            worker.ready = True
            return
        if isinstance(message, str):  # it could not load its batch maker, and exits
            worker.startup_error = message
            raise self._fail(worker)
        seq, rows, error = message
        worker.tasks.remove(seq)
        self._tasks[seq].outcome = (rows, error)

    def _fail(self, worker: _Worker) -> WorkerDiedError:
        """Closes the pool after `worker` ended; returns the error to raise, now and on every later call."""
        try:
            code = worker.process.wait(timeout=1)  # its socket can close a moment before it is reaped
        except subprocess.TimeoutExpired:
            code = None
        if not worker.ready:
            when = (
                f"before it was ready: {worker.startup_error or 'see its traceback on stderr'} (a transform "
                f"must be importable in a fresh process: a top-level def in a module or in the main script, "
                f"whose code that starts training runs under `if __name__ == \"__main__\":`)"
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


def _shut_down(workers: list[_Worker], alive_w: int, ring: SlotRing) -> None:
    os.close(alive_w)  # every worker exits, busy or not
    deadline = time.monotonic() + STOP_TIMEOUT
    for worker in workers:
        try:
            worker.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        worker.conn.close()
    ring.close()


def serve(conn_fd: int, alive_fd: int, ring_fd: int) -> None:
    """A worker (see `launch`): fill the slot of each task until the pool closes or the trainer is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in (conn_fd, alive_fd):  # a process the transform starts must not hold them open
        os.set_inheritable(fd, False)
    threading.Thread(target=_exit_with_trainer, args=(alive_fd,), name="exit-with-trainer", daemon=True).start()
    conn = connection.Connection(conn_fd)
    try:
        specs, slots, residue, script, payload = pickle.loads(conn.recv_bytes())
        ring = SlotRing.attach_fd(specs, slots, ring_fd, residue)
        try:
            make_batch = launch.load(payload, script)
        except Exception as exc:  # whatever unpickling the user's objects raises
            conn.send(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            os._exit(1)
        conn.send(None)  # ready
        while True:
            seq, slot, key_bytes = conn.recv()
            conn.send((seq, *_build(make_batch, key_bytes, ring.arrays(slot))))
    except (EOFError, OSError):
        return  # the pool is closing, or the trainer is gone


def _exit_with_trainer(alive_fd: int) -> None:
    os.read(alive_fd, 1)  # nothing is ever written: this returns at end of file
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
