"""The profiles of the full benchmark (`scripts/bench.py`): their data, and every figure taken on it.

For each profile: the Keras tutorial's layout (data/<ID>.npy, labels.json, partition.json) in a
work folder (reused by later runs), converted to HDF5 and Zarr with and without compression;
then, in this order, conversion against a plain copy of the same bytes; readers in-process on a
warm page cache (the tutorial generator, the memory-mapped limit, every store with global and
block shuffle) beside the memory bandwidth; the same readers on a cold cache (when the page cache
can be dropped) beside the disk's read rate, in order and by several streams;
`model.fit` of a trivial model from numpy arrays in memory, the tutorial generator and
`DataGenerator` (in-process, threads, processes); and the RSS of a process iterating
`DataGenerator` for two data-set sizes.

Progress goes to a `say` callable (the script passes `print`); nothing here prints. Keras is
imported only by the tutorial generator and the `fit` figures, on first use.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..feed.batches import BatchSource
from ..inputs.demo import DEMO_STEP, make_tutorial_dataset
from ..storage.store import open_store
from ..writing.convert import convert
from .harness import (
    COPY_BYTES,
    DECODE_NAME,
    DISK_STREAMS,
    LIMIT_NAME,
    TUTORIAL_NAME,
    CpuMonitor,
    DecodeLimit,
    MiB,
    MmapLimit,
    PyDatasetReader,
    Result,
    StoreReader,
    batch_copy_rate,
    disk_read_rate,
    drop_page_cache,
    format_table,
    measure_cold,
    measure_cold_in_turns,
    measure_readers,
    memory_bandwidth,
    result_from_rates,
    set_ratios,
    write_limit_npy,
)
from .memory import generator_memory

Say = Callable[[str], None]
STORES = (
    ("HDF5", "hdf5", "none"),
    ("HDF5 gzip", "hdf5", "gzip"),
    ("Zarr", "zarr", "none"),
    ("Zarr zstd", "zarr", "zstd"),
)
SHUFFLES = ("global", "block")
CONVERSION_ROUNDS = 3  # of each conversion figure, as time allows (see `_timed_conversion`)


def quiet(text: str) -> None:
    """The default `say`: progress lines go nowhere."""


@dataclass(frozen=True)
class Profile:
    """One data set and how long to measure it."""

    name: str
    num_samples: int
    shape: tuple[int, ...]  # of one sample, as its .npy file holds it
    dtype: str
    num_classes: int

    batch_size: int
    fit_samples: int  # samples per `fit` epoch, the first of an epoch order
    fit_epochs: int  # the first one traces the model and is left out of the figure
    seconds: float  # time budget per warm reader
    cold_seconds: float  # per cold reader, within its first epoch
    copy_bytes: int = COPY_BYTES  # of the memory-bandwidth copy

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
class ProfileReport:
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


def make_profiles(
    which: str, *, quick: bool = False, seconds: float | None = None, small_samples: int | None = None
) -> list[Profile]:
    """The profiles named by `which` ("large", "small" or "all"); `quick`: tiny data, short budgets."""
    seconds = seconds or (0.6 if quick else 10.0)
    cold = 0.3 if quick else 5.0
    epochs = 2 if quick else 3
    large_n = 512 if quick else 16_384
    copy = 64 * MiB if quick else COPY_BYTES  # still twice a large last-level cache
    large = Profile("large", large_n, (32, 32, 32, 1), "float32", 6, 64, large_n, epochs, seconds, cold, copy)
    small_n = small_samples or (20_000 if quick else 1_000_000)
    small_fit = min(small_n, 5_120 if quick else 65_536)
    small = Profile("small", small_n, (28, 28), "uint8", 10, 256, small_fit, epochs, seconds, cold, copy)
    return [p for p in (large, small) if which in (p.name, "all")]


# --- data and conversion ------------------------------------------------------------------


def prepare_data(p: Profile, root: Path, say: Say = quiet) -> tuple[Path, Path, Path]:
    """The tutorial layout with every sample in split 'train'; reused when already there."""
    spec = {"n": p.num_samples, "shape": list(p.shape), "dtype": p.dtype, "classes": p.num_classes, "step": DEMO_STEP}
    marker = root / "source.json"
    data, labels, partition = root / "data", root / "labels.json", root / "partition.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        say(f"[{p.name}] reusing source data in {root}")
        return data, labels, partition
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # uint8 of Gaussian noise: wraps, on purpose
        make_tutorial_dataset(root, p.num_samples, p.shape, p.num_classes, dtype=p.dtype)
    ids = [f"id-{n}" for n in range(1, p.num_samples + 1)]
    partition.write_text(json.dumps({"train": ids}))
    marker.write_text(json.dumps(spec))
    say(f"[{p.name}] wrote {p.num_samples:,} files in {time.perf_counter() - started:.0f} s")
    return data, labels, partition


def _timed_conversion(name: str, samples: int, p: Profile, work: Callable[[], object],
                      reset: Callable[[], object]) -> Result:  # fmt: skip
    """One conversion figure: the median of up to `CONVERSION_ROUNDS` runs of `work()`, each after an
    untimed `reset()` (its output deleted), fewer once `3 * p.seconds` have passed; with the CPU used.

    One run is not enough: a few seconds' conversion moved by a fifth between runs (small HDF5:
    0.66-0.81x the plain copy), and a process's first conversion also pays once what later ones
    do not (importing the backend, HDF5's template: 0.2-0.4 s for the small profile)."""
    rates: list[float] = []
    spent = 0.0
    cpu = CpuMonitor()
    while len(rates) < CONVERSION_ROUNDS and spent < 3 * p.seconds:
        reset()
        os.sync()  # files written before (the sources, the last round's output) must not be written back during it
        cpu.start()
        started = time.perf_counter()
        work()
        elapsed = time.perf_counter() - started
        cpu.stop()
        rates.append(samples / elapsed)
        spent += elapsed
    return result_from_rates("conversion", name, rates, p.sample_nbytes, cpu, samples * len(rates))


def plain_copy(files: list[Path], dest: Path, p: Profile) -> Result:
    """The bar for conversion: every source file appended to one file, then fsync."""
    for path in files:  # warm the page cache, as conversion finds it
        path.read_bytes()

    def copy() -> None:
        with open(dest, "wb") as out:
            for path in files:
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, out, MiB)
            out.flush()
            os.fsync(out.fileno())

    result = _timed_conversion("plain copy of the .npy files into one file", len(files), p, copy,
                               functools.partial(dest.unlink, missing_ok=True))  # fmt: skip
    dest.unlink()
    return result


