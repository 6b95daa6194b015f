"""`as_tf_dataset(..., ragged=True)`: batches of variable-shape samples as `tf.RaggedTensor`.

The batch is made in numpy (`VariableBatchSource`, ragged): the values back to back and, for each axis
that varies, the lengths of its rows; TensorFlow only wraps them, from the innermost axis out, in
`from_row_lengths` (varying axes) or `from_uniform_row_length` (fixed axes before a varying one, which
keep their static length). Nothing is padded.
"""

from __future__ import annotations

from collections.abc import Callable

from .padding import VariableBatchSource


def ragged_loader(source: VariableBatchSource, target_specs: list) -> Callable:
    """The dataset's map function: (epoch, index) -> `(x, *targets)` with `x` a `tf.RaggedTensor`."""
    import tensorflow as tf

    shape = source.store.sample_shape
    varying = [j for j, d in enumerate(shape) if d is None]
    inner = shape[varying[-1] + 1 :]
    types = [tf.as_dtype(source.dtype), *[tf.int64] * len(varying), *[s.dtype for s in target_specs]]

    def load(epoch, index):
        tensors = tf.numpy_function(lambda e, i: source.batch(int(e), int(i)), [epoch, index], types)
        values, lengths, targets = tensors[0], tensors[1 : 1 + len(varying)], tensors[1 + len(varying) :]
        values.set_shape((None, *inner))
        for tensor in lengths:
            tensor.set_shape((None,))
        for tensor, spec in zip(targets, target_specs):
            tensor.set_shape(spec.shape)
        x, by_axis = values, dict(zip(varying, lengths))
        for axis in reversed(range(varying[-1] + 1)):
            if axis in by_axis:
                x = tf.RaggedTensor.from_row_lengths(x, by_axis[axis], validate=False)
            else:
                x = tf.RaggedTensor.from_uniform_row_length(x, shape[axis], validate=False)
        return (x, *targets)

    return load
