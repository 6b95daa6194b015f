"""Per-sample transforms: randomness that depends only on (seed, epoch, row), one output shape,
and errors that name the sample.

A transform is `fn(x, rng) -> array`, called once per sample with the stored sample (a writable
NumPy array in the stored dtype) and a `numpy.random.Generator`. The generator is Philox keyed by
the seed, its counter starting at (row, epoch) in the high words: every sample of every epoch
draws from its own stream, so an augmentation is the same whoever computes it (the trainer, a
thread, any worker process, after a resume).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

import numpy as np

from ..errors import OptionError, TransformError

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def sample_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    """The generator a transform gets for `row` in `epoch`: Philox streams 2**128 values apart."""
    return np.random.Generator(np.random.Philox(key=seed, counter=[0, 0, row, epoch]))


def apply(transform: Transform, sample: np.ndarray, rng: np.random.Generator, where: Callable[[], str]) -> np.ndarray:
    """The transform's output as an array; any exception becomes a `TransformError` naming `where()`
    (called only then: naming a sample looks up its ID)."""
    try:
        return np.asarray(transform(sample, rng))
    except Exception as exc:  # whatever the user's function raises; its traceback is kept as the cause
        raise TransformError(f"transform {_name(transform)} failed on {where()}: {type(exc).__name__}: {exc}") from exc


def output_shape(transform: Transform, sample: np.ndarray, seed: int, row: int, where: str) -> tuple[int, ...]:
    """The shape the transform gives every sample, from one call on the first sample."""
    out = apply(transform, sample, sample_rng(seed, 0, row), lambda: where)
    if out.dtype.hasobject or out.dtype.kind not in "biufc":
        raise TransformError(f"transform {_name(transform)} returned dtype {out.dtype} for {where}; expected numbers")
    return out.shape


def check_sendable(transform: Transform) -> None:
    """Refuse, with the fix, a transform that worker processes cannot receive (they unpickle it)."""
    try:
        pickle.dumps(transform)
    except Exception as exc:  # pickling raises PicklingError, AttributeError, TypeError...
        raise OptionError(
            f"transform {_name(transform)} cannot be sent to worker processes ({type(exc).__name__}: {exc}); "
            f"define it with def at the top level of a module (not a lambda or a nested function), "
            f"or use threads (use_multiprocessing=False)"
        ) from exc


def _name(transform: Transform) -> str:
    return getattr(transform, "__qualname__", None) or type(transform).__qualname__
