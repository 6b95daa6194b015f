"""Conversion into a Zarr store at an fsspec URL (`s3://bucket/x.zarr`).

Object stores have no locks, no rename and no fsync, but a PUT makes an object appear whole.
So: a plan object marks the store unfinished first, shards are written as whole objects, and
the index then the manifest are written last, as locally. `--resume` is for local stores only:
a remote conversion that was interrupted is started again with `--overwrite`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from ..errors import OptionError, StoreExistsError
from ..inputs.scan import SourceSet
from ..storage.backends import Backend, Layout
from ..storage.format import INDEX_NAME, MANIFEST_NAME, WORK_DIR
from ..storage.manifest import Manifest
from ..urls import RemoteLocation
from .commit import build_index_and_manifest
from .shardtask import ShardRecord, ShardTask


def convert_remote(
    url: str,
    sources: SourceSet,
    layout: Layout,
    backend: Backend,
    tasks: list[ShardTask],
    *,
    storage_options: dict | None,
    overwrite: bool,
    resume: bool,
    run: Callable[[list[ShardTask]], Iterable[ShardRecord]],
    write_targets: Callable[[bool], Manifest] | None = None,
) -> Manifest:
    """A store at a URL: written afresh (`write_targets(False)` converts its target arrays before the
    index and manifest)."""
    location = RemoteLocation(url, storage_options)
    if resume:
        raise OptionError(f"{url}: --resume works for local stores; restart a remote conversion with --overwrite")
    if location.exists(MANIFEST_NAME) or location.exists(WORK_DIR):
        if not overwrite:
            raise StoreExistsError(f"{url}: a store exists here; pass --overwrite to replace it")
        location.remove_tree()
    elif location.exists() and location.fs.ls(location.path):
        raise StoreExistsError(f"{url}: exists and is not a shardfeed store; refusing to write into it")
    backend.prepare_remote(location, layout.stored())
    location.write_bytes(f"{WORK_DIR}/plan.json", json.dumps({"num_samples": layout.num_samples}).encode())
    records = sorted(run(tasks), key=lambda r: r.info.first_row)
    targets = None if write_targets is None else write_targets(False)
    index_bytes, manifest = build_index_and_manifest(sources, layout, backend.name, records, targets)
    location.write_bytes(INDEX_NAME, index_bytes)
    location.write_bytes(MANIFEST_NAME, manifest.to_json().encode("utf-8"))
    location.remove_tree(WORK_DIR)
    return manifest
