"""Read-speed measurements: one harness for every reader, so their figures can be compared.

A *reader* is anything with `num_batches`, `batch(epoch, index) -> (x, ...)` and `close()`:
a store's `BatchSource`, the memory-mapped limit, the Keras tutorial's generator. Each is timed
the same way: a warm-up, then `rounds` rounds of a fixed time budget (crossing epochs when an
epoch is shorter), reporting the median round's samples/s. Every measurement also records the
CPU used by this process tree and by *other* processes (from /proc/stat), because on a shared
machine a busy neighbour silently halves a figure; such runs are flagged, not hidden.

Beside the mmap gather, the machine's own limits, in samples/s of the same size: memory
bandwidth (one large copy, `memory_bandwidth`) for warm reads, and the disk's read rate for cold
ones (`disk_read_rate`: in order as `dd` reads, and by several streams at once). A gather cannot
beat them, and large samples should come close: `vs_best` compares a reader with the best limit
of its section.

Nothing here imports Keras: `shardfeed bench` only loads it for `--fit` (see `fit.py`).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from ..feed.batches import BatchSource
from ..storage.alignment import aligned_empty
from ..storage.backends.base import run_each
from ..storage.backends.rawchunks import decode_pool
from ..storage.store import Store

NOISY_OTHER_CPU = 0.10  # other processes' share of all CPUs above which a figure is flagged
LIMIT_NAME = "mmap limit"
MEMORY_NAME = "memory bandwidth (one np.copyto)"
BATCH_COPY_NAME = "batch copy (np.copyto of a batch)"
DISK_NAME = "disk sequential read (dd-style)"
DISK_STREAMS = 4
DISK_STREAMS_NAME = f"disk read, {DISK_STREAMS} streams"
COLD_ROUNDS = 3  # of every cold figure, all of them in turn each round (`measure_cold_in_turns`)
TUTORIAL_NAME = "tutorial generator"
DECODE_NAME = "zstd decoding alone (chunks in memory)"
MiB = 1 << 20
COPY_BYTES = 512 * MiB  # well beyond any last-level cache
DISK_BLOCK = 8 * MiB


@dataclass
class Result:
    """One measured figure: a reader, a `fit` configuration or a conversion.

    `other_cpu` is the share of all CPUs (0..1) that processes outside this process tree used
    while it was measured; `vs_tutorial`, `vs_limit` (the mmap gather) and `vs_best` (the best
    of its section's limits) are filled in by whoever knows the references of its section.
    """

    section: str
    name: str
    samples_per_s: float
    mb_per_s: float
    rounds: list[float] = field(default_factory=list)
    cpu_us_per_sample: float | None = None
    other_cpu: float | None = None
    vs_tutorial: float | None = None
    vs_limit: float | None = None
    vs_best: float | None = None
    note: str = ""

    @property
    def noisy(self) -> bool:
        return self.other_cpu is not None and self.other_cpu > NOISY_OTHER_CPU

    def to_dict(self) -> dict:
        return {**asdict(self), "noisy": self.noisy}


# --- CPU accounting -------------------------------------------------------------------------


def _proc_stat_fields(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()  # the command name may hold spaces


def own_tree_ticks() -> int:
    """CPU ticks of this process, its reaped children and its live descendants.

    A child reaped during a measurement moves from "live descendant" into our `cutime`, so a
    difference of two readings counts it once either way.
    """
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat_fields(entry)
            if fields is not None:
                parents[int(entry)] = int(fields[1])
                ticks[int(entry)] = sum(int(x) for x in fields[11:15])
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parents.items() if p == pid and c not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(ticks.get(pid, 0) for pid in tree)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


class CpuMonitor:
    """CPU used by this process tree and by everything else between `start()` and `stop()`,
    summed over every such span (a reader measured in turns with others)."""

    available = os.path.exists("/proc/stat")

    def __init__(self) -> None:
        self.own_s: float | None = None
        self.other: float | None = None
        self._own_ticks = self._other_ticks = self._all_ticks = 0

    def start(self) -> CpuMonitor:
        if self.available:
            self._machine, self._own = machine_ticks(), own_tree_ticks()
        return self

    def stop(self) -> CpuMonitor:
        if self.available:
            busy1, total1 = machine_ticks()
            own = own_tree_ticks() - self._own
            self._own_ticks += own
            self._other_ticks += max(0, busy1 - self._machine[0] - own)
            self._all_ticks += total1 - self._machine[1]
            self.own_s = self._own_ticks / os.sysconf("SC_CLK_TCK")
            self.other = self._other_ticks / self._all_ticks if self._all_ticks > 0 else 0.0
        return self

    def __enter__(self) -> CpuMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- readers ----------------------------------------------------------------------------------


class StoreReader:
    """A store's batches exactly as `DataGenerator` makes them (`BatchSource.batch`)."""

    def __init__(self, source: BatchSource) -> None:
        self.source = source
        self.num_batches = source.num_batches

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, ...]:
        return self.source.batch(epoch, index)

    def close(self) -> None:
        self.source.store.close()


