"""`as_tf_dataset`: the same batches as `DataGenerator`, as a `tf.data.Dataset` with prefetching.

Batches are made by `BatchSource.batch(epoch, index)` inside `tf.numpy_function`, mapped in
parallel with `deterministic=True`, so the order is the generator's. Each pass over the
dataset (each Keras epoch) is the next epoch of the shuffle.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import numpy as np

from ..storage.store import Store
from .padding import batch_source
from .targets import SampleWeight
from .tfragged import ragged_loader
from .transforms import Transform


def as_tf_dataset(
    store: str | os.PathLike | Store,
    split: str | None = None,
    ids: Sequence[str] | None = None,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
    shuffle_mode: str = "global",
    labels: str | None = "auto",
    dtype: str | np.dtype | None = "float32",
    drop_remainder: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    first_epoch: int = 0,
    num_parallel_calls: int | None = None,
    prefetch: int | None = None,
    transform: Transform | None = None,
    transform_targets: bool = False,
    padding: str | None = None,
    pad_value: float = 0,
    target_pad_value: float = 0,
    bucket_by_length: bool = False,
    ragged: bool = False,
    sample_weight: SampleWeight = None,
):
    """A `tf.data.Dataset` of `(x, y)` (or `(x,)`, or `(x, y, w)`) batches; see `BatchSource` for the arguments.

    `num_parallel_calls` and `prefetch` default to `tf.data.AUTOTUNE`. Iterating the dataset
    again starts the next epoch (`first_epoch` for the first pass). `transform` runs in
    tf.data's threads; its output shape (`BatchSource.sample_shape`) is the shape of `x`.
    Variable-shape samples and target arrays are padded (`padding`, `pad_value`, `target_pad_value`,
    `bucket_by_length`: see
    `feed.padding`), or with `ragged=True` come as a `tf.RaggedTensor` `x`.
    """
    import tensorflow as tf

    source = batch_source(
        store, padding=padding, pad_value=pad_value, target_pad_value=target_pad_value,
        bucket_by_length=bucket_by_length, ragged=ragged,
        split=split, ids=ids, batch_size=batch_size, shuffle=shuffle, seed=seed,
        shuffle_mode=shuffle_mode, labels=labels, dtype=dtype, drop_remainder=drop_remainder,
        rank=rank, world_size=world_size, transform=transform, sample_weight=sample_weight,
        transform_targets=transform_targets,
    )  # fmt: skip
    epochs = itertools.count(first_epoch)

    def batch_keys():
        epoch = next(epochs)
        for index in range(source.num_batches):
            yield epoch, index

    specs = [tf.TensorSpec((None, *shape), tf.as_dtype(dtype))  # None: lengths vary
             for shape, (_, dtype) in zip(source.tensor_shapes(), source.specs())]  # fmt: skip

    def load(epoch, index):
        tensors = tf.numpy_function(
            lambda e, i: source.batch(int(e), int(i)), [epoch, index], [s.dtype for s in specs]
        )
        for tensor, spec in zip(tensors, specs):
            tensor.set_shape(spec.shape)
        return tuple(tensors)

    if ragged:
        load = ragged_loader(source, specs[1:])  # x a tf.RaggedTensor
    keys = tf.data.Dataset.from_generator(
        batch_keys, output_signature=(tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.int64))
    )
    autotune = tf.data.AUTOTUNE
    dataset = keys.map(load, num_parallel_calls=num_parallel_calls or autotune, deterministic=True)
    return dataset.prefetch(prefetch or autotune)
