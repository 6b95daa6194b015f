"""The full side-by-side benchmark behind docs/benchmarks.md: one run, the same data, every reader.

    python scripts/bench.py --profile large|small|all [--quick] [--out docs/benchmarks.md]
                            [--workdir DIR] [--small-samples N] [--seconds S] [--no-cold]

For each profile it writes the Keras tutorial's layout (data/<ID>.npy, labels.json,
partition.json) in a work folder under /tmp (reused by later runs), converts it to HDF5 and Zarr
with and without compression, then measures, in this order: conversion against a plain copy
of the same bytes; readers in-process on a warm page cache (the tutorial generator, the
memory-mapped limit, every store with global and block shuffle); the same readers on a cold
cache (when the page cache can be dropped); `model.fit` of a trivial model from numpy arrays in
memory, the tutorial generator and `DataGenerator` (in-process, threads, processes); and the
RSS of a process iterating `DataGenerator` for two data-set sizes. It prints the tables and
writes the Markdown report (goals marked PASS/MISS) and a PNG plot beside it.

`--quick` runs the whole pipeline on tiny data in about two minutes and, unless `--out` is
given, writes its report into the work folder rather than over docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import shardfeed
from shardfeed.bench.harness import (
    LIMIT_NAME,
    TUTORIAL_NAME,
    CpuMonitor,
    MmapLimit,
    PyDatasetReader,
    Result,
    StoreReader,
    _result,
    drop_page_cache,
    format_table,
    measure,
    measure_cold,
    set_ratios,
    write_limit_npy,
)
from shardfeed.bench.memory import generator_memory
from shardfeed.feed.batches import BatchSource
from shardfeed.inputs.demo import make_tutorial_dataset

REPO = Path(__file__).resolve().parents[1]
STORES = (
    ("HDF5", "hdf5", "none"),
    ("HDF5 gzip", "hdf5", "gzip"),
    ("Zarr", "zarr", "none"),
    ("Zarr zstd", "zarr", "zstd"),
)
SHUFFLES = ("global", "block")
MiB = 1 << 20


@dataclass(frozen=True)
class Profile:
    """One data set and how long to measure it."""

    name: str
    num_samples: int
    shape: tuple[int, ...]
    dtype: str
    num_classes: int
    batch_size: int
    fit_samples: int
    fit_epochs: int
    seconds: float
    cold_seconds: float

    @property
    def sample_nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def describe(self) -> str:
        total = self.num_samples * self.sample_nbytes
        return (
            f"{self.num_samples:,} samples of {self.shape} {self.dtype} "
            f"({self.sample_nbytes:,} B each, {total / 2**30:.2f} GiB), batch {self.batch_size}"
        )


@dataclass
class Report:
    """Everything measured for one profile."""

    profile: Profile
    convert: list[Result] = field(default_factory=list)
    readers: list[Result] = field(default_factory=list)
    cold: list[Result] | None = None
    fit: list[Result] = field(default_factory=list)
    memory: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def results(self) -> list[Result]:
        return self.convert + self.readers + (self.cold or []) + self.fit


def make_profiles(args) -> list[Profile]:
    quick = args.quick
    seconds = args.seconds or (0.6 if quick else 10.0)
    cold = 0.3 if quick else 5.0
    large = Profile(
        "large",
        512 if quick else 16_384,
        (32, 32, 32, 1),
        "float32",
        6,
        64,
        512 if quick else 16_384,
        2 if quick else 3,
        seconds,
        cold,
    )
    small_n = args.small_samples or (20_000 if quick else 1_000_000)
    small = Profile(
        "small",
        small_n,
        (28, 28),
        "uint8",
        10,
        256,
        min(small_n, 5_120 if quick else 65_536),
        2 if quick else 3,
        seconds,
        cold,
    )
    return [p for p in (large, small) if args.profile in (p.name, "all")]


def say(text: str) -> None:
    print(text, flush=True)


# --- data and conversion ------------------------------------------------------------------


def prepare_data(p: Profile, root: Path) -> tuple[Path, Path, Path]:
    """The tutorial layout with every sample in split 'train'; reused when already there."""
    spec = {"n": p.num_samples, "shape": list(p.shape), "dtype": p.dtype, "classes": p.num_classes}
    marker = root / "source.json"
    data, labels, partition = root / "data", root / "labels.json", root / "partition.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        say(f"[{p.name}] reusing source data in {root}")
        return data, labels, partition
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", RuntimeWarning
        )  # uint8 of Gaussian noise: wraps, on purpose
        make_tutorial_dataset(root, p.num_samples, p.shape, p.num_classes, dtype=p.dtype)
    ids = [f"id-{n}" for n in range(1, p.num_samples + 1)]
    partition.write_text(json.dumps({"train": ids}))
    marker.write_text(json.dumps(spec))
    say(f"[{p.name}] wrote {p.num_samples:,} files in {time.perf_counter() - started:.0f} s")
    return data, labels, partition


def source_files(data: Path, partition: Path) -> list[Path]:
    return [data / f"{i}.npy" for i in json.loads(partition.read_text())["train"]]


def plain_copy(files: list[Path], dest: Path, p: Profile) -> Result:
    """The bar for conversion: every source file appended to one file, then fsync."""
    for path in files:  # warm the page cache, as conversion finds it
        path.read_bytes()
    with CpuMonitor() as cpu:
        started = time.perf_counter()
        with open(dest, "wb") as out:
            for path in files:
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, out, MiB)
            out.flush()
            os.fsync(out.fileno())
        elapsed = time.perf_counter() - started
    dest.unlink()
    return _result(
        "conversion",
        "plain copy of the .npy files into one file",
        [len(files) / elapsed],
        p.sample_nbytes,
        cpu,
        len(files),
    )


def convert_all(
    p: Profile, data: Path, labels: Path, partition: Path, root: Path
) -> tuple[list, dict]:
    """Time each store's conversion (2 workers) next to the plain copy; returns results, stores."""
    results = [plain_copy(source_files(data, partition), root / "copy.bin", p)]
    stores = {}
    for label, fmt, compression in STORES:
        out = root / f"store-{fmt}-{compression}"
        with CpuMonitor() as cpu:
            started = time.perf_counter()
            shardfeed.convert(
                data,
                out,
                labels=labels,
                partition=partition,
                format=fmt,
                compression=compression,
                workers=2,
                overwrite=True,
            )
            elapsed = time.perf_counter() - started
        results.append(
            _result(
                "conversion",
                f"convert to {label}, 2 workers",
                [p.num_samples / elapsed],
                p.sample_nbytes,
                cpu,
                p.num_samples,
            )
        )
        stores[label] = out
    set_ratios(results, None, results[0])
    return results, stores


