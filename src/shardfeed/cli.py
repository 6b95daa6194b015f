"""The `shardfeed` command: a thin shell over the library. The only module that prints or exits.

Exit codes: 0 success, 1 an error shardfeed reports (one line, no traceback), 2 bad arguments,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM). Nothing on the inspect/verify/convert/bench
paths imports Keras or TensorFlow (only `bench --fit` does), so the command starts fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from collections.abc import Sequence

from .errors import ShardfeedError, missing_extra
from .version import __version__

EXIT_ERROR, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so conversions unwind like on Ctrl-C."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.run(args) or 0
    except ShardfeedError as exc:
        print(f"shardfeed: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ModuleNotFoundError as exc:  # an optional framework (bench --fit, show): name its extra
        missing = missing_extra(exc)
        if missing is exc:
            raise
        print(f"shardfeed: error: {missing}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader of our output has gone (`| head`): stop quietly, and let no flush at exit fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as exc:  # creating, locking or reading a path the user named: one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"shardfeed: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"shardfeed: interrupted{_resume_hint(args)}", file=sys.stderr)
        return EXIT_SIGINT
    except Terminated:
        print(f"shardfeed: terminated{_resume_hint(args)}", file=sys.stderr)
        return EXIT_SIGTERM
    finally:
        # Called in-process (tests, notebooks), main must not leave its handler behind: forked
        # children (data-loading workers) would inherit it and survive their pool's SIGTERM.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _resume_hint(args) -> str:
    """Only an interrupted conversion has something to resume (an interrupted append left the store as it was)."""
    if args.run is _cmd_append:
        return "; the store is as it was before the append: run it again"
    return "; finish with --resume" if args.run is _cmd_convert else ""


DESCRIPTION = """\
Pack per-sample .npy files into sharded HDF5 or Zarr v3 stores, then look at them, check them and
time them. Train from a store with shardfeed.DataGenerator (Keras), shardfeed.torch or shardfeed.grain.
"""

EXAMPLES = """\
a first store, from the Keras tutorial's layout (data/<ID>.npy, labels.json, partition.json):
  shardfeed convert data/ train.zarr --labels labels.json --partition partition.json
  shardfeed inspect train.zarr
  shardfeed show train.zarr -o samples.png
  shardfeed verify train.zarr --source data/

'shardfeed COMMAND --help' tells each command's options, their defaults and an example.
"""


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks."""


