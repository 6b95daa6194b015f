"""DataGenerator: the tutorial's batches, its worker threads and processes under Keras' adapter, labels, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from multiprocessing import resource_tracker
from pathlib import Path

import keras
import numpy as np
import pytest

import shardfeed
from shardfeed import DataGenerator
from shardfeed.bench.tutorial import TutorialGenerator

PROBES = Path(__file__).parent / "probes"


def rows_of(x: np.ndarray) -> list[int]:
    return [int(v) for v in x.reshape(len(x), -1)[:, 0]]


def epoch_rows(gen: DataGenerator) -> list[list[int]]:
    gen.on_epoch_begin()
    rows = [rows_of(gen[i][0]) for i in range(len(gen))]
    gen.on_epoch_end()
    return rows


def test_matches_the_tutorial_generator_batch_for_batch(tmp_path, make_npy_dir, backend):
    src, labels_path, partition_path, _ = make_npy_dir(n=50, shape=(5, 4, 3, 1), num_classes=4)
    labels, partition = json.loads(labels_path.read_text()), json.loads(partition_path.read_text())
    out = tmp_path / "store"
    shardfeed.convert(src, out, labels=labels, partition=partition, format=backend, chunk_rows=3)
    tutorial = TutorialGenerator(partition["train"], labels, src, batch_size=8, dim=(5, 4, 3),
                                 n_classes=4, shuffle=False)  # fmt: skip
    ours = DataGenerator(out, split="train", batch_size=8, shuffle=False, drop_remainder=True)
    assert len(ours) == len(tutorial) == len(partition["train"]) // 8
    for i in range(len(ours)):
        (x_tut, y_tut), (x_ours, y_ours) = tutorial[i], ours[i]
        assert x_ours.dtype == np.float32 and x_tut.dtype == np.float64
        np.testing.assert_array_equal(x_ours, x_tut)
        np.testing.assert_array_equal(y_ours, y_tut)


def test_ids_argument_follows_the_given_order(row_store):
    store = shardfeed.open_store(row_store)
    ids = ["s010", "s002", "s040", "s007", "s001"]
    gen = DataGenerator(store, ids=ids, batch_size=2, shuffle=False)
    assert [r for i in range(len(gen)) for r in rows_of(gen[i][0])] == [10, 2, 40, 7, 1]
    assert len(gen[2][0]) == 1  # the last batch is short: every sample exactly once


def test_every_sample_once_per_epoch_and_new_order_each_epoch(row_store):
    gen = DataGenerator(row_store, split="train", batch_size=5, seed=3)
    epochs = [epoch_rows(gen) for _ in range(3)]
    for batches in epochs:
        flat = [r for b in batches for r in b]
        assert sorted(flat) == list(range(38))
    assert epochs[0] != epochs[1] != epochs[2]
    again = DataGenerator(row_store, split="train", batch_size=5, seed=3)
    assert [epoch_rows(again) for _ in range(3)] == epochs


def test_a_hand_loop_in_the_tutorials_style_reshuffles_at_each_on_epoch_end(row_store):
    gen = DataGenerator(row_store, split="train", batch_size=5, seed=3)
    epochs = []
    for _ in range(3):
        epochs.append([rows_of(gen[i][0]) for i in range(len(gen))])
        gen.on_epoch_end()
    assert all(sorted(r for b in batches for r in b) == list(range(38)) for batches in epochs)
    again = DataGenerator(row_store, split="train", batch_size=5, seed=3)
    assert [epoch_rows(again) for _ in range(3)] == epochs  # the epochs `fit` would get


def test_drop_remainder_gives_floor_batches(row_store):
    gen = DataGenerator(row_store, split="train", batch_size=5, drop_remainder=True, seed=0)
    assert len(gen) == 38 // 5
    assert all(len(gen[i][0]) == 5 for i in range(len(gen)))


@pytest.mark.parametrize(
    ("labels", "dtype", "expect_y"),
    [("onehot", "float32", (4, 3)), ("sparse", "float16", (4,)), (None, None, None)],
)
def test_label_modes_and_dtypes(row_store, labels, dtype, expect_y):
    gen = DataGenerator(row_store, split="train", batch_size=4, labels=labels, dtype=dtype, shuffle=False)
    batch = gen[0]
    x = batch[0]
    assert x.dtype == (np.dtype(dtype) if dtype else np.dtype("<f4"))
    store = shardfeed.open_store(row_store)
    expected_labels = store.labels[store.split("train")[:4]]
    if expect_y is None:
        assert len(batch) == 1
    elif labels == "onehot":
        np.testing.assert_array_equal(batch[1], keras.utils.to_categorical(expected_labels, 3))
    else:
        assert batch[1].dtype == np.int64
        np.testing.assert_array_equal(batch[1], expected_labels)


def test_unlabeled_store_gives_inputs_only(tmp_path, make_npy_dir):
    src, _, partition, _ = make_npy_dir(n=10, num_classes=None)
    shardfeed.convert(src, tmp_path / "u", partition=partition)
    batch = DataGenerator(tmp_path / "u", split="train", batch_size=4)[0]
    assert len(batch) == 1


def test_rejects_bad_arguments(row_store):
    with pytest.raises(shardfeed.OptionError, match="either split or ids"):
        DataGenerator(row_store, split="train", ids=["s001"])
    with pytest.raises(shardfeed.UnknownSplitError, match="train"):
        DataGenerator(row_store, split="test")
    with pytest.raises(shardfeed.OptionError, match="shuffle_mode"):
        DataGenerator(row_store, shuffle_mode="random")
    with pytest.raises(shardfeed.OptionError, match="labels"):
        DataGenerator(row_store, labels="categorical")


def test_ranks_split_every_epoch_disjointly(row_store):
    gens = [DataGenerator(row_store, split="train", batch_size=4, seed=9, rank=r, world_size=3)
            for r in range(3)]  # fmt: skip
    assert len({len(g) for g in gens}) == 1
    for _ in range(2):
        shares = [sorted(r for b in epoch_rows(g) for r in b) for g in gens]
        union = [r for share in shares for r in share]
        assert len(set(union)) == len(union) == 38 - 38 % 3


def test_keras_worker_processes_give_the_in_process_batches(row_store):
    """2 worker processes under Keras' adapter, 3 epochs: exactly once, reshuffled, same order."""
    out = _probe("keras_epochs.py", row_store, "2", "1", "3")
    in_process = DataGenerator(row_store, split="train", batch_size=4, seed=11)
    expected = [epoch_rows(in_process) for _ in range(3)]
    assert out["epochs"] == expected
    for batches in out["epochs"]:
        assert sorted(r for b in batches for r in b) == list(range(38))
    assert out["epochs"][0] != out["epochs"][1]


