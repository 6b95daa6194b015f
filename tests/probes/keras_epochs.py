"""Probe run in a fresh interpreter: iterate a DataGenerator through Keras' own PyDataset
adapter (which sees an in-process dataset; the generator's workers read ahead) and print the
sample rows of every batch.

    python keras_epochs.py STORE WORKERS USE_MULTIPROCESSING EPOCHS
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def rows_of(x):
    # Each sample of the probe store is filled with its own row number.
    return [int(v) for v in x.reshape(len(x), -1)[:, 0]]


def main():
    store, workers, use_mp, epochs = sys.argv[1:5]
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    import shardfeed

    opened = shardfeed.open_store(store)
    opened.read([0, 1])  # the parent has read from the store before the workers start
    gen = shardfeed.DataGenerator(
        opened, split="train", batch_size=4, seed=11, labels="sparse", dtype=None,
        workers=int(workers), use_multiprocessing=use_mp == "1",
    )
    adapter = PyDatasetAdapter(gen, shuffle=False)
    seen = []
    for _ in range(int(epochs)):
        adapter.on_epoch_begin()
        seen.append([rows_of(x) for x, _ in adapter.get_numpy_iterator()])
        adapter.on_epoch_end()
    print(json.dumps({"epochs": seen, "seed": gen.seed}))


if __name__ == "__main__":
    main()
