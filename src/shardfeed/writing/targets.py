"""Per-sample target arrays (`convert --targets DIR`): a mask beside each image, a sequence of tags
beside each sequence.

They are converted into a store of their own inside the samples' store (`format.TARGETS_DIR`): the
same IDs in the same rows, the same chunk and shard rows, backend and compression, and their own
index of checksums, so that reading, `verify`, resume and every tool serve them unchanged. They are
written after the samples' shards and before the samples' manifest, which commits them by their
manifest's checksum: until then the store is unfinished, whatever was written of its targets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..errors import InputError, OptionError
from ..inputs.classfolders import is_class_folders
from ..inputs.scan import SourceSet, ids_for, scan_sources
from ..storage.backends import Backend, Layout
from ..storage.format import MANIFEST_NAME, TARGETS_DIR
from ..storage.manifest import Manifest
from ..urls import is_url, local_root
from .local import convert_local
from .plan import layout_like, make_tasks
from .pool import ProgressCallback
from .remote import convert_remote
from .shardtask import ShardRecord, ShardTask

Run = Callable[[list[ShardTask]], Iterator[ShardRecord]]


def scan_targets(
    targets: str | os.PathLike,
    sources: SourceSet,
    *,
    variable_shapes: bool,
    storage_options: dict | None = None,
    ids: str | os.PathLike | Sequence[str] | None = None,
) -> SourceSet:
    """The target array of every sample of `sources`, validated as samples are, in their rows. A sample
    without one is refused; files of other IDs in `targets` are counted as unlisted, as in SRC."""
    if not is_url(targets) and is_class_folders(local_root(targets)):
        raise OptionError(f"{targets}: --targets is a folder of <ID>.npy files (or one .npy or .npz), "
                          f"not a folder per class")  # fmt: skip
    partition: dict[str, list[str]] = {name: [] for name in sources.splits}
    for sample in sources.samples:
        partition[sample.split].append(sample.id)
    try:
        found = scan_sources(targets, None, partition, storage_options, ids_for(targets, ids))
        if not variable_shapes:
            found.refuse_varying_shapes()
    except InputError as exc:
        raise InputError(f"target arrays (--targets): {exc}") from exc
    return found


def convert_targets(
    out: Path | str,
    targets: SourceSet,
    samples_layout: Layout,
    backend: Backend,
    run: Run,
    progress: ProgressCallback | None,
    *,
    storage_options: dict | None,
    resume: bool,
) -> Manifest:
    """Convert the targets into the target store of the store at `out` (local, or at a URL), with the
    samples' chunk and shard rows; returns its manifest. A resumed conversion continues an unfinished
    target store, and converts a finished one again: it may be of other inputs than this plan's."""
    layout = layout_like(targets, samples_layout)
    if is_url(out):
        where = f"{str(out).rstrip('/')}/{TARGETS_DIR}"
        tasks = make_tasks(targets, layout, backend.name, where, storage_options)
        return convert_remote(where, targets, layout, backend, tasks, storage_options=storage_options,
                              overwrite=False, resume=False, run=run)  # fmt: skip
    where = Path(out) / TARGETS_DIR
    complete = (where / MANIFEST_NAME).exists()
    tasks = make_tasks(targets, layout, backend.name, where)
    return convert_local(where, targets, layout, backend, tasks, run, progress, overwrite=complete,
                         resume=resume and not complete)  # fmt: skip
