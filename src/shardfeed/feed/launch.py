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

BOOT = "import sys; from shardfeed.feed.workers import serve; serve(*map(int, sys.argv[1:]))"


def start(alive_fd: int, ring_fd: int) -> tuple[subprocess.Popen, connection.Connection]:
    """A worker process and the trainer's end of its socket."""
    ours, theirs = socket.socketpair()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the trainer's imports
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", BOOT, str(theirs.fileno()), str(alive_fd), str(ring_fd)],
            pass_fds=(theirs.fileno(), alive_fd, ring_fd), stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip
    finally:
        theirs.close()  # our copy would hide the worker's death from `recv`
    return process, connection.Connection(ours.detach())


def main_path() -> str | None:
    """The trainer's main script, if it is a file a worker can run."""
    path = getattr(sys.modules["__main__"], "__file__", None)
    return os.path.abspath(path) if path else None


def load(payload: bytes, script: str | None) -> object:
    """Unpickle what the trainer sent; what was defined in its main script needs that script run first."""
    try:
        return pickle.loads(payload)
    except AttributeError as exc:
        if script is None or "__main__" not in str(exc):
            raise
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(runpy.run_path(script, run_name="__mp_main__"))
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module
    return pickle.loads(payload)
