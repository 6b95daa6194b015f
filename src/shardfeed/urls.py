"""Local paths and fsspec URLs (`s3://bucket/x.zarr`, `memory://x`): the one notion all wings share.

Local inputs and stores keep using plain files (fsync, rename, flock, mmap). Remote ones go through
fsspec, with credentials and endpoint from the usual environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...) or `storage_options`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import OptionError, RemoteError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str | os.PathLike) -> bool:
    return isinstance(path, str) and bool(_URL.match(path)) and not path.startswith("file://")


class RemoteLocation:
    """A root (SRC or a store) on an fsspec file system: a few byte-level operations, nothing more."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs = None
        self._fs_pid = -1
        try:
            self.fs.exists(self.path)  # fail now on a bad URL, bad options or no server, not at the first read
        except TypeError as exc:  # fsspec passes unknown options on to the file system's session
            raise OptionError(f"{self.url}: storage options not understood ({exc}); check --storage-options") from exc

    @property
    def fs(self):
        """The file system of this process: async fsspec file systems are not fork-safe."""
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs, self.path = url_fs(self.url, self.storage_options)
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

    def stamp(self, name: str) -> tuple:
        """What tells this object from the next one written at `name`: its ETag (or modification
        time where the file system has no ETag) and size, fresh from the server, not from a cache."""
        path = self / name
        self.fs.invalidate_cache(path)
        info = self.fs.info(path)
        version = next((info[k] for k in ("ETag", "etag", "mtime", "LastModified", "created") if k in info), None)
        return str(version), info.get("size")

    def size(self, name: str) -> int:
        return self.fs.size(self / name)

    def remove_tree(self, name: str = "") -> None:
        target = self / name if name else self.path
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        self.fs.invalidate_cache()


def url_fs(url: str, storage_options: dict | None = None) -> tuple[Any, str]:
    """fsspec's file system and path for `url`; fsspec is imported here, on first use of a URL,
    so that `import shardfeed` and the CLI's start stay fast (fsspec costs ~0.15 s to import)."""
    import fsspec.core

    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError, TypeError) as exc:  # no such protocol, a bad URL, unknown options
        raise OptionError(f"{url}: cannot open this URL ({exc}); for s3:// pip install 'shardfeed[s3]'") from exc
    return ReportingFileSystem(fs, url), path


@contextlib.contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """A client library's own exceptions (botocore's EndpointConnectionError, NoCredentialsError,
    ...) become one `RemoteError` naming the URL. OSErrors (fsspec's FileNotFoundError,
    PermissionError), TypeErrors (unknown options) and our own errors pass unchanged."""
    try:
        yield
    except (OSError, TypeError, OptionError, RemoteError):
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RemoteError(f"{url}: {reason}") from exc


class ReportingFileSystem:
    """An fsspec file system whose every call fails with `remote_errors`: one mechanism for every
    remote operation, wherever in shardfeed it is made."""

    def __init__(self, fs: Any, url: str) -> None:
        self._fs, self._url = fs, url

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_fs", "_url"):  # unpickling looks these up before __init__
            raise AttributeError(name)
        attr = getattr(self._fs, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            with remote_errors(self._url):
                return attr(*args, **kwargs)

        return call


def local_root(path: str | os.PathLike) -> Path:
    if isinstance(path, str) and path.startswith("file://"):
        path = path[len("file://") :]
    return Path(path)
