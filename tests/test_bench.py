"""`shardfeed bench` and the measurement harness: the table's structure, never its timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shardfeed.bench.harness import (
    BATCH_COPY_NAME,
    COLUMNS,
    DISK_BLOCK,
    DISK_NAME,
    DISK_STREAMS_NAME,
    MEMORY_NAME,
    CpuMonitor,
    MmapLimit,
    Result,
    disk_read_rate,
    format_table,
    measure_readers,
    read_blocks,
    write_limit_npy,
)
from shardfeed.cli import main
from shardfeed.feed.batches import BatchSource
from shardfeed.storage.store import open_store


def _table_rows(text: str) -> dict[str, list[str]]:
    """Reader name -> cells, from the aligned text table (columns split on 2+ spaces)."""
    import re

    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("CPU: ")]
    header = re.split(r"\s{2,}", lines[0].strip())
    assert header == list(COLUMNS)
    rows = {}
    for line in lines[1:]:
        if line.startswith("NOISY"):
            continue
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(COLUMNS), line
        rows[cells[1]] = cells
    return rows


@pytest.mark.parametrize("shuffle", ["global", "block"])
def test_bench_prints_limit_and_store_rows_with_ratios(small_store, backend, shuffle, capsys):
    store, _ = small_store
    args = ["--batch-size", "8", "--shuffle", shuffle, "--seconds", "0.2"]
    assert main(["bench", str(store), *args]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("CPU: ") and "logical CPUs" in out.splitlines()[0]
    rows = _table_rows(out)
    assert set(rows) == {f"mmap limit ({shuffle})", f"shardfeed {backend} ({shuffle})", MEMORY_NAME, BATCH_COPY_NAME}
    for cells in rows.values():
        samples_per_s, mb_per_s = (float(c.replace(",", "")) for c in cells[2:4])
        assert samples_per_s > 0 and mb_per_s > 0
        assert float(cells[5]) > 0 and float(cells[6]) >= 0  # numbers (small samples: ~0 of memory bandwidth)
        assert cells[4] == "-"  # no tutorial reference for a lone store
    assert float(rows[f"mmap limit ({shuffle})"][5]) == 1.0
    best = max(float(rows[name][2].replace(",", "")) for name in (f"mmap limit ({shuffle})", MEMORY_NAME,
                                                                    BATCH_COPY_NAME))  # fmt: skip
    store_rate = float(rows[f"shardfeed {backend} ({shuffle})"][2].replace(",", ""))
    assert float(rows[f"shardfeed {backend} ({shuffle})"][6]) == pytest.approx(store_rate / best, rel=0.02, abs=0.01)


def test_bench_json_lines(small_store, capsys):
    store, _ = small_store
    assert main(["bench", str(store), "--batch-size", "8", "--seconds", "0.2", "--json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["section"] for r in results] == ["readers"] * 4
    assert [r["name"] for r in results][2:] == [MEMORY_NAME, BATCH_COPY_NAME]
    assert all(isinstance(r["vs_limit"], float) and isinstance(r["vs_best"], float) for r in results)
    assert [len(r["rounds"]) for r in results] == [3, 3, 5, 3]


def test_bench_rejects_bad_budget(small_store, capsys):
    store, _ = small_store
    assert main(["bench", str(store), "--seconds", "0"]) == 2
    assert "--seconds" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["zarr"], indirect=True)
def test_bench_subprocess_does_not_import_keras(small_store):
    store, _ = small_store
    code = (
        "import sys; from shardfeed.cli import main; "
        f"rc = main(['bench', {str(store)!r}, '--batch-size', '8', '--seconds', '0.1']); "
        "heavy = 'keras' in sys.modules or 'tensorflow' in sys.modules; "
        "print('KERAS' if heavy else 'NO-KERAS', rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "NO-KERAS 0"
    assert "mmap limit (global)" in done.stdout


def test_limit_makes_the_same_batches_as_the_store(small_store, tmp_path):
    store_path, _ = small_store
    store = open_store(store_path)
    source = BatchSource(store, split="train", batch_size=8, seed=3)
    positions = write_limit_npy(store, source.rows, tmp_path / "limit.npy")
    limit = MmapLimit(tmp_path / "limit.npy", source, positions)
    for index in range(source.num_batches):
        x, y = source.batch(1, index)
        order = np.argsort(source.batch_rows(1, index), kind="stable")
        lx, ly = limit.batch(1, index)  # rows sorted within the batch
        np.testing.assert_array_equal(lx, x[order])
        np.testing.assert_array_equal(ly, y[order])


@pytest.mark.parametrize("streams", [1, 2, 3, 4])
def test_disk_limit_streams_read_every_byte_once(tmp_path, streams):
    """Blocks k, k + streams, ... go to stream k: whatever the count, the whole file and no more, the
    last block short."""
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * (2 * DISK_BLOCK + DISK_BLOCK // 2))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_blocks(fd, path.stat().st_size, streams, time.perf_counter() + 60) == path.stat().st_size
        assert read_blocks(fd, path.stat().st_size, streams, time.perf_counter() - 1) == 0  # past its deadline
    finally:
        os.close(fd)
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(IsADirectoryError):  # a stream's error reaches the caller
            read_blocks(folder, 2 * DISK_BLOCK, streams, time.perf_counter() + 60)
    finally:
        os.close(folder)


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="the cold limit drops pages with posix_fadvise")
def test_disk_limits_are_named_by_how_they_read(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * (3 * DISK_BLOCK))
    one, four = (disk_read_rate(path, 1024, seconds=30, streams=n) for n in (1, 4))
    assert (one.name, one.note) == (DISK_NAME, "sequential, one file")
    assert (four.name, four.note) == (DISK_STREAMS_NAME, "4 streams")
    assert one.samples_per_s > 0 and four.samples_per_s > 0


def test_cpu_monitor_reports_shares_between_zero_and_one():
    if not CpuMonitor.available:
        pytest.skip("no /proc/stat")
    with CpuMonitor() as cpu:
        sum(i * i for i in range(200_000))
    assert cpu.own_s is not None and cpu.own_s >= 0
    assert 0.0 <= cpu.other <= 1.0


class _LoggingReader:
    """A reader of 4 one-sample batches that logs which reader made each batch, and its closing."""

    num_batches = 4

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, ...]:
        self.log.append(self.name)
        return (np.zeros((1, 2)),)

    def close(self) -> None:
        self.log.append(f"{self.name} closed")


def test_warm_readers_take_turns_within_every_round_and_are_all_closed():
    log: list[str] = []
    readers = [(name, lambda name=name: _LoggingReader(name, log)) for name in ("a", "b")]
    results = measure_readers(readers, 16, seconds=0.06)
    assert [r.name for r in results] == ["a", "b"] and all(len(r.rounds) == 3 for r in results)
    turns = [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]
    assert turns == ["a", "b"] * 4 + ["b closed", "a closed"]  # warm-up, then 3 rounds


def test_cpu_monitor_sums_its_spans():
    if not CpuMonitor.available:
        pytest.skip("no /proc/stat")
    cpu = CpuMonitor()
    for _ in range(3):
        with cpu:
            sum(i * i for i in range(1_000_000))
    once = CpuMonitor()
    with once:
        sum(i * i for i in range(1_000_000))
    assert cpu.own_s > once.own_s and 0.0 <= cpu.other <= 1.0


@pytest.mark.parametrize(("seconds", "rounds"), [(60.0, 3), (0.01, 1)])
def test_a_conversion_figure_is_the_median_of_rounds_each_after_its_output_is_deleted(tmp_path, seconds, rounds):
    from shardfeed.bench.profiles import _timed_conversion, make_profiles

    profile = make_profiles("small", quick=True, seconds=seconds)[0]
    out, calls = tmp_path / "out", []

    def work() -> None:
        calls.append(("work", out.exists()))
        out.write_bytes(b"x")
        time.sleep(0.05)  # longer than 3 x 0.01 s: one round only

    def reset() -> None:
        calls.append(("reset", out.exists()))
        out.unlink(missing_ok=True)

    result = _timed_conversion("a conversion", 1000, profile, work, reset)
    assert calls == [("reset", False), ("work", False)] + [("reset", True), ("work", False)] * (rounds - 1)
    assert len(result.rounds) == rounds and result.samples_per_s == sorted(result.rounds)[(rounds - 1) // 2]


def test_cold_figures_are_taken_in_turns_each_round_and_merged_as_their_median():
    from shardfeed.bench.harness import measure_cold_in_turns

    order: list[str] = []
    rates = {"disk": iter([300.0, 100.0, 200.0]), "reader": iter([5.0, 7.0, 6.0])}

    def figure(name: str, other_cpu: float):
        def take() -> Result:
            order.append(name)
            return Result("readers, cold", name, next(rates[name]), 0.0, cpu_us_per_sample=1.0, other_cpu=other_cpu)
        return take

    def not_permitted() -> None:
        order.append("none")

    seen: list[Result] = []
    disk, reader, none = measure_cold_in_turns(
        [figure("disk", 0.0), figure("reader", 0.2), not_permitted], 1000, rounds=3, on_result=seen.append
    )
    assert order == ["disk", "reader", "none"] * 3 and len(seen) == 6 and none is None
    assert (disk.samples_per_s, disk.rounds, disk.mb_per_s, disk.noisy) == (200.0, [300.0, 100.0, 200.0], 0.2, False)
    assert (reader.samples_per_s, reader.cpu_us_per_sample, reader.noisy) == (6.0, 1.0, True)


def test_format_table_marks_noisy_rows_and_markdown_has_one_row_per_result():
    quiet = Result("readers", "a", 10.0, 1.0, other_cpu=0.01, vs_limit=1.0)
    noisy = Result("readers", "b", 5.0, 0.5, other_cpu=0.5, vs_limit=0.5)
    text = format_table([quiet, noisy])
    assert "NOISY" in text.splitlines()[2] and "NOISY" not in text.splitlines()[1]
    markdown = format_table([quiet, noisy], markdown=True).splitlines()
    assert len(markdown) == 4 and markdown[1].startswith("|---")


@pytest.mark.slow
def test_bench_fit_rows_compare_with_arrays_in_memory(small_store, capsys):
    store, _ = small_store
    args = ["--batch-size", "8", "--seconds", "0.2", "--fit", "--json"]
    assert main(["bench", str(store), *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    results = [json.loads(line) for line in lines if line.startswith("{")]
    fit = [r for r in results if r["section"] == "fit"]
    assert [r["name"].split(",")[0] for r in fit] == [
        "fit: numpy arrays in memory",
        f"fit: DataGenerator {open_store(store).backend}",
    ]
    assert fit[0]["vs_limit"] == 1.0 and fit[1]["vs_limit"] > 0


@pytest.mark.slow
def test_full_suite_quick_writes_report_and_plot(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
    out = tmp_path / "report" / "benchmarks.md"
    args = ["--quick", "--profile", "large", "--no-cold", "--workdir", str(tmp_path / "w"),
            "--out", str(out), "--seconds", "0.2"]  # fmt: skip
    command = [sys.executable, str(script), *args]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    text = out.read_text()
    assert "## Goals" in text and "| large: HDF5 (global) >= 5x tutorial |" in text
    assert text.count("PASS") + text.count("MISS") >= 9
    assert out.with_suffix(".png").stat().st_size > 0


def test_full_benchmark_tiniest_profile_writes_markdown(tmp_path):
    """The package's entry point end to end on 300 tiny samples (~40 s, most of it `model.fit`)."""
    import re

    pytest.importorskip("keras")
    pytest.importorskip("matplotlib")
    from shardfeed.bench.report import main as bench_main

    out = tmp_path / "report" / "benchmarks.md"
    args = ["--quick", "--profile", "small", "--small-samples", "300", "--seconds", "0.1", "--no-cold",
            "--workdir", str(tmp_path / "w"), "--out", str(out)]  # fmt: skip
    said: list[str] = []
    assert bench_main(args, say=said.append) == 0
    text = out.read_text()
    lines = text.splitlines()
    results_header = "| " + " | ".join(COLUMNS) + " |"
    for title in ("Conversion", "Readers, in-process, warm page cache", "Through model.fit (Flatten+Dense)"):
        at = lines.index(f"### {title}")
        assert lines[at + 2] == results_header, title
    assert "### Readers, cold page cache" not in text and "- cold-cache figures skipped (--no-cold)" in lines
    memory = lines.index("### Generator memory")
    assert lines[memory + 2].startswith("| samples | batch | private before | private peak | growth |")
    goals = lines.index("| goal | measured | result |")
    verdicts = [line for line in lines[goals + 2 :] if line.startswith("| small: ")]
    assert len(verdicts) == 9 and all(re.search(r"\| (PASS|MISS)( \(noisy run\))? \|$", v) for v in verdicts)
    assert "| small: HDF5 (global) >= 50x tutorial |" in text
    cpu = [line for line in lines if line.startswith("- cpu: ")]
    assert len(cpu) == 1 and re.fullmatch(r"- cpu: .+, \d+ logical CPUs \(\d+ available\)", cpu[0])
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    if model:
        assert cpu[0].startswith(f"- cpu: {model},")
    assert out.with_suffix(".png").stat().st_size > 0
    assert json.loads((tmp_path / "w" / "results.json").read_text())["goals"][0]["verdict"] in ("PASS", "MISS")
    printed = "\n".join(said).splitlines()  # progress and the text tables go to `say`, not stdout
    assert any(line.startswith("section  ") for line in printed) and said[-1].startswith(f"\nwrote {out}")
