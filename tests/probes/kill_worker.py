"""Probe: fit with 2 shardfeed worker processes, SIGKILL one mid-epoch, report what fit did.

    python kill_worker.py STORE [BATCH]
Prints one JSON line: {"error": <type name or null>, "message": ..., "seconds_after_kill": ...}.
"""

import json
import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras

import shardfeed


def slow_identity(x, rng):
    """Module level, so spawned workers can unpickle it."""
    time.sleep(0.01)
    return x


def main():
    store = sys.argv[1]
    kill_at = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    gen = shardfeed.DataGenerator(store, split="train", batch_size=2, seed=1, labels="sparse", transform=slow_identity,
                                  workers=2, use_multiprocessing=True)
    model = keras.Sequential([keras.Input(gen.store.sample_shape), keras.layers.Flatten(),
                              keras.layers.Dense(gen.store.num_classes)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    killed_at = []

    class KillOneWorker(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == kill_at and not killed_at:
                os.kill(gen.read_ahead.worker_pids[0], signal.SIGKILL)
                killed_at.append(time.monotonic())

    result = {"error": None, "message": None}
    try:
        model.fit(gen, epochs=50, verbose=0, callbacks=[KillOneWorker()])
    except Exception as exc:
        result = {"error": type(exc).__name__, "message": str(exc)}
    result["seconds_after_kill"] = time.monotonic() - killed_at[0] if killed_at else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
