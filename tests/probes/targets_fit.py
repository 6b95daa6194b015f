"""Probe run in a fresh interpreter under one Keras backend: `model.fit` on target arrays.

    KERAS_BACKEND=jax python targets_fit.py SEG_STORE SEQ_STORE

SEG_STORE: images with a mask each, trained per pixel with a joint flip in 2 worker processes.
SEQ_STORE: variable-length sequences with a tag per step, padded per batch (target_pad_value 0).
Prints one JSON line: {"backend": ..., "segmentation": [losses], "mask_shape": [...],
"sequences": [losses], "widths": [padded widths of the epoch's batches]}.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras

import shardfeed


def flip_both(image, mask, rng):
    """A top-level def of the main script: worker processes import it from here."""
    return (image[:, ::-1], mask[:, ::-1]) if rng.random() < 0.5 else (image, mask)


def main() -> None:
    segmentation, sequences = sys.argv[1:3]
    keras.utils.set_random_seed(0)
    train = shardfeed.DataGenerator(segmentation, batch_size=16, seed=0, labels="targets", transform=flip_both,
                                    transform_targets=True, workers=2, use_multiprocessing=True)  # fmt: skip
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
                              keras.layers.Conv2D(2, 1)])  # fmt: skip
    # Logits: Keras' torch backend fails its backward pass on a per-pixel softmax output with this loss
    # ("grad_input must be contiguous"), from numpy arrays just as from a generator.
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    seg_losses = model.fit(train, epochs=2, verbose=0).history["loss"]
    mask_shape = list(model.predict(train[0][0], verbose=0).shape)
    train.close()
    tagged = shardfeed.DataGenerator(sequences, batch_size=4, seed=0, labels="targets", padding="batch")
    widths = [int(tagged.source.batch(0, k)[1].shape[1]) for k in range(len(tagged))]
    tagger = keras.Sequential([keras.Input((None, 3)), keras.layers.Dense(5, activation="softmax")])
    tagger.compile("adam", "sparse_categorical_crossentropy")
    seq_losses = tagger.fit(tagged, epochs=2, verbose=0).history["loss"]
    print(json.dumps({"backend": keras.backend.backend(), "segmentation": seg_losses, "mask_shape": mask_shape,
                      "sequences": seq_losses, "widths": widths}))  # fmt: skip


if __name__ == "__main__":
    main()
