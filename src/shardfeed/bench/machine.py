"""The machine a figure was measured on: every benchmark prints it, since AMD and Intel CPUs of the
same size can differ by 3x on the same code (ANCHORS.md)."""

from __future__ import annotations

import os


def proc_field(path: str, key: str) -> str:
    """The value of the first `key: value` line of a /proc file, or "?"."""
    try:
        with open(path) as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key))
    except (OSError, StopIteration):
        return "?"


def cpu_line() -> str:
    """e.g. "AMD EPYC, 2 logical CPUs (2 available)"."""
    return (f"{proc_field('/proc/cpuinfo', 'model name')}, {os.cpu_count()} logical CPUs "
            f"({len(os.sched_getaffinity(0))} available)")  # fmt: skip