def convert_all(p: Profile, data: Path, labels: Path, partition: Path, root: Path) -> tuple[list[Result], dict]:
    """Time each store's conversion (2 workers) next to the plain copy; returns results, stores."""
    files = [data / f"{i}.npy" for i in json.loads(partition.read_text())["train"]]
    results = [plain_copy(files, root / "copy.bin", p)]
    stores = {}
    for label, fmt, compression in STORES:
        out = root / f"store-{fmt}-{compression}"
        work = functools.partial(convert, data, out, labels=labels, partition=partition, format=fmt,
                                 compression=compression, workers=2)  # fmt: skip
        reset = functools.partial(shutil.rmtree, out, ignore_errors=True)  # an earlier round's store
        results.append(_timed_conversion(f"convert to {label}, 2 workers", p.num_samples, p, work, reset))
        stores[label] = out
    set_ratios(results, None, results[0])
    return results, stores


# --- readers --------------------------------------------------------------------------------


def tutorial_generator(p: Profile, data: Path, labels: dict, ids: list[str], **kwargs):
    """The Keras tutorial's generator over `ids` (imports Keras), seeded as every run seeds it."""
    from .tutorial import TutorialGenerator

    np.random.seed(0)
    dim = p.shape[:-1] if len(p.shape) > 1 and p.shape[-1] == 1 else p.shape
    return TutorialGenerator(
        ids, labels, data, batch_size=p.batch_size, dim=dim, n_channels=1, n_classes=p.num_classes, **kwargs
    )


def source_of(path: Path, p: Profile, shuffle: str) -> BatchSource:
    return BatchSource(
        open_store(path), split="train", batch_size=p.batch_size, shuffle_mode=shuffle, seed=0, drop_remainder=True
    )


def reader_factories(
    p: Profile, data: Path, labels: Path, partition: Path, stores: dict, npy: Path
) -> list[tuple[str, str, Callable[[], object]]]:
    """(name, shuffle, make_reader) for every reader, in table order."""
    label_map = json.loads(labels.read_text())
    ids = json.loads(partition.read_text())["train"]
    positions = np.arange(p.num_samples)
    factories = [(TUTORIAL_NAME, "global", lambda: PyDatasetReader(tutorial_generator(p, data, label_map, ids)))]
    for shuffle in SHUFFLES:
        factories.append((f"{LIMIT_NAME} ({shuffle})", shuffle,
                          lambda s=shuffle: MmapLimit(npy, source_of(stores["HDF5"], p, s), positions)))  # fmt: skip
    factories.append((DECODE_NAME, "global",
                      lambda: DecodeLimit(npy, source_of(stores["Zarr zstd"], p, "global"), "zstd")))  # fmt: skip
    for label, _, _ in STORES:
        for shuffle in SHUFFLES:
            factories.append((f"shardfeed {label} ({shuffle})", shuffle,
                              lambda s=shuffle, path=stores[label]: StoreReader(source_of(path, p, s))))  # fmt: skip
    return factories


