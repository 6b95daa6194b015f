"""Batches of variable-shape samples: padded to the batch's largest sample or to the store's, bucketed
by length, or ragged (values back to back plus row lengths, for `tf.RaggedTensor`).

`VariableBatchSource` is the `BatchSource` of such a store. Its batch shape is a pure function of
(epoch, batch) like its rows, so worker processes work unchanged: a ring slot is sized for the
store's largest shape (`specs`), a worker writes the padded batch contiguously at the start of its
slot, and the trainer views the slot's front in the batch's shape (`slot_view`); nothing but the
slot number crosses the pipe. Padding follows Keras' `pad_sequences` (post-padding, `pad_value`),
on every axis that varies. Bucketing (`storage.lengths.bucket_by_length`) reorders each epoch's
shuffle into batches of similar lengths and shuffles those batches, so epochs stay exactly-once,
reproducible and resumable at any batch. Target arrays of varying shape (`labels="targets"`) are
padded the same way, each batch's to its own largest target, with `target_pad_value`.
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

from ..errors import OptionError, TransformError
from ..storage.lengths import bucket_by_length
from ..storage.ragged import read_padded, read_values
from ..storage.store import Store, open_store
from .batches import BatchSource
from .transforms import apply, sample_rng

PADDINGS = ("batch", "max", None)


def batch_source(
    store: str | os.PathLike | Store,
    *,
    padding: str | None = None,
    pad_value: float = 0,
    target_pad_value: float = 0,
    bucket_by_length: bool = False,
    ragged: bool = False,
    storage_options: dict | None = None,
    **options,
) -> BatchSource:
    """The source for these options: a `VariableBatchSource` for a store of variable-shape samples or
    target arrays (or `ragged`), else a plain `BatchSource` (padding a store of one shape changes nothing)."""
    if padding not in PADDINGS:
        raise OptionError(f"padding {padding!r} unknown; expected 'batch' (each batch padded to its largest "
                          f"sample), 'max' (to the store's largest shape) or None")  # fmt: skip
    if ragged and padding is not None:
        raise OptionError(f"ragged=True gives unpadded batches; drop padding={padding!r}, or ragged")
    if isinstance(store, (str, os.PathLike)):
        store = open_store(store, storage_options=storage_options)
    varying = isinstance(store, Store) and (store.variable or (store.targets is not None and store.targets.variable))
    if ragged or (varying and padding is not None):
        return VariableBatchSource(store, padding=padding, pad_value=pad_value, target_pad_value=target_pad_value,
                                   bucket_by_length=bucket_by_length, ragged=ragged, **options)  # fmt: skip
    return BatchSource(store, **options)  # refuses a variable-shape store, saying what to pass


class VariableBatchSource(BatchSource):
    """`BatchSource` of variable-shape samples.

    Args:
        store, **options: see `BatchSource`.
        padding: "batch" pads each batch to its largest sample (the last axes of `x` vary from batch
            to batch), "max" to the store's largest shape (one shape: what XLA-compiled steps want).
        pad_value: the value of padding, in `x`'s dtype.
        target_pad_value: the value of padding of target arrays (`labels="targets"`) whose shapes vary,
            in their dtype (a loss's "ignore" class, say).
        bucket_by_length: batches of similar lengths (less padding; see `storage.lengths`).
        ragged: batches `(values, *row_lengths, ...)` for `tf.RaggedTensor` (see `feed.tfragged`).

    A `transform` must keep each sample's shape (noise, masking): the padding is worked out from
    the stored shapes.
    """

    variable_shapes = True

    def __init__(
        self,
        store: Store,
        *,
        padding: str | None,
        pad_value: float = 0,
        target_pad_value: float = 0,
        bucket_by_length: bool = False,
        ragged: bool = False,
        **options,
    ) -> None:
        super().__init__(store, **options)
        if ragged and not self.store.variable:
            raise OptionError(f"{self.store.path}: ragged=True is for stores of variable-shape samples; this one's "
                              f"all have shape {self.store.sample_shape}")  # fmt: skip
        if ragged and self.variable_targets:
            raise OptionError(f"{self.store.path}: ragged=True gives no ragged target arrays; pass padding='batch' "
                              f"or 'max' instead")  # fmt: skip
        if (self.store.variable and self.transform is not None
                and self.sample_shape != tuple(self.store.shapes[self.rows[0]].tolist())):  # fmt: skip
            raise TransformError(f"transform returned shape {self.sample_shape} for {self._where(self.rows[0], 0)}, "
                                 f"not the sample's own: a transform of variable-shape samples must keep each "
                                 f"sample's shape")  # fmt: skip
        self.pad_value = _pad_value("pad_value", pad_value, self.dtype)
        if self.variable_targets:
            self.target_pad_value = _pad_value("target_pad_value", target_pad_value, self.store.targets.dtype)
        self.padding, self.ragged, self.bucket_by_length = padding, ragged, bool(bucket_by_length)
        self.max_shape = self.store.ragged.max_shape if self.store.variable else self.store.sample_shape
        if self.store.variable:
            self.sample_shape = self.max_shape  # a slot holds the largest batch (`specs`)
        self._bucketed: dict[int, np.ndarray] = {}
        self._bucket_lock = threading.Lock()

    @property
    def tensor_shape(self) -> tuple[int | None, ...]:
        # docstring inherited
        return self.max_shape if self.padding == "max" else self.store.sample_shape

    def tensor_shapes(self) -> list[tuple[int | None, ...]]:
        # docstring inherited
        shapes = super().tensor_shapes()
        if self.variable_targets and self.padding == "batch":
            shapes[1] = self.store.targets.sample_shape
        return shapes

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_bucketed"], state["_bucket_lock"] = {}, None
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._bucket_lock = threading.Lock()

    def order(self, epoch: int) -> np.ndarray:
        # docstring inherited
        order = super().order(epoch)
        if not self.bucket_by_length:
            return order
        with self._bucket_lock:
            bucketed = self._bucketed.get(epoch)
            if bucketed is None:
                seed = self.seed if self.shuffle else None
                bucketed = bucket_by_length(order, self.store.shapes, self.batch_size, seed, epoch)
                self._bucketed = {e: o for e, o in self._bucketed.items() if e >= epoch - 1}
                self._bucketed[epoch] = bucketed
        return bucketed

    def adopt_seed(self, seed: int) -> None:
        # docstring inherited
        super().adopt_seed(seed)
        with self._bucket_lock:
            self._bucketed = {}

    def batch_shape(self, epoch: int, index: int) -> tuple[int, ...]:
        """Shape of `x` in batch `index` of `epoch` (padded), a pure function of the two."""
        return self._padded_shape(self.batch_rows(epoch, index))

    def _padded_shape(self, rows: np.ndarray, store: Store | None = None) -> tuple[int, ...]:
        """The padded shape of `rows` of the samples (or of `store`: their target arrays)."""
        store = store or self.store
        if self.padding == "max":
            return (len(rows), *(store.ragged.max_shape if store.variable else store.sample_shape))
        return (len(rows), *store.shapes[rows].max(axis=0).tolist())

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, ...]:
        # docstring inherited
        return self.slot_view((epoch, index), super().batch(epoch, index))

    def slot_view(self, key: tuple[int, int], arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        # docstring inherited
        rows = self.batch_rows(*key)
        if self.variable_targets:
            arrays = (arrays[0], _front(arrays[1], self._padded_shape(rows, self.store.targets)), *arrays[2:])
        if self.ragged:
            return (*self._ragged_parts(rows, arrays[0]), *arrays[1:])
        return (_front(arrays[0], self.batch_shape(*key)), *arrays[1:])

    def unlike(self, epoch: int, index: int, other: int) -> tuple[np.ndarray, ...]:
        """Batch `index`, its axes that vary one wider where batch `other`'s are as wide: Keras' TensorFlow
        trainer infers the batches' shape from its first two batches, and must see those axes vary."""
        arrays = self.batch(epoch, index)
        if self.padding != "batch" or self.ragged:
            return arrays
        x = _wider(arrays[0], self.batch_shape(epoch, other), self.store.sample_shape, self.pad_value)
        if not self.variable_targets:
            return (x, *arrays[1:])
        targets = self.store.targets
        theirs = self._padded_shape(self.batch_rows(epoch, other), targets)
        return (x, _wider(arrays[1], theirs, targets.sample_shape, self.target_pad_value), *arrays[2:])

    def _fill_targets(self, rows: np.ndarray, out: np.ndarray) -> None:
        # docstring inherited
        if not self.variable_targets:
            return super()._fill_targets(rows, out)
        targets = self.store.targets
        read_padded(targets, rows, _front(out[: len(rows)], self._padded_shape(rows, targets)), self.target_pad_value)

    def _fill_padded(self, epoch: int, rows: np.ndarray, out: np.ndarray) -> None:
        """Batch `rows` into the front of `out` (a slot's or a pooled `x`, sized for the largest batch):
        padded, or for `ragged` the values back to back."""
        samples = None if self.transform is None else self._transform_each(epoch, rows)
        if self.ragged:
            flat = out.reshape(-1)[: int(self.store.ragged.sizes[rows].sum())]
            if samples is None:
                read_values(self.store, rows, flat)
            elif samples:
                np.copyto(flat, np.concatenate([s.reshape(-1) for s in samples]), casting="unsafe")
            return
        x = _front(out[: len(rows)], self._padded_shape(rows))
        if samples is None:
            read_padded(self.store, rows, x, self.pad_value)
            return
        x[...] = self.pad_value
        for i, sample in enumerate(samples):
            np.copyto(x[(i, *(slice(0, d) for d in sample.shape))], sample, casting="unsafe")

    def _transform_each(self, epoch: int, rows: np.ndarray) -> list[np.ndarray]:
        out = []
        for row, sample in zip(rows.tolist(), self.store.read(rows)):
            rng = sample_rng(self.seed, epoch, row)
            (result,) = apply(self.transform, (sample,), rng, lambda row=row: self._where(row, epoch))
            if result.shape != sample.shape:
                raise TransformError(f"transform returned shape {result.shape} dtype {result.dtype} for "
                                     f"{self._where(row, epoch)}, whose shape is {sample.shape}: a transform of "
                                     f"variable-shape samples must keep each sample's shape")  # fmt: skip
            out.append(result)
        return out

    def _ragged_parts(self, rows: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, ...]:
        """The ragged batch in the front of `out`: values of shape (rows of the last varying axis, *the
        fixed axes after it), then for each varying axis j the lengths of its rows (each sample's
        length on axis j, once per row of the axes before j): `tf.RaggedTensor.from_nested_row_lengths`."""
        shapes = self.store.shapes[rows]
        varying = [j for j, d in enumerate(self.store.sample_shape) if d is None]
        last = varying[-1]
        inner = tuple(self.store.sample_shape[last + 1 :])
        outer_rows = int(shapes[:, : last + 1].prod(axis=1).sum())
        values = _front(out, (outer_rows, *inner))
        lengths = [np.repeat(shapes[:, j], shapes[:, :j].prod(axis=1)) for j in varying]
        return (values, *lengths)


def _pad_value(name: str, value: float, dtype: np.dtype):
    """`value` in `dtype`, if it is exactly one of its values (0 in uint8 is; -1 and 0.5 are not)."""
    try:
        cast = np.array(value, dtype=dtype)
        exact = np.array_equal(cast, np.array(value), equal_nan=cast.dtype.kind in "fc")
    except (TypeError, ValueError, OverflowError) as exc:
        raise OptionError(f"{name} {value!r} is not a {dtype} value: {exc}") from exc
    if not exact:
        raise OptionError(f"{name} {value!r} is not a {dtype} value (it would become {cast.item()!r})")
    return cast.item()


def _wider(array: np.ndarray, theirs: tuple[int, ...], sample_shape: tuple, pad_value) -> np.ndarray:
    """`array` (a padded batch), one wider on each varying axis where `theirs` is as wide (see `unlike`)."""
    shape = [d + (d == theirs[j] and sample_shape[j - 1] is None) if j else d for j, d in enumerate(array.shape)]
    if list(array.shape) == shape:
        return array
    wider = np.full(shape, pad_value, dtype=array.dtype)
    wider[tuple(slice(0, d) for d in array.shape)] = array
    return wider


def _front(array: np.ndarray, shape) -> np.ndarray:
    """A C-contiguous view of the first values of `array` (C-contiguous, large enough) in `shape`."""
    return array.reshape(-1)[: math.prod(shape)].reshape(tuple(int(d) for d in shape))