def _command(commands, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its summary, its options and an example."""
    return commands.add_parser(name, help=summary, description=summary, epilog=f"example:\n  {example}",
                               formatter_class=_Help)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from .storage.format import BACKEND_NAMES
    from .writing.plan import DEFAULT_SHARD_SIZE

    parser = argparse.ArgumentParser(prog="shardfeed", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"shardfeed {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    p = _command(commands, "convert", "pack per-sample .npy files into a new store",
                 "shardfeed convert data/ train.zarr --labels labels.json --partition partition.json --workers 4")
    p.add_argument("src", help="a folder of <ID>.npy files (or an s3:// or other fsspec URL of one), a folder per "
                   "class (<class>/<ID>.npy), one .npy of shape (N, ...) with a sample per row, or one .npz")
    p.add_argument("out", help="the store to create (a folder; a Zarr store may be a URL)")
    p.add_argument("--labels", metavar="FILE", help="JSON {id: label} or CSV id,label: integers are class numbers, "
                   "other numbers regression targets, other strings class names, JSON lists label sets "
                   "(multi-label) (default: no labels, or the class folders' names)")
    p.add_argument("--weights", metavar="FILE", help="JSON {id: weight} or CSV id,weight: a weight >= 0 per "
                   "sample, for DataGenerator(sample_weight=True) (default: no weights)")
    p.add_argument("--partition", metavar="FILE", help="JSON {split: [ids]} (default: every sample, in one split "
                   "named 'all')")
    p.add_argument("--ids", metavar="FILE", help="for a SRC that is one .npy of shape (N, ...): its rows' IDs, one "
                   "per line or a .json list, N of them (default: row numbers, zero-padded: 00..99 for N=100)")
    p.add_argument("--variable-shapes", action="store_true", help="accept samples whose lengths differ on some axes "
                   "(same dtype and number of dimensions); batches are then padded (default: one shape for all)")
    p.add_argument("--targets", metavar="DIR", help="a target array per sample, stored beside it for "
                   "DataGenerator(labels='targets'): a folder of <ID>.npy (a mask per image, say), or a .npy of "
                   "shape (N, ...) or .npz, as for SRC (default: no target arrays)")
    p.add_argument("--format", choices=BACKEND_NAMES, default="zarr", help="store format (default: zarr)")
    p.add_argument("--chunk-rows", type=int, metavar="N", help="samples per chunk, the unit of a random read "
                   "(default: about 256 KiB of samples, 64 KiB when compressed)")
    p.add_argument("--shard-size", default=DEFAULT_SHARD_SIZE, metavar="SIZE",
                   help=f"bytes per shard file, e.g. 256MB or 1GiB (default: {DEFAULT_SHARD_SIZE})")
    p.add_argument("--compression", default="none", help="none or gzip for hdf5; none, zstd, lz4 or gzip for zarr "
                   "(default: none)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="processes writing shards (default: 1)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="write shards on a Dask cluster: tcp://HOST:PORT, or "
                   "'local' for a local one of --workers processes (default: no Dask)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at OUT")
    p.add_argument("--resume", action="store_true", help="finish an interrupted conversion, keeping its shards")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    _storage_options_flag(p)
    p.set_defaults(run=_cmd_convert)

    p = _command(commands, "append", "add new samples to a local store, as new shards (the old ones stay untouched)",
                 "shardfeed append train.zarr more/ --labels more_labels.json --partition more_partition.json")
    p.add_argument("store", help="the store to add to")
    p.add_argument("src", help="a folder of <ID>.npy files: new IDs only, with the store's shape and dtype")
    p.add_argument("--labels", metavar="FILE", help="JSON {id: label} or CSV id,label, in the store's classes "
                   "(needed when the store is labeled)")
    p.add_argument("--partition", metavar="FILE", help="JSON {split: [ids]}: the split each new sample joins "
                   "(default: split 'all', when that is the store's only split)")
    p.add_argument("--weights", metavar="FILE", help="JSON {id: weight} or CSV id,weight (needed when the store "
                   "has weights)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="processes writing shards (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    p.set_defaults(run=_cmd_append)

    p = _command(commands, "inspect", "summarize a store: samples, splits, classes, shards, size on disk",
                 "shardfeed inspect train.zarr --id id-17 --json")
    p.add_argument("store", help="the store (a folder or a URL)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--id", dest="sample_id", metavar="ID", help="show this sample: label, split, shape, statistics")
    p.add_argument("--shards", action="store_true", help="also list every shard with its rows and size")
    p.add_argument("--plot", metavar="FILE", help="also draw the label histogram per split into FILE "
                   "(.png, .pdf or .svg; needs the 'show' extra); default: no picture")  # fmt: skip
    _storage_options_flag(p)
    p.set_defaults(run=_cmd_inspect)

    p = _command(commands, "show", "draw samples (ID and label as titles) and the label histogram per split",
                 "shardfeed show train.zarr --split validation -n 25 -o samples.png")
    p.add_argument("store", help="the store (a folder or a URL)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--id", dest="sample_ids", nargs="+", action="extend", metavar="ID",
                      help="draw these samples (default: -n samples chosen at random with --seed)")  # fmt: skip
    pick.add_argument("--split", help="choose the samples from this split (default: from the whole store)")
    p.add_argument("-n", type=int, default=16, help="how many samples to choose without --id (default: 16)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the choice: the same seed draws the same samples (default: 0)")  # fmt: skip
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="picture to write, as .png, .pdf or .svg by its suffix (needs the 'show' extra)")  # fmt: skip
    _storage_options_flag(p)
    p.set_defaults(run=_cmd_show)

    p = _command(commands, "verify", "check every sample against its checksum (and against its source file)",
                 "shardfeed verify train.zarr --source data/")
    p.add_argument("store", help="the store (a folder or a URL)")
    p.add_argument("--source", metavar="SRC", help="also compare each sample with its source: the SRC it was "
                   "converted from (default: checksums only)")
    p.add_argument("--ids", metavar="FILE", help="with a --source that is one .npy: the --ids FILE it was "
                   "converted with (default: row numbers)")
    p.add_argument("--targets", metavar="DIR", help="also compare each target array with its source: the "
                   "--targets it was converted from (default: their checksums only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; only problems and the verdict")
    _storage_options_flag(p)
    p.set_defaults(run=_cmd_verify)

    p = _command(commands, "bench", "time reading shuffled batches, beside the machine's limits",
                 "shardfeed bench train.zarr --split train --batch-size 64 --seconds 5")
    p.add_argument("store", help="a local store")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="samples per batch (default: 64)")
    p.add_argument("--shuffle", choices=("global", "block"), default="global",
                   help="global: a full permutation per epoch; block: shuffled chunk blocks (default: global)")
    p.add_argument("--seconds", type=float, default=10.0, help="time budget per reader (default: 10)")
    p.add_argument("--split", help="read only this split (default: every row)")
    p.add_argument("--fit", action="store_true", help="also time model.fit of a tiny model (imports Keras)")
    p.add_argument("--tmpdir", metavar="DIR", help="folder for the limit's copy of the data (default: the "
                   "system's temporary folder)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.set_defaults(run=_cmd_bench)
    return parser


def _progress_bar(total: int, quiet: bool, desc: str):
    """A tqdm bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, unit="samples", desc=desc, disable=quiet or not sys.stderr.isatty(),
                dynamic_ncols=True, smoothing=0.1)  # fmt: skip


