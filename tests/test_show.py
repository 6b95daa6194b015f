"""`shardfeed show` and `inspect --plot` through `cli.main`: pictures of 1-D, 2-D, 3-D and 3-D+channels
stores that open, have the size the layout promises, are not blank, and are the same bytes on a rerun."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import shardfeed
from shardfeed.cli import main
from shardfeed.storage.pictures import sample_view

image = pytest.importorskip("matplotlib.image")

# 4 samples: a 2 x 2 grid of 2.0 x 2.2 in cells, at least 6 in wide, over a 3 in histogram, at 100 dpi.
FOUR_SAMPLES_PX = (740, 600)
HISTOGRAM_PX = (400, 800)  # inspect --plot: 8 x 4 in


def _store(tmp_path, make_npy_dir, shape, backend="zarr", num_classes=3, name="data"):
    src, labels, partition, _ = make_npy_dir(n=20, shape=shape, num_classes=num_classes, name=name)
    out = tmp_path / f"{name}.{backend}"
    shardfeed.convert(src, out, labels=labels, partition=partition, format=backend)
    return out


def _read_png(path) -> np.ndarray:
    assert path.is_file()
    return image.imread(path)


def _assert_not_blank(pixels: np.ndarray, cell_px: tuple[int, int] = (220, 300)) -> None:
    """Some contrast overall, and many colors inside the first sample's cell (not one flat color)."""
    assert pixels.std() > 0
    h, w = cell_px
    cell = pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].reshape(-1, pixels.shape[-1])
    assert len(np.unique(cell, axis=0)) > 2


@pytest.mark.parametrize(
    "shape",
    [(50,), (6, 8, 10), (4, 8, 8, 3)],
    ids=["1-D", "3-D", "3-D+channels"],
)
def test_show_draws_each_kind_of_sample(tmp_path, make_npy_dir, capsys, shape):
    store = _store(tmp_path, make_npy_dir, shape, num_classes=None if len(shape) == 1 else 3)
    out = tmp_path / "samples.png"
    assert main(["show", str(store), "-n", "4", "-o", str(out)]) == 0
    assert f"{out}: 4 sample(s)" in capsys.readouterr().out
    pixels = _read_png(out)
    assert pixels.shape[:2] == FOUR_SAMPLES_PX
    _assert_not_blank(pixels)


def test_show_draws_2d_images_from_either_backend(tmp_path, make_npy_dir, backend, capsys):
    store = _store(tmp_path, make_npy_dir, (8, 6), backend=backend)
    out = tmp_path / "samples.png"
    assert main(["show", str(store), "--split", "train", "-n", "4", "-o", str(out)]) == 0
    pixels = _read_png(out)
    assert pixels.shape[:2] == FOUR_SAMPLES_PX
    _assert_not_blank(pixels)


def test_show_is_reproducible_and_the_seed_picks(tmp_path, make_npy_dir, capsys):
    store = _store(tmp_path, make_npy_dir, (8, 6))
    files = {}
    for name, seed in (("a.png", "7"), ("b.png", "7"), ("c.png", "8")):
        files[name] = tmp_path / name
        assert main(["show", str(store), "-n", "4", "--seed", seed, "-o", str(files[name])]) == 0
    assert files["a.png"].read_bytes() == files["b.png"].read_bytes()
    assert files["a.png"].read_bytes() != files["c.png"].read_bytes()