# --- readers --------------------------------------------------------------------------------


def tutorial_generator(p: Profile, data: Path, labels: dict, ids: list[str], **kwargs):
    from shardfeed.bench.tutorial import TutorialGenerator

    np.random.seed(0)
    dim = p.shape[:-1] if len(p.shape) > 1 and p.shape[-1] == 1 else p.shape
    return TutorialGenerator(
        ids,
        labels,
        data,
        batch_size=p.batch_size,
        dim=dim,
        n_channels=1,
        n_classes=p.num_classes,
        **kwargs,
    )


def source_of(path: Path, p: Profile, shuffle: str) -> BatchSource:
    return BatchSource(
        shardfeed.open_store(path),
        split="train",
        batch_size=p.batch_size,
        shuffle_mode=shuffle,
        seed=0,
        drop_remainder=True,
    )


def reader_factories(
    p: Profile, data: Path, labels: Path, partition: Path, stores: dict, npy: Path
) -> list:
    """(name, shuffle, make_reader) for every reader, in table order."""
    label_map = json.loads(labels.read_text())
    ids = json.loads(partition.read_text())["train"]
    positions = np.arange(p.num_samples)
    factories = [
        (
            TUTORIAL_NAME,
            "global",
            lambda: PyDatasetReader(tutorial_generator(p, data, label_map, ids)),
        )
    ]
    for shuffle in SHUFFLES:
        factories.append(
            (
                f"{LIMIT_NAME} ({shuffle})",
                shuffle,
                lambda s=shuffle: MmapLimit(npy, source_of(stores["HDF5"], p, s), positions),
            )
        )
    for label, _, _ in STORES:
        for shuffle in SHUFFLES:
            factories.append(
                (
                    f"shardfeed {label} ({shuffle})",
                    shuffle,
                    lambda s=shuffle, path=stores[label]: StoreReader(source_of(path, p, s)),
                )
            )
    return factories


