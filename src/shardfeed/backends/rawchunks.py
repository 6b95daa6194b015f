"""The fast read path: copy rows straight out of chunk bytes at known file offsets.

Both HDF5 (chunk index) and Zarr's sharding codec (shard index) tell where each chunk's bytes
lie in a shard file. Reading those bytes ourselves skips the libraries' per-call costs
(h5py's global lock, zarr's per-chunk async machinery), which ANCHORS.md measured at
10-200x the cost of the copy itself. Offsets come from an untrusted file, so every range is
checked against the file size and every decoded chunk against its expected size.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import StoreFormatError
from .base import ShardReader, copy_rows_from_chunks

Decoder = Callable[[bytes, int], bytes]
PREAD_MIN_BYTES = 16 * 1024  # above this one pread per row beats a vectorized gather + scatter


def zlib_decoder(wbits: int) -> Decoder:
    """Bounded inflate: never produces more than the chunk's size (a chunk bomb stops there)."""

    def decode(data: bytes, expected: int) -> bytes:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(data, expected)
        if inflater.unconsumed_tail:
            raise ValueError(f"chunk inflates beyond its expected {expected} bytes")
        return out

    return decode


class RawChunkReader(ShardReader):
    """Reads rows of one shard file from chunk byte ranges (optionally compressed)."""

    def __init__(
        self,
        path: Path,
        offsets: np.ndarray,
        sizes: np.ndarray,
        chunk_rows: int,
        sample_shape: tuple[int, ...],
        dtype: np.dtype,
        decode: Decoder | None,
    ) -> None:
        self._path = path
        self._chunk_rows = chunk_rows
        self._sample_shape = sample_shape
        self._dtype = dtype
        self._decode = decode
        self._chunk_nbytes = chunk_rows * int(np.prod(sample_shape, dtype=np.int64)) * dtype.itemsize
        self._offsets = offsets.astype(np.int64)
        self._sizes = sizes.astype(np.int64)
        self._sample_nbytes = self._chunk_nbytes // chunk_rows
        self._fd = os.open(path, os.O_RDONLY)
        try:
            file_size = os.fstat(self._fd).st_size
            self._check_ranges(file_size)
            self._mm = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) if file_size else None
        except BaseException:
            os.close(self._fd)
            raise
        self._rows = self._contiguous_rows_view()

    def _check_ranges(self, file_size: int) -> None:
        bad = (self._offsets < 0) | (self._sizes < 0) | (self._offsets + self._sizes > file_size)
        if self._decode is None:
            bad |= self._sizes != self._chunk_nbytes
        if bad.any():
            chunk = int(np.flatnonzero(bad)[0])
            raise StoreFormatError(
                f"{self._path}: chunk {chunk} claims bytes [{self._offsets[chunk]}, "
                f"+{self._sizes[chunk]}) of a {file_size}-byte file with {self._chunk_nbytes}-byte "
                f"chunks; the shard is truncated or corrupt"
            )

    def _contiguous_rows_view(self) -> np.ndarray | None:
        """One array over the whole shard when its raw chunks lie back to back, in order."""
        if self._decode is not None or self._mm is None or len(self._offsets) == 0:
            return None
        expected = self._offsets[0] + np.arange(len(self._offsets)) * self._chunk_nbytes
        if not np.array_equal(self._offsets, expected):
            return None
        rows = len(self._offsets) * self._chunk_rows
        return np.ndarray(
            (rows, *self._sample_shape), dtype=self._dtype, buffer=self._mm, offset=int(self._offsets[0])
        )

    def read(self, local_rows: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
        # docstring inherited
        if self._decode is None and self._sample_nbytes >= PREAD_MIN_BYTES:
            self._pread_rows(local_rows, out, positions)
        elif self._rows is not None:
            out[positions] = self._rows[local_rows]
        else:
            copy_rows_from_chunks(self._read_chunk, local_rows, self._chunk_rows, out, positions)

    def _pread_rows(self, local_rows: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
        """One pread per row, straight into `out` (the GIL is released during the copy).

        For large samples this beats a memory map, which pays a page fault per 4 KiB page.
        """
        nbytes = self._sample_nbytes
        chunk, within = np.divmod(local_rows, self._chunk_rows)
        offsets = (self._offsets[chunk] + within * nbytes).tolist()
        out_bytes = out.reshape(len(out), -1).view(np.uint8)
        for offset, pos in zip(offsets, positions.tolist()):
            if os.preadv(self._fd, [out_bytes[pos]], offset) != nbytes:
                raise StoreFormatError(f"{self._path}: short read at byte {offset} (truncated shard?)")

    def _read_chunk(self, chunk: int) -> np.ndarray:
        start, size = int(self._offsets[chunk]), int(self._sizes[chunk])
        data = self._mm[start : start + size]
        if self._decode is not None:
            try:
                data = self._decode(data, self._chunk_nbytes)
            except Exception as exc:  # codecs raise their own error types on corrupt input
                raise StoreFormatError(f"{self._path}: chunk {chunk} does not decode: {exc}") from exc
            if len(data) != self._chunk_nbytes:
                raise StoreFormatError(
                    f"{self._path}: chunk {chunk} decodes to {len(data)} bytes, expected {self._chunk_nbytes}"
                )
        return np.frombuffer(data, dtype=self._dtype).reshape(self._chunk_rows, *self._sample_shape)

    def close(self) -> None:
        # docstring inherited
        self._rows = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
