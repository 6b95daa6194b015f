"""Per-sample transforms: randomness that depends only on (seed, epoch, row), one output shape,
and errors that name the sample.

A transform is `fn(x, rng) -> array`, called once per sample with the stored sample (a writable
NumPy array in the stored dtype) and a `numpy.random.Generator`; a joint transform (with target
arrays, `transform_targets=True`) is `fn(x, t, rng) -> (x, t)`, so that one random flip or crop
moves an image and its mask alike. The generator is Philox keyed by
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


def apply(
    transform: Transform, arrays: tuple[np.ndarray, ...], rng: np.random.Generator, where: Callable[[], str]
) -> tuple[np.ndarray, ...]:
    """`transform(*arrays, rng)` as arrays: `(x,)` gives `(fn(x, rng),)`, `(x, t)` a joint transform's
    `(x, t)`. Any exception becomes a `TransformError` naming `where()` (called only then: naming a
    sample looks up its ID), and so does an output that is not numbers."""
    try:
        out = transform(*arrays, rng)
    except Exception as exc:  # whatever the user's function raises; its traceback is kept as the cause
        raise TransformError(f"transform {_name(transform)} failed on {where()}: {type(exc).__name__}: {exc}") from exc
    if len(arrays) == 1:
        out = (out,)
    elif not (isinstance(out, tuple) and len(out) == len(arrays)):
        raise TransformError(f"transform {_name(transform)} returned {type(out).__name__} for {where()}; with "
                             f"transform_targets=True it returns the pair (x, t)")  # fmt: skip
    out = tuple(map(np.asarray, out))
    for array in out:
        if array.dtype.hasobject or array.dtype.kind not in "biufc":
            raise TransformError(f"transform {_name(transform)} returned dtype {array.dtype} for {where()}; "
                                 f"expected numbers")  # fmt: skip
    return out


def output_shapes(
    transform: Transform, arrays: tuple[np.ndarray, ...], seed: int, row: int, where: str
) -> tuple[tuple[int, ...], ...]:
    """The shapes the transform gives every sample (and target), from one call on the first one."""
    return tuple(out.shape for out in apply(transform, arrays, sample_rng(seed, 0, row), lambda: where))


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