def run_readers(p: Profile, factories: list, cold: bool, npy: Path, say: Say = quiet) -> list[Result]:
    """Every reader warm (median of rounds, in turns) or cold (first seconds after dropping the cache,
    median of rounds, in turns with the limits), beside the machine's limits: warm the memory bandwidth
    and a batch-by-batch copy, cold the disk reading `npy` (the limit's data) in order."""
    mode = "cold" if cold else "warm"

    def progress(r: Result) -> None:
        say(f"[{p.name}] {mode} {r.name}: {r.samples_per_s:,.0f} samples/s")

    readers = [(name, make) for name, _, make in factories]
    if cold:
        seconds, section = p.cold_seconds, "readers, cold"
        disks = [functools.partial(disk_read_rate, npy, p.sample_nbytes, seconds=seconds, streams=n, section=section)
                 for n in (1, DISK_STREAMS)]  # fmt: skip
        figures = disks + [functools.partial(measure_cold, name, make, p.sample_nbytes, seconds=seconds,
                                             section=section) for name, make in readers]  # fmt: skip
        measured = measure_cold_in_turns(figures, p.sample_nbytes, on_result=progress)
        limits = [disk for disk in measured[: len(disks)] if disk is not None]
        results = [result for result in measured[len(disks) :] if result is not None]
    else:
        limits = [memory_bandwidth(p.sample_nbytes, nbytes=p.copy_bytes),
                  batch_copy_rate(p.sample_nbytes, p.batch_size * p.sample_nbytes, nbytes=p.copy_bytes)]  # fmt: skip
        for limit in limits:
            progress(limit)
        results = measure_readers(readers, p.sample_nbytes, seconds=p.seconds, on_result=progress)
    by_name = {r.name: r for r in results}
    shuffles = [shuffle for _, shuffle, _ in factories]
    for result, shuffle in zip(limits + results, ["global"] * len(limits) + shuffles, strict=True):
        set_ratios([result], by_name[TUTORIAL_NAME], by_name[f"{LIMIT_NAME} ({shuffle})"], limits)
    return limits + results


# --- fit and memory -------------------------------------------------------------------------


def run_fit(p: Profile, data: Path, labels: Path, stores: dict, say: Say = quiet) -> list[Result]:
    """`fit` from arrays in memory, the tutorial generator and DataGenerator, on the same rows."""
    from .fit import FIT_CONFIGS, fit_rows, in_memory_arrays, measure_fits, store_generator

    store = open_store(stores["HDF5"])
    rows = fit_rows(source_of(stores["HDF5"], p, "global"), p.fit_samples)
    ids, label_map = [store.ids[r] for r in rows.tolist()], json.loads(labels.read_text())
    feeds = [("numpy arrays in memory", lambda: in_memory_arrays(store, rows))]
    for config, kw in FIT_CONFIGS.items():
        feeds.append((f"{TUTORIAL_NAME}, {config}",
                      lambda kw=kw: tutorial_generator(p, data, label_map, ids, **kw)))  # fmt: skip
    for label in ("HDF5", "Zarr"):
        for config, kw in FIT_CONFIGS.items():
            feeds.append((f"shardfeed {label}, {config}",
                          lambda kw=kw, path=stores[label]: store_generator(path, ids, p.batch_size, **kw)))
    results = measure_fits(
        feeds, samples_per_epoch=len(rows), sample_nbytes=p.sample_nbytes, epochs=p.fit_epochs,
        batch_size=p.batch_size, on_result=lambda r: say(f"[{p.name}] fit {r.name}: {r.samples_per_s:,.0f} samples/s"),
    )  # fmt: skip
    tutorial = [r for r in results if r.name.startswith(TUTORIAL_NAME)]
    best_tutorial = max(tutorial, key=lambda r: r.samples_per_s)
    set_ratios(results, best_tutorial, results[0])
    best_tutorial.note = "tutorial's best"
    return results


def run_memory(p: Profile, stores: dict, say: Say = quiet) -> list[dict]:
    """RSS of a process iterating DataGenerator over an epoch: a quarter of the data, then all."""
    results = []
    for n in (p.num_samples // 4, p.num_samples):
        figures = generator_memory(stores["HDF5"], n, p.batch_size)
        say(f"[{p.name}] memory, {n:,} samples: private memory grew {figures['anon_growth'] / MiB:.1f} MiB")
        results.append(figures)
    return results


# --- one profile ----------------------------------------------------------------------------


def run_profile(p: Profile, root: Path, cold: bool, say: Say = quiet) -> ProfileReport:
    """Every figure of profile `p`, its data kept in `root`; the stores are removed afterwards."""
    report = ProfileReport(p)
    say(f"[{p.name}] {p.describe()}")
    data, labels, partition = prepare_data(p, root, say)
    report.convert, stores = convert_all(p, data, labels, partition, root)
    say(format_table(report.convert))
    npy = root / "limit.npy"
    write_limit_npy(open_store(stores["HDF5"]), np.arange(p.num_samples), npy)
    factories = reader_factories(p, data, labels, partition, stores, npy)
    report.readers = run_readers(p, factories, cold=False, npy=npy, say=say)
    if cold and drop_page_cache():
        on_disk = [f for f in factories if f[0] != DECODE_NAME]  # decoding alone reads nothing from disk
        report.cold = run_readers(p, on_disk, cold=True, npy=npy, say=say)
    else:
        report.notes.append(
            "cold-cache figures skipped: the page cache could not be dropped "
            "(needs root and /proc/sys/vm/drop_caches)"
            if cold
            else "cold-cache figures skipped (--no-cold)"
        )
    report.fit = run_fit(p, data, labels, stores, say)
    report.memory = run_memory(p, stores, say)
    npy.unlink()
    for path in stores.values():
        shutil.rmtree(path)
    return report
