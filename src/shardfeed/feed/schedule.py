"""Which batch of which epoch a trainer's request means, whatever the Keras backend.

Keras' three trainers drive a `PyDataset` differently (measured on Keras 3.15):

- JAX and PyTorch build the model from one batch inside a begin/end pair of its own before the
  first epoch (`_symbolic_build`, then `epoch_iterator.reset()`); an epoch counter bumped in
  `on_epoch_end` skips epoch 0.
- TensorFlow asks for batches 0 and 1 outside any epoch to infer the tensor spec, then reads the
  epoch through `tf.data` in the generator's thread.
- `fit(shuffle=True)` asks for the batch indices of an epoch in a random order;
  `steps_per_epoch` shorter than the data ends a Keras epoch part way and goes on with the next
  indices in the next one.

`EpochCursor` gives one answer for all of them. Once an epoch has begun, the k-th distinct index
asked for is batch `start + k` of the generator's epoch: batches always come in the generator's
order, so workers can read ahead exactly, and a repeated index (a peek, then the real request) is
the same batch again. The generator's epoch moves on only at an `end` after every batch of it was
asked for; an `end` before that (the build pass, a short `steps_per_epoch`) keeps the epoch and
what was served of it, so the next epoch goes on where it stopped, even for a batch TensorFlow
read ahead between two of Keras' epochs. Before any batch of the epoch is served outside a
`begin` (TensorFlow's peeks, `gen[i]` by hand), index i is simply batch `start + i`.

A hand loop in the tutorial's style (`gen[i]` for every i, then `on_epoch_end()`, no `begin`) ends
its epoch too: an `end` outside any epoch after every index was asked for moves on, unless it could
be TensorFlow's peeks at batches 0 and 1.

Cases no rule can tell apart: with one batch per epoch, JAX's and PyTorch's build pass looks
exactly like an epoch, and counts as one; with one or two, a hand loop's epoch looks like
TensorFlow's peeks, and does not.
"""

from __future__ import annotations

import threading

TF_PEEKS = 2  # TensorFlow asks for batches 0 and 1 outside any epoch, then ends one


class EpochCursor:
    """The generator's position: epoch, first batch of that epoch, and the batches served in it.

    Args:
        num_batches: batches in a full epoch.
        epoch: the epoch to start in.
        start: its first batch (> 0 only for an epoch resumed part way).
    """

    def __init__(self, num_batches: int, epoch: int = 0, start: int = 0) -> None:
        self.num_batches = num_batches
        self._lock = threading.Lock()  # TensorFlow asks from its own thread; hooks come from fit's
        self.move_to(epoch, start)

    def move_to(self, epoch: int, start: int) -> None:
        """Continue at batch `start` of `epoch` (a resume), forgetting what was served."""
        with self._lock:
            if start >= self.num_batches:
                epoch, start = epoch + 1, 0
            self.epoch, self.start = epoch, start
            self._served: dict[int, int] = {}  # index asked for -> batch of the epoch
            self._peeked: set[int] = set()  # indices asked for outside an epoch, since the last `end`
            self._in_epoch = False

    @property
    def peeking(self) -> bool:
        """Whether a request now is a peek: outside an epoch, before any batch of it was served."""
        with self._lock:
            return not self._in_epoch and not self._served

    @property
    def remaining(self) -> int:
        """Batches of the current epoch from `start` on: the length a trainer sees."""
        return self.num_batches - self.start

    def begin(self) -> None:
        with self._lock:
            self._in_epoch = True

    def end(self) -> None:
        """The trainer's epoch ended; the generator's epoch ends with it only if it was served whole."""
        with self._lock:
            by_hand = not self._in_epoch and not self._served and len(self._peeked) == self.remaining > TF_PEEKS
            self._in_epoch, self._peeked = False, set()
            if by_hand or len(self._served) == self.remaining:
                self.epoch, self.start, self._served = self.epoch + 1, 0, {}

    def locate(self, index: int) -> tuple[int, int, bool]:
        """(epoch, batch, in order) for the trainer's `index`; `in order` is True for the next
        batch of the generator's sequence, False for a repeat or a request outside an epoch."""
        if not 0 <= index < self.remaining:
            raise IndexError(f"batch {index} out of range [0, {self.remaining})")
        with self._lock:
            if not self._in_epoch and not self._served:
                self._peeked.add(index)
                return self.epoch, self.start + index, False
            batch = self._served.get(index)
            if batch is not None:
                return self.epoch, batch, False
            if len(self._served) == self.remaining:  # served whole, no `end` yet: a stray request
                return self.epoch, self.start + index, False
            batch = self.start + len(self._served)
            self._served[index] = batch
            return self.epoch, batch, True

    def following(self, key: tuple[int, int]) -> tuple[int, int]:
        """The (epoch, batch) after `key` in the generator's sequence: what to read ahead."""
        epoch, batch = key
        return (epoch, batch + 1) if batch + 1 < self.num_batches else (epoch + 1, 0)
