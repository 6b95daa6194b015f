"""Starting a worker process: a fresh interpreter that imports only what its batches need.

multiprocessing's spawn and forkserver re-run the trainer's main script in every worker (as
`__mp_main__`), so a script that imports Keras makes each worker import TensorFlow, JAX or
PyTorch: seconds per worker and hundreds of MB each, for nothing. Here a worker is
`python -c ...` with three inherited descriptors (its socket to the trainer, the trainer's
"alive" pipe, the ring's memfd); it receives the pickled batch maker and runs the main script
only when that needs it (a transform defined there), as multiprocessing would.

Workers run in a session of their own: a Ctrl-C in the terminal reaches the trainer alone, which
then stops them. (One pressed in the microseconds between a worker's fork and its `setsid` ends
that worker too; the trainer got the same Ctrl-C and is stopping anyway.)
"""

from __future__ import annotations

import os
import pickle
import runpy
import socket
import subprocess
import sys
import types
from multiprocessing import connection

from ..errors import OptionError

BOOT = "import sys; from shardfeed.feed.workers import serve; serve(*map(int, sys.argv[1:]))"
IN_WORKER = "SHARDFEED_WORKER"  # set in workers: a worker that would start workers refuses (see `refuse_in_worker`)


def start(alive_fd: int, ring_fd: int) -> tuple[subprocess.Popen, connection.Connection]:
    """A worker process and the trainer's end of its socket."""
    ours, theirs = socket.socketpair()
    paths = [p for p in map(os.fspath, (p for p in sys.path if isinstance(p, (str, os.PathLike)))) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), IN_WORKER: "1"}  # the trainer's imports
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", BOOT, str(theirs.fileno()), str(alive_fd), str(ring_fd)],
            pass_fds=(theirs.fileno(), alive_fd, ring_fd), stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip
    finally:
        theirs.close()  # our copy would hide the worker's death from `recv`
    return process, connection.Connection(ours.detach())


def refuse_in_worker() -> None:
    """Workers run the main script to find a transform defined there; a script that trains at its top
    level would then start workers of its own, and those theirs, without end."""
    if os.environ.get(IN_WORKER):
        raise OptionError(
            "a DataGenerator worker process is starting workers of its own: the main script trains at its "
            'top level; put that code under `if __name__ == "__main__":`'
        )


def main_path() -> str | None:
    """The trainer's main script, if it is a file a worker can run."""
    path = getattr(sys.modules["__main__"], "__file__", None)
    return os.path.abspath(path) if path else None


def main_script() -> tuple[str, list[str]] | None:
    """The trainer's main script and its arguments (it sees them again when a worker runs it)."""
    path = main_path()
    return None if path is None else (path, list(sys.argv))


def load(payload: bytes, script: tuple[str, list[str]] | None) -> object:
    """Unpickle what the trainer sent; what was defined in its main script needs that script run first."""
    try:
        return pickle.loads(payload)
    except AttributeError as exc:
        if script is None or "__main__" not in str(exc):
            raise
    path, sys.argv[:] = script[0], script[1]
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module
    return pickle.loads(payload)