class MmapLimit:
    """The limit: fancy-index gather from one memory-mapped `.npy` holding every sample.

    It makes the same batch as `StoreReader` over `source` (same rows, dtype and one-hot
    labels), the cheapest way numpy can: rows sorted within the batch, one gather.
    """

    def __init__(
        self, npy_path: str | os.PathLike, source: BatchSource, positions: np.ndarray
    ) -> None:
        self.source = source
        self.num_batches = source.num_batches
        self._x = np.load(npy_path, mmap_mode="r")
        self._positions = positions
        store = source.store
        self._labels = store.labels if source.labels else None
        self._num_classes = store.num_classes

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, ...]:
        rows = np.sort(self.source.batch_rows(epoch, index))
        x = self._x[self._positions[rows]]
        if x.dtype != self.source.dtype:
            x = x.astype(self.source.dtype)
        if self._labels is None:
            return (x,)
        onehot = np.zeros((len(rows), self._num_classes), dtype=np.float32)
        onehot[np.arange(len(rows)), self._labels[rows]] = 1.0
        return x, onehot

    def close(self) -> None:
        self._x = None  # unmaps once the last batch view is gone


class DecodeLimit:
    """The decoder's limit for a compressed store: chunks of the limit's samples, encoded with the
    store's codec and held in memory, decoded straight into a batch array's rows by the decoder
    `Store.read` uses, on the same threads, with no file, index or copy in between (`max_chunks`
    of them, in turn).
    """

    def __init__(self, npy_path: str | os.PathLike, source: BatchSource, compression: str,
                 max_chunks: int = 1024) -> None:  # fmt: skip
        from ..storage.backends.zarr_format import DECODERS  # imports zarr: here, not at `shardfeed bench`'s start
        from ..storage.backends.zarr_shards import encoder

        self.source = source
        self.num_batches = source.num_batches
        x = np.load(npy_path, mmap_mode="r")
        encode = encoder(compression, x.dtype)
        count = min(len(x), max_chunks)
        self._chunks = [encode(memoryview(np.ascontiguousarray(x[i])).cast("B")) for i in range(count)]
        self._decode = DECODERS[compression]
        self._out = aligned_empty((source.batch_size, *x.shape[1:]), x.dtype)

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, ...]:
        rows = (self.source.batch_rows(epoch, index) % len(self._chunks)).tolist()
        out_bytes = self._out.reshape(len(self._out), -1).view(np.uint8)

        def decode(i: int) -> None:
            self._decode(self._chunks[rows[i]], out_bytes[i])

        run_each(decode, range(len(rows)), decode_pool())
        return (self._out[: len(rows)],)

    def close(self) -> None:
        self._chunks = []


