"""What `shardfeed show` and `inspect --plot` draw: samples of a store and its label histogram per split.

Looking at a few samples catches what no checksum can (a wrong axis order, an empty channel,
labels swapped between classes). matplotlib (the `show` extra) is imported only when drawing,
with the Agg backend: no display is needed, and the rest of shardfeed never pays its import.
The same store, choice and suffix give the same bytes: no dates or versions in the file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..errors import OptionError, missing_extra
from .inspection import describe
from .store import Store

DPI = 100
CELL_INCHES = (2.0, 2.2)  # one sample: its picture and a two-line title
HISTOGRAM_INCHES = 3.0
MIN_WIDTH_INCHES = 6.0
LINE_VALUES = 256  # values drawn of a sample that has no picture
MAX_SAMPLES = 64  # an 8 x 8 grid; more would make a picture of tens of thousands of pixels a side
FORMATS = ("png", "pdf", "svg")
# Dates and versions that matplotlib would write into each format: dropped so reruns give the same bytes.
_NO_STAMPS = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}


def choose_rows(
    store: Store, ids: list[str] | None = None, split: str | None = None, n: int = 16, seed: int = 0
) -> np.ndarray:
    """Rows to draw: those of `ids`, or `n` rows of `split` (default: every row) chosen by `seed`.

    A seeded choice, not the first rows, since stores are ordered by split and input (often by
    class); the seed makes the picture reproducible. Unknown IDs or split raise the store's errors.
    """
    if ids:
        if len(ids) > MAX_SAMPLES:
            raise OptionError(f"{len(ids)} IDs given; a picture shows at most {MAX_SAMPLES} samples")
        return store.rows(ids)
    if not 1 <= n <= MAX_SAMPLES:
        raise OptionError(f"-n must be from 1 to {MAX_SAMPLES}, got {n}")
    pool = store.split(split) if split is not None else np.arange(len(store), dtype=np.int64)
    if len(pool) == 0:
        raise OptionError(f"{store.path}: split {split!r} has no samples to show")
    chosen = np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False)
    return pool[np.sort(chosen)]


def write_samples(store: Store, rows: np.ndarray, path: str | os.PathLike) -> None:
    """Draw the samples at `rows` in a grid titled with ID and label, above the label histogram per split."""
    suffix = _format_of(path)
    plt = _pyplot()
    cols = math.ceil(math.sqrt(len(rows)))
    grid_rows = math.ceil(len(rows) / cols)
    width = max(cols * CELL_INCHES[0], MIN_WIDTH_INCHES)
    fig = plt.figure(figsize=(width, grid_rows * CELL_INCHES[1] + HISTOGRAM_INCHES), layout="constrained")
    heights = [CELL_INCHES[1]] * grid_rows + [HISTOGRAM_INCHES]
    grid = fig.add_gridspec(grid_rows + 1, cols, height_ratios=heights)
    for k, row in enumerate(rows.tolist()):  # one sample in memory at a time: volumes can be large
        ax = fig.add_subplot(grid[k // cols, k % cols])
        note = _draw_sample(ax, store.read([row])[0])
        ax.set_title("\n".join(filter(None, [_caption(store, row), note])), fontsize=7)
    _draw_histograms(fig.add_subplot(grid[grid_rows, :]), store)
    _save(fig, path, suffix)


def write_histograms(store: Store, path: str | os.PathLike) -> None:
    """Draw the label histogram per split alone (`inspect --plot`)."""
    suffix = _format_of(path)
    plt = _pyplot()
    fig = plt.figure(figsize=(MIN_WIDTH_INCHES + 2, HISTOGRAM_INCHES + 1), layout="constrained")
    _draw_histograms(fig.add_subplot(), store)
    _save(fig, path, suffix)


def sample_view(sample: np.ndarray) -> tuple[str, np.ndarray, str]:
    """How a sample is drawn: ("line" | "gray" | "rgb", the values to draw, a note for the title).

    2-D: a gray image. 3-D: (H, W, C) with 1, 3 or 4 channels is an image, any other a volume
    drawn as its middle slice along the first axis; 4-D (D, H, W, C) with C <= 4 is a volume of
    channels, sliced the same way. 1-D: a line. Anything else: its first values as a line.
    The part drawn is picked before any conversion, so a large volume is never copied whole.
    """
    values = np.asarray(sample)
    shape, where = values.shape, ""
    if values.ndim == 3 and shape[-1] in (1, 3, 4) and min(shape[:2]) > 4:
        picture = values  # (H, W, C): an image
    elif values.ndim == 3 or (values.ndim == 4 and shape[-1] <= 4):
        picture, where = values[shape[0] // 2], f"slice {shape[0] // 2} of {shape[0]}"
    elif values.ndim in (1, 2):
        picture = values
    else:
        flat = values.reshape(-1)
        picture = flat[:LINE_VALUES]
        where = _join("flattened", f"first {LINE_VALUES} of {flat.size:,}" if flat.size > LINE_VALUES else "")
    magnitude = picture.dtype.kind == "c"
    picture = (np.abs(picture) if magnitude else picture).astype(np.float64)
    note = _join("|x|" if magnitude else "", where)
    if picture.ndim == 1:
        return "line", picture, note
    if picture.ndim == 3:
        kind, picture, channels = _channels(picture)
        return kind, picture, _join(note, channels)
    return "gray", picture, note


def _channels(image: np.ndarray) -> tuple[str, np.ndarray, str]:
    """(H, W, C): 3 or 4 channels as RGB(A) scaled to [0, 1], otherwise the first channel in gray."""
    channels = image.shape[-1]
    if channels in (3, 4):
        finite = image[np.isfinite(image)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
        return "rgb", np.clip(np.nan_to_num(scaled), 0.0, 1.0), "RGBA" if channels == 4 else "RGB"
    return "gray", image[..., 0], f"channel 0 of {channels}" if channels > 1 else ""


def _draw_sample(ax, sample: np.ndarray) -> str:
    kind, values, note = sample_view(sample)
    if kind == "line":
        ax.plot(np.arange(len(values)), values, linewidth=0.8)
        ax.tick_params(labelsize=6)
        return note
    if kind == "gray":
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        ax.imshow(values, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    else:
        ax.imshow(values, interpolation="nearest")
    ax.set_axis_off()
    return note


def _caption(store: Store, row: int) -> str:
    sample_id = store.ids[row]
    sample_id = sample_id if len(sample_id) <= 28 else sample_id[:27] + "…"
    if store.labels is None:
        return _literal(sample_id)
    label = int(store.labels[row])
    names = store.class_names
    return _literal(f"{sample_id} · {names[label] if names else label}")


def _draw_histograms(ax, store: Store) -> None:
    """Bars of each split's label counts side by side, classes on x; an unlabeled store: split sizes."""
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
    histograms = describe(store)["label_histogram"]
    splits = store.splits
    if histograms is None:
        ax.bar([_literal(name) for name in splits], list(splits.values()), color="#2a6fbb")
        ax.set_title("unlabeled store: samples per split", fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        return
    names = store.class_names
    order = {name: k for k, name in enumerate(names)}.__getitem__ if names else int  # keys: names or numbers
    classes = sorted({c for hist in histograms.values() for c in hist}, key=order)
    width = 0.8 / max(1, len(histograms))
    x = np.arange(len(classes))
    for k, (split, hist) in enumerate(histograms.items()):
        counts = [hist.get(c, 0) for c in classes]
        offset = (k - (len(histograms) - 1) / 2) * width
        ax.bar(x + offset, counts, width, label=_literal(f"{split} ({splits[split]:,})"))
    step = max(1, math.ceil(len(classes) / 40))  # at most 40 class names stay readable
    slanted = len(classes) > 8
    ticks = [_literal(c) for c in classes[::step]]
    ax.set_xticks(x[::step], ticks, rotation=45 if slanted else 0, ha="right" if slanted else "center", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("samples", fontsize=8)
    ax.set_title("labels per split", fontsize=9, loc="left")
    ax.legend(fontsize=7, title="split", title_fontsize=7)


def _literal(text: str) -> str:
    """Text drawn as written: matplotlib reads a pair of `$` as math (and fails on bad math)."""
    return text.replace("$", r"\$")


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _format_of(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise OptionError(f"{path}: cannot tell the picture format; name it *.png, *.pdf or *.svg")
    return suffix


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), or the one-line error naming the extra."""
    try:
        import matplotlib
    except ModuleNotFoundError as exc:
        raise missing_extra(exc) from None  # "matplotlib is not installed: pip install 'shardfeed[show]'"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, suffix: str) -> None:
    import matplotlib.pyplot as plt

    try:
        with plt.rc_context({"svg.hashsalt": "shardfeed"}):  # SVG element ids: the same on every run
            fig.savefig(path, dpi=DPI, format=suffix, metadata=_NO_STAMPS[suffix])
    finally:
        plt.close(fig)
