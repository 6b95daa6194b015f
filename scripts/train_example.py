"""The Keras data-generator tutorial's training script, rewritten for shardfeed.

The tutorial built `DataGenerator(partition['train'], labels, **params)` over per-ID .npy files
and called `model.fit_generator(..., use_multiprocessing=True, workers=6)`. Keras 3 removed
`fit_generator` and moved `workers` / `use_multiprocessing` onto the dataset; shardfeed's
`DataGenerator` reads the same batches from a store, and applies the tutorial's "heavier work per
sample" (here an augmentation: random brightness and Gaussian noise) in its own worker processes,
one per core by default, writing whole batches into shared memory.

    python scripts/train_example.py demo/demo.zarr --epochs 3
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from shardfeed import DataGenerator, open_store


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness and a little Gaussian noise: per sample, reproducible. (No flips: the demo's
    classes are the corner of the volume a cube sits in, which a flip would change.)"""
    return x * rng.uniform(0.8, 1.2) + rng.normal(0.0, 0.1, size=x.shape).astype(np.float32)


def build_model(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """A small Conv3D classifier, like the tutorial's (dim=(32, 32, 32), 1 channel, 6 classes)."""
    model = keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv3D(8, 3, activation="relu"),
        keras.layers.MaxPooling3D(2),
        keras.layers.Conv3D(16, 3, activation="relu"),
        keras.layers.MaxPooling3D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(num_classes, activation="softmax"),
    ])  # fmt: skip
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


class EpochTimer(keras.callbacks.Callback):
    """Prints each epoch's wall time and the training samples per second it achieved."""

    def __init__(self, samples_per_epoch: int) -> None:
        super().__init__()
        self.samples = samples_per_epoch
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        seconds = time.perf_counter() - self._start
        self.times.append(seconds)
        print(
            f"epoch {epoch + 1}: {seconds:.1f} s, {self.samples / seconds:,.0f} samples/s through fit, "
            f"loss {logs['loss']:.3f}, accuracy {logs['accuracy']:.3f}, "
            f"val_accuracy {logs.get('val_accuracy', float('nan')):.3f}",
            flush=True,
        )


def generator_rate(generator: DataGenerator) -> float:
    """Samples/s of one epoch of the generator alone, in-process (no model)."""
    start = time.perf_counter()
    samples = sum(len(generator[i][0]) for i in range(len(generator)))
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    store = open_store(args.store)
    # The tutorial: training_generator = DataGenerator(partition['train'], labels, **params)
    training_generator = DataGenerator(
        store, split="train", batch_size=args.batch_size, seed=args.seed, transform=augment, workers=args.workers,
    )  # fmt: skip
    validation_generator = DataGenerator(store, split="validation", batch_size=args.batch_size, shuffle=False)
    print(f"generator alone: {generator_rate(validation_generator):,.0f} samples/s (in-process, one epoch)")

    keras.utils.set_random_seed(args.seed)
    model = build_model(store.sample_shape, store.num_classes)
    timer = EpochTimer(training_generator.source.samples_per_epoch)
    # The tutorial: model.fit_generator(generator=..., validation_data=..., use_multiprocessing=True, workers=6)
    history = model.fit(
        training_generator, validation_data=validation_generator, epochs=args.epochs,
        callbacks=[timer], verbose=0,
    )  # fmt: skip
    print(
        f"trained {args.epochs} epochs: mean epoch {sum(timer.times) / len(timer.times):.1f} s; "
        f"final val_accuracy {history.history['val_accuracy'][-1]:.3f}"
    )
    training_generator.close()


if __name__ == "__main__":
    main()
