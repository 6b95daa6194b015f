"""The benchmark's augmentation, in a module without Keras: spawned workers import it to unpickle it."""

from __future__ import annotations

import numpy as np


def flip_and_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The benchmark's augmentation: a random flip along the first axis plus Gaussian noise
    (~0.5 ms on a 32^3 float32 volume here)."""
    if rng.random() < 0.5:
        x = x[::-1]
    return x + rng.normal(0.0, 0.1, size=x.shape).astype(np.float32)
