"""Exact epochs on every Keras 3 backend: what the model trains on, tapped inside the model.

Each case runs `model.fit` in a fresh interpreter (`probes/backend_fit.py`) with
`KERAS_BACKEND` set, in-process, with 2 threads and with 2 worker processes, and compares the
rows of every training batch with the generator's own batches of epochs 0, 1, 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardfeed import DataGenerator

PROBE = Path(__file__).parent / "probes" / "backend_fit.py"
BACKENDS = ["tensorflow", "jax", "torch"]
MODES = ["inprocess", "threads", "processes"]
EPOCHS = 3

pytestmark = pytest.mark.timeout(600)


def fit_rows(backend: str, store: Path, mode: str, shuffle: bool, *resume, steps: int = 0) -> list[list[list[int]]]:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "SHARDFEED_PROBE_STEPS": str(steps)}
    args = [sys.executable, str(PROBE), str(store), mode, str(EPOCHS), str(int(shuffle)), *map(str, resume)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["backend"] == backend
    return out["epochs"]


def generator_epochs(store: Path) -> list[list[list[int]]]:
    gen = DataGenerator(store, split="train", batch_size=4, seed=11, labels="sparse")
    return [[[int(r) for r in gen.source.batch(e, i)[0][:, 0, 0]] for i in range(len(gen))] for e in range(EPOCHS)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_epoch_k_trains_on_generator_epoch_k_in_order(row_store, backend, mode):
    expected = generator_epochs(row_store)
    assert fit_rows(backend, row_store, mode, False) == expected
    for epoch in expected:  # exactly once, and reshuffled
        assert sorted(r for batch in epoch for r in batch) == list(range(38))
    assert expected[0] != expected[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_shuffle_permutes_nothing_but_the_order(row_store, backend):
    """fit(shuffle=True), Keras' default, with worker processes: the generator's batches of each
    epoch, every one once (JAX and PyTorch put the batch of their build pass elsewhere)."""
    expected = generator_epochs(row_store)
    got = fit_rows(backend, row_store, "processes", True)
    assert [sorted(epoch) for epoch in got] == [sorted(epoch) for epoch in expected]
    if backend == "tensorflow":
        assert got == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_crashed_fit_resumes_with_exactly_the_remaining_batches(row_store, backend, tmp_path):
    expected = [batch for epoch in generator_epochs(row_store) for batch in epoch]
    first = fit_rows(backend, row_store, "processes", False, tmp_path, 1, 3)
    resumed = fit_rows(backend, row_store, "processes", False, tmp_path)
    first_batches = [batch for epoch in first for batch in epoch]
    assert len(first_batches) == 10 + 4  # epoch 0, then batches 0-3 of epoch 1
    assert first_batches + [batch for epoch in resumed for batch in epoch] == expected


def test_a_crash_mid_epoch_with_steps_per_epoch_resumes_with_the_next_batch(row_store, tmp_path):
    """Epochs of 3 of the generator's 10 batches; a crash after batch 1 of Keras' epoch 1 (the 5th
    batch). The resumed fit goes on with the 6th, none again and none skipped. Keras replays its
    epoch 1 in full and stops when the generator's epoch runs out (as it does for any PyDataset
    with steps_per_epoch), so it trains on 5 batches: 10 in all, against 9 uninterrupted.
    TensorFlow only (its trainer reads ahead between epochs), to keep the suite's time; JAX and
    PyTorch passed it too when it was written."""
    backend = "tensorflow"
    expected = [batch for epoch in generator_epochs(row_store) for batch in epoch]
    first = fit_rows(backend, row_store, "processes", False, tmp_path, 1, 1, steps=3)
    resumed = fit_rows(backend, row_store, "processes", False, tmp_path, steps=3)
    assert [len(epoch) for epoch in first] == [3, 2] and [len(epoch) for epoch in resumed] == [3, 2]
    assert [batch for epoch in first + resumed for batch in epoch] == expected[:10]
