"""The full side-by-side benchmark behind docs/benchmarks.md: one run, the same data, every reader.

    python scripts/bench.py --profile large|small|all [--quick] [--out docs/benchmarks.md]
                            [--workdir DIR] [--small-samples N] [--seconds S] [--no-cold]

`main` runs each profile (`profiles.py`: data in a work folder under /tmp, reused by later
runs; conversion, readers warm and cold, `model.fit`, generator memory), judges the goals
(`goals.py`), prints the tables through `say` and writes the Markdown report (goals marked
PASS/MISS), a PNG plot beside it (matplotlib, the `bench` extra) and every figure as JSON in
the work folder. This module: the environment section, the Markdown, JSON and plot, and `main`.

`--quick` runs the whole pipeline on tiny data in about two minutes and, unless `--out` is
given, writes its report into the work folder rather than over docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from ..version import __version__
from .goals import Goal, evaluate, goals_table
from .harness import MiB, format_table
from .machine import cpu_line, proc_field
from .profiles import ProfileReport, Say, make_profiles, quiet, run_profile

COMMAND = "python scripts/bench.py"


# --- environment ----------------------------------------------------------------------------


def environment(workdir: Path, repo: Path | None = None) -> dict[str, str]:
    """The machine, the packages and the checkout (`git describe` of `repo`, when given)."""

    described = "?"
    if repo is not None:
        command = ["git", "-C", str(repo), "describe", "--always", "--dirty"]
        git = subprocess.run(command, capture_output=True, text=True)
        described = git.stdout.strip() or "?"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_line(),
        "memory": _gib(proc_field("/proc/meminfo", "MemTotal")),
        "system": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "packages": f"shardfeed {__version__} ({described}), numpy {np.__version__}, "
        f"h5py {_version('h5py')} (HDF5 {_hdf5_version()}), zarr {_version('zarr')}, "
        f"numcodecs {_version('numcodecs')}, {_keras_versions()}",
        "work folder": str(workdir),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def _hdf5_version() -> str:
    """The HDF5 library under h5py, read from the h5py the storage backend loaded.

    Only the storage backends import h5py (tests/test_layout.py); by the time the report is
    written they have opened every HDF5 store.
    """
    h5py = sys.modules.get("h5py")
    return getattr(getattr(h5py, "version", None), "hdf5_version", "?")


def _gib(meminfo_value: str) -> str:
    try:
        return f"{int(meminfo_value.split()[0]) / 2**20:.1f} GiB"
    except (ValueError, IndexError):
        return meminfo_value


def _keras_versions() -> str:
    import keras
    import tensorflow as tf

    return f"keras {keras.__version__}, tensorflow {tf.__version__}"


# --- Markdown, JSON and the plot ------------------------------------------------------------


def memory_table(rows: list[dict]) -> str:
    lines = [
        "| samples | batch | private before | private peak | growth | file-backed peak | VmHWM |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = ("batch_nbytes", "base_anon", "peak_anon", "anon_growth", "peak_file", "vm_hwm")
    for m in rows:
        cells = [f"{m['samples']:,}"] + [f"{m[k] / MiB:,.1f} MiB" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


HOW = """## How these figures are made

- Readers: each makes the batches `DataGenerator` yields (inputs as float32, one-hot labels),
  in-process, batches in an epoch order from `shardfeed.sampling`; a warm-up, then the median of
  3 rounds of a fixed time budget. The tutorial generator is the Keras tutorial's
  `__data_generation` (per-ID `np.load` into a float64 batch, `to_categorical`). The *mmap limit*
  gathers the same rows (sorted within the batch) from one memory-mapped `.npy` holding every
  sample; `x limit` compares each reader with the limit of the same shuffle mode. MB/s counts
  stored sample bytes. *zstd decoding alone* is the decoder's limit: 1,024 of the samples
  compressed as the zstd store compresses them, held in memory, and decoded straight into batch
  rows on the threads `Store.read` decodes on. The samples are the demo data's: Gaussian noise
  plus a class pattern, on a grid of 1/32 as 8-bit pixels scaled to floats are, so that they
  compress (to about 35 % with zstd) as such data does.