def test_keras_worker_threads_give_the_in_process_batches(row_store):
    out = _probe("keras_epochs.py", row_store, "2", "0", "2")
    in_process = DataGenerator(row_store, split="train", batch_size=4, seed=11)
    assert out["epochs"] == [epoch_rows(in_process) for _ in range(2)]


# Batch 14: near the end of the epoch, the workers already read the next epoch's batches.
@pytest.mark.parametrize("batch", [3, 14])
def test_killed_worker_raises_instead_of_hanging(row_store, batch):
    out = _probe("kill_worker.py", row_store, batch, timeout=120)
    assert out["error"] is not None, out
    # JAX and PyTorch raise it as is; TensorFlow wraps it in an error of its own, naming it
    assert "WorkerDiedError" in f"{out['error']}: {out['message']}" and "worker process died" in out["message"]
    assert out["seconds_after_kill"] < 30


def test_workers_start_once_and_leave_nothing_behind(row_store):
    """12 epochs through Keras' adapter: the same 2 processes throughout, no fd growth, and after
    close() no child, no extra fd and no shared-memory file left."""
    psutil = pytest.importorskip("psutil")
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    me = psutil.Process()
    resource_tracker.ensure_running()  # multiprocessing's own helper: one per interpreter, for good
    before = (len(me.children()), me.num_fds(), sorted(os.listdir("/dev/shm")))
    gen = DataGenerator(row_store, split="train", batch_size=8, workers=2, use_multiprocessing=True)
    adapter = PyDatasetAdapter(gen, shuffle=False)
    pids, fds = set(), []
    for _ in range(12):
        adapter.on_epoch_begin()
        assert sum(len(x) for x, _ in adapter.get_numpy_iterator()) == 38
        adapter.on_epoch_end()
        pids.add(tuple(gen.read_ahead.worker_pids))
        fds.append(me.num_fds())
    assert len(pids) == 1 and len(next(iter(pids))) == 2
    assert max(fds) == fds[0], fds
    gen.close()
    assert (len(me.children()), me.num_fds(), sorted(os.listdir("/dev/shm"))) == before


def _probe(script: str, *args, timeout: int = 240) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, str(PROBES / script), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


CTRL_C = """
import sys, time
import shardfeed
gen = shardfeed.DataGenerator(sys.argv[1], split="train", batch_size=4, workers=2, use_multiprocessing=True)
gen[0]
gen.on_epoch_begin()
gen[0]  # the workers are up
print(*gen.read_ahead.worker_pids, flush=True)
while True:
    for i in range(len(gen)):
        gen[i]
    gen.on_epoch_end()
    gen.on_epoch_begin()
"""


def test_ctrl_c_in_the_trainer_leaves_no_worker_and_no_shared_memory(row_store):
    psutil = pytest.importorskip("psutil")
    shm = sorted(os.listdir("/dev/shm"))
    trainer = subprocess.Popen([sys.executable, "-c", CTRL_C, str(row_store)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        workers = [int(pid) for pid in trainer.stdout.readline().split()]
        assert len(workers) == 2, trainer.stderr.read()
        time.sleep(0.5)
        trainer.send_signal(signal.SIGINT)
        _, err = trainer.communicate(timeout=120)
    finally:
        trainer.kill()
    assert "KeyboardInterrupt" in err
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers):
        assert time.monotonic() < deadline, "a worker outlived the trainer"
        time.sleep(0.1)
    assert sorted(set(os.listdir("/dev/shm")) - set(shm)) == []  # none new (others' may come and go meanwhile)
