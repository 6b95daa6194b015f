"""The store format's names and limits, shared by the manifest, the index and the backends.

Words used throughout: a *row* is a global position in the store, a *local row* a position in a
shard.
"""

FORMAT_NAME = "shardfeed"
FORMAT_VERSION = 3  # the newest version this shardfeed reads
# Fixed-shape stores are still written as version 1, byte for byte as before version 2 existed; a
# store of variable-shape samples (`ragged`) is version 2, one with target arrays (`TARGETS_DIR`)
# version 3: older readers refuse each in one line rather than misread it.
FIXED_SHAPE_VERSION = 1
VARIABLE_SHAPE_VERSION = 2
TARGETS_VERSION = 3
# Per-sample target arrays (`convert --targets`) are a store of their own inside the store, with the
# same rows, chunk rows and shard rows: every reader, check and tool of a store serves them as well.
TARGETS_DIR = "targets"
MAX_SHARD_ELEMENTS_BYTES = 2**44  # a shard cell of a variable-shape store; bounds offsets read from an index
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.npz"
WORK_DIR = ".convert"  # exists only while a conversion is unfinished
LOCK_NAME = ".lock"  # the converter's lock file; left behind by an interrupted conversion
MAX_MANIFEST_BYTES = 256 * 2**20
MAX_CHUNK_BYTES = 2**32  # the converter refuses larger chunks; a reader refuses them too
BACKEND_NAMES = ("hdf5", "zarr")
COMPRESSIONS = {"hdf5": ("none", "gzip"), "zarr": ("none", "zstd", "lz4", "gzip")}
