"""Where a store lives: a local directory or an fsspec URL (`s3://bucket/x.zarr`, `memory://x`).

Local stores keep using plain files (fsync, rename, flock, mmap). Remote stores go through
fsspec, with credentials and endpoint from the usual environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...) or `storage_options`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import OptionError, StoreNotFinalizedError, StoreNotFoundError
from .manifest import INDEX_NAME, MANIFEST_NAME, MAX_MANIFEST_BYTES, WORK_DIR, Index, Manifest, parse_index

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str | os.PathLike) -> bool:
    return isinstance(path, str) and bool(_URL.match(path)) and not path.startswith("file://")


class RemoteLocation:
    """A store root on an fsspec file system: a few byte-level operations, nothing more."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs = None
        self._fs_pid = -1
        self.fs  # noqa: B018 - fail now on a bad URL, not at the first read

    @property
    def fs(self):
        """The file system of this process: async fsspec file systems are not fork-safe."""
        if self._fs is None or self._fs_pid != os.getpid():
            from fsspec.core import url_to_fs

            try:
                self._fs, self.path = url_to_fs(self.url, **self.storage_options)
            except (ImportError, ValueError) as exc:
                raise OptionError(
                    f"{self.url}: cannot open this URL ({exc}); for s3:// pip install 'shardfeed[s3]'"
                ) from exc
            self._fs_pid = os.getpid()
        return self._fs

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None, "_fs_pid": -1}

    def __str__(self) -> str:
        return self.url

    def __truediv__(self, name: str) -> str:
        return f"{self.path}/{name}"

    def url_of(self, name: str) -> str:
        return f"{self.url}/{name}"

    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self / name)

    def write_bytes(self, name: str, data: bytes) -> None:
        """One PUT: an object appears whole or not at all, which is what the manifest needs."""
        self.fs.pipe_file(self / name, data)

    def exists(self, name: str = "") -> bool:
        return self.fs.exists(self / name if name else self.path)

    def size(self, name: str) -> int:
        return self.fs.size(self / name)

    def remove_tree(self, name: str = "") -> None:
        target = self / name if name else self.path
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        self.fs.invalidate_cache()

    def load_manifest(self) -> Manifest:
        """The manifest, refusing a missing or unfinished store (as `manifest.load_manifest`)."""
        if not self.exists(MANIFEST_NAME):
            if self.exists(WORK_DIR):
                raise StoreNotFinalizedError(
                    f"{self.url}: store is not finalized (its conversion was interrupted or is still "
                    f"running); finish it with 'shardfeed convert ... --resume'"
                )
            raise StoreNotFoundError(f"{self.url}: no shardfeed store here (no {MANIFEST_NAME})")
        if self.size(MANIFEST_NAME) > MAX_MANIFEST_BYTES:
            raise StoreNotFoundError(f"{self.url_of(MANIFEST_NAME)}: larger than {MAX_MANIFEST_BYTES} bytes")
        return Manifest.from_json(self.read_bytes(MANIFEST_NAME), self.url_of(MANIFEST_NAME))

    def load_index(self, manifest: Manifest) -> Index:
        return parse_index(self.read_bytes(INDEX_NAME), manifest, self.url_of(INDEX_NAME))

    def zarr_store(self, read_only: bool):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, storage_options=self.storage_options or None, read_only=read_only)


def local_root(path: str | os.PathLike) -> Path:
    if isinstance(path, str) and path.startswith("file://"):
        path = path[len("file://") :]
    return Path(path)