- The machine's limits, in samples/s of the profile's size: warm, the *memory bandwidth* (one
  `np.copyto` of 512 MB between buffers already faulted in, median of 5) and the *batch copy*
  (the same 512 MB copied a batch at a time into one reused batch array: the least a reader must
  do, through the cache, which some CPUs do slower than one large copy); cold, the disk's
  *sequential read* of the limit's `.npy` in 8 MiB blocks right after `posix_fadvise(DONTNEED)`
  dropped its pages (as `dd` reads), and the same read by 4 streams (threads reading every 4th
  block each: a disk that serves several requests at once is faster so). `x best limit` compares
  each reader with the best of its section's limits (the mmap gather of its shuffle mode
  included): large samples should come close to the memory bandwidth; small samples are bound by
  the cost per row, as the gather is.
- Cold: the page cache is dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before each reader,
  which then reads for a fixed budget within its first epoch. Each cold figure, the disk's limits
  included, is the median of 3 rounds, every figure taken once a round in turn: a disk whose rate
  drifts is then compared within the same minutes.
- fit: a Flatten+Dense model, `verbose=0`; the median samples/s of epochs 2 and later (epoch 1
  traces the model). `x limit` compares with `fit` on the same samples held in memory as numpy
  arrays; `x tutorial` with the tutorial generator's best configuration.
- Conversion: `shardfeed.convert(..., workers=2)` from a warm page cache, shards fsynced, next to
  appending every source file to one file and fsyncing it; each the median of up to 3 runs in one
  process (fewer once 3x `--seconds` have passed), so a process's first conversion, which also
  imports its backend, counts once.
- Memory: a fresh process iterates `DataGenerator` (in-process, one batch in flight) over one
  epoch; *private* memory is RssAnon. The shard files it maps count as file-backed RSS: page cache
  the kernel reclaims under pressure, which grows with the data read.
- *other CPU %*: the share of all CPUs used by processes outside the benchmark while a figure was
  measured (from /proc/stat); above 10 % the figure is marked NOISY and should not be trusted.
  It does not see other processes' disk I/O, which can still disturb cold figures.
- The memory-mapped limit and the fast readers keep their mappings between rounds, so after the
  warm-up they read mapped pages; a reader opened fresh (a new worker process) pays page faults.
