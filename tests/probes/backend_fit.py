"""Probe run in a fresh interpreter under one Keras backend: `model.fit` from a DataGenerator,
tapping the rows of every batch the model trains on (run_eagerly=True).

    KERAS_BACKEND=jax python backend_fit.py STORE MODE EPOCHS SHUFFLE [BACKUP_DIR [STOP_EPOCH STOP_BATCH]]

SHARDFEED_PROBE_STEPS in the environment sets fit's steps_per_epoch.

MODE: inprocess | threads | processes; SHUFFLE: fit's shuffle, 1 or 0. With BACKUP_DIR, a
ResumeCallback saves the position after every batch; STOP_EPOCH/STOP_BATCH end the run (as a
crash would) after that batch.
Prints one JSON line: {"backend": ..., "epochs": [[rows of each batch], ...]}.
"""

import contextlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import shardfeed

MODES = {
    "inprocess": {"workers": 1, "use_multiprocessing": False},
    "threads": {"workers": 2, "use_multiprocessing": False},
    "processes": {"workers": 2, "use_multiprocessing": True},
}


SEEN = []  # per epoch, the rows of each training batch; not a layer attribute: Keras would copy a list


class Tap(keras.layers.Layer):
    """Records the row numbers of each training batch (every sample holds its row number)."""

    def call(self, x, training=None):
        if training and SEEN:
            try:
                rows = keras.ops.convert_to_numpy(x)[:, 0, 0]
            except Exception:  # the symbolic build pass: no values
                return x
            SEEN[-1].append([int(r) for r in np.asarray(rows)])
        return x


class Marks(keras.callbacks.Callback):
    def __init__(self, stop):
        super().__init__()
        self.stop, self.epoch = stop, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        SEEN.append([])

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.stop:
            raise KeyboardInterrupt("simulated crash")


def main():
    store, mode, epochs, shuffle = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    backup = sys.argv[5] if len(sys.argv) > 5 else None
    stop = (int(sys.argv[6]), int(sys.argv[7])) if len(sys.argv) > 7 else None
    gen = shardfeed.DataGenerator(store, split="train", batch_size=4, seed=11, labels="sparse", **MODES[mode])
    val = shardfeed.DataGenerator(store, split="validation", batch_size=4, shuffle=False, labels="sparse")
    model = keras.Sequential([keras.Input(gen.store.sample_shape), Tap(), keras.layers.Flatten(),
                              keras.layers.Dense(gen.store.num_classes)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    callbacks = [Marks(stop)]
    if backup:  # first, so that it saves the batch the crash stops at
        callbacks.insert(0, shardfeed.ResumeCallback(backup, gen, save_freq=1))
    with contextlib.suppress(KeyboardInterrupt):  # the simulated crash
        model.fit(gen, validation_data=val, epochs=epochs, shuffle=shuffle, verbose=0, callbacks=callbacks,
                  steps_per_epoch=int(os.environ.get("SHARDFEED_PROBE_STEPS", 0)) or None)
    gen.close()
    print(json.dumps({"backend": keras.backend.backend(), "epochs": SEEN}))


if __name__ == "__main__":
    main()
