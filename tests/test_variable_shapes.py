"""Variable-shape samples (issue #12 item 1): convert, read, verify and resume stores of samples whose
lengths differ on some axes; the errors for what such a store cannot do; padded, bucketed and ragged
batches from `DataGenerator` and `as_tf_dataset`, exactly once per epoch and reproducible.

Crafted variable-shape stores (lying shapes and offsets) are in test_hostile.py's corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import shardfeed
from shardfeed.cli import main
from shardfeed.storage.format import INDEX_NAME, MANIFEST_NAME
from shardfeed.storage.integrity import verify_store

pytestmark = pytest.mark.timeout(120)

BACKEND_COMPRESSIONS = [("hdf5", "none"), ("hdf5", "gzip"), ("zarr", "none"), ("zarr", "zstd")]
# A sample shape per case, each `None` drawn per sample: one varying axis, or several.
SHAPES = {"one-axis": (None, 5), "several-axes": (None, 3, None), "1-d": (None,)}


def ragged_dir(root: Path, n: int = 23, shape=(None, 5), dtype: str = "float32", seed: int = 0, name: str = "data"):
    """`n` samples `<ID>.npy` whose `None` axes have random lengths 1-29; returns (src, {ID: array})."""
    rng = np.random.default_rng(seed)
    src = root / name
    src.mkdir()
    arrays = {}
    for k in range(n):
        dims = tuple(int(rng.integers(1, 30)) if d is None else d for d in shape)
        arrays[f"id-{k:02d}"] = (rng.standard_normal(dims) * 100).astype(dtype)
        np.save(src / f"id-{k:02d}.npy", arrays[f"id-{k:02d}"])
    return src, arrays


def convert(src, out, backend="zarr", compression="none", **options):
    options = {"chunk_rows": 2, "shard_size": 1500, "variable_shapes": True, **options}
    return shardfeed.convert(src, out, format=backend, compression=compression, **options)


def assert_reads_back(out: Path, arrays: dict[str, np.ndarray]) -> None:
    for fast in (True, False):
        with shardfeed.open_store(out, fast=fast) as store:
            rows = np.random.default_rng(1).permutation(len(store))
            rows = np.concatenate([rows, rows[:3]])  # repeats too
            for row, sample in zip(rows, store.read(rows)):
                source = arrays[store.ids[row]]
                assert sample.shape == source.shape and sample.dtype == source.dtype
                assert sample.tobytes() == source.tobytes(), store.ids[row]
            assert store[5].tobytes() == arrays[store.ids[5]].tobytes()


# Converting and reading.


@pytest.mark.parametrize(("backend", "compression"), BACKEND_COMPRESSIONS)
@pytest.mark.parametrize("case", list(SHAPES))
def test_round_trip_is_byte_identical(tmp_path, backend, compression, case):
    src, arrays = ragged_dir(tmp_path, shape=SHAPES[case])
    out = tmp_path / "store"
    manifest = convert(src, out, backend, compression, shard_size=300 if case == "1-d" else 1500)
    assert len(manifest.shards) > 2  # samples cross chunks and shards
    assert_reads_back(out, arrays)
    store = shardfeed.open_store(out)
    assert store.variable and store.sample_shape == SHAPES[case]
    assert store.shapes.dtype == np.int64 and store.shapes.shape == (len(arrays), len(SHAPES[case]))
    assert [tuple(s) for s in store.shapes.tolist()] == [arrays[i].shape for i in store.ids]
    report = verify_store(store, source=src)
    assert report.ok, (report.bad_shards, report.bad_samples)


def test_dtypes_and_big_endian_sources_round_trip(tmp_path):
    for dtype in ("uint8", ">i8", "complex64", "bool"):
        src, arrays = ragged_dir(tmp_path, n=9, dtype=dtype, name=f"data-{dtype}")
        out = tmp_path / f"store-{dtype}"
        convert(src, out, "hdf5")
        with shardfeed.open_store(out) as store:
            for row, sample in enumerate(store.read(np.arange(len(store)))):
                source = arrays[store.ids[row]]
                assert sample.astype(source.dtype).tobytes() == source.tobytes()


def test_verify_names_a_damaged_sample(tmp_path, backend):
    src, _ = ragged_dir(tmp_path)
    out = tmp_path / "store"
    convert(src, out, backend)
    store = shardfeed.open_store(out)
    info = store.manifest.shards[1]
    victim = store.ids[info.last_row]
    shard = out / info.path
    data = bytearray(shard.read_bytes())
    data[data.index(np.load(src / f"{victim}.npy").tobytes()[:8])] ^= 0x40  # its first value, in the file
    shard.write_bytes(bytes(data))
    report = verify_store(shardfeed.open_store(out))
    assert info.path in report.bad_shards and list(report.bad_samples) == [victim]


def test_samples_of_one_shape_keep_the_fixed_format(tmp_path, make_npy_dir, backend):
    """`variable_shapes=True` changes nothing when every shape is the same: byte for byte today's store."""
    src, labels, partition, _ = make_npy_dir(n=10)
    plain, flagged = tmp_path / "plain", tmp_path / "flagged"
    shardfeed.convert(src, plain, labels=labels, partition=partition, format=backend)
    shardfeed.convert(src, flagged, labels=labels, partition=partition, format=backend, variable_shapes=True)
    files = sorted(p.relative_to(plain) for p in plain.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(flagged) for p in flagged.rglob("*") if p.is_file())
    for name in files:
        assert (plain / name).read_bytes() == (flagged / name).read_bytes(), name
    manifest = json.loads((plain / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 1 and "chunk_elements" not in manifest
    with np.load(plain / INDEX_NAME) as index:
        assert "shapes" not in index.files
    store = shardfeed.open_store(plain)
    assert not store.variable and store.shapes.shape == (10, 2) and (store.shapes == [4, 3]).all()


def test_variable_store_is_format_version_2(tmp_path):
    src, _ = ragged_dir(tmp_path, n=5)
    manifest = json.loads(Path(convert(src, tmp_path / "store") and tmp_path / "store" / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 2 and manifest["sample_shape"] == [None, 5]


def test_the_cli_converts_with_variable_shapes(tmp_path):
    src, arrays = ragged_dir(tmp_path, n=6)
    assert main(["convert", str(src), str(tmp_path / "store"), "--variable-shapes", "--quiet"]) == 0
    assert_reads_back(tmp_path / "store", arrays)
    assert main(["verify", str(tmp_path / "store"), "--source", str(src)]) == 0


def test_an_interrupted_conversion_resumes_to_the_same_bytes(tmp_path, backend):
    src, _ = ragged_dir(tmp_path, n=40)
    reference, out = tmp_path / "reference", tmp_path / "out"
    convert(src, reference, backend)

    def interrupt(n, seen=[0]):  # noqa: B006 - the count lives across calls
        seen[0] += n
        if seen[0] >= 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(src, out, backend, progress=interrupt)
    assert not (out / MANIFEST_NAME).exists()
    convert(src, out, backend, resume=True)
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for name in files:
        if name.name != MANIFEST_NAME:  # the manifest records the converter, not the run
            assert (reference / name).read_bytes() == (out / name).read_bytes(), name


# What is refused, in one line naming the sample and the file, leaving no store.


def refused(tmp_path, src, match: str, **options) -> str:
    out = tmp_path / "out"
    with pytest.raises(shardfeed.ShardfeedError, match=match) as info:
        convert(src, out, **options)
    assert not out.exists()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_mixed_number_of_dimensions_is_refused(tmp_path, backend):
    src, _ = ragged_dir(tmp_path, n=4)
    np.save(src / "id-02.npy", np.zeros((3, 5, 1), "float32"))
    message = refused(tmp_path, src, r"sample 'id-02' has shape \(3, 5, 1\) dtype <f4, which differs from shape",
                      backend=backend)  # fmt: skip
    assert "id-02.npy" in message and "id-00.npy" in message and "number of dimensions" in message


def test_mixed_dtypes_are_refused(tmp_path, backend):
    src, _ = ragged_dir(tmp_path, n=4)
    np.save(src / "id-03.npy", np.zeros((7, 5), "float64"))
    message = refused(tmp_path, src, r"sample 'id-03' has shape \(7, 5\) dtype <f8, which differs", backend=backend)
    assert "id-03.npy" in message and "id-00.npy" in message


def test_varying_shapes_without_the_flag_are_refused_with_the_way_out(tmp_path):
    src, _ = ragged_dir(tmp_path, n=4)
    message = refused(tmp_path, src, r"all samples must share shape and dtype, or convert with --variable-shapes",
                      variable_shapes=False)  # fmt: skip
    assert "id-01.npy" in message and "id-00.npy" in message


def test_read_into_out_is_refused(tmp_path):
    src, _ = ragged_dir(tmp_path, n=5)
    convert(src, tmp_path / "store")
    store = shardfeed.open_store(tmp_path / "store")
    with pytest.raises(shardfeed.OptionError, match=r"samples vary in shape \(None, 5\), from \(\d+, 5\) to .*"
                                                     r"read\(rows, out=\.\.\.\) has no one shape"):  # fmt: skip
        store.read([0, 1], out=np.empty((2, 30, 5), "float32"))
    with pytest.raises(IndexError, match="row 5 out of range"):
        store.read([5])


def test_append_to_a_variable_store_is_refused(tmp_path):
    src, _ = ragged_dir(tmp_path, n=5)
    convert(src, tmp_path / "store")
    more, _ = ragged_dir(tmp_path, n=2, name="more", seed=3)
    for path in more.iterdir():
        path.rename(path.with_name("new-" + path.name))
    with pytest.raises(shardfeed.OptionError, match="append adds to stores of one shape only"):
        shardfeed.append(tmp_path / "store", more)


# Batches: padded, bucketed, ragged.


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """150 samples `s000`.. of shape (T, 4), T from 2 to 59, each filled with its row number; labels
    row % 3; train = the first 120. Returns (store path, {row: T})."""
    root = tmp_path_factory.mktemp("tagged")
    src = root / "data"
    src.mkdir()
    lengths = np.random.default_rng(7).integers(2, 60, 150)
    ids = [f"s{k:03d}" for k in range(150)]
    for k, (sample_id, length) in enumerate(zip(ids, lengths)):
        np.save(src / f"{sample_id}.npy", np.full((length, 4), k, "float32"))
    out = root / "tagged.zarr"
    partition = {"train": ids[:120], "validation": ids[120:]}
    shardfeed.convert(src, out, labels={i: k % 3 for k, i in enumerate(ids)}, partition=partition,
                      variable_shapes=True, chunk_rows=4, shard_size=4000)  # fmt: skip
    return out, dict(enumerate(lengths.tolist()))


def tags(x: np.ndarray) -> list[int]:
    return x[:, 0, 0].astype(int).tolist()


def epoch_batches(gen) -> list[tuple[np.ndarray, ...]]:
    gen.on_epoch_begin()
    batches = [tuple(np.array(a) for a in gen[i]) for i in range(len(gen))]
    gen.on_epoch_end()
    return batches


def measured_padding(batches, lengths) -> float:
    values = sum(x.size for x, *_ in batches)
    return 1 - sum(lengths[r] * 4 for x, *_ in batches for r in tags(x)) / values


def generator(store, **options):
    options = {"split": "train", "batch_size": 16, "labels": "sparse", "seed": 3, "padding": "batch", **options}
    return shardfeed.DataGenerator(store, **options)


def test_a_generator_without_padding_says_what_to_pass(tagged):
    with pytest.raises(shardfeed.OptionError, match=r"samples vary in shape \(None, 4\), from \(2, 4\) to \(59, 4\); "
                                                    r"a batch needs one shape: pass padding='batch'"):  # fmt: skip
        shardfeed.DataGenerator(tagged[0], split="train")
    with pytest.raises(shardfeed.OptionError, match="padding 'left' unknown"):
        generator(tagged[0], padding="left")


def test_padding_batch_pads_each_batch_to_its_longest_sample(tagged):
    store, lengths = tagged
    batches = epoch_batches(generator(store, pad_value=-1))
    assert sorted(r for x, _ in batches for r in tags(x)) == list(range(120))
    for x, y in batches:
        rows = tags(x)
        assert x.dtype == np.float32 and x.shape == (len(rows), max(lengths[r] for r in rows), 4)
        for i, r in enumerate(rows):
            assert (x[i, : lengths[r]] == r).all() and (x[i, lengths[r] :] == -1).all()
        assert y.tolist() == [r % 3 for r in rows]
    assert len(batches[-1][0]) == 120 % 16


def test_padding_max_gives_one_shape(tagged):
    store, lengths = tagged
    longest = max(lengths.values())  # the store's, validation included
    for x, _ in epoch_batches(generator(store, padding="max")):
        assert x.shape[1:] == (longest, 4)
        for i, r in enumerate(tags(x)):
            assert (x[i, lengths[r] :] == 0).all()


def test_bucketing_is_exactly_once_reproducible_and_pads_less(tagged):
    from shardfeed.storage.lengths import padding_fraction

    store, lengths = tagged
    plain, bucketed, again = generator(store), generator(store, bucket_by_length=True), generator(
        store, bucket_by_length=True)  # fmt: skip
    orders = []
    for _ in range(3):
        random_batches, bucketed_batches = epoch_batches(plain), epoch_batches(bucketed)
        assert sorted(r for x, _ in bucketed_batches for r in tags(x)) == list(range(120))
        for a, b in zip(bucketed_batches, epoch_batches(again)):
            assert all(np.array_equal(u, v) for u, v in zip(a, b))
        orders.append([r for x, _ in bucketed_batches for r in tags(x)])
        measured = measured_padding(bucketed_batches, lengths)
        assert measured < measured_padding(random_batches, lengths) / 2
        shapes = shardfeed.open_store(store).shapes
        assert measured == pytest.approx(padding_fraction(shapes, np.array(orders[-1]), 16))
    assert orders[0] != orders[1] != orders[2]


def test_a_resume_mid_epoch_with_bucketing_gives_exactly_the_remaining_batches(tagged):
    store, _ = tagged
    reference = generator(store, bucket_by_length=True)
    epochs = [epoch_batches(reference) for _ in range(3)]
    resumed = generator(store, bucket_by_length=True, seed=None)
    resumed.set_state({"seed": 3, "epoch": 1, "next_batch": 4})
    assert len(resumed) == len(epochs[1]) - 4
    for got, expected in zip([epoch_batches(resumed), epoch_batches(resumed)], [epochs[1][4:], epochs[2]]):
        assert len(got) == len(expected)
        assert all(np.array_equal(u, v) for a, b in zip(got, expected) for u, v in zip(a, b))


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_workers_make_the_same_batches(tagged, processes):
    store, _ = tagged
    reference = generator(store, bucket_by_length=True)
    expected = [epoch_batches(reference) for _ in range(2)]
    with generator(store, bucket_by_length=True, workers=2, use_multiprocessing=processes) as gen:
        for epoch in expected:
            got = epoch_batches(gen)
            assert [a[0].shape for a in got] == [b[0].shape for b in epoch]
            assert all(np.array_equal(u, v) for a, b in zip(got, epoch) for u, v in zip(a, b))
        if processes:
            assert len(gen.read_ahead.worker_pids) == 2


def double(x, rng):
    return x * 2


def first_row(x, rng):
    return x[:1]


def test_a_transform_must_keep_each_shape(tagged):
    store, lengths = tagged
    for x, _ in epoch_batches(generator(store, transform=double, pad_value=-1)):
        for i, r in enumerate(tags(x / 2)):
            assert (x[i, : lengths[r]] == 2 * r).all() and (x[i, lengths[r] :] == -1).all()
    with pytest.raises(shardfeed.TransformError, match="must keep each sample's shape"):
        generator(store, transform=first_row)


def test_padding_and_ragged_batches_on_several_axes(tmp_path):
    tf = pytest.importorskip("tensorflow")
    src, arrays = ragged_dir(tmp_path, n=9, shape=(None, 3, None))
    convert(src, tmp_path / "store")
    store = shardfeed.open_store(tmp_path / "store")
    gen = shardfeed.DataGenerator(store, batch_size=4, shuffle=False, labels=None, padding="batch", pad_value=7)
    for index in range(len(gen)):
        (x,) = gen[index]
        rows = range(4 * index, min(4 * index + 4, 9))
        samples = [arrays[store.ids[r]] for r in rows]
        assert x.shape == (len(samples), max(s.shape[0] for s in samples), 3, max(s.shape[2] for s in samples))
        for i, s in enumerate(samples):
            assert np.array_equal(x[i, : s.shape[0], :, : s.shape[2]], s)
            assert (x[i, s.shape[0] :] == 7).all() and (x[i, :, :, s.shape[2] :] == 7).all()
    dataset = shardfeed.as_tf_dataset(store, batch_size=4, shuffle=False, labels=None, ragged=True)
    (spec,) = dataset.element_spec
    assert isinstance(spec, tf.RaggedTensorSpec) and spec.shape.as_list() == [None, None, 3, None]
    got = [sample for (x,) in dataset for sample in x.to_list()]
    assert got == [arrays[i].tolist() for i in store.ids]


def test_as_tf_dataset_pads_buckets_and_gives_ragged_batches(tagged):
    tf = pytest.importorskip("tensorflow")
    store, lengths = tagged
    options = {"split": "train", "batch_size": 16, "labels": "sparse", "seed": 3, "bucket_by_length": True}
    dataset = shardfeed.as_tf_dataset(store, padding="batch", **options)
    assert dataset.element_spec[0].shape.as_list() == [None, None, 4]
    expected = epoch_batches(generator(store, **options))
    got = [(x.numpy(), y.numpy()) for x, y in dataset]
    assert len(got) == len(expected)
    assert all(np.array_equal(u, v) for a, b in zip(got, expected) for u, v in zip(a, b))
    longest = max(lengths.values())
    assert shardfeed.as_tf_dataset(store, padding="max", **options).element_spec[0].shape.as_list() == [None, longest,
                                                                                                        4]  # fmt: skip
    ragged = shardfeed.as_tf_dataset(store, ragged=True, **options)
    assert isinstance(ragged.element_spec[0], tf.RaggedTensorSpec)
    for (x, y), (padded, _) in zip(ragged, expected):
        rows = tags(padded)
        assert x.row_lengths().numpy().tolist() == [lengths[r] for r in rows]
        assert x.flat_values.numpy().tolist() == [[float(r)] * 4 for r in rows for _ in range(lengths[r])]
        assert y.numpy().tolist() == [r % 3 for r in rows]


def test_ragged_refuses_padding_and_stores_of_one_shape(tagged, small_store):
    with pytest.raises(shardfeed.OptionError, match="ragged=True gives unpadded batches"):
        shardfeed.as_tf_dataset(tagged[0], padding="batch", ragged=True)
    with pytest.raises(shardfeed.OptionError, match="ragged=True is for stores of variable-shape samples"):
        shardfeed.as_tf_dataset(small_store[0], split="train", ragged=True)


def test_keras_fit_with_padding_batch(tagged, tmp_path):
    """A tiny model trains on padded batches, bucketed; and on batches 0 and 1 of equal length, which
    Keras' TensorFlow trainer would otherwise take for the length of every batch."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the padded-shape inference being tested is the TensorFlow trainer's")
    src = tmp_path / "data"
    src.mkdir()
    lengths = [10, 3, 4, 5, 2, 10, 1, 1, 20, 5, 5, 5]  # batches of 4 (shuffle=False): longest 10, 10, 20
    for k, length in enumerate(lengths):
        np.save(src / f"s{k:02d}.npy", np.full((length, 4), k, "float32"))
    store = tmp_path / "store"
    shardfeed.convert(src, store, labels={f"s{k:02d}": k % 3 for k in range(12)}, variable_shapes=True)
    for path, options in [(tagged[0], {"bucket_by_length": True, "split": "train"}), (store, {"shuffle": False})]:
        model = keras.Sequential([keras.Input((None, 4)), keras.layers.GlobalAveragePooling1D(),
                                  keras.layers.Dense(3, activation="softmax")])  # fmt: skip
        model.compile("adam", "sparse_categorical_crossentropy")
        gen = shardfeed.DataGenerator(path, batch_size=4, padding="batch", labels="sparse", seed=1, **options)
        history = model.fit(gen, epochs=2, verbose=0)
        assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_inspect_says_the_shape_range_and_what_padding_costs(tagged, capsys):
    store, _ = tagged
    assert main(["inspect", str(store), "--json"]) == 0
    shapes = json.loads(capsys.readouterr().out)["variable_shapes"]
    assert shapes["min_shape"] == [2, 4] and shapes["max_shape"] == [59, 4] and shapes["padding_batch_size"] == 32
    train = shapes["padding"]["train"]
    assert 0 < train["batch_bucketed"] < train["batch"] / 2 < train["max"] < 1
    assert main(["inspect", str(store)]) == 0
    text = capsys.readouterr().out
    assert "shapes       from (2, 4) to (59, 4)" in text
    assert f"  train        {train['batch']:.1%} / {train['batch_bucketed']:.1%} / {train['max']:.1%}" in text


def test_bench_compares_padded_batches_with_the_limit_and_the_tutorial(tagged):
    from shardfeed.bench.store import bench_store

    results = bench_store(tagged[0], split="train", batch_size=16, seconds=0.2)
    names = [r.name for r in results]
    assert names[0].startswith("mmap limit (flat + offsets") and names[1].startswith("tutorial (np.load per file)")
    assert all(r.samples_per_s > 0 for r in results) and results[0].vs_limit == 1.0
    shares = [float(r.note.split("%")[0].split()[-1]) for r in results]
    assert shares[0] == shares[1] == shares[2] > 2 * shares[3]  # bucketed: less padding
    with pytest.raises(shardfeed.OptionError, match="--fit does not time variable-shape samples"):
        bench_store(tagged[0], fit=True)
