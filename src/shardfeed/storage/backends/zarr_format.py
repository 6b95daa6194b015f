"""What local and remote Zarr stores share: the array's layout and codecs, its checks, the
buffered shard writer and the library's reader.

Each conversion task writes one whole Zarr shard in a single assignment (a partial write to a
sharded array would read, merge and rewrite the shard). Readers trust the manifest, never
`array.shape` (RELIABILITY.md: a crash can leave the shape grown and the last block reading as
fill values), and check the array's metadata against it before zarr reads anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip

import numcodecs
import numpy as np
import zarr
import zarr.codecs
import zarr.core.sync
import zarr.registry
from zarr.storage import WrapperStore

from ...errors import StoreFormatError
from ..files import checksum
from ..manifest import Manifest
from .base import Layout, ShardReader, ShardWriter, WrittenShard, copy_rows_from_chunks
from .rawchunks import Decoder, zlib_decoder

ARRAY = "x"
MISSING = 2**64 - 1
SETTLE_SECONDS = 3.0
COMPRESSOR_CODECS = {"none": [], "zstd": ["zstd"], "gzip": ["gzip"], "lz4": ["blosc"]}
LITTLE_ENDIAN_BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
INDEX_CODECS = [LITTLE_ENDIAN_BYTES, {"name": "crc32c"}]


class DeterministicGzipCodec(zarr.codecs.GzipCodec):
    """zarr's gzip codec without the time stamp numcodecs writes into every chunk's header.

    The same samples then give the same shard bytes in every run, so a resumed conversion
    equals an uninterrupted one byte for byte (file checksums included). Writers select it
    through zarr's codec configuration; the stored codec is plain "gzip".
    """

    async def _encode_single(self, chunk_bytes, chunk_spec):
        data = chunk_bytes.as_numpy_array()
        encoded = await asyncio.to_thread(gzip.compress, data, self.level, mtime=0)
        return chunk_spec.prototype.buffer.from_bytes(encoded)


zarr.registry.register_codec("gzip", DeterministicGzipCodec)
WRITE_CONFIG = {
    # Not stored with the array: without it, a shard whose samples are all zero (the fill value)
    # is silently not written at all.
    "array.write_empty_chunks": True,
    "codecs.gzip": zarr.registry.fully_qualified_name(DeterministicGzipCodec),
}


def _compressors(compression: str):
    return {
        "none": None,
        "zstd": zarr.codecs.ZstdCodec(level=3),
        "gzip": zarr.codecs.GzipCodec(level=5),
        "lz4": zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    }[compression]


def _bounded(codec) -> Decoder:
    def decode(data: bytes, expected: int) -> bytes:
        out = np.empty(expected, dtype=np.uint8)
        codec.decode(data, out=out)
        return out.data

    return decode


DECODERS: dict[str, Decoder | None] = {
    "none": None,
    "zstd": _bounded(numcodecs.Zstd()),
    "gzip": zlib_decoder(31),
    "lz4": _bounded(numcodecs.Blosc()),
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
        config={"write_empty_chunks": True},
    )


class RecordingStore(WrapperStore):
    """Passes writes on to a zarr store, noting each object's size and CRC32 on the way."""

    def __init__(self, store) -> None:
        super().__init__(store)
        self.written: dict[str, tuple[int, int]] = {}

    async def set(self, key: str, value) -> None:
        data = value.as_numpy_array()
        self.written[key] = (len(data), checksum(data))
        await self._store.set(key, value)


class BufferedShardWriter(ShardWriter):
    """Collects one shard's rows, then writes them with a single assignment to the array."""

    def __init__(self, store, layout: Layout, shard: int, shard_key: str, name: object) -> None:
        self._store = RecordingStore(store)
        with zarr.config.set(WRITE_CONFIG):
            self._array = zarr.open_array(store=self._store, path=ARRAY, mode="r+", zarr_format=3)
        self._shard_key = shard_key
        self._first = shard * layout.shard_rows
        rows = min(layout.shard_rows, layout.num_samples - self._first)
        self._buffer = np.empty((rows, *layout.sample_shape), dtype=layout.dtype)
        self._next = 0
        self._name = name

    def write(self, block: np.ndarray) -> None:
        # docstring inherited
        self._buffer[self._next : self._next + len(block)] = block
        self._next += len(block)

    def _check_complete(self) -> None:
        if self._next != len(self._buffer):
            raise RuntimeError(f"{self._name}: {self._next} of {len(self._buffer)} rows written")

    def _assign(self) -> WrittenShard:
        """Write the shard; its size and checksum as zarr handed its bytes to the store."""
        try:
            with zarr.config.set(WRITE_CONFIG):
                self._array[self._first : self._first + len(self._buffer)] = self._buffer
        except BaseException as exc:
            if not isinstance(exc, Exception):  # Ctrl-C or SIGTERM raised while zarr was writing
                _settle_zarr_io()
            raise
        self._buffer = None
        if set(self._store.written) != {self._shard_key}:
            raise RuntimeError(f"{self._name}: zarr wrote {sorted(self._store.written)}, expected {self._shard_key}")
        return WrittenShard(*self._store.written[self._shard_key])

    def abort(self) -> None:
        # docstring inherited
        self._buffer = None


def _settle_zarr_io(timeout: float = SETTLE_SECONDS) -> None:
    """Let zarr's IO thread finish what an interrupted call left running.

    The interrupt stops only the wait in this thread; the write goes on in zarr's event loop, and
    zarr's exit handler then shuts its executor down under it, printing "Task was destroyed" and a
    traceback after our one-line message. The unfinished shard has no record and is redone.
    """
    loop = zarr.core.sync.loop[0]
    if loop is None or loop.is_closed():
        return

    async def others_done() -> None:
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    with contextlib.suppress(TimeoutError, RuntimeError):  # a stuck write; a loop already closing
        asyncio.run_coroutine_threadsafe(others_done(), loop).result(timeout + 1)


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
