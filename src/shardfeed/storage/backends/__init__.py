"""Storage backends. Only this package imports h5py and zarr, and only when a backend is used."""

from __future__ import annotations

from importlib import import_module

from ...errors import OptionError
from ..format import BACKEND_NAMES, COMPRESSIONS
from .base import Backend, Layout, ShardReader, ShardWriter, ShardWriting

_BACKENDS = {"hdf5": ("hdf5", "HDF5Backend"), "zarr": ("zarr", "ZarrBackend")}
# Zarr shards are assembled without zarr, whose import costs a worker process ~0.7 s of CPU.
_SHARD_WRITING = {**_BACKENDS, "zarr": ("zarr_shards", "ZarrShardWriting")}


def get_backend(name: str) -> Backend:
    """The backend called `name` ("hdf5" or "zarr"), imported on first use."""
    return _load(_BACKENDS, name)


def get_shard_writing(name: str) -> ShardWriting:
    """The shard paths and writers of the backend called `name`, and only what they import."""
    return _load(_SHARD_WRITING, name)


def _load(registry: dict[str, tuple[str, str]], name: str):
    if name not in registry:
        raise OptionError(f"unknown format {name!r}; expected one of {', '.join(BACKEND_NAMES)}")
    module, cls = registry[name]
    return getattr(import_module(f".{module}", __name__), cls)()


__all__ = ["BACKEND_NAMES", "COMPRESSIONS", "Backend", "Layout", "ShardReader", "ShardWriter", "ShardWriting",
           "get_backend", "get_shard_writing"]  # fmt: skip
