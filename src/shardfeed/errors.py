"""Error types. Each one subclasses `ShardfeedError` and the builtin a caller would expect,
so `except KeyError` and `except ShardfeedError` both work."""

from __future__ import annotations


class ShardfeedError(Exception):
    """Base of every error shardfeed raises on purpose."""

    def __str__(self) -> str:
        # KeyError's str() quotes its argument; our messages are sentences, not keys.
        return str(self.args[0]) if self.args else ""


class InputError(ShardfeedError, ValueError):
    """A source file, ID, label or partition is not what conversion needs."""


class OptionError(ShardfeedError, ValueError):
    """A conversion or reading option is invalid or unsupported by the chosen backend."""


class CallError(ShardfeedError, TypeError):
    """A function was called with arguments of the wrong kind (say, the Keras tutorial's generator call)."""


class StoreExistsError(ShardfeedError, FileExistsError):
    """The output path exists and --overwrite was not given (or it is not ours to delete)."""


class StoreLockedError(ShardfeedError, BlockingIOError):
    """Another conversion holds the store's lock file."""


class StoreNotFoundError(ShardfeedError, FileNotFoundError):
    """No store at the path."""


class StoreNotFinalizedError(ShardfeedError, RuntimeError):
    """The store has no manifest: its conversion did not finish."""


class StoreFormatError(ShardfeedError, ValueError):
    """The manifest or index is malformed, inconsistent, or of a newer format version."""


class ShardNotFoundError(ShardfeedError, FileNotFoundError):
    """A shard named in the manifest is missing."""


class ChecksumError(ShardfeedError, OSError):
    """Bytes read back do not match the checksum recorded at conversion."""


class UnknownIDError(ShardfeedError, KeyError):
    """Sample IDs that are not in the store."""


class UnknownSplitError(ShardfeedError, KeyError):
    """A split name that is not in the store."""


class WorkerDiedError(ShardfeedError, RuntimeError):
    """A data-loading or conversion worker process died (for example killed by the OOM killer)."""


class DiskFullError(ShardfeedError, OSError):
    """The output's file system is full, or a file-size limit was reached."""


class StoreReplacedError(StoreFormatError):
    """The store was converted again (`--overwrite`) or appended to after it was opened: reopen it."""


class RemoteError(ShardfeedError, OSError):
    """A remote file system could not be reached or refused a request (no server, no credentials)."""


class TransformError(ShardfeedError, RuntimeError):
    """A `transform` failed or returned the wrong shape; the message names the sample and the epoch."""


class MissingDependencyError(ShardfeedError, ImportError):
    """An optional framework or library is not installed; the message names the extra that brings it."""


# What `pip install 'shardfeed[EXTRA]'` brings each optional top-level module.
EXTRA_OF = {
    "keras": "tensorflow", "tensorflow": "tensorflow", "jax": "jax", "jaxlib": "jax", "torch": "torch",
    "grain": "grain", "matplotlib": "show", "dask": "dask", "distributed": "dask", "s3fs": "s3",
}  # fmt: skip


def missing_extra(exc: ModuleNotFoundError) -> MissingDependencyError | ModuleNotFoundError:
    """The one-line error for an optional module that is not installed (`exc` itself for any other module)."""
    top = (exc.name or "").partition(".")[0]
    if top not in EXTRA_OF:
        return exc
    extra = EXTRA_OF[top]
    choice = " (or [jax] or [torch]: the Keras backend you train with)" if top == "keras" else ""
    return MissingDependencyError(f"{top} is not installed: pip install 'shardfeed[{extra}]'{choice}")