class PyDatasetReader:
    """A Keras `PyDataset` (the tutorial's generator) driven like `fit` drives it, in-process."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.num_batches = len(dataset)
        self._epoch = 0

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, ...]:
        while self._epoch < epoch:
            self.dataset.on_epoch_end()
            self._epoch += 1
        return self.dataset[index]

    def close(self) -> None:
        self.dataset = None


def memory_bandwidth(sample_nbytes: int, *, nbytes: int = COPY_BYTES, rounds: int = 5,
                     section: str = "readers") -> Result:  # fmt: skip
    """The warm limit of large samples: one `np.copyto` of `nbytes` between buffers already faulted
    in, placed so that they do not alias (see `storage.alignment`), as samples/s of `sample_nbytes`."""
    source, target = aligned_empty(nbytes, np.uint8, 0), aligned_empty(nbytes, np.uint8, 2048)
    return _timed_copies(MEMORY_NAME, source, target, sample_nbytes, rounds, section)


def batch_copy_rate(sample_nbytes: int, batch_nbytes: int, *, nbytes: int = COPY_BYTES, rounds: int = 3,
                    section: str = "readers") -> Result:  # fmt: skip
    """The least a reader of large samples must do: copy each batch's bytes from memory into one
    reused batch array (`np.copyto`, batch after batch of `nbytes`), as samples/s of `sample_nbytes`.

    Below `memory_bandwidth` on some CPUs: glibc streams only copies larger than most of the
    last-level cache past it, and a copy of a few MiB through the cache reads each destination
    line before writing it. This row tells that part of a reader's distance to the memory
    bandwidth, which no reader that writes its batches through the cache can close, from its own.
    """
    batches = max(1, nbytes // batch_nbytes)
    source = aligned_empty(batches * batch_nbytes, np.uint8, 0)
    target = aligned_empty(batch_nbytes, np.uint8, 2048)
    return _timed_copies(BATCH_COPY_NAME, source, target, sample_nbytes, rounds, section, note="through the cache")


def _timed_copies(name: str, source: np.ndarray, target: np.ndarray, sample_nbytes: int, rounds: int,
                  section: str, note: str = "") -> Result:  # fmt: skip
    """`rounds` times, all of `source` copied into `target` in pieces of `target`'s size (one piece
    when they are as large), after both were faulted in; the median round as samples/s."""
    source.fill(1)
    target.fill(0)
    pieces = source.reshape(-1, target.size)
    rates = []
    with CpuMonitor() as cpu:
        for _ in range(rounds):
            started = time.perf_counter()
            for piece in pieces:
                np.copyto(target, piece)
            rates.append(source.nbytes / sample_nbytes / (time.perf_counter() - started))
    return result_from_rates(section, name, rates, sample_nbytes, cpu, rounds * source.nbytes // sample_nbytes,
                             note=note)  # fmt: skip


def disk_read_rate(path: str | os.PathLike, sample_nbytes: int, *, seconds: float = 5.0, streams: int = 1,
                   section: str = "readers, cold") -> Result | None:  # fmt: skip
    """The cold limit: `path` read in 8 MiB blocks right after its pages were dropped from the page
    cache (`POSIX_FADV_DONTNEED`, no root needed), for up to `seconds`; None off Linux. One stream
    reads in order, one block at a time, as `dd` does; `streams` threads read every streams-th block
    each, keeping that many requests in flight, which a virtual disk may serve at once (here one
    stream read 0.9 GB/s where four read 1.7 GB/s, and the readers' page faults beat one stream).

    Nothing may have `path` mapped (a mapped page is not dropped): close the readers of it first.
    """
    if not hasattr(os, "posix_fadvise"):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with CpuMonitor() as cpu:
            started = time.perf_counter()
            total = read_blocks(fd, os.fstat(fd).st_size, streams, started + seconds)
            elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
    rate = total / sample_nbytes / elapsed
    name, note = (DISK_NAME, "sequential, one file") if streams == 1 else (DISK_STREAMS_NAME, f"{streams} streams")
    return result_from_rates(section, name, [rate], sample_nbytes, cpu, total // sample_nbytes, note=note)


def read_blocks(fd: int, size: int, streams: int, deadline: float) -> int:
    """Read the `size` bytes of `fd` in `DISK_BLOCK`s, block k by stream k % `streams` (a thread
    each), until done or `deadline` (`time.perf_counter`); returns the bytes read. A read error is
    raised, not left in a thread."""

    def read_stream(k: int) -> int:
        block, done = bytearray(DISK_BLOCK), 0
        for offset in range(k * DISK_BLOCK, size, streams * DISK_BLOCK):
            if time.perf_counter() >= deadline:
                break
            done += os.preadv(fd, [block], offset)
        return done

    with ThreadPoolExecutor(streams) as pool:
        return sum(pool.map(read_stream, range(streams)))


def write_limit_npy(store: Store, rows: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Copy `rows` of `store` into one `.npy` at `path`; returns each store row's position in it."""
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=store.dtype, shape=(len(rows), *store.sample_shape)
    )
    step = max(1, (64 * MiB) // max(1, store.manifest.sample_nbytes))
    for start in range(0, len(rows), step):
        store.read(rows[start : start + step], out=out[start : start + step])
    out.flush()
    del out
    positions = np.full(len(store), -1, dtype=np.int64)
    positions[rows] = np.arange(len(rows))
    return positions


# --- the harness ------------------------------------------------------------------------------


class _Cursor:
    """Walks a reader's batches in order, moving on to the next epoch after the last batch."""

    def __init__(self, reader) -> None:
        self.reader, self.epoch, self.index = reader, 0, 0

    def next(self) -> int:
        batch = self.reader.batch(self.epoch, self.index)
        self.index += 1
        if self.index == self.reader.num_batches:
            self.epoch, self.index = self.epoch + 1, 0
        return len(batch[0])

    def run_for(self, seconds: float, stop_at_epoch_end: bool = False) -> tuple[int, float]:
        """Batches for `seconds` (at least one); returns (samples, elapsed seconds)."""
        samples, start = 0, time.perf_counter()
        while True:
            samples += self.next()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds or (stop_at_epoch_end and self.index == 0):
                return samples, elapsed


def measure(
    name: str,
    reader,
    sample_nbytes: int,
    *,
    seconds: float = 10.0,
    rounds: int = 3,
    section: str = "readers",
) -> Result:
    """Median samples/s of `rounds` rounds of `seconds / rounds` each, after a warm-up."""
    return measure_in_turns([(name, reader)], sample_nbytes, seconds=seconds, rounds=rounds, section=section)[0]


def measure_in_turns(
    readers: Sequence[tuple[str, object]],
    sample_nbytes: int,
    *,
    seconds: float = 10.0,
    rounds: int = 3,
    section: str = "readers",
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """`measure` for each `(name, reader)`, the readers taking turns within every round.

    A reader and its limit then share each stretch of the machine's state (a neighbour's burst,
    the CPU's clock, the host's memory traffic). Small samples on a shared 2-core machine, over
    runs: measured one after the other, shardfeed's ratio to the mmap limit ranged 0.78-1.18;
    in turns, 0.82-0.95.
    """
    cursors = [_Cursor(reader) for _, reader in readers]
    round_s = seconds / rounds
    for cursor in cursors:
        cursor.run_for(min(round_s, 2.0))  # warm-up: caches, lazily opened handles, first epoch order
    rates: list[list[float]] = [[] for _ in readers]
    samples = [0] * len(readers)
    cpus = [CpuMonitor() for _ in readers]
    for _ in range(rounds):
        for i, cursor in enumerate(cursors):
            cpus[i].start()
            taken, elapsed = cursor.run_for(round_s)
            cpus[i].stop()
            rates[i].append(taken / elapsed)
            samples[i] += taken
    results = []
    for (name, _), reader_rates, cpu, total in zip(readers, rates, cpus, samples, strict=True):
        results.append(result_from_rates(section, name, reader_rates, sample_nbytes, cpu, total))
        if on_result is not None:
            on_result(results[-1])
    return results


def result_from_rates(section, name, rates, sample_nbytes, cpu: CpuMonitor, samples: int, note="") -> Result:
    """A `Result` of the median of `rates` (samples/s), with the CPU `cpu` saw over `samples`."""
    rate = statistics.median(rates)
    cpu_us = cpu.own_s / samples * 1e6 if cpu.own_s is not None and samples else None
    return Result(
        section, name, rate, rate * sample_nbytes / 1e6, rates, cpu_us, cpu.other, note=note
    )


def drop_page_cache() -> bool:
    """Write back and drop the page cache; False when not permitted (not root, not Linux)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def measure_cold(
    name: str,
    make_reader: Callable[[], object],
    sample_nbytes: int,
    *,
    seconds: float = 5.0,
    section: str = "readers, cold cache",
) -> Result | None:
    """Samples/s right after dropping the page cache (first epoch only); None if not permitted.

    The caller must have closed every other reader of the same files: a memory-mapped page is
    not dropped.
    """
    gc.collect()
    if not drop_page_cache():
        return None
    reader = make_reader()
    try:
        with CpuMonitor() as cpu:
            samples, elapsed = _Cursor(reader).run_for(seconds, stop_at_epoch_end=True)
    finally:
        reader.close()
    return result_from_rates(section, name, [samples / elapsed], sample_nbytes, cpu, samples)


def measure_readers(
    readers: Sequence[tuple[str, Callable[[], object]]], sample_nbytes: int, *, seconds: float,
    section: str | None = None, on_result: Callable[[Result], None] | None = None,
) -> list[Result]:  # fmt: skip
    """Each `(name, make_reader)` made, measured warm, all open at once and in turns
    (`measure_in_turns`), then closed. `on_result` sees each figure (progress lines)."""
    where = {} if section is None else {"section": section}
    opened: list[tuple[str, object]] = []
    try:
        for name, make in readers:
            opened.append((name, make()))
        return measure_in_turns(opened, sample_nbytes, seconds=seconds, on_result=on_result, **where)
    finally:
        for _, reader in reversed(opened):
            reader.close()


def measure_cold_in_turns(
    figures: Sequence[Callable[[], Result | None]], sample_nbytes: int, *, rounds: int = COLD_ROUNDS,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result | None]:  # fmt: skip
    """Cold figures (`measure_cold` of a reader, `disk_read_rate`), each taken once a round, all of them in
    turn, for `rounds` rounds; each the median of its takes (None for one never taken: not permitted).

    Taken once each, one after the other, a reader was judged against a disk limit measured minutes
    before it, and this virtual disk's rate moved 2-3x within minutes (block-shuffled HDF5 read 1,433
    samples/s in one run and 6,600-16,000 in the minutes after). `on_result` sees every take."""
    takes: list[list[Result]] = [[] for _ in figures]
    for _ in range(rounds):
        for kept, figure in zip(takes, figures):
            result = figure()
            if result is not None:
                kept.append(result)
                if on_result is not None:
                    on_result(result)
    return [_median_take(kept, sample_nbytes) if kept else None for kept in takes]


def _median_take(takes: list[Result], sample_nbytes: int) -> Result:
    """One figure of several takes: the median rate (each take a round), the median CPU per sample,
    and the most other processes used during any take (which decides NOISY)."""
    rates = [t.samples_per_s for t in takes]
    cpus = [t.cpu_us_per_sample for t in takes if t.cpu_us_per_sample is not None]
    others = [t.other_cpu for t in takes if t.other_cpu is not None]
    rate, first = statistics.median(rates), takes[0]
    return Result(first.section, first.name, rate, rate * sample_nbytes / 1e6, rates,
                  statistics.median(cpus) if cpus else None, max(others, default=None), note=first.note)  # fmt: skip


def set_ratios(
    results: Sequence[Result], tutorial: Result | None, limit: Result | None, limits: Sequence[Result] = ()
) -> None:
    """Fill `vs_tutorial` / `vs_limit` of `results` against the given references, and `vs_best`
    against the best of `limits` (the limit itself among them) when there are any."""
    candidates = [x for x in (*limits, limit) if x is not None] if limits else []
    best = max(candidates, key=lambda x: x.samples_per_s, default=None)
    for r in results:
        if tutorial is not None and tutorial.samples_per_s > 0:
            r.vs_tutorial = r.samples_per_s / tutorial.samples_per_s
        if limit is not None and limit.samples_per_s > 0:
            r.vs_limit = r.samples_per_s / limit.samples_per_s
        if best is not None and best.samples_per_s > 0:
            r.vs_best = r.samples_per_s / best.samples_per_s


# --- the table --------------------------------------------------------------------------------

COLUMNS = (
    "section",
    "reader",
    "samples/s",
    "MB/s",
    "x tutorial",
    "x limit",
    "x best limit",
    "CPU us/sample",
    "other CPU %",
    "note",
)


def _cells(r: Result) -> list[str]:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    note = "; ".join(x for x in ("NOISY" if r.noisy else "", r.note) if x)
    return [
        r.section,
        r.name,
        num(r.samples_per_s, ",.0f"),
        num(r.mb_per_s, ",.1f"),
        num(r.vs_tutorial, ".2f"),
        num(r.vs_limit, ".2f"),
        num(r.vs_best, ".2f"),
        num(r.cpu_us_per_sample, ",.1f"),
        num(None if r.other_cpu is None else 100 * r.other_cpu, ".1f"),
        note or "-",
    ]


def format_table(results: Sequence[Result], markdown: bool = False) -> str:
    """The results as an aligned text table, or a Markdown table."""
    rows = [list(COLUMNS)] + [_cells(r) for r in results]
    right = set(range(2, len(COLUMNS) - 1))  # numbers; the names and the note read left to right
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---:" if k in right else "---" for k in range(len(COLUMNS))) + "|")
        return "\n".join(lines)
    widths = [max(len(row[k]) for row in rows) for k in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if k in right else c.ljust(w)
            for k, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )
