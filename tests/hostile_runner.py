"""Subprocess side of test_hostile.py: run each crafted case under an address-space limit and
report, as JSON on stdout, how it ended. Not a test module.

Usage: python hostile_runner.py SPEC.json, where SPEC holds `address_space_bytes`,
`seconds_per_case` and `cases`: [{"name", "action", "args"}]. Actions: `convert` (the library
function), `open_read` (open a store and read every row), `header` (read one .npy header) and
`allocate` (the control: allocate that many bytes).
A case that allocates beyond the limit shows up as a MemoryError in its exception chain; one
that hangs is interrupted by SIGALRM and reported as hung.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import time
from pathlib import Path


class Hung(BaseException):
    """Raised by SIGALRM in a case that does not finish in time."""


def _alarm(signum, frame) -> None:
    raise Hung()


def _convert(src, out, labels=None, partition=None, format="zarr"):
    import shardfeed

    shardfeed.convert(src, out, labels=labels, partition=partition, format=format)


def _open_read(path, fast=True):
    import numpy as np

    import shardfeed

    with shardfeed.open_store(path, fast=fast) as store:
        for part in (store, store.targets) if store.targets is not None else (store,):  # targets: `convert --targets`
            for start in range(0, len(part), 64):
                part.read(np.arange(start, min(start + 64, len(part))))


def _header(path):
    from shardfeed.inputs.npy import read_npy_header

    read_npy_header(Path(path), "sample")


def _allocate(nbytes):
    """The control case: proves the address-space limit is in force."""
    bytearray(nbytes)


ACTIONS = {"convert": _convert, "open_read": _open_read, "header": _header, "allocate": _allocate}


def _chain(exc: BaseException) -> list[BaseException]:
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def run_case(case: dict, seconds: int) -> dict:
    from shardfeed import ShardfeedError

    signal.alarm(seconds)
    started = time.perf_counter()
    try:
        ACTIONS[case["action"]](**case["args"])
        result = {"error": None}
    except BaseException as exc:  # everything is reported, nothing escapes the runner
        chain = _chain(exc)
        result = {
            "error": type(exc).__name__,
            "shardfeed_error": isinstance(exc, ShardfeedError),
            "message": str(exc)[:2000],
            "memory_error": any(isinstance(e, MemoryError) for e in chain),
            "hung": isinstance(exc, Hung),
        }
    finally:
        signal.alarm(0)
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def _peak_rss_mb() -> float:
    """This address space's high-water mark (VmHWM). Not ru_maxrss: that survives exec, so a
    runner started from a pytest process that had imported TensorFlow would report its size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    limit = spec["address_space_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _alarm)
    from shardfeed.storage.backends import get_backend

    get_backend("hdf5"), get_backend("zarr")  # imports are not part of any case's time

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results = {case["name"]: run_case(case, spec["seconds_per_case"]) for case in spec["cases"]}
    print(json.dumps({"baseline_rss_mb": baseline, "results": results}))


if __name__ == "__main__":
    main()
