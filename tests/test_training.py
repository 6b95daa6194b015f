"""Real Keras training from a store: it learns, resumes mid-epoch exactly, and tf.data agrees."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest

import shardfeed
from shardfeed import DataGenerator, ResumeCallback


def small_conv3d(input_shape, num_classes, optimizer=None) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv3D(4, 3, activation="relu"),
        keras.layers.MaxPooling3D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(num_classes, activation="softmax"),
    ])  # fmt: skip
    optimizer = optimizer or keras.optimizers.Adam(0.005)
    model.compile(optimizer, "categorical_crossentropy", metrics=["accuracy"])
    return model


def test_trains_to_real_accuracy_with_worker_processes(demo_store):
    val = DataGenerator(demo_store, split="validation", batch_size=64, shuffle=False)
    with DataGenerator(demo_store, split="train", batch_size=32, seed=0, workers=2, use_multiprocessing=True) as train:
        model = small_conv3d(train.store.sample_shape, train.store.num_classes)
        history = model.fit(train, validation_data=val, epochs=6, verbose=0)
    assert history.history["val_accuracy"][-1] > 0.9, history.history
    # Chance is 1/6: the model learned the class patterns from the store's bytes.


class Recording(keras.callbacks.Callback):
    """The (epoch, batch) of every batch the generator serves in order once `fit` has begun training
    (callbacks after `ResumeCallback`, which restores the position). JAX's and PyTorch's trainers
    draw a batch to build the model before that: the first batch trained on is then a repeat of it
    under the same index, or, after a restore, another batch."""

    def __init__(self, gen: DataGenerator) -> None:
        super().__init__()
        self.served: list[tuple[int, int]] = []
        self._before_fit: dict[int, tuple[int, int]] = {}
        self._fitting = False
        locate = gen.cursor.locate

        def recorded(index):
            epoch, batch, in_order = located = locate(index)
            if not self._fitting:
                if in_order:
                    self._before_fit[index] = (epoch, batch)
            elif in_order or self._before_fit.pop(index, None) == (epoch, batch):
                self.served.append((epoch, batch))
            return located

        gen.cursor.locate = recorded

    def on_train_begin(self, logs=None):
        self._fitting = True


class InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt("simulated crash")


def _fit(store, backup_dir, interrupt=None, epochs=3, earlier_epochs=0):
    """A fit with `ResumeCallback`, after `earlier_epochs` of a first fit of the same generator and
    model without one (a notebook's second `fit`)."""
    gen = DataGenerator(store, split="train", batch_size=32, seed=5)
    # Plain SGD: BackupAndRestore saves weights but not optimizer state such as Adam's moments.
    model = small_conv3d(gen.store.sample_shape, gen.store.num_classes, keras.optimizers.SGD(0.01))
    if earlier_epochs:
        model.fit(gen, epochs=earlier_epochs, verbose=0, shuffle=False)
    record = Recording(gen)
    callbacks = [ResumeCallback(backup_dir, gen, save_freq=1), record]
    if interrupt:
        callbacks.append(InterruptAt(*interrupt))
    with contextlib.suppress(KeyboardInterrupt):  # the simulated crash
        model.fit(gen, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks)
    return record.served, model


def test_interrupted_fit_resumes_with_exactly_the_remaining_batches(demo_store, tmp_path):
    uninterrupted, model_a = _fit(demo_store, tmp_path / "a")
    first, _ = _fit(demo_store, tmp_path / "b", interrupt=(1, 6))
    first = first[: first.index((1, 6)) + 1]  # what was trained before the crash (no prefetch)
    resumed, model_b = _fit(demo_store, tmp_path / "b")
    assert resumed[0] == (1, 7)
    assert first + resumed == uninterrupted
    for a, b in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_second_fit_resumes_at_the_generators_own_epoch(demo_store, tmp_path):
    """Keras numbers a second `fit`'s epochs from 0 again; the generator is two epochs further on
    (2 and 3 here). The resumed process runs the second fit only: the saved position tells where."""
    uninterrupted, _ = _fit(demo_store, tmp_path / "a", epochs=2, earlier_epochs=2)
    assert uninterrupted[0] == (2, 0)
    first, _ = _fit(demo_store, tmp_path / "b", interrupt=(1, 4), epochs=2, earlier_epochs=2)
    first = first[: first.index((3, 4)) + 1]  # Keras' epoch 1, batch 4 is the generator's (3, 4)
    resumed, _ = _fit(demo_store, tmp_path / "b", epochs=2)
    assert resumed[0] == (3, 5)
    assert first + resumed == uninterrupted


def test_generator_state_round_trips(demo_store):
    gen = DataGenerator(demo_store, split="train", batch_size=32, seed=5)
    gen.set_state({"seed": 5, "epoch": 2, "next_batch": 3})
    assert (gen.epoch, gen.start_batch, len(gen)) == (2, 3, gen.source.num_batches - 3)
    np.testing.assert_array_equal(gen[0][0], gen.source.batch(2, 3)[0])
    with pytest.raises(ValueError, match="seed"):
        gen.set_state({"seed": 6, "epoch": 0, "next_batch": 0})


def test_tf_dataset_yields_the_generator_batches_epoch_after_epoch(demo_store):
    dataset = shardfeed.as_tf_dataset(demo_store, split="train", batch_size=50, seed=4, labels="sparse")
    gen = DataGenerator(demo_store, split="train", batch_size=50, seed=4, labels="sparse")
    for epoch in range(2):
        batches = list(dataset.as_numpy_iterator())
        assert len(batches) == len(gen)
        for index, (x, y) in enumerate(batches):
            x_gen, y_gen = gen.source.batch(epoch, index)
            np.testing.assert_array_equal(x, x_gen)
            np.testing.assert_array_equal(y, y_gen)


def test_tf_dataset_trains_a_model(demo_store):
    train = shardfeed.as_tf_dataset(demo_store, split="train", batch_size=32, seed=0)
    model = small_conv3d((16, 16, 16, 1), 6)
    history = model.fit(train, epochs=2, verbose=0)
    assert history.history["accuracy"][-1] > 0.5