"""


def trust_line(reports: list[ProfileReport]) -> str:
    """How far to trust this run: how many figures were taken next to a busy neighbour."""
    results = [r for rep in reports for r in rep.results()]
    noisy = [r for r in results if r.noisy]
    worst = max((r.other_cpu or 0.0 for r in results), default=0.0)
    if not noisy:
        return (
            f"**Trust:** no figure was disturbed by other processes (at most {100 * worst:.0f} % "
            "of the CPUs); cold figures can still suffer from other processes' disk I/O."
        )
    return (
        f"**Trust: {len(noisy)} of {len(results)} figures are NOISY** (other processes used up "
        f"to {100 * worst:.0f} % of the CPUs while they were measured): treat their ratios as "
        "rough and rerun on a quiet machine."
    )


def write_markdown(reports: list[ProfileReport], goals: list[Goal], env: dict, command: str, out: Path) -> None:
    parts = [
        "# Benchmarks",
        "",
        f"Latest run: `{command}`, {env['date']}. Regenerate with `{COMMAND} --profile all` on a quiet machine.",
        "",
        "## Environment",
        "",
    ]
    parts += [f"- {k}: {v}" for k, v in env.items()]
    parts += ["", trust_line(reports), "", "## Goals", "", goals_table(goals), ""]
    for rep in reports:
        parts += [f"## Profile {rep.profile.name}: {rep.profile.describe()}", ""]
        sections = [
            ("Conversion", rep.convert),
            ("Readers, in-process, warm page cache", rep.readers),
            ("Readers, cold page cache", rep.cold),
            ("Through model.fit (Flatten+Dense)", rep.fit),
        ]
        for title, results in sections:
            if results:
                parts += [f"### {title}", "", format_table(results, markdown=True), ""]
        parts += ["### Generator memory", "", memory_table(rep.memory), ""]
        parts += [f"- {note}" for note in rep.notes] + ([""] if rep.notes else [])
    parts += [HOW, f"![samples/s per reader]({out.with_suffix('.png').name})", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))


def save_json(reports: list[ProfileReport], goals: list[Goal], path: Path) -> None:
    """Every figure, for later comparison between runs (kept in the work folder)."""
    data = {
        "reports": [
            {"profile": rep.profile.name, "describe": rep.profile.describe(), "notes": rep.notes,
             "memory": rep.memory, "results": [r.to_dict() for r in rep.results()]}
            for rep in reports
        ],
        "goals": [{"goal": g.text, "value": g.value, "verdict": g.verdict, "noisy": g.noisy}
                  for g in goals],
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def write_plot(reports: list[ProfileReport], path: Path) -> None:
    """Horizontal bars of samples/s (log scale): warm readers and fit, per profile (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (rep.profile.name, title, results)
        for rep in reports
        for title, results in (("readers, warm cache", rep.readers), ("model.fit", rep.fit))
    ]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9, 1.2 + 0.32 * sum(len(x[2]) for x in panels)),
        gridspec_kw={"height_ratios": [len(x[2]) for x in panels]},
        squeeze=False,
    )
    for ax, (profile, title, results) in zip(axes[:, 0], panels, strict=True):
        names = [r.name for r in results][::-1]
        rates = [r.samples_per_s for r in results][::-1]
        colors = [
            "#999999" if "tutorial" in n else "#333333" if ("limit" in n or "memory" in n) else "#2a6fbb"
            for n in names
        ]
        ax.barh(names, rates, color=colors)
        ax.set_xscale("log")
        ax.set_title(f"{profile}: {title} (samples/s)", fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        for y, rate in enumerate(rates):
            ax.text(rate, y, f" {rate:,.0f}", va="center", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None, repo: Path | None = None) -> argparse.Namespace:
    """The options; `repo` (the checkout) holds the default report, docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("large", "small", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="tiny data, short budgets: the pipeline end to end")
    parser.add_argument("--out", type=Path, help="Markdown report (default docs/benchmarks.md; quick: work folder)")
    parser.add_argument("--workdir", type=Path, help="data and stores (default under the system temp folder)")
    parser.add_argument("--small-samples", type=int, help="samples of the small profile (default 1,000,000)")
    parser.add_argument("--seconds", type=float, help="time budget per warm reader (default 10; quick 0.6)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache figures")
    args = parser.parse_args(argv)
    default_dir = Path(tempfile.gettempdir()) / ("shardfeed-bench-quick" if args.quick else "shardfeed-bench")
    args.workdir = (args.workdir or default_dir).resolve()
    if repo is not None and (args.workdir == repo or repo in args.workdir.parents):
        parser.error(f"--workdir {args.workdir} is inside the repository; use a folder outside it")
    if args.out is None:
        in_workdir = args.quick or repo is None
        args.out = args.workdir / "benchmarks.md" if in_workdir else repo / "docs" / "benchmarks.md"
    return args


def main(argv: Sequence[str] | None = None, *, repo: Path | None = None, say: Say = quiet) -> int:
    """Run the profiles, judge the goals, write the report; progress and tables go to `say`.

    `repo`: the checkout whose docs/benchmarks.md is the default `--out` and whose
    `git describe` the report quotes; without it the report goes into the work folder.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before Keras loads TensorFlow
    args = parse_args(argv, repo)
    started = time.perf_counter()
    say(f"cpu: {cpu_line()}")  # figures of one CPU model compare; across models, only ratios do
    profiles = make_profiles(args.profile, quick=args.quick, seconds=args.seconds, small_samples=args.small_samples)
    reports = [run_profile(p, args.workdir / p.name, cold=not args.no_cold, say=say) for p in profiles]
    goals = evaluate(reports)
    for rep in reports:
        say(f"\n== {rep.profile.name}: {rep.profile.describe()}")
        say(format_table(rep.results()))
        for note in rep.notes:
            say(f"note: {note}")
    say("\n" + goals_table(goals))
    command = f"{COMMAND} " + " ".join(sys.argv[1:] if argv is None else argv)
    write_markdown(reports, goals, environment(args.workdir, repo), command.strip(), args.out)
    write_plot(reports, args.out.with_suffix(".png"))
    save_json(reports, goals, args.workdir / "results.json")
    elapsed = time.perf_counter() - started
    say(f"\nwrote {args.out} and {args.out.with_suffix('.png')} in {elapsed:.0f} s")
    return 0
