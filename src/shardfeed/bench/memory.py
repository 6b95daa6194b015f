"""Memory of the feed: RSS figures of a fresh process that iterates `DataGenerator` for one epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..storage.store import open_store


def generator_memory(
    store: str | os.PathLike, num_samples: int, batch_size: int, shuffle: str = "global"
) -> dict:
    """RSS figures of a fresh process that iterates `DataGenerator` over one epoch.

    Run in a child so the high-water mark belongs to that epoch alone. `anon_growth` is
    what the epoch added to private memory (batches, orders); file-backed pages of the shards
    mapped while reading count in RSS too but are page cache the kernel can reclaim.
    """
    with tempfile.TemporaryDirectory(prefix="shardfeed-memory-") as tmp:
        figures = Path(tmp) / "figures.json"
        args = json.dumps([str(store), num_samples, batch_size, shuffle, str(figures)])
        code = f"import json, shardfeed.bench.memory as m; m._memory_child(*json.loads({args!r}))"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"memory probe failed: {done.stderr.strip()[-2000:]}")
        return json.loads(figures.read_text())


def _memory_status() -> dict[str, int]:
    """RssAnon, RssFile and VmHWM of this process, in bytes."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def _memory_child(store: str, num_samples: int, batch_size: int, shuffle: str, figures: str) -> None:
    from ..feed.keras import DataGenerator  # imports Keras: in the child only

    ids = open_store(store).ids[:num_samples]
    gen = DataGenerator(store, ids=ids, batch_size=batch_size, shuffle_mode=shuffle, seed=0)
    gen[0]  # opens shard handles; a steady state to measure growth from
    base = _memory_status()
    peak_anon = peak_file = 0
    for index in range(len(gen)):
        x, y = gen[index]
        now = _memory_status()
        peak_anon, peak_file = max(peak_anon, now["RssAnon"]), max(peak_file, now["RssFile"])
    batch_nbytes = x.nbytes + y.nbytes
    end = _memory_status()
    Path(figures).write_text(
        json.dumps(
            {
                "samples": len(ids),
                "batch_nbytes": batch_nbytes,
                "base_anon": base["RssAnon"],
                "peak_anon": peak_anon,
                "anon_growth": peak_anon - base["RssAnon"],
                "peak_file": peak_file,
                "vm_hwm": end["VmHWM"],
            }
        )
    )
