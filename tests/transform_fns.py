"""Transforms for tests/test_transforms.py, at the top level of a module so that spawned worker
processes can unpickle them (by reference: `transform_fns.<name>`)."""

from __future__ import annotations

import numpy as np

FAILING_ROW = 7  # a train-split row of `row_store` (whose samples are filled with their row number)
ODD_SHAPE_ROW = 5


def noisy_flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise, then a coin flip of the last axis: every draw comes from `rng`."""
    out = x + rng.normal(size=x.shape).astype(x.dtype)
    return out[..., ::-1] if rng.random() < 0.5 else out


def crop_to_int16(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The first 2 of 3 columns, as int16 (another shape and dtype than the stored float32)."""
    return x[:, :2].astype(np.int16)


def row_of(x: np.ndarray) -> int:
    return int(x.flat[0])


def fail_on_row(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if row_of(x) == FAILING_ROW:
        raise ZeroDivisionError(f"no sample {FAILING_ROW}")
    return x


def odd_shape_on_row(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x[:1] if row_of(x) == ODD_SHAPE_ROW else x


def flip_both(x: np.ndarray, t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A joint transform: one coin flip of the first axis for a sample and its mask."""
    return (x[::-1], t[::-1]) if rng.random() < 0.5 else (x, t)


def flip_sample_only(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x[::-1]
