"""Batches of an epoch as a pure function of (epoch, batch index): no Keras, no TensorFlow.

`BatchSource` is what `DataGenerator` (Keras), its worker processes and `as_tf_dataset` (tf.data)
share. Because a batch depends only on its (epoch, index), it is the same whether it is made
in-process, by a thread or by a worker process, and a run can resume at any batch.
"""

from __future__ import annotations

import os
import secrets
import threading
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import CallError, OptionError, TransformError
from ..storage.ragged import padding_needed
from ..storage.store import Store, open_store
from .buffers import BufferPool
from .sampling import MODES, epoch_order, host_share_from_env, num_batches
from .targets import encode_labels, label_spec, resolve_labels, sample_weights
from .transforms import Transform, apply, output_shapes, sample_rng


class BatchSource:
    """Selected rows of a store, cut into shuffled batches per epoch.

    Args:
        store: a path or an open `Store`.
        split: a split name; or `ids`: the IDs to use (the tutorial's `partition['train']`).
        batch_size: samples per batch.
        shuffle: reshuffle every epoch; otherwise batches follow the split's (or `ids`') order.
        seed: the shuffle seed; `None` draws one now (kept when pickled, so workers agree).
        shuffle_mode: "global" (full permutation) or "block" (chunk blocks; see `sampling`).
        labels: "onehot" (the tutorial's `to_categorical`), "sparse" (class numbers int64, or a
            regression store's targets as float32), "multihot" (a multi-label store's label sets),
            "targets" (the store's target arrays, `convert --targets`, in their stored dtype),
            "auto" (the default: onehot, float targets or multihot, by the store's labels; a store
            with only target arrays gives those), or None (inputs only; also what an unlabeled
            store gives). See `targets`.
        sample_weight: True (the weights the store was converted with), a mapping ID -> weight or
            one weight per store row: batches are then `(x, y, w)`, which Keras' `fit` weighs by.
        dtype: dtype of the inputs; None keeps the stored dtype.
        drop_remainder: drop the last short batch (the tutorial's floor behaviour).
        rank, world_size: this host's disjoint share of every epoch; by default from the
            environment (`RANK`/`WORLD_SIZE`, or `TF_CONFIG`), else 0 and 1.
        transform: `fn(x, rng) -> array`, called once per sample on the stored sample (in the
            stored dtype; it may modify it) with a generator seeded from (seed, epoch, row); see
            `transforms`. Its output may have another shape than the sample, but one shape for
            all samples (found by calling it once on the first sample); it is cast to `dtype`.
        transform_targets: with labels="targets", call the transform as `fn(x, t, rng) -> (x, t)`,
            so that a random flip or crop moves the sample and its target array alike (samples and
            targets of one shape each); the target keeps its stored dtype.
    """

    variable_shapes = False  # batches of variable-shape samples: `padding.VariableBatchSource`

    def __init__(
        self,
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
        storage_options: dict | None = None,
        transform: Transform | None = None,
        sample_weight: bool | Mapping | np.ndarray | None = None,
        transform_targets: bool = False,
    ) -> None:
        if rank is None or world_size is None:
            env_rank, env_world = host_share_from_env()
            rank = env_rank if rank is None else rank
            world_size = env_world if world_size is None else world_size
        _refuse_the_tutorials_call(store, split)
        self.store = store if isinstance(store, Store) else open_store(store, storage_options=storage_options)
        if self.store.variable and not self.variable_shapes:
            raise OptionError(padding_needed(self.store))
        if split is not None and ids is not None:
            raise OptionError("give either split or ids, not both")
        if type(batch_size) is not int or batch_size < 1:
            raise OptionError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if seed is not None and (type(seed) is not int or seed < 0):
            raise OptionError(f"seed must be an integer >= 0 or None, got {seed!r}")
        if shuffle_mode not in MODES:
            raise OptionError(f"shuffle_mode {shuffle_mode!r} unknown; expected one of {MODES}")
        if not 0 <= rank < world_size:
            raise OptionError(f"rank {rank} is outside [0, world_size={world_size})")
        self.rows = self._select(split, ids)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = secrets.randbits(63) if seed is None else int(seed)
        self.seed_drawn = seed is None
        self.shuffle_mode = shuffle_mode
        self.labels = resolve_labels(self.store, labels)
        if self.variable_targets and not self.variable_shapes:
            raise OptionError(padding_needed(self.store.targets))
        self.weights = sample_weights(self.store, self.rows, sample_weight)
        if self.weights is not None and self.labels is None:
            raise OptionError("sample_weight needs labels: batches are (x, y, w); pass a label mode, not None")
        self._warn_about_surprises(split, ids, labels)
        self.dtype = self.store.dtype if dtype is None else _numeric_dtype(dtype)
        self.drop_remainder = drop_remainder
        self.rank = rank
        self.world_size = world_size
        self.samples_per_epoch = len(self.rows) // world_size
        if self.num_batches == 0:
            raise OptionError(
                f"{len(self.rows)} samples give no batch of {batch_size} "
                f"(world_size={world_size}, drop_remainder={drop_remainder})"
            )
        self._orders: dict[int, np.ndarray] = {}
        self._orders_lock = threading.Lock()
        self._buffers = BufferPool()
        self.transform = transform
        self.transform_targets = bool(transform_targets)
        if self.transform_targets:
            self._check_joint_transform()
        self.sample_shape = self.store.sample_shape
        self.target_shape = None  # of a joint transform's targets (else the stored shape)
        if transform is not None:
            first = self.rows[0]
            stored = (self.store.read(self.rows[:1])[0],)
            if self.transform_targets:
                stored += (self.store.targets.read(self.rows[:1])[0],)
            shapes = output_shapes(transform, stored, self.seed, int(first), self._where(first, 0))
            self.sample_shape, self.target_shape = shapes[0], shapes[1] if self.transform_targets else None

    def _check_joint_transform(self) -> None:
        if self.transform is None or self.labels != "targets":
            raise OptionError("transform_targets=True needs a transform and labels='targets' (a store converted "
                              "with --targets)")  # fmt: skip
        if self.store.variable or self.variable_targets:
            raise OptionError(f"{self.store.path}: transform_targets=True needs samples and target arrays of one "
                              f"shape each; a transform of variable-shape samples sees the sample only")  # fmt: skip

    def _warn_about_surprises(self, split: str | None, ids: Sequence[str] | None, labels: str | None) -> None:
        """What trains without complaint but is rarely meant: every split at once, or no targets."""
        if split is None and ids is None and len(self.store.splits) > 1:
            names, first = ", ".join(self.store.splits), next(iter(self.store.splits))
            message = f"using all {len(self.rows)} samples of its splits {names} together; pass split='{first}'"
            warnings.warn(f"{self.store.path}: {message} to use one", stacklevel=3)
        if labels is not None and self.labels is None:
            message = "training needs targets: convert with --labels, or pass labels=None to say you mean it"
            warnings.warn(f"{self.store.path}: the store has no labels, so batches are inputs only ({message})",
                          stacklevel=3)  # fmt: skip

    def _select(self, split: str | None, ids: Sequence[str] | None) -> np.ndarray:
        if ids is not None:
            return self.store.rows(ids)
        if split is not None:
            return self.store.split(split)
        return np.arange(len(self.store), dtype=np.int64)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_orders"] = {}
        state["_orders_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._orders_lock = threading.Lock()

    @property
    def num_batches(self) -> int:
        return num_batches(self.samples_per_epoch, self.batch_size, self.drop_remainder)

    def order(self, epoch: int) -> np.ndarray:
        """This host's rows for `epoch`, in reading order (cached for the two latest epochs)."""
        with self._orders_lock:
            order = self._orders.get(epoch)
            if order is None:
                order = epoch_order(
                    self.rows,
                    seed=self.seed,
                    epoch=epoch,
                    shuffle=self.shuffle,
                    mode=self.shuffle_mode,
                    chunk_rows=self.store.manifest.chunk_rows,
                    window_blocks=max(4, -(-4 * self.batch_size // self.store.manifest.chunk_rows)),
                    rank=self.rank,
                    world_size=self.world_size,
                )
                self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
                self._orders[epoch] = order
        return order

    def batch_rows(self, epoch: int, index: int) -> np.ndarray:
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range [0, {self.num_batches})")
        return self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]

    def adopt_seed(self, seed: int) -> None:
        """Take a saved run's seed (a resume); only a seed drawn here, not one the caller chose."""
        if not self.seed_drawn:
            raise OptionError(f"saved state has seed {seed}, this generator {self.seed}; "
                              f"create the generator with seed={seed} to resume")  # fmt: skip
        with self._orders_lock:
            self.seed, self._orders = int(seed), {}

    def specs(self) -> list[tuple[tuple[int, ...], np.dtype]]:
        """(shape, dtype) of each array of a full batch: `x`, then `y` when there are labels."""
        specs = [((self.batch_size, *self.sample_shape), self.dtype)]
        if self.target_shape is not None:
            specs.append(((self.batch_size, *self.target_shape), self.store.targets.dtype))
        elif self.labels is not None:
            specs.append(label_spec(self.store, self.labels, self.batch_size))
        if self.weights is not None:
            specs.append(((self.batch_size,), np.dtype(np.float32)))
        return specs

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, ...]:
        """`(x,)` or `(x, y)` for batch `index` of `epoch`, in reused buffers (see `buffers`)."""
        rows = len(self.batch_rows(epoch, index))
        (x_shape, x_dtype), *others = self.specs()
        x = self._buffers.take((rows, *x_shape[1:]), x_dtype, self.store.batch_residue)  # rows are copied in
        arrays = (x, *(self._buffers.take((rows, *shape[1:]), dtype) for shape, dtype in others))
        self.fill(epoch, index, arrays)
        return arrays

    def fill(self, epoch: int, index: int, out: tuple[np.ndarray, ...]) -> int:
        """Write batch `index` of `epoch` into the first rows of `out` (arrays shaped as `specs`,
        or exactly as long as the batch); returns its number of rows (the last batch may be short)."""
        rows = self.batch_rows(epoch, index)
        x = out[0][: len(rows)]
        if self.variable_shapes and self.store.variable:
            self._fill_padded(epoch, rows, out[0])
        elif self.transform is not None:
            self._transformed(epoch, rows, (x, out[1][: len(rows)]) if self.transform_targets else (x,))
        elif self.dtype == self.store.dtype:
            self.store.read(rows, out=x)
        else:
            stored = self._buffers.take(x.shape, self.store.dtype, self.store.batch_residue)
            np.copyto(x, self.store.read(rows, out=stored), casting="unsafe")
        if self.labels == "targets":
            if not self.transform_targets:  # else the transform wrote them
                self._fill_targets(rows, out[1])
        elif self.labels is not None:
            encode_labels(self.store.labels[rows], self.labels, self.store.num_classes, out=out[1][: len(rows)])
        if self.weights is not None:
            out[2][: len(rows)] = self.weights[rows]
        return len(rows)

    @property
    def variable_targets(self) -> bool:
        """Whether batches carry target arrays whose shapes vary (padded: `padding.VariableBatchSource`)."""
        return self.labels == "targets" and self.store.targets.variable

    def _fill_targets(self, rows: np.ndarray, out: np.ndarray) -> None:
        """The target arrays of `rows` into the first rows of `out`, in their stored dtype."""
        self.store.targets.read(rows, out=out[: len(rows)])

    @property
    def tensor_shape(self) -> tuple[int | None, ...]:
        """The shape of a sample of `x` as a framework's tensor spec says it: None where it varies."""
        return self.sample_shape

    def tensor_shapes(self) -> list[tuple[int | None, ...]]:
        """The shape of a sample of each batch array (`x`, then as `specs`), None where it varies."""
        return [self.tensor_shape, *(shape[1:] for shape, _ in self.specs()[1:])]

    def slot_view(self, key: tuple[int, int], arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """Batch `key` from the arrays `fill` wrote it into (shaped as `specs`, cut to its rows): the
        batch itself; of variable-shape samples, the front of `x` in the batch's own shape."""
        return arrays

    def _transformed(self, epoch: int, rows: np.ndarray, out: tuple[np.ndarray, ...]) -> None:
        """Read the stored samples (and targets, for a joint transform), then transform each one into
        its row of `out` (`(x,)` or `(x, t)`; cast to their dtypes)."""
        stores = (self.store, self.store.targets)[: len(out)]
        stored = [self._buffers.take((len(rows), *s.sample_shape), s.dtype, s.batch_residue) for s in stores]
        for store, buffer in zip(stores, stored):
            store.read(rows, out=buffer)
        expected = (self.sample_shape, self.target_shape)
        for i, row in enumerate(rows):
            where = lambda row=row: self._where(row, epoch)  # noqa: E731
            results = apply(self.transform, tuple(s[i] for s in stored), sample_rng(self.seed, epoch, int(row)), where)
            for result, shape, array in zip(results, expected, out):
                if result.shape != shape:
                    raise TransformError(f"transform returned shape {result.shape} for {where()}, expected "
                                         f"{shape} (what it returned for the first sample); one shape for all "
                                         f"samples")  # fmt: skip
                np.copyto(array[i], result, casting="unsafe")

    def _where(self, row: int, epoch: int) -> str:
        return f"sample {self.store.ids[int(row)]!r} (row {int(row)}, epoch {epoch})"


def _numeric_dtype(dtype: str | np.dtype) -> np.dtype:
    """The batches' dtype: numbers only (an `object` or string batch cannot hold samples)."""
    try:
        parsed = np.dtype(dtype)
    except TypeError as exc:
        raise OptionError(f"dtype {dtype!r} is not a dtype: {exc}") from exc
    if parsed.kind not in "biufc" or parsed.fields is not None or parsed.subdtype is not None:
        raise OptionError(f"dtype {dtype!r} cannot hold samples; use a numeric dtype such as 'float32', "
                          f"or None for the stored dtype")  # fmt: skip
    return parsed


def _refuse_the_tutorials_call(store: object, split: object) -> None:
    """The Keras tutorial's generator takes `(list_IDs, labels)`: say what to call instead."""
    if isinstance(store, (str, os.PathLike, Store)):
        return
    if isinstance(store, Sequence) or isinstance(split, Mapping):
        raise CallError(
            "DataGenerator takes a store, not the tutorial's (list_IDs, labels): convert the .npy files once "
            "(shardfeed convert data/ store.zarr --labels labels.json --partition partition.json), then call "
            "DataGenerator('store.zarr', split='train') or DataGenerator('store.zarr', ids=partition['train'])"
        )
    raise CallError(f"store must be a path or a shardfeed Store, got {type(store).__name__}")