def _storage_options_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options", type=_json_object, metavar="JSON",
        help='fsspec options for s3:// and other URLs, e.g. \'{"anon": false}\' '
             "(credentials and endpoint otherwise come from AWS_* environment variables)",
    )  # fmt: skip


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


class _WriteProgress:
    """convert's and append's progress bar, made once the inputs are validated and counted."""

    def __init__(self, quiet: bool, desc: str, arrays_per_sample: int = 1) -> None:
        self.quiet, self.desc, self.bar, self.samples = quiet, desc, None, 0
        self.arrays_per_sample = arrays_per_sample  # 2 with target arrays: they are written too
        self.started = time.perf_counter()

    def on_start(self, sources, layout) -> None:
        self.samples = len(sources.samples)
        self.bar = _progress_bar(self.samples * self.arrays_per_sample, self.quiet, desc=self.desc)
        self.sample_nbytes = layout.sample_nbytes

    def progress(self, n: int) -> None:
        self.bar.update(n)
        rate = self.bar.format_dict.get("rate") or 0
        self.bar.set_postfix_str(f"{rate * self.sample_nbytes / 1e6:.0f} MB/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def report(self, where: str, manifest, src: str) -> None:
        """The summary line, and a word on what the user may not have meant."""
        seconds = time.perf_counter() - self.started
        if not self.quiet:
            n, mb = self.samples, self.samples * manifest.sample_nbytes / 1e6
            splits = ", ".join(f"{k}={v}" for k, v in manifest.splits.items())
            done = "" if self.desc == "convert" else f" appended, {manifest.num_samples} in all"
            print(
                f"{where}: {n} samples{done} ({splits}) in {len(manifest.shards)} {manifest.backend} shard(s), "
                f"{seconds:.1f} s, {n / seconds:,.0f} samples/s, {mb / seconds:,.0f} MB/s"
            )
            unlisted = manifest.source.get("unlisted_files", 0)
            if unlisted and self.desc == "convert":
                print(f"note: {unlisted} .npy file(s) in {src} are not in the partition and were not converted")
        if not manifest.labeled and manifest.targets_checksum is None and self.desc == "convert":
            print(f"shardfeed: warning: {where} has no labels (no --labels given): its batches are inputs only",
                  file=sys.stderr)  # fmt: skip


def _cmd_convert(args) -> int:
    from .writing.convert import convert

    bar = _WriteProgress(args.quiet, "convert", 1 if args.targets is None else 2)
    try:
        manifest = convert(
            args.src, args.out, labels=args.labels, partition=args.partition, ids=args.ids, weights=args.weights,
            targets=args.targets, format=args.format,
            chunk_rows=args.chunk_rows, shard_size=args.shard_size, compression=args.compression,
            variable_shapes=args.variable_shapes,
            workers=args.workers, overwrite=args.overwrite, resume=args.resume, scheduler=args.scheduler,
            progress=bar.progress, on_start=bar.on_start, storage_options=args.storage_options,
        )  # fmt: skip
    finally:
        bar.close()
    bar.report(args.out, manifest, args.src)
    return 0


def _cmd_append(args) -> int:
    from .writing.append import append

    bar = _WriteProgress(args.quiet, "append")
    try:
        manifest = append(args.store, args.src, labels=args.labels, partition=args.partition, weights=args.weights,
                          workers=args.workers,
                          progress=bar.progress, on_start=bar.on_start)  # fmt: skip
    finally:
        bar.close()
    bar.report(args.store, manifest, args.src)
    return 0


def _cmd_inspect(args) -> int:
    from .storage.inspection import describe, describe_sample, format_summary
    from .storage.store import open_store

    store = open_store(args.store, storage_options=args.storage_options)
    if args.plot is not None:  # drawn first: a missing extra or a bad suffix fails before any output
        from .storage.pictures import write_histograms

        write_histograms(store, args.plot)
    if args.sample_id is not None:
        info = describe_sample(store, args.sample_id)
        print(json.dumps(info, indent=1) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
        return 0
    summary = describe(store)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(format_summary(summary, show_shards=args.shards))
    return 0


def _cmd_show(args) -> int:
    from .storage.pictures import choose_rows, write_samples
    from .storage.store import open_store

    store = open_store(args.store, storage_options=args.storage_options)
    rows = choose_rows(store, ids=args.sample_ids, split=args.split, n=args.n, seed=args.seed)
    write_samples(store, rows, args.output)
    print(f"{args.output}: {len(rows)} sample(s) of {args.store} and its label histogram per split")
    return 0


def _cmd_verify(args) -> int:
    from .storage.integrity import verify_store
    from .storage.store import open_store

    store = open_store(args.store, storage_options=args.storage_options)
    arrays = len(store) * (1 if store.manifest.targets_checksum is None else 2)  # samples and their targets
    bar = _progress_bar(arrays, args.quiet, "verify")
    try:
        report = verify_store(store, args.source, progress=bar.update, ids=args.ids, targets=args.targets)
    finally:
        bar.close()
    for path, reason in report.bad_shards.items():
        print(f"BAD shard {path}: {reason}")
    for sample_id, reason in list(report.bad_samples.items())[:1000]:
        print(f"BAD sample {sample_id!r}: {reason}")
    if len(report.bad_samples) > 1000:
        print(f"... and {len(report.bad_samples) - 1000} more bad samples")
    if report.ok:
        if not args.quiet:
            targets = f" and {report.targets_checked} target arrays" if report.targets_checked else ""
            print(f"{args.store}: OK, {report.samples_checked} samples{targets} match their checksums")
        return 0
    print(f"{args.store}: FAILED, {len(report.bad_samples)} bad sample(s) in {len(report.bad_shards)} shard(s)")
    return EXIT_ERROR


def _cmd_bench(args) -> int:
    from .bench.harness import format_table
    from .bench.machine import cpu_line
    from .bench.store import bench_store

    if args.batch_size < 1 or not math.isfinite(args.seconds) or args.seconds <= 0:
        print("shardfeed: error: --batch-size and --seconds must be positive finite numbers", file=sys.stderr)
        return EXIT_USAGE
    results = bench_store(
        args.store, batch_size=args.batch_size, shuffle=args.shuffle, seconds=args.seconds,
        split=args.split, fit=args.fit, tmpdir=args.tmpdir,
    )  # fmt: skip
    if args.json:
        for result in results:
            print(json.dumps(result.to_dict()))
    else:
        print(f"CPU: {cpu_line()}")  # ratios to the machine's limits differ between CPU kinds
        print(format_table(results))
        if any(r.noisy for r in results):
            print("NOISY: other processes used over 10 % of the CPUs during a measurement")
    return 0


if __name__ == "__main__":
    sys.exit(main())
