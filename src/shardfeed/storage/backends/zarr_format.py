"""What local and remote Zarr stores share: the array's layout and codecs, its checks and the
library's reader.

Shards are assembled by `zarr_shards`, not written through zarr. Readers trust the manifest, never
`array.shape` (RELIABILITY.md: a crash can leave the shape grown and the last block reading as
fill values), and check the array's metadata against it before zarr reads anything else.
"""

from __future__ import annotations

from collections.abc import Callable

import numcodecs
import numpy as np
import zarr
import zarr.codecs

from ...errors import StoreFormatError
from ..manifest import Manifest
from .base import Layout, ShardReader, copy_rows_from_chunks
from .rawchunks import Decoder, zlib_decoder
from .zarr_shards import ARRAY, BLOSC, GZIP_LEVEL, MISSING, ZSTD_LEVEL

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COMPRESSOR_CODECS = {"none": [], "zstd": ["zstd"], "gzip": ["gzip"], "lz4": ["blosc"]}
LITTLE_ENDIAN_BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
INDEX_CODECS = [LITTLE_ENDIAN_BYTES, {"name": "crc32c"}]


def _compressors(compression: str):
    return {
        "none": None,
        "zstd": zarr.codecs.ZstdCodec(level=ZSTD_LEVEL),
        "gzip": zarr.codecs.GzipCodec(level=GZIP_LEVEL),
        "lz4": zarr.codecs.BloscCodec(**BLOSC),
    }[compression]


def zstd_content_size(frame: bytes) -> int | None:
    """The size a zstd frame says it decompresses to, from its header (RFC 8878, 3.1.1.1); None
    when it does not say."""
    header = memoryview(frame)[:18]
    if len(header) < 5 or bytes(header[:4]) != ZSTD_MAGIC:
        raise ValueError("not a zstd frame")
    descriptor = header[4]
    size_flag, single_segment, dictionary_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    start = 5 + (1 - single_segment) + (0, 1, 2, 4)[dictionary_flag]
    width = (single_segment, 2, 4, 8)[size_flag]
    if width == 0:
        return None
    if len(header) < start + width:
        raise ValueError("zstd frame header cut short")
    size = int.from_bytes(header[start : start + width], "little")
    return size + 256 if width == 2 else size


def blosc_content_size(frame: bytes) -> int:
    """The size a blosc buffer says it decompresses to (its header's nbytes, bytes 4-7)."""
    header = memoryview(frame)[:16]
    if len(header) < 16:
        raise ValueError("blosc header cut short")
    return int.from_bytes(header[4:8], "little")


def _bounded(codec, content_size: Callable[[bytes], int | None]) -> Decoder:
    """Decode with `codec` straight into the caller's buffer, once the chunk's header says it fills
    it exactly: numcodecs decodes a smaller chunk into a larger buffer without a word, which would
    leave the rest of it as it was (issue #13's review)."""

    def decode(data: bytes, out: np.ndarray) -> None:
        declared = content_size(data)
        if declared != len(out):
            raise ValueError(f"its header says {declared} decoded bytes, expected {len(out)}")
        codec.decode(data, out=out)

    return decode


DECODERS: dict[str, Decoder | None] = {
    "none": None,
    "zstd": _bounded(numcodecs.Zstd(), zstd_content_size),
    "gzip": zlib_decoder(31),
    "lz4": _bounded(numcodecs.Blosc(), blosc_content_size),
}


def create_array(group: zarr.Group, layout: Layout) -> None:
    group.create_array(
        ARRAY,
        shape=(layout.num_samples, *layout.sample_shape),
        chunks=(layout.chunk_rows, *layout.sample_shape),
        shards=(layout.shard_rows, *layout.sample_shape),
        dtype=layout.dtype,
        compressors=_compressors(layout.compression),
        filters=None,
        fill_value=0,
        overwrite=True,
    )


class ZarrLibraryReader(ShardReader):
    """Reference path: whole inner chunks through zarr's own slicing."""

    def __init__(self, array: zarr.Array, first_row: int, chunk_rows: int) -> None:
        self._array = array
        self._first = first_row
        self._chunk_rows = chunk_rows

    def read(self, local_rows: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
        # docstring inherited
        copy_rows_from_chunks(self._read_chunk, local_rows, self._chunk_rows, out, positions)

    def _read_chunk(self, chunk: int) -> np.ndarray:
        start = self._first + chunk * self._chunk_rows
        try:
            return self._array[start : start + self._chunk_rows]
        except Exception as exc:  # zarr and its codecs raise their own types on damaged shards
            raise StoreFormatError(f"{self._array.store}: rows {start}+: {exc}") from exc

    def close(self) -> None:
        # docstring inherited
        self._array = None


def check_array(array: zarr.Array, where: str, manifest: Manifest) -> None:
    """Refuse metadata that disagrees with the manifest (a chunk bomb declares huge chunks)."""
    # Longer is fine: an interrupted append grows the array before its new manifest names the rows.
    expected_shape = (manifest.grid_rows, *manifest.sample_shape)
    problems = []
    if array.shape[1:] != expected_shape[1:] or array.shape[0] < expected_shape[0]:
        problems.append(f"shape {array.shape}, expected {expected_shape}")
    if array.dtype != manifest.np_dtype:
        problems.append(f"dtype {array.dtype}, expected {manifest.dtype}")
    if array.chunks != (manifest.chunk_rows, *manifest.sample_shape):
        problems.append(f"chunks {array.chunks}, expected {manifest.chunk_rows} rows")
    if array.shards != (manifest.shard_rows, *manifest.sample_shape):
        problems.append(f"shards {array.shards}, expected {manifest.shard_rows} rows")
    problems += _codec_problems([c.to_dict() for c in array.metadata.codecs], manifest.compression)
    if problems:
        reasons = "; ".join(problems)
        raise StoreFormatError(f"{where}: array does not match the manifest: {reasons}")


def _codec_problems(codecs: list[dict], compression: str) -> list[str]:
    """Exactly what `prepare` writes: sharding, index at the end, little-endian, our compressor."""
    names = [c.get("name") for c in codecs]
    if names != ["sharding_indexed"]:
        return [f"codecs {names}, expected ['sharding_indexed']"]
    config = codecs[0].get("configuration", {})
    index_codecs = list(config.get("index_codecs", ()))
    if config.get("index_location") != "end" or index_codecs != INDEX_CODECS:
        return ["shard index codecs or location differ from what shardfeed writes"]
    inner = list(config.get("codecs", ()))
    expected = ["bytes", *COMPRESSOR_CODECS[compression]]
    if [c.get("name") for c in inner] != expected:
        return [f"codecs {[c.get('name') for c in inner]}, expected {expected}"]
    if inner[0].get("configuration", {}).get("endian", "little") != "little":
        return ["byte order is not little-endian"]
    return []


def parse_shard_index(tail: bytes, where: str, chunks_per_shard: int, num_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and sizes from the last bytes of a shard (its index, then a CRC32C we skip)."""
    pairs = np.frombuffer(tail[: chunks_per_shard * 16], dtype="<u8").reshape(chunks_per_shard, 2)[:num_chunks]
    if (pairs == MISSING).any():
        raise StoreFormatError(f"{where}: shard index lacks chunks that hold samples (corrupt shard)")
    if (pairs > np.iinfo(np.int64).max).any():
        raise StoreFormatError(f"{where}: shard index holds impossible offsets (corrupt shard)")
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
