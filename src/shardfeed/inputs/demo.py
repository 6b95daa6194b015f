"""Demo data in the Keras data-generator tutorial's layout: `data/<ID>.npy`, labels, partition.

Each sample is Gaussian noise plus a bright cube whose position depends on the class, so a
small Conv3D model can learn it in a few epochs: enough to show that training from a store
really learns, not just that it runs. Values lie on a grid of 1/32, as the pixels of an 8-bit
scan scaled to floats do: compressed stores of it then compress as such data does (zstd to
about a third), where float noise would not compress at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

DEMO_SHAPE = (32, 32, 32, 1)
DEMO_CLASSES = 6
DEMO_STEP = 1 / 32  # values are multiples of this


def class_pattern(label: int, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    """A cube of +2.0 at a class-specific corner of the volume (as many corners as classes)."""
    pattern = np.zeros(shape, dtype=np.float32)
    spatial = shape[: min(3, len(shape))]
    corner = [(label >> bit) & 1 for bit in range(len(spatial))]
    size = [max(1, d // 4) for d in spatial]
    index = tuple(slice(d - s if c else 0, d if c else s) for d, s, c in zip(spatial, size, corner))
    pattern[index] = 2.0
    if num_classes > 2 ** len(spatial) or label >= 2 ** len(spatial):
        pattern += 0.5 * (label // 2 ** len(spatial))  # beyond the corners: a brightness offset
    return pattern


def make_tutorial_dataset(
    root: str | os.PathLike,
    num_samples: int = 3000,
    shape: tuple[int, ...] = DEMO_SHAPE,
    num_classes: int = DEMO_CLASSES,
    train_fraction: float = 0.8,
    dtype: str = "float32",
    seed: int = 0,
    step: float | None = DEMO_STEP,
) -> tuple[Path, Path, Path]:
    """Write `root/data/id-<n>.npy`, `root/labels.json`, `root/partition.json`; return their paths.

    `step`: values are rounded to multiples of it; None keeps full-precision noise.
    """
    root = Path(root)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"id-{n}" for n in range(1, num_samples + 1)]
    labels = {i: int(rng.integers(num_classes)) for i in ids}
    patterns = [class_pattern(k, shape, num_classes) for k in range(num_classes)]
    for sample_id in ids:
        sample = rng.standard_normal(shape, dtype=np.float32) + patterns[labels[sample_id]]
        if step is not None:
            sample = np.round(sample / step) * step
        np.save(data / f"{sample_id}.npy", sample.astype(dtype))
    cut = int(num_samples * train_fraction)
    partition = {"train": ids[:cut], "validation": ids[cut:]}
    (root / "labels.json").write_text(json.dumps(labels))
    (root / "partition.json").write_text(json.dumps(partition))
    return data, root / "labels.json", root / "partition.json"


def make_segmentation_dataset(
    root: str | os.PathLike,
    num_samples: int = 400,
    shape: tuple[int, int] = (32, 32),
    train_fraction: float = 0.8,
    seed: int = 0,
) -> tuple[Path, Path, Path]:
    """Write `root/images/id-<n>.npy` (noise plus a bright rectangle somewhere, float32 of shape
    (*shape, 1)), `root/masks/id-<n>.npy` (1 inside the rectangle, else 0, uint8 of `shape`) and
    `root/partition.json`; return their paths. A few conv layers learn to find the rectangles."""
    root = Path(root)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"id-{n}" for n in range(1, num_samples + 1)]
    for sample_id in ids:
        mask = np.zeros(shape, dtype=np.uint8)
        corner = [int(rng.integers(0, d - d // 4)) for d in shape]
        size = [int(rng.integers(d // 8, d // 2)) for d in shape]
        mask[tuple(slice(c, c + s) for c, s in zip(corner, size))] = 1
        image = rng.standard_normal(shape, dtype=np.float32) * 0.5 + 2.0 * mask
        np.save(images / f"{sample_id}.npy", image[..., None].astype(np.float32))
        np.save(masks / f"{sample_id}.npy", mask)
    cut = int(num_samples * train_fraction)
    (root / "partition.json").write_text(json.dumps({"train": ids[:cut], "validation": ids[cut:]}))
    return images, masks, root / "partition.json"