@pytest.mark.parametrize("suffix, head", [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_show_writes_pdf_and_svg_reproducibly(tmp_path, make_npy_dir, capsys, suffix, head):
    store = _store(tmp_path, make_npy_dir, (8, 6))
    first, second = tmp_path / f"a.{suffix}", tmp_path / f"b.{suffix}"
    for out in (first, second):
        assert main(["show", str(store), "--id", "id-1", "id-2", "-o", str(out)]) == 0
    assert first.read_bytes().startswith(head)
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--id", "id-1", "nope"], "1 unknown sample ID(s): ['nope']"),
        (["--split", "test"], "no split 'test'"),
        (["-n", "0"], "-n must be from 1 to 64, got 0"),
        (["-n", "65"], "-n must be from 1 to 64, got 65"),
    ],
    ids=["unknown-id", "unknown-split", "no-samples", "too-many"],
)
def test_show_bad_choice_is_one_line(tmp_path, make_npy_dir, capsys, args, message):
    store = _store(tmp_path, make_npy_dir, (8, 6))
    out = tmp_path / "samples.png"
    assert main(["show", str(store), *args, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("shardfeed: error: ") and err.count("\n") == 1
    assert message in err
    assert not out.exists()


def test_show_draws_dollar_signs_as_text(tmp_path, capsys):
    """matplotlib reads `$...$` as math; IDs and class names are drawn as written, even bad math."""
    src = tmp_path / "data"
    src.mkdir()
    ids = [f"s${k}$" for k in range(4)]
    for k, sample_id in enumerate(ids):
        np.save(src / f"{sample_id}.npy", np.arange(12, dtype="float32").reshape(3, 4) * (k + 1))
    store = tmp_path / "dollars.zarr"
    shardfeed.convert(src, store, labels={i: ["$\\frac$", "$x$"][k % 2] for k, i in enumerate(ids)})
    out = tmp_path / "samples.png"
    assert main(["show", str(store), "-o", str(out)]) == 0
    _assert_not_blank(_read_png(out))


def test_show_refuses_an_unknown_format(tmp_path, make_npy_dir, capsys):
    store = _store(tmp_path, make_npy_dir, (8, 6))
    assert main(["show", str(store), "-o", str(tmp_path / "samples.bmp")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "*.png, *.pdf or *.svg" in err


def test_show_without_matplotlib_names_the_extra(tmp_path, make_npy_dir, capsys, monkeypatch):
    store = _store(tmp_path, make_npy_dir, (8, 6))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    assert main(["show", str(store), "-o", str(tmp_path / "samples.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'shardfeed[show]'" in err


def test_inspect_plot_writes_the_histogram_and_still_prints(tmp_path, make_npy_dir, capsys):
    store = _store(tmp_path, make_npy_dir, (8, 6))
    out = tmp_path / "labels.png"
    assert main(["inspect", str(store), "--plot", str(out)]) == 0
    assert "splits" in capsys.readouterr().out
    pixels = _read_png(out)
    assert pixels.shape[:2] == HISTOGRAM_PX
    assert pixels.std() > 0 and len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 2


def test_inspect_without_plot_does_not_import_matplotlib(tmp_path, make_npy_dir):
    store = _store(tmp_path, make_npy_dir, (8, 6))
    code = ("import sys\nfrom shardfeed.cli import main\nrc = main(['inspect', sys.argv[1]])\n"
            "assert 'matplotlib' not in sys.modules\nsys.exit(rc)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "shape, kind, note",
    [
        ((7,), "line", ""),
        ((5, 6), "gray", ""),
        ((6, 8, 10), "gray", "slice 3 of 6"),
        ((16, 16, 3), "rgb", "RGB"),
        ((16, 16, 1), "gray", ""),
        ((4, 8, 8, 4), "rgb", "slice 2 of 4, RGBA"),
        ((4, 8, 8, 2), "gray", "slice 2 of 4, channel 0 of 2"),
        ((2, 3, 4, 5, 6), "line", "flattened, first 256 of 720"),
    ],
)
def test_sample_view_picks_a_picture_by_shape(shape, kind, note):
    got_kind, values, got_note = sample_view(np.arange(np.prod(shape), dtype=np.float32).reshape(shape))
    assert (got_kind, got_note) == (kind, note)
    if kind == "rgb":
        assert values.shape[-1] == shape[-1] and values.min() >= 0 and values.max() <= 1


def test_sample_view_draws_complex_values_as_magnitudes():
    kind, values, note = sample_view(np.full((6, 8, 10), 3 + 4j, dtype=np.complex64))
    assert (kind, note, values.shape) == ("gray", "|x|, slice 3 of 6", (8, 10))
    assert np.all(values == 5)
