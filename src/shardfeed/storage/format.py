"""The store format's names and limits, shared by the manifest, the index and the backends.

Words used throughout: a *row* is a global position in the store, a *local row* a position in a
shard.
"""

FORMAT_NAME = "shardfeed"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.npz"
WORK_DIR = ".convert"  # exists only while a conversion is unfinished
LOCK_NAME = ".lock"  # the converter's lock file; left behind by an interrupted conversion
MAX_MANIFEST_BYTES = 256 * 2**20
MAX_CHUNK_BYTES = 2**32  # the converter refuses larger chunks; a reader refuses them too
BACKEND_NAMES = ("hdf5", "zarr")
COMPRESSIONS = {"hdf5": ("none", "gzip"), "zarr": ("none", "zstd", "lz4", "gzip")}
