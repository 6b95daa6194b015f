"""Storage backends. Only this package imports h5py and zarr, and only when a backend is used."""

from __future__ import annotations

from importlib import import_module

from ...errors import OptionError
from ..format import BACKEND_NAMES, COMPRESSIONS
from .base import Backend, Layout, ShardReader, ShardWriter

_BACKENDS = {"hdf5": ("hdf5", "HDF5Backend"), "zarr": ("zarr", "ZarrBackend")}


def get_backend(name: str) -> Backend:
    """The backend called `name` ("hdf5" or "zarr"), imported on first use."""
    if name not in _BACKENDS:
        raise OptionError(f"unknown format {name!r}; expected one of {', '.join(BACKEND_NAMES)}")
    module, cls = _BACKENDS[name]
    return getattr(import_module(f".{module}", __name__), cls)()


__all__ = ["BACKEND_NAMES", "COMPRESSIONS", "Backend", "Layout", "ShardReader", "ShardWriter", "get_backend"]