def run_readers(p: Profile, factories: list, cold: bool) -> list[Result]:
    """Every reader warm (median of rounds) or cold (first seconds after dropping the cache)."""
    results, shuffles = [], []
    for name, shuffle, make in factories:
        if cold:
            result = measure_cold(name, make, p.sample_nbytes, seconds=p.cold_seconds)
        else:
            reader = make()
            result = measure(name, reader, p.sample_nbytes, seconds=p.seconds)
            reader.close()
        say(
            f"[{p.name}] {'cold' if cold else 'warm'} {name}: {result.samples_per_s:,.0f} samples/s"
        )
        results.append(result)
        shuffles.append(shuffle)
    by_name = {r.name: r for r in results}
    for result, shuffle in zip(results, shuffles, strict=True):
        set_ratios([result], by_name[TUTORIAL_NAME], by_name[f"{LIMIT_NAME} ({shuffle})"])
    return results


# --- fit ------------------------------------------------------------------------------------


def run_fit(p: Profile, data: Path, labels: Path, stores: dict) -> list[Result]:
    """`fit` from arrays in memory, the tutorial generator and DataGenerator, on the same rows."""
    from shardfeed import DataGenerator
    from shardfeed.bench.fit import FIT_CONFIGS, fit_rows, in_memory_arrays, measure_fit

    store = shardfeed.open_store(stores["HDF5"])
    rows = fit_rows(source_of(stores["HDF5"], p, "global"), p.fit_samples)
    ids, label_map = [store.ids[r] for r in rows.tolist()], json.loads(labels.read_text())
    common = {
        "samples_per_epoch": len(rows),
        "sample_nbytes": p.sample_nbytes,
        "epochs": p.fit_epochs,
    }
    feeds = [("numpy arrays in memory", lambda: in_memory_arrays(store, rows))]
    for config, kw in FIT_CONFIGS.items():
        feeds.append((f"{TUTORIAL_NAME}, {config}",
                      lambda kw=kw: tutorial_generator(p, data, label_map, ids, **kw)))  # fmt: skip
    for label in ("HDF5", "Zarr"):
        for config, kw in FIT_CONFIGS.items():
            feeds.append((f"shardfeed {label}, {config}",
                          lambda kw=kw, path=stores[label]: DataGenerator(
                              path, ids=ids, batch_size=p.batch_size, seed=0,
                              drop_remainder=True, **kw)))  # fmt: skip
    results = []
    for name, make in feeds:
        results.append(measure_fit(name, make(), batch_size=p.batch_size, **common))
        say(f"[{p.name}] fit {name}: {results[-1].samples_per_s:,.0f} samples/s")
    tutorial = [r for r in results if r.name.startswith(TUTORIAL_NAME)]
    best_tutorial = max(tutorial, key=lambda r: r.samples_per_s)
    set_ratios(results, best_tutorial, results[0])
    best_tutorial.note = "tutorial's best"
    return results


