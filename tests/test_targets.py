"""Regression targets, label sets (multi-label) and sample weights: from the labels and weights
files through the store to the batches Keras trains on."""

from __future__ import annotations

import json

import numpy as np
import pytest

import shardfeed
from shardfeed import DataGenerator, OptionError
from shardfeed.cli import main
from shardfeed.storage.format import MANIFEST_NAME

IDS = [f"s{k:02d}" for k in range(12)]
NAMES = ["cat", "dog", "eel"]


@pytest.fixture
def src(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "src").mkdir()
    for sample_id in IDS:
        np.save(tmp_path / "src" / f"{sample_id}.npy", rng.standard_normal(4).astype("f4"))
    return tmp_path / "src"


def label_sets(k: int) -> list[str]:
    return [NAMES[k % 3], *(["eel"] if k % 4 == 0 and k % 3 != 2 else [])]


def write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def convert(src, out, *options) -> None:
    assert main(["convert", str(src), str(out), "--quiet", *options]) == 0


@pytest.mark.parametrize("backend", ["hdf5", "zarr"])
@pytest.mark.parametrize("spelling", ["json", "csv"])
def test_regression_targets_round_trip_and_train(src, tmp_path, backend, spelling, capsys):
    targets = {i: k * 0.25 - 1 for k, i in enumerate(IDS)}
    if spelling == "json":
        labels = write(tmp_path / "t.json", targets)
    else:
        labels = tmp_path / "t.csv"
        labels.write_text("id,label\n" + "".join(f"{i},{v!r}\n" for i, v in targets.items()))
    convert(src, tmp_path / "s", "--labels", str(labels), "--format", backend)
    store = shardfeed.open_store(tmp_path / "s")
    assert store.label_kind == "float" and store.num_classes is None
    assert dict(zip(store.ids, store.labels.tolist())) == targets
    assert main(["inspect", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "none (regression targets)" in out and "targets  -1 to 1.75, mean 0.375" in out
    generator = DataGenerator(store, batch_size=4, shuffle=False)
    _x, y = generator[0]
    assert y.dtype == np.float32 and y.tolist() == [targets[i] for i in IDS[:4]]
    with pytest.raises(OptionError, match=r"labels='onehot' does not fit this store's labels \(regression"):
        DataGenerator(store, labels="onehot")
    assert shardfeed.verify_store(store).ok


def test_label_sets_give_multi_hot_batches_and_per_class_counts(src, tmp_path, capsys):
    sets = {i: label_sets(k) for k, i in enumerate(IDS)}
    partition = write(tmp_path / "p.json", {"train": IDS[:8], "validation": IDS[8:]})
    convert(src, tmp_path / "s.zarr", "--labels", write(tmp_path / "l.json", sets), "--partition", partition)
    store = shardfeed.open_store(tmp_path / "s.zarr")
    assert store.label_kind == "multi" and store.class_names == NAMES
    assert {i: [NAMES[k] for k in np.flatnonzero(row)] for i, row in zip(store.ids, store.labels)} == {
        i: sorted(v) for i, v in sets.items()}  # fmt: skip
    _x, y = DataGenerator(store, split="train", batch_size=8, shuffle=False)[0]
    assert y.dtype == np.float32 and y.tolist() == [[float(n in sets[i]) for n in NAMES] for i in IDS[:8]]
    for mode in ("onehot", "sparse"):
        with pytest.raises(OptionError, match="label sets\\); use 'multihot'"):
            DataGenerator(store, labels=mode)
    assert main(["inspect", str(tmp_path / "s.zarr")]) == 0
    out = capsys.readouterr().out
    train = [n for i in IDS[:8] for n in sets[i]]
    assert "cat, dog, eel (label sets)" in out
    assert "labels   " + "  ".join(f"{n}:{train.count(n)}" for n in NAMES) in out
    assert main(["inspect", str(tmp_path / "s.zarr"), "--id", "s00", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["class_name"] == sorted(sets["s00"])


def test_label_sets_of_class_numbers(src, tmp_path):
    sets = {i: [k % 5, (k + 1) % 5] for k, i in enumerate(IDS)}
    convert(src, tmp_path / "s.zarr", "--labels", write(tmp_path / "l.json", sets))
    store = shardfeed.open_store(tmp_path / "s.zarr")
    assert store.num_classes == 5 and store.class_names is None
    assert [np.flatnonzero(row).tolist() for row in store.labels] == [sorted(sets[i]) for i in store.ids]


@pytest.mark.parametrize("backend", ["hdf5", "zarr"])
def test_weights_reach_keras_fit(src, tmp_path, backend):
    weights = {i: float(k % 3) for k, i in enumerate(IDS)}
    weight_file = tmp_path / "w.csv"
    weight_file.write_text("id,weight\n" + "".join(f"{i},{w}\n" for i, w in weights.items()))
    labels = write(tmp_path / "l.json", {i: NAMES[k % 3] for k, i in enumerate(IDS)})
    convert(src, tmp_path / "s", "--labels", labels, "--weights", str(weight_file), "--format", backend)
    store = shardfeed.open_store(tmp_path / "s")
    assert dict(zip(store.ids, store.weights.tolist())) == weights
    _x, _y, w = DataGenerator(store, batch_size=6, shuffle=False, sample_weight=True)[1]
    assert w.tolist() == [weights[i] for i in IDS[6:]]
    mapping = {i: 2.0 for i in IDS}
    assert DataGenerator(store, batch_size=6, shuffle=False, sample_weight=mapping)[0][2].tolist() == [2.0] * 6
    import keras

    def first_loss(sample_weight) -> float:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        model.compile(loss="categorical_crossentropy")
        generator = DataGenerator(store, batch_size=12, seed=0, sample_weight=sample_weight)
        return model.fit(generator, epochs=1, verbose=0).history["loss"][0]

    assert first_loss({i: 0.0 for i in IDS}) == 0.0  # every sample weighed nothing: so did the loss
    assert first_loss(True) > 0.0


def test_tf_dataset_batches_carry_weights_and_targets(src, tmp_path):
    targets = {i: k / 8 for k, i in enumerate(IDS)}
    weights = write(tmp_path / "w.json", {i: 1.5 for i in IDS})
    convert(src, tmp_path / "s.zarr", "--labels", write(tmp_path / "t.json", targets), "--weights", weights)
    _x, y, w = next(iter(shardfeed.as_tf_dataset(tmp_path / "s.zarr", batch_size=5, shuffle=False,
                                                sample_weight=True)))  # fmt: skip
    assert y.dtype.name == "float32" and y.numpy().tolist() == [targets[i] for i in IDS[:5]]
    assert w.numpy().tolist() == [1.5] * 5


@pytest.mark.parametrize(
    ("labels", "weights", "message"),
    [({**{i: 0.5 for i in IDS}, "s03": "cat"}, None, "ID 's03' has label 'cat' (str) but ID 's00' has 0.5"),
     ({**{i: 0.5 for i in IDS}, "s04": float("nan")}, None, "ID 's04' has regression target nan"),
     ({**{i: ["cat"] for i in IDS}, "s05": ["cat", "cat"]}, None, "ID 's05' lists a class twice"),
     ({**{i: ["cat"] for i in IDS}, "s06": [1]}, None, "all class numbers or all class names, not a mix"),
     ({i: 0 for i in IDS}, {**{i: 1.0 for i in IDS}, "s07": float("nan")}, "ID 's07' has weight nan"),
     ({i: 0 for i in IDS}, {**{i: 1.0 for i in IDS}, "s08": -1}, "ID 's08' has weight -1"),
     ({i: 0 for i in IDS}, {i: 1.0 for i in IDS[1:]}, "weights: 1 ID(s) have no weight, e.g. 's00'")],
)  # fmt: skip
def test_bad_targets_and_weights_are_one_line_and_leave_no_store(src, tmp_path, labels, weights, message, capsys):
    argv = ["convert", str(src), str(tmp_path / "out"), "--labels", write(tmp_path / "l.json", labels)]
    if weights is not None:
        argv += ["--weights", write(tmp_path / "w.json", weights)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_generator_weight_options_are_checked(src, tmp_path):
    convert(src, tmp_path / "s.zarr", "--labels", write(tmp_path / "l.json", {i: 1 for i in IDS}))
    with pytest.raises(OptionError, match="sample_weight=True but the store has no weights"):
        DataGenerator(tmp_path / "s.zarr", sample_weight=True)
    with pytest.raises(OptionError, match="no weight for 1 sample"):
        DataGenerator(tmp_path / "s.zarr", sample_weight={i: 1.0 for i in IDS[1:]})
    with pytest.raises(OptionError, match=r"expected one weight per store row \(12,\)"):
        DataGenerator(tmp_path / "s.zarr", sample_weight=np.ones(3))
    with pytest.raises(OptionError, match="finite numbers >= 0"):
        DataGenerator(tmp_path / "s.zarr", sample_weight=np.full(12, -1.0))
    with pytest.raises(OptionError, match="sample_weight needs labels"):
        DataGenerator(tmp_path / "s.zarr", labels=None, sample_weight=np.ones(12))


def test_a_manifest_that_disowns_its_weights_is_refused(src, tmp_path):
    convert(src, tmp_path / "s.zarr", "--labels", write(tmp_path / "l.json", {i: 1 for i in IDS}),
            "--weights", write(tmp_path / "w.json", dict.fromkeys(IDS, 1.0)))  # fmt: skip
    manifest = json.loads((tmp_path / "s.zarr" / MANIFEST_NAME).read_text())
    manifest["weighted"] = False
    (tmp_path / "s.zarr" / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(shardfeed.StoreFormatError, match="weights present: True"):
        shardfeed.open_store(tmp_path / "s.zarr")


def test_append_keeps_the_kind_of_labels_and_the_weights(src, tmp_path):
    targets = write(tmp_path / "t.json", {i: float(k) for k, i in enumerate(IDS)})
    weights = write(tmp_path / "w.json", dict.fromkeys(IDS, 1.0))
    partition = write(tmp_path / "p.json", {"all": IDS[:8]})
    convert(src, tmp_path / "s.zarr", "--labels", targets, "--weights", weights, "--partition", partition)
    more = tmp_path / "more"
    more.mkdir()
    for i in IDS[8:]:
        (more / f"{i}.npy").write_bytes((src / f"{i}.npy").read_bytes())
    assert main(["append", str(tmp_path / "s.zarr"), str(more), "--labels", targets, "--quiet"]) == 1
    assert main(["append", str(tmp_path / "s.zarr"), str(more), "--labels", targets, "--weights", weights,
                 "--quiet"]) == 0  # fmt: skip
    store = shardfeed.open_store(tmp_path / "s.zarr")
    assert store.labels.tolist() == [float(k) for k in range(12)] and store.weights.tolist() == [1.0] * 12
    assert shardfeed.verify_store(store).ok
