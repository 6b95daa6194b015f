"""Per-sample target arrays (`convert --targets DIR`): a mask per image, a tag per time step. From the
second folder of `.npy` files through the store (`Store.targets`) to `(x, t)` batches, verify, resume
and every bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from crashkit import assert_same_store, convert_argv, leftovers, make_inputs, resume_and_compare, run

import shardfeed
from shardfeed import DataGenerator, InputError, OptionError, StoreFormatError
from shardfeed.cli import main
from shardfeed.storage.format import LOCK_NAME, MANIFEST_NAME, TARGETS_DIR, WORK_DIR

N = 24
SHAPE = (6, 5)


def write_masks(inputs, folder="masks", shape=SHAPE, dtype="u1"):
    """A target per sample: a mask made from the sample itself, so a mix-up of rows shows."""
    masks = inputs.src.parent / folder
    masks.mkdir()
    for path in sorted(inputs.src.glob("*.npy")):
        np.save(masks / path.name, (np.load(path)[: shape[0], : shape[1]] > 0).astype(dtype))
    return masks


@pytest.fixture
def inputs(tmp_path):
    return make_inputs(tmp_path, N, SHAPE)


def options(backend: str, masks, **more) -> dict:
    return {"format": backend, "chunk_rows": 2, "shard_size": "960", "targets": masks, **more}


def convert_cli(inputs, out, *more) -> None:
    argv = ["convert", *inputs.args(), str(out), "--quiet", *map(str, more)]
    assert main(argv) == 0


def sources(inputs, folder, store, rows):
    return [np.load(inputs.src.parent / folder / f"{store.ids[r]}.npy") for r in rows]


@pytest.mark.parametrize(("backend", "compression"), [("hdf5", "none"), ("hdf5", "gzip"), ("zarr", "none"),
                                                      ("zarr", "zstd")])  # fmt: skip
def test_targets_round_trip_byte_for_byte_beside_their_samples(inputs, tmp_path, backend, compression):
    masks = write_masks(inputs)
    out = tmp_path / "s"
    convert_cli(inputs, out, "--format", backend, "--compression", compression, "--chunk-rows", 2,
                "--shard-size", 960, "--targets", masks)  # fmt: skip
    store = shardfeed.open_store(out)
    targets = store.targets
    assert targets.dtype == np.uint8 and targets.sample_shape == SHAPE and len(targets) == len(store)
    assert targets.ids == store.ids
    assert len(targets.manifest.shards) == len(store.manifest.shards) > 1  # the samples' shard rows
    assert (targets.manifest.chunk_rows, targets.manifest.shard_rows) == (2, store.manifest.shard_rows)
    assert targets.manifest.compression == compression
    got = targets.read(np.arange(len(store)))
    for row, expected in enumerate(sources(inputs, "masks", store, range(len(store)))):
        assert got[row].tobytes() == expected.tobytes()
    assert store.manifest.format_version == 3
    assert main(["verify", str(out), "--source", str(inputs.src), "--targets", str(masks)]) == 0


@pytest.mark.parametrize("backend", ["hdf5", "zarr"])
def test_generator_gives_x_and_its_target_in_every_worker_mode(inputs, tmp_path, backend):
    masks = write_masks(inputs)
    shardfeed.convert(inputs.src, tmp_path / "s", partition=inputs.partition, **options(backend, masks))
    store = shardfeed.open_store(tmp_path / "s")
    made = {}
    for mode in ({}, {"workers": 2}, {"workers": 2, "use_multiprocessing": True}):
        generator = DataGenerator(store, split="train", batch_size=5, seed=3, **mode)
        made[str(mode)] = [tuple(a.copy() for a in generator[k]) for k in range(len(generator))]
        generator.close()
        seen = []
        for k, (x, t) in enumerate(made[str(mode)]):
            rows = generator.source.batch_rows(0, k)
            assert t.dtype == np.uint8 and t.shape == (len(rows), *SHAPE)
            assert [a.tobytes() for a in t] == [m.tobytes() for m in sources(inputs, "masks", store, rows)]
            assert [a.tobytes() for a in x] == [s.astype("f4").tobytes() for s in sources(inputs, "src", store, rows)]
            seen += rows.tolist()
        assert sorted(seen) == store.split("train").tolist()  # exactly once
    first = made["{}"]
    for batches in made.values():
        assert all((a == b).all() for got, want in zip(batches, first) for a, b in zip(got, want))


def test_auto_gives_targets_for_a_store_with_only_those_and_labels_stay_the_default(inputs, tmp_path):
    masks = write_masks(inputs)
    shardfeed.convert(inputs.src, tmp_path / "t", **options("zarr", masks))
    _x, t = DataGenerator(tmp_path / "t", batch_size=4)[0]
    assert t.shape == (4, *SHAPE)
    shardfeed.convert(inputs.src, tmp_path / "both", labels=inputs.labels, **options("zarr", masks))
    both = tmp_path / "both"
    assert DataGenerator(both, batch_size=4)[0][1].shape == (4, 3)  # one-hot classes
    assert DataGenerator(both, batch_size=4, labels="targets")[0][1].shape == (4, *SHAPE)
    _x, _t, w = DataGenerator(both, batch_size=4, labels="targets", sample_weight=np.ones(N))[0]
    assert w.tolist() == [1.0] * 4
    shardfeed.convert(inputs.src, tmp_path / "none", **options("zarr", None))
    with pytest.raises(OptionError, match=r"labels='targets' but the store has no target arrays; convert with "
                                          r"--targets DIR"):  # fmt: skip
        DataGenerator(tmp_path / "none", labels="targets")


def write_sequences(root, n=N, seed=1):
    """Sequences of random lengths with a tag per step: x (L, 3) float32, t (L,) int16."""
    rng = np.random.default_rng(seed)
    (root / "seq").mkdir()
    (root / "tags").mkdir()
    for k in range(n):
        length = int(rng.integers(2, 9))
        np.save(root / "seq" / f"q{k:02d}.npy", rng.standard_normal((length, 3)).astype("f4"))
        np.save(root / "tags" / f"q{k:02d}.npy", rng.integers(0, 5, length).astype("i2"))
    return root / "seq", root / "tags"


@pytest.mark.parametrize("backend", ["hdf5", "zarr"])
def test_variable_targets_are_padded_with_their_samples(tmp_path, backend):
    seq, tags = write_sequences(tmp_path)
    shardfeed.convert(seq, tmp_path / "s", targets=tags, variable_shapes=True, format=backend, chunk_rows=2,
                      shard_size=200)  # fmt: skip
    store = shardfeed.open_store(tmp_path / "s")
    assert store.targets.sample_shape == (None,) and store.targets.variable
    for padding in ("batch", "max"):
        for mode in ({}, {"workers": 2, "use_multiprocessing": True}):
            generator = DataGenerator(store, batch_size=4, seed=0, padding=padding, pad_value=0,
                                      target_pad_value=-1, bucket_by_length=True, **mode)  # fmt: skip
            seen = []
            for k in range(len(generator)):
                x, t = generator[k]
                rows = generator.source.batch_rows(0, k)
                lengths = store.shapes[rows, 0]
                width = store.ragged.max_shape[0] if padding == "max" else lengths.max()
                assert x.shape == (len(rows), width, 3) and t.shape == (len(rows), width) and t.dtype == np.int16
                for i, row in enumerate(rows.tolist()):
                    tag = np.load(tags / f"{store.ids[row]}.npy")
                    assert t[i, : len(tag)].tobytes() == tag.tobytes() and (t[i, len(tag) :] == -1).all()
                    assert (x[i, len(tag) :] == 0).all()
                seen += rows.tolist()
            generator.close()
            assert sorted(seen) == list(range(N))


def test_fixed_samples_with_variable_targets(tmp_path, inputs):
    """Boxes per image: the samples have one shape, the targets (k, 4) vary, and only they are padded."""
    rng = np.random.default_rng(2)
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    for path in inputs.src.glob("*.npy"):
        np.save(boxes / path.name, rng.random((int(rng.integers(1, 4)), 4)).astype("f4"))
    shardfeed.convert(inputs.src, tmp_path / "s", targets=boxes, variable_shapes=True)
    store = shardfeed.open_store(tmp_path / "s")
    with pytest.raises(OptionError, match=r"samples vary in shape .*pass padding='batch'"):
        DataGenerator(store, labels="targets")
    generator = DataGenerator(store, batch_size=8, shuffle=False, padding="batch", target_pad_value=-1)
    x, t = generator[0]
    assert x.shape == (8, *SHAPE)
    assert t.shape == (8, store.targets.shapes[:8, 0].max(), 4)
    for i in range(8):
        expected = np.load(boxes / f"{store.ids[i]}.npy")
        assert (t[i, : len(expected)] == expected).all() and (t[i, len(expected) :] == -1).all()


def test_as_tf_dataset_gives_the_same_target_batches(tmp_path):
    pytest.importorskip("tensorflow")
    seq, tags = write_sequences(tmp_path)
    shardfeed.convert(seq, tmp_path / "s", targets=tags, variable_shapes=True)
    kwargs = {"batch_size": 4, "seed": 5, "padding": "batch", "target_pad_value": -1}
    dataset = shardfeed.as_tf_dataset(tmp_path / "s", **kwargs)
    assert dataset.element_spec[1].shape.as_list() == [None, None]
    generator = DataGenerator(tmp_path / "s", **kwargs)
    for k, (x, t) in enumerate(dataset):
        want_x, want_t = generator[k]
        assert (x.numpy() == want_x).all() and (t.numpy() == want_t).all()


def test_fit_segments_with_targets(tmp_path):
    """A real fit on masks: the segmentation example's store and labels='targets' (per-pixel loss)."""
    keras = pytest.importorskip("keras")
    from shardfeed.inputs.demo import make_segmentation_dataset

    images, masks, partition = make_segmentation_dataset(tmp_path / "seg", num_samples=64, shape=(16, 16))
    assert main(["convert", str(images), str(tmp_path / "s"), "--targets", str(masks), "--partition",
                 str(partition), "--quiet"]) == 0  # fmt: skip
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
                              keras.layers.Conv2D(2, 1, activation="softmax")])  # fmt: skip
    model.compile("adam", "sparse_categorical_crossentropy")
    train = DataGenerator(tmp_path / "s", split="train", batch_size=16, seed=0)
    history = model.fit(train, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and len(history.history["loss"]) == 2
    assert model.predict(train[0][0], verbose=0).shape == (16, 16, 16, 2)


def test_inspect_shows_the_targets(inputs, tmp_path, capsys):
    masks = write_masks(inputs)
    convert_cli(inputs, tmp_path / "s", "--targets", masks)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "s"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["targets"]["sample_shape"] == list(SHAPE) and summary["targets"]["dtype"] == "|u1"
    assert main(["inspect", str(tmp_path / "s")]) == 0
    assert "targets      a |u1 array of shape (6, 5) per sample" in capsys.readouterr().out


def _no_store(out) -> None:
    assert not out.exists(), f"a refused conversion left {sorted(p.name for p in out.iterdir())}"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: (m / "id-3.npy").unlink(), r"target arrays \(--targets\): .*masks/id-3.npy: sample 'id-3' has no "
                                              r"file"),
        (lambda m: np.save(m / "id-5.npy", np.zeros((6, 4), "u1")), r"target arrays \(--targets\): .*id-5.npy.*"
                                                                     r"\(6, 4\).*\(6, 5\)"),
        (lambda m: np.save(m / "id-5.npy", np.zeros(SHAPE, "f4")), r"target arrays \(--targets\): .*id-5.npy.*"
                                                                    r"(float32|<f4)"),
        (lambda m: np.save(m / "id-5.npy", np.zeros((6, 5, 1), "u1")), r"target arrays \(--targets\): .*id-5.npy"),
        (lambda m: (m / "id-7.npy").write_bytes(b"not a npy"), r"target arrays \(--targets\): .*id-7.npy"),
    ],
    ids=["missing", "other shape", "other dtype", "other ndim", "not npy"],
)
def test_bad_targets_are_one_line_naming_the_id_and_file_and_leave_no_store(inputs, tmp_path, capsys, damage,
                                                                            message):  # fmt: skip
    masks = write_masks(inputs)
    damage(masks)
    out = tmp_path / "s"
    assert main(["convert", *inputs.args(), str(out), "--targets", str(masks)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("shardfeed: error: "), err
    assert re.search(message, err), err
    _no_store(out)
    with pytest.raises(InputError):
        shardfeed.convert(inputs.src, out, targets=masks)
    _no_store(out)


def test_targets_inside_out_or_as_class_folders_are_refused(inputs, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "m").mkdir()
    with pytest.raises(OptionError, match="--targets lies inside OUT"):
        shardfeed.convert(inputs.src, out, targets=out / "m")
    folders = tmp_path / "folders"
    (folders / "a").mkdir(parents=True)
    with pytest.raises(OptionError, match="not a folder per class"):
        shardfeed.convert(inputs.src, tmp_path / "t", targets=folders)


def test_append_refuses_a_store_with_targets(inputs, tmp_path):
    masks = write_masks(inputs)
    shardfeed.convert(inputs.src, tmp_path / "s", targets=masks)
    more = tmp_path / "more"
    more.mkdir()
    np.save(more / "new.npy", np.zeros(SHAPE, "f4"))
    with pytest.raises(OptionError, match="append does not extend"):
        shardfeed.append(tmp_path / "s", more)


def test_tampered_or_missing_targets_are_refused_and_verify_names_them(inputs, tmp_path, capsys):
    masks = write_masks(inputs)
    out = tmp_path / "s"
    shardfeed.convert(inputs.src, out, targets=masks, chunk_rows=2, shard_size=960)
    other = tmp_path / "other"
    shardfeed.convert(inputs.src, other, targets=write_masks(inputs, "masks2", dtype="i1"), chunk_rows=2,
                      shard_size=960)  # fmt: skip
    (out / TARGETS_DIR / MANIFEST_NAME).write_bytes((other / TARGETS_DIR / MANIFEST_NAME).read_bytes())
    with pytest.raises(StoreFormatError, match="not the target arrays this store was converted with"):
        assert shardfeed.open_store(out).targets is None
    assert main(["verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "BAD shard targets: " in printed and "its target array is unreadable" in printed
    shutil.rmtree(out / TARGETS_DIR)
    with pytest.raises(StoreFormatError, match="the store's target arrays are missing"):
        DataGenerator(out)


def test_a_corrupt_target_shard_fails_verify_naming_the_sample(inputs, tmp_path, capsys):
    masks = write_masks(inputs)
    out = tmp_path / "s"
    shardfeed.convert(inputs.src, out, targets=masks, format="hdf5", chunk_rows=2, shard_size=960)
    store = shardfeed.open_store(out)
    shard = out / TARGETS_DIR / store.targets.manifest.shards[0].path
    data = bytearray(shard.read_bytes())
    first = store.targets.read([0])[0].tobytes()
    where = bytes(data).find(first)
    data[where] ^= 1
    shard.write_bytes(bytes(data))
    assert main(["verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert f"BAD shard targets/{store.targets.manifest.shards[0].path}" in printed
    assert f"BAD sample {store.ids[0]!r}: its target array: checksum mismatch" in printed


def test_verify_compares_targets_with_their_source(inputs, tmp_path, capsys):
    masks = write_masks(inputs)
    out = tmp_path / "s"
    shardfeed.convert(inputs.src, out, targets=masks)
    np.save(masks / "id-2.npy", 1 - np.load(masks / "id-2.npy"))
    assert main(["verify", str(out), "--targets", str(masks)]) == 1
    assert "BAD sample 'id-2': its target array: differs from its source" in capsys.readouterr().out
    shardfeed.convert(inputs.src, tmp_path / "plain")
    assert main(["verify", str(tmp_path / "plain"), "--targets", str(masks)]) == 1
    assert "the store has no target arrays to compare with" in capsys.readouterr().out


@pytest.fixture
def reference(inputs, tmp_path):
    masks = write_masks(inputs)
    out = tmp_path / "reference"
    shardfeed.convert(inputs.src, out, labels=inputs.labels, partition=inputs.partition,
                      **options("hdf5", masks))  # fmt: skip
    return out, masks


# One worker, in order: the samples' 3 shards (points 1-3), then the targets' (4-6); the targets'
# index and manifest are index-written:1 and manifest-written:1, the samples' come second.
@pytest.mark.parametrize("fault", ["shard-written:2", "shard-written:5", "record-saved:4", "index-written:1",
                                   "manifest-written:1", "index-written:2"])  # fmt: skip
def test_a_kill_anywhere_leaves_an_unfinished_store_that_resume_completes(inputs, reference, tmp_path, fault):
    ref, masks = reference
    assert len(shardfeed.open_store(ref).manifest.shards) == 3
    out = tmp_path / "s"
    opts = options("hdf5", masks)
    rc, _ = run(convert_argv(inputs, out, opts), fault=fault)
    assert rc != 0
    with pytest.raises(shardfeed.StoreNotFinalizedError):
        shardfeed.open_store(out)
    resume_and_compare(inputs, out, opts, ref, cli=True)
    assert [p for p in (out / TARGETS_DIR).iterdir() if p.name in (WORK_DIR, LOCK_NAME)] == []


def test_resume_refuses_other_targets_than_the_first_run(inputs, reference, tmp_path):
    ref, masks = reference
    out = tmp_path / "s"
    rc, _ = run(convert_argv(inputs, out, options("hdf5", masks)), fault="shard-written:2")
    assert rc != 0
    other = write_masks(inputs, "other")
    rc, err = run(convert_argv(inputs, out, options("hdf5", other), resume=True))
    assert rc != 0 and "cannot resume, the inputs or options differ" in err and len(err.strip().splitlines()) == 1
    rc, err = run(convert_argv(inputs, out, options("hdf5", masks), resume=True))
    assert rc == 0, err
    assert leftovers(out) == []
    assert_same_store(out, ref)


@pytest.mark.parametrize("mode", [{}, {"workers": 2}, {"workers": 2, "use_multiprocessing": True}],
                         ids=["in-process", "threads", "processes"])  # fmt: skip
def test_a_joint_transform_flips_each_sample_and_its_mask_alike(inputs, tmp_path, mode):
    from transform_fns import flip_both

    masks = write_masks(inputs)
    shardfeed.convert(inputs.src, tmp_path / "s", targets=masks, chunk_rows=2, shard_size=960)
    store = shardfeed.open_store(tmp_path / "s")
    generator = DataGenerator(store, batch_size=6, seed=4, transform=flip_both, transform_targets=True, **mode)
    flips = 0
    for epoch in range(2):
        generator.on_epoch_begin()
        for k in range(len(generator)):
            x, t = generator[k]
            rows = generator.source.batch_rows(epoch, k)
            for i, row in enumerate(rows.tolist()):
                sample, mask = np.load(inputs.src / f"{store.ids[row]}.npy"), np.load(masks / f"{store.ids[row]}.npy")
                flipped = (x[i] == sample[::-1]).all() and not (x[i] == sample).all()
                assert flipped or (x[i] == sample).all()
                assert t[i].tobytes() == (mask[::-1] if flipped else mask).tobytes()  # the mask moved with it
                assert t.dtype == np.uint8
                flips += flipped
        generator.on_epoch_end()
    generator.close()
    assert 0 < flips < 2 * N  # the coin fell both ways, and differently from sample to sample


def test_joint_transform_misuse_is_one_clear_error(inputs, tmp_path):
    from transform_fns import flip_both, flip_sample_only

    masks = write_masks(inputs)
    shardfeed.convert(inputs.src, tmp_path / "s", targets=masks)
    with pytest.raises(OptionError, match="transform_targets=True needs a transform and labels='targets'"):
        DataGenerator(tmp_path / "s", transform_targets=True)
    with pytest.raises(shardfeed.TransformError, match=r"flip_sample_only failed on sample 'id-\d+' \(row 0, "
                                                       r"epoch 0\): TypeError"):  # fmt: skip
        DataGenerator(tmp_path / "s", transform=flip_sample_only, transform_targets=True)
    with pytest.raises(shardfeed.TransformError, match=r"flip_both failed on .*TypeError"):
        DataGenerator(tmp_path / "s", transform=flip_both)  # a joint transform given only x
    seq, tags = write_sequences(tmp_path)
    shardfeed.convert(seq, tmp_path / "v", targets=tags, variable_shapes=True)
    with pytest.raises(OptionError, match="transform_targets=True needs samples and target arrays of one shape"):
        DataGenerator(tmp_path / "v", transform=flip_both, transform_targets=True, padding="batch")


def test_the_framework_free_adapters_give_the_targets(inputs, tmp_path):
    from shardfeed.feed.grainsource import BatchIterator, StoreSource

    masks = write_masks(inputs)
    shardfeed.convert(inputs.src, tmp_path / "s", targets=masks, partition=inputs.partition)
    store = shardfeed.open_store(tmp_path / "s")
    source = StoreSource(store, split="train", labels="targets")
    _x, t = source[3]
    assert t.tobytes() == np.load(masks / f"{store.ids[store.split('train')[3]]}.npy").tobytes()
    batches = BatchIterator(store, split="train", batch_size=6, seed=2, labels="targets")
    generator = DataGenerator(store, split="train", batch_size=6, seed=2, labels="targets")
    for k, (bx, bt) in enumerate(batches):
        gx, gt = generator[k]
        assert (bx == gx).all() and bt.tobytes() == gt.tobytes()
    torch_module = pytest.importorskip("torch")
    from shardfeed.torch import StoreDataset

    loader = torch_module.utils.data.DataLoader(StoreDataset(store, split="train", labels="targets"), batch_size=4)
    _tx, tt = next(iter(loader))
    assert tt.shape == (4, *SHAPE) and tt.numpy().tobytes() == store.targets.read(store.split("train")[:4]).tobytes()


def test_variable_uint8_masks_pad_with_zero_and_refuse_a_value_they_cannot_hold(tmp_path):
    """Images of different sizes with their masks: the default pad 0 is a uint8 value, -1 is not."""
    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    for k in range(6):
        h, w = (int(v) for v in rng.integers(3, 7, 2))
        np.save(tmp_path / "img" / f"i{k}.npy", rng.random((h, w)).astype("f4"))
        np.save(tmp_path / "msk" / f"i{k}.npy", (rng.random((h, w)) > 0.5).astype("u1"))
    shardfeed.convert(tmp_path / "img", tmp_path / "s", targets=tmp_path / "msk", variable_shapes=True)
    x, t = DataGenerator(tmp_path / "s", batch_size=6, shuffle=False, padding="batch")[0]
    assert t.dtype == np.uint8 and t.shape == x.shape
    with pytest.raises(OptionError, match=r"target_pad_value -1 is not a uint8 value"):
        DataGenerator(tmp_path / "s", padding="batch", target_pad_value=-1)
    with pytest.raises(OptionError, match=r"target_pad_value 0.5 is not a uint8 value \(it would become 0\)"):
        DataGenerator(tmp_path / "s", padding="batch", target_pad_value=0.5)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_fit_on_targets_under_every_keras_backend(tmp_path, backend):
    """Per-pixel training with a joint flip in worker processes, and per-step tags padded per batch,
    in a fresh interpreter with KERAS_BACKEND set (`probes/targets_fit.py`)."""
    from shardfeed.inputs.demo import make_segmentation_dataset

    images, masks, _ = make_segmentation_dataset(tmp_path / "seg", num_samples=48, shape=(16, 16))
    shardfeed.convert(images, tmp_path / "seg.zarr", targets=masks)
    seq, tags = write_sequences(tmp_path, n=12)
    shardfeed.convert(seq, tmp_path / "seq.zarr", targets=tags, variable_shapes=True)
    probe = Path(__file__).parent / "probes" / "targets_fit.py"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(probe), str(tmp_path / "seg.zarr"), str(tmp_path / "seq.zarr")],
                          capture_output=True, text=True, timeout=500, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["backend"] == backend and out["mask_shape"] == [16, 16, 16, 2]
    assert len(out["segmentation"]) == 2 and np.isfinite(out["segmentation"]).all()
    assert len(out["sequences"]) == 2 and np.isfinite(out["sequences"]).all()
    store = shardfeed.open_store(tmp_path / "seq.zarr")
    generator = DataGenerator(store, batch_size=4, seed=0, padding="batch")
    assert out["widths"] == [int(store.shapes[generator.source.batch_rows(0, k), 0].max()) for k in range(3)]
