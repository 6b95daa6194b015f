"""shardfeed: pack per-sample .npy files into sharded HDF5 / Zarr v3 stores and stream them into Keras.

Importing shardfeed imports neither Keras nor TensorFlow: `DataGenerator` and `as_tf_dataset`
load them on first use.
"""

from __future__ import annotations

from .errors import (
    CallError,
    ChecksumError,
    InputError,
    MissingDependencyError,
    OptionError,
    RemoteError,
    ShardfeedError,
    StoreExistsError,
    StoreFormatError,
    StoreLockedError,
    StoreNotFinalizedError,
    StoreReplacedError,
    TransformError,
    UnknownIDError,
    UnknownSplitError,
    WorkerDiedError,
    missing_extra,
)
from .feed.sampling import epoch_order
from .storage.integrity import verify_store
from .storage.store import Store, open_store
from .version import __version__
from .writing.append import append
from .writing.convert import convert

_LAZY = {"DataGenerator": ".feed.keras", "as_tf_dataset": ".feed.tfdata", "ResumeCallback": ".feed.keras"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        try:
            module = import_module(_LAZY[name], __name__)
        except ModuleNotFoundError as exc:  # Keras, or the backend it is set to use, is not installed
            raise missing_extra(exc) from None
        return getattr(module, name)
    raise AttributeError(f"module 'shardfeed' has no attribute {name!r}")


__all__ = [
    "CallError",
    "ChecksumError",
    "DataGenerator",
    "InputError",
    "MissingDependencyError",
    "OptionError",
    "RemoteError",
    "ResumeCallback",
    "ShardfeedError",
    "Store",
    "StoreExistsError",
    "StoreFormatError",
    "StoreLockedError",
    "StoreNotFinalizedError",
    "StoreReplacedError",
    "TransformError",
    "UnknownIDError",
    "UnknownSplitError",
    "WorkerDiedError",
    "__version__",
    "append",
    "as_tf_dataset",
    "convert",
    "epoch_order",
    "open_store",
    "verify_store",
]
