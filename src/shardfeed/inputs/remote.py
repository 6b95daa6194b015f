"""Inputs at an fsspec URL (`s3://bucket/data/`): listing, header checks and batched reads.

The checks are those of local files (`local.py`, `npy.py`), made on fetched bytes. One listing gives
every object's size, and headers and samples come in batches of concurrent ranged reads
(`cat_ranges`), so latency is paid once per batch rather than once per sample. Object stores
have no links, FIFOs or devices, so those checks have nothing to refuse here.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator, Sequence

from ..errors import InputError, OptionError
from ..urls import RemoteLocation, url_fs
from .finder import Found
from .ids import check_id
from .npy import MAX_HEADER_BYTES, npy_header_end, parse_npy_header

HEAD_BYTES = 256  # numpy writes 128-byte headers for everyday shapes; longer ones take a second read
FETCH_BATCH = 256  # ranged reads in flight per call


class RemoteFinder:
    """`<id>.npy` objects directly under an fsspec URL."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.location = RemoteLocation(url, storage_options)
        # fsspec file systems cache listings per process: a stale one would hide a changed object
        # from the resume check (its ETag) in a notebook that converts twice.
        self.location.fs.invalidate_cache(self.location.path)
        try:
            entries = self.location.fs.ls(self.location.path, detail=True)
        except FileNotFoundError:
            raise InputError(f"{url}: SRC not found") from None
        except OSError as exc:
            raise InputError(f"{url}: cannot list SRC: {exc}") from exc
        self._entries = {
            posixpath.basename(e["name"].rstrip("/"))[:-4]: e
            for e in entries
            if e.get("type") == "file" and e["name"].endswith(".npy")
        }
        if not self._entries and any(e.get("type") == "directory" for e in entries):
            raise OptionError(f"{url}: holds folders but no .npy objects; a folder per class must be a local SRC")

    def npy_names(self) -> list[str]:
        return sorted(self._entries)

    def find(self, ids: Sequence[str]) -> Iterator[Found | InputError]:
        for start in range(0, len(ids), FETCH_BATCH):
            yield from self._find_batch(ids[start : start + FETCH_BATCH])

    def _find_batch(self, ids: Sequence[str]) -> list[Found | InputError]:
        present = [i for i in ids if i in self._entries]
        heads = dict(zip(present, self._fetch([(i, 0, HEAD_BYTES) for i in present])))
        longer = [(i, 0, end) for i in present if (end := _longer_header(heads[i], self._size(i)))]
        heads.update(zip([i for i, _, _ in longer], self._fetch(longer)))
        return [self._found(i, heads.get(i)) for i in ids]

    def _found(self, sample_id: str, head: bytes | Exception | None) -> Found | InputError:
        try:
            check_id(sample_id, self.location.url)
        except InputError as exc:
            return exc
        url = self.location.url_of(f"{sample_id}.npy")
        where = f"{url}: sample {sample_id!r}"
        if head is None:
            return InputError(f"{url}: sample {sample_id!r} has no file (expected {sample_id}.npy in {self.location})")
        if isinstance(head, Exception):
            return InputError(f"{where}: cannot read: {head}")
        try:
            header = parse_npy_header(io.BytesIO(head), where, self._size(sample_id))
        except InputError as exc:
            return exc
        entry = self._entries[sample_id]
        version = entry.get("ETag") or entry.get("LastModified") or entry.get("mtime") or entry.get("created")
        return Found(url, header, (entry["size"], str(version)))

    def _size(self, sample_id: str) -> int:
        return int(self._entries[sample_id]["size"])

    def _fetch(self, ranges: list[tuple[str, int, int]]) -> list[bytes | Exception]:
        if not ranges:
            return []
        fs = self.location.fs
        paths = [self.location / f"{i}.npy" for i, _, _ in ranges]
        ends = [min(end, self._size(i)) for i, _, end in ranges]
        return fs.cat_ranges(paths, [start for _, start, _ in ranges], ends, on_error="return")


def _longer_header(head: bytes | Exception, size: int) -> int | None:
    """How many bytes to fetch for a header longer than the first read, if that is worth trying."""
    if isinstance(head, Exception):
        return None
    end = npy_header_end(head)
    if end is None or end <= len(head) or end > min(size, MAX_HEADER_BYTES + 12):
        return None  # complete, not a .npy, or too long: the parser says which
    return end


def fetch_samples(refs: Sequence, nbytes: int, storage_options: dict | None) -> list[bytes]:
    """The `nbytes` data bytes of each of `refs` (`SampleRef`s at URLs), in one batch of ranged reads.

    One byte past the end is asked for: an object that grew since it was checked is refused,
    as is one that shrank.
    """
    fs, _ = url_fs(refs[0].path, storage_options)
    paths = [fs._strip_protocol(r.path) for r in refs]
    starts = [r.data_offset for r in refs]
    data = fs.cat_ranges(paths, starts, [s + nbytes + 1 for s in starts], on_error="return")
    for ref, raw in zip(refs, data):
        if isinstance(raw, Exception):
            raise InputError(f"{ref.path}: sample {ref.id!r}: cannot read: {raw}")
        if len(raw) != nbytes:
            raise InputError(
                f"{ref.path}: sample {ref.id!r}: object changed since it was validated "
                f"(expected {nbytes} data bytes after the header)"
            )
    return data