def run_memory(p: Profile, stores: dict) -> list[dict]:
    """RSS of a process iterating DataGenerator over an epoch: a quarter of the data, then all."""
    results = []
    for n in (p.num_samples // 4, p.num_samples):
        figures = generator_memory(stores["HDF5"], n, p.batch_size)
        growth = figures["anon_growth"] / MiB
        say(f"[{p.name}] memory, {n:,} samples: private memory grew {growth:.1f} MiB")
        results.append(figures)
    return results


# --- one profile ----------------------------------------------------------------------------


def run_profile(p: Profile, root: Path, cold: bool) -> Report:
    report = Report(p)
    say(f"[{p.name}] {p.describe()}")
    data, labels, partition = prepare_data(p, root)
    report.convert, stores = convert_all(p, data, labels, partition, root)
    say(format_table(report.convert))
    npy = root / "limit.npy"
    write_limit_npy(shardfeed.open_store(stores["HDF5"]), np.arange(p.num_samples), npy)
    factories = reader_factories(p, data, labels, partition, stores, npy)
    report.readers = run_readers(p, factories, cold=False)
    if cold and drop_page_cache():
        report.cold = run_readers(p, factories, cold=True)
        for r in report.cold:
            r.section = "readers, cold"
    else:
        report.notes.append(
            "cold-cache figures skipped: the page cache could not be dropped "
            "(needs root and /proc/sys/vm/drop_caches)"
            if cold
            else "cold-cache figures skipped (--no-cold)"
        )
    report.fit = run_fit(p, data, labels, stores)
    report.memory = run_memory(p, stores)
    npy.unlink()
    for path in stores.values():
        shutil.rmtree(path)
    return report


# --- goals ----------------------------------------------------------------------------------


@dataclass
class Goal:
    text: str
    value: float | None
    target: float
    results: list[Result] = field(default_factory=list)
    detail: str = ""
    ratio_hidden: bool = False  # `value` only decides the verdict; `detail` says what was measured

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        return "PASS" if self.value >= self.target else "MISS"

    @property
    def noisy(self) -> bool:
        return any(r.noisy for r in self.results)


def _find(results: list[Result], name: str) -> Result | None:
    return next((r for r in results if r.name == name), None)


def _ratio_goal(text: str, result: Result | None, attr: str, target: float) -> Goal:
    value = getattr(result, attr) if result is not None else None
    return Goal(text, value, target, [result] if result else [])


# (profile, reader, ratio attribute, target, what the target is called)
READER_GOALS = (
    ("large", "HDF5 (global)", "vs_tutorial", 5, "tutorial"),
    ("large", "HDF5 (global)", "vs_limit", 1.0, "mmap limit"),
    ("large", "Zarr (global)", "vs_tutorial", 4, "tutorial"),
    ("large", "Zarr zstd (global)", "vs_tutorial", 1, "tutorial"),
    ("small", "HDF5 (global)", "vs_tutorial", 50, "tutorial"),
    ("small", "Zarr (global)", "vs_tutorial", 50, "tutorial"),
    ("small", "HDF5 (block)", "vs_limit", 0.8, "mmap limit (block)"),
    ("small", "Zarr (block)", "vs_limit", 0.8, "mmap limit (block)"),
)


def reader_goals(rep: Report) -> list[Goal]:
    return [
        _ratio_goal(f"{profile}: {reader} >= {target}x {what}",
                    _find(rep.readers, f"shardfeed {reader}"), attr, target)
        for profile, reader, attr, target, what in READER_GOALS
        if profile == rep.profile.name
    ]  # fmt: skip


def other_goals(rep: Report) -> list[Goal]:
    name = rep.profile.name
    ours = [r for r in rep.fit if r.name.startswith("shardfeed")]
    best = max(ours, key=lambda r: r.samples_per_s) if ours else None
    goals = [
        Goal(
            f"{name}: fit, best shardfeed epoch time <= 1.25x arrays in memory (rate >= 0.8x)",
            best.vs_limit if best else None,
            0.8,
            [best, rep.fit[0]] if best else [],
            best.name if best else "",
        ),
        Goal(
            f"{name}: fit, best shardfeed >= 3x the tutorial's best fit configuration",
            best.vs_tutorial if best else None,
            3,
            [best] if best else [],
            best.name if best else "",
        ),
    ]
    for label in ("HDF5", "Zarr"):
        goals.append(
            _ratio_goal(
                f"{name}: convert to {label} (2 workers) >= 0.7x plain copy",
                _find(rep.convert, f"convert to {label}, 2 workers"),
                "vs_limit",
                0.7,
            )
        )
    goals.append(memory_goal(rep))
    return goals


def memory_goal(rep: Report) -> Goal:
    """Bounded: 4x the data adds at most two batches (+8 MiB slack) of private memory."""
    small, large = rep.memory
    extra = large["anon_growth"] - small["anon_growth"]
    allowed = 2 * large["batch_nbytes"] + 8 * MiB
    detail = (
        f"private growth {small['anon_growth'] / MiB:.1f} MiB for {small['samples']:,} samples, "
        f"{large['anon_growth'] / MiB:.1f} MiB for {large['samples']:,}; a batch is "
        f"{large['batch_nbytes'] / MiB:.1f} MiB"
    )
    return Goal(
        f"{rep.profile.name}: generator memory bounded by batches in flight",
        allowed - extra,
        0,
        detail=detail,
        ratio_hidden=True,
    )


# --- report ---------------------------------------------------------------------------------


def environment(workdir: Path) -> dict[str, str]:
    import h5py
    import numcodecs
    import zarr

    def first(path: str, key: str) -> str:
        try:
            return next(
                line.split(":", 1)[1].strip() for line in open(path) if line.startswith(key)
            )
        except (OSError, StopIteration):
            return "?"

    git = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{first('/proc/cpuinfo', 'model name')}, {os.cpu_count()} logical CPUs",
        "memory": _gib(first("/proc/meminfo", "MemTotal")),
        "system": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "packages": f"shardfeed {shardfeed.__version__} ({git.stdout.strip() or '?'}), "
        f"numpy {np.__version__}, h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}), "
        f"zarr {zarr.__version__}, "
        f"numcodecs {numcodecs.__version__}, {_keras_versions()}",
        "work folder": str(workdir),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _gib(meminfo_value: str) -> str:
    try:
        return f"{int(meminfo_value.split()[0]) / 2**20:.1f} GiB"
    except (ValueError, IndexError):
        return meminfo_value


def _keras_versions() -> str:
    import keras
    import tensorflow as tf

    return f"keras {keras.__version__}, tensorflow {tf.__version__}"


def memory_table(rows: list[dict]) -> str:
    lines = [
        "| samples | batch | private before | private peak | growth | file-backed peak | VmHWM |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        cells = [f"{m['samples']:,}"] + [
            f"{m[k] / MiB:,.1f} MiB"
            for k in (
                "batch_nbytes",
                "base_anon",
                "peak_anon",
                "anon_growth",
                "peak_file",
                "vm_hwm",
            )
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals_table(goals: list[Goal]) -> str:
    lines = ["| goal | measured | result |", "|---|---|---|"]
    for g in goals:
        value = "-" if g.value is None else f"{g.value:.2f}x"
        if g.detail:
            value = g.detail if g.ratio_hidden else f"{value} ({g.detail})"
        verdict = g.verdict + (" (noisy run)" if g.noisy else "")
        lines.append(f"| {g.text} | {value} | {verdict} |")
    return "\n".join(lines)


HOW = """## How these figures are made

- Readers: each makes the batches `DataGenerator` yields (inputs as float32, one-hot labels),
  in-process, batches in an epoch order from `shardfeed.sampling`; a warm-up, then the median of
  3 rounds of a fixed time budget. The tutorial generator is the Keras tutorial's
  `__data_generation` (per-ID `np.load` into a float64 batch, `to_categorical`). The *mmap limit*
  gathers the same rows (sorted within the batch) from one memory-mapped `.npy` holding every
  sample; `x limit` compares each reader with the limit of the same shuffle mode. MB/s counts
  stored sample bytes.
- Cold: the page cache is dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before each reader,
  which then reads for a fixed budget within its first epoch.
- fit: a Flatten+Dense model, `verbose=0`; the median samples/s of epochs 2 and later (epoch 1
  traces the model). `x limit` compares with `fit` on the same samples held in memory as numpy
  arrays; `x tutorial` with the tutorial generator's best configuration.
- Conversion: `shardfeed.convert(..., workers=2)` from a warm page cache, shards fsynced, next to
  appending every source file to one file and fsyncing it.
- Memory: a fresh process iterates `DataGenerator` (in-process, one batch in flight) over one
  epoch; *private* memory is RssAnon. The shard files it maps count as file-backed RSS: page cache
  the kernel reclaims under pressure, which grows with the data read.
- *other CPU %*: the share of all CPUs used by processes outside the benchmark while a figure was
  measured (from /proc/stat); above 10 % the figure is marked NOISY and should not be trusted.
  It does not see other processes' disk I/O, which can still disturb cold figures.
- The memory-mapped limit and the fast readers keep their mappings between rounds, so after the
  warm-up they read mapped pages; a reader opened fresh (a new worker process) pays page faults.
"""


def trust_line(reports: list[Report]) -> str:
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


def write_markdown(
    reports: list[Report], goals: list[Goal], env: dict, command: str, out: Path
) -> None:
    parts = [
        "# Benchmarks",
        "",
        f"Latest run: `{command}`, {env['date']}. Regenerate with "
        "`python scripts/bench.py --profile all` on a quiet machine.",
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


def save_json(reports: list[Report], goals: list[Goal], path: Path) -> None:
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


def write_plot(reports: list[Report], path: Path) -> None:
    """Horizontal bars of samples/s (log scale): warm readers and fit, per profile."""
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
            "#999999"
            if "tutorial" in n
            else "#333333"
            if ("limit" in n or "memory" in n)
            else "#2a6fbb"
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("large", "small", "all"), default="all")
    parser.add_argument(
        "--quick", action="store_true", help="tiny data, short budgets: the pipeline end to end"
    )
    parser.add_argument(
        "--out", type=Path, help="Markdown report (default docs/benchmarks.md; quick: work folder)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="data and stores (default under the system temp folder)"
    )
    parser.add_argument(
        "--small-samples", type=int, help="samples of the small profile (default 1,000,000)"
    )
    parser.add_argument(
        "--seconds", type=float, help="time budget per warm reader (default 10; quick 0.6)"
    )
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache figures")
    args = parser.parse_args(argv)
    default_dir = Path(tempfile.gettempdir()) / (
        "shardfeed-bench-quick" if args.quick else "shardfeed-bench"
    )
    args.workdir = (args.workdir or default_dir).resolve()
    if args.workdir == REPO or REPO in args.workdir.parents:
        parser.error(f"--workdir {args.workdir} is inside the repository; use a folder outside it")
    if args.out is None:
        args.out = args.workdir / "benchmarks.md" if args.quick else REPO / "docs" / "benchmarks.md"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    reports = []
    for p in make_profiles(args):
        reports.append(run_profile(p, args.workdir / p.name, cold=not args.no_cold))
    goals = [g for rep in reports for g in reader_goals(rep) + other_goals(rep)]
    for rep in reports:
        say(f"\n== {rep.profile.name}: {rep.profile.describe()}")
        say(format_table(rep.results()))
        for note in rep.notes:
            say(f"note: {note}")
    say("\n" + goals_table(goals))
    command = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_markdown(reports, goals, environment(args.workdir), command.strip(), args.out)
    write_plot(reports, args.out.with_suffix(".png"))
    save_json(reports, goals, args.workdir / "results.json")
    elapsed = time.perf_counter() - started
    say(f"\nwrote {args.out} and {args.out.with_suffix('.png')} in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
