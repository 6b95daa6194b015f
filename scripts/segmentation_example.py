"""Segmentation from a store with target arrays: `images/<ID>.npy` and `masks/<ID>.npy` -> one store
(`convert --targets`) -> `DataGenerator(labels="targets")`, with a random flip that moves each image
and its mask alike (`transform_targets=True`, in worker processes) -> a small fully convolutional
model that learns to find the bright rectangle in each image. Prints the validation pixel accuracy, beside what
calling every pixel background would score.

    python scripts/segmentation_example.py [--samples 400] [--epochs 4] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import keras
import numpy as np

import shardfeed
from shardfeed.inputs.demo import make_segmentation_dataset


def flip_both(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right, for half the images: the mask the same way (a top-level def: workers import it)."""
    return (image[:, ::-1], mask[:, ::-1]) if rng.random() < 0.5 else (image, mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workdir", type=Path, help="where the data and store go (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        images, masks, partition = make_segmentation_dataset(root / "seg", num_samples=args.samples)
        store = root / "seg.zarr"
        shardfeed.convert(images, store, targets=masks, partition=partition, overwrite=store.exists())
        train = shardfeed.DataGenerator(store, split="train", batch_size=16, labels="targets", seed=0,
                                        transform=flip_both, transform_targets=True)  # fmt: skip
        validation = shardfeed.DataGenerator(store, split="validation", batch_size=32, labels="targets",
                                             shuffle=False)  # fmt: skip
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((32, 32, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(2, 1),  # logits of background / rectangle, per pixel
        ])  # fmt: skip
        # From logits: Keras' torch backend fails on a per-pixel softmax output with this loss.
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(keras.optimizers.Adam(0.01), loss, metrics=["accuracy"])
        history = model.fit(train, validation_data=validation, epochs=args.epochs, verbose=2)
        masks_seen = shardfeed.open_store(store).targets.read(validation.source.rows)
        print(f"validation pixel accuracy: {history.history['val_accuracy'][-1]:.3f} (calling every pixel "
              f"background: {1 - masks_seen.mean():.3f})")  # fmt: skip
        train.close()
        validation.close()


if __name__ == "__main__":
    main()
