"""Hostile inputs and stores: a corpus of crafted cases, each refused with a clear
`ShardfeedError` in under 2 s, under a memory limit, without running code or hanging.

Inputs: pickles and object dtypes whose payload would create a canary file, ZIP files named .npy,
headers with huge, negative, overflowing or non-integer shapes, over-long and malformed headers,
unsupported dtypes, unsafe IDs (`..`, absolute paths, NUL, RTL override, zero-width and surrogate
characters, case collisions), symlinks out of SRC and to /dev/zero, FIFOs, devices, hardlink
duplicates, hostile labels. Stores: HDF5 shards with external storage (/etc/passwd), virtual
datasets, external and soft links, wrong shape, dtype or filters; Zarr metadata with unknown or
reordered codecs, big-endian bytes, chunk bombs, shard indexes pointing past EOF; manifests with
escaping, absolute or NUL shard paths, inconsistent rows, wrong types, newer versions, not JSON;
corrupt, pickled or lying indexes, and lying shapes and offsets of variable-shape samples;
FIFOs, devices and symlinks where store files should be.

All cases run in one subprocess (tests/hostile_runner.py) under RLIMIT_AS, so a case that tried
to allocate what a header claims would fail with MemoryError, which the tests look for in the
exception chain; a case that hangs is interrupted and reported.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

import shardfeed

pytestmark = pytest.mark.timeout(300)

ADDRESS_SPACE = 1536 * 2**20  # 1.5 GiB: imports fit, a 74 GiB header claim does not
MAX_SECONDS = 2.0
MAX_PEAK_RSS_MB = 200
RUNNER = Path(__file__).with_name("hostile_runner.py")


# Crafting helpers.


class Payload:
    """Unpickling this creates (opens for writing) the canary file: code execution."""

    def __init__(self, canary: Path) -> None:
        self.canary = str(canary)

    def __reduce__(self):
        return (open, (self.canary, "w"))


def npy_bytes(header: str | bytes, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy file with an arbitrary header text, padded and sized the way numpy writes them."""
    text = header.encode("latin1") if isinstance(header, str) else header
    size_format = "<H" if version == (1, 0) else "<I"
    prefix = len(b"\x93NUMPY") + 2 + struct.calcsize(size_format)
    text += b" " * (-(prefix + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(size_format, len(text)) + text + data


def header(shape, descr="'<f4'", fortran="False") -> str:
    return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"


def npy(text: str | bytes, data: bytes = bytes(24), version=(1, 0)) -> Callable[[Path], None]:
    """A writer of a crafted .npy file, for `Kit.convert`."""
    return lambda path: path.write_bytes(npy_bytes(text, data, version))


@dataclass
class Kit:
    """Where cases are built: a fresh folder each, a canary, and valid stores to damage."""

    root: Path
    canary: Path
    stores: dict[str, Path]

    def folder(self, name: str) -> Path:
        path = self.root / "cases" / name
        path.mkdir(parents=True)
        return path

    def src(self, name: str, bad: Callable[[Path], None] | None = None, n: int = 3) -> Path:
        """A SRC folder of `n` valid samples id-0..; `bad(path)` writes `id-bad.npy` if given."""
        src = self.folder(name) / "src"
        src.mkdir()
        for k in range(n):
            np.save(src / f"id-{k}.npy", np.full((2, 3), k, "float32"))
        if bad is not None:
            bad(src / "id-bad.npy")
        return src

    def convert(self, name: str, bad: Callable[[Path], None] | None = None, **args) -> dict:
        """Convert a SRC with one bad sample (`bad` writes it); `args` go to `convert()`."""
        src = self.src(name, bad)
        return self.convert_src(src, **args)

    def convert_src(self, src: Path, **args) -> dict:
        out = str(src.parent / "out")
        return {"action": "convert", "args": {"src": str(src), "out": out, **args}}

    def store(self, name: str, backend: str) -> Path:
        """A copy of a valid 12-sample store (chunks of 2 rows, shards of 4) to damage."""
        path = self.folder(name) / "store"
        shutil.copytree(self.stores[backend], path)
        return path

    def open_read(self, store: Path, **args) -> dict:
        return {"action": "open_read", "args": {"path": str(store), **args}}


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def write_index(store: Path, arrays: dict[str, np.ndarray], *, allow_pickle=False) -> None:
    """Replace index.npz and make the manifest's checksum agree, so the parser sees the bytes."""
    buf = (store / "index.npz").open("wb")
    with zipfile.ZipFile(buf, "w") as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, array, allow_pickle=allow_pickle)
    buf.close()
    fix_index_checksum(store)


def fix_index_checksum(store: Path) -> None:
    crc = zlib.crc32((store / "index.npz").read_bytes())
    edit_json(store / "manifest.json", lambda m: m.update(index_checksum=crc))


def index_arrays(store: Path) -> dict[str, np.ndarray]:
    with np.load(store / "index.npz") as npz:
        return {k: npz[k] for k in npz.files}


def rewrite_h5_shard(store: Path, build: Callable[[h5py.File], None]) -> None:
    path = store / "shards" / "shard-00000.h5"
    path.unlink()
    with h5py.File(path, "w") as f:
        build(f)


def zarr_shard(store: Path, k: int = 0) -> Path:
    return store / "x" / "c" / str(k) / "0" / "0"


def sharding(meta: dict) -> dict:
    return meta["codecs"][0]["configuration"]


# The corpus: name -> (builder, regex the error message must match).

CASES: dict[str, tuple[Callable[[Kit, str], dict], str]] = {}


def case(expected: str):
    def register(build):
        CASES[build.__name__.removeprefix("case_")] = (build, expected)
        return build

    return register


@case(r"object dtype \(a pickle\) refused")
def case_pickled_object_array(kit, name):
    return kit.convert(name, lambda p: np.save(p, np.array([Payload(kit.canary)], dtype=object),
                                               allow_pickle=True))  # fmt: skip


@case(r"not a \.npy file \(bad magic\)")
def case_raw_pickle_named_npy(kit, name):
    return kit.convert(name, lambda p: p.write_bytes(pickle.dumps(Payload(kit.canary))))


@case(r"is a ZIP archive")
def case_npz_with_pickle_named_npy(kit, name):
    def bad(path):
        with path.open("wb") as f:
            np.savez(f, x=np.array([Payload(kit.canary)], dtype=object), allow_pickle=True)

    return kit.convert(name, bad)


@case(r"object dtype \(a pickle\) refused|dtype .* not supported")
def case_object_field_in_structured_dtype(kit, name):
    data = pickle.dumps(Payload(kit.canary))
    return kit.convert(name, npy(header("(1,)", "[('a', '|O')]"), data))


@case(r"invalid \.npy header")
def case_header_with_code(kit, name):
    code = f"__import__('os').system('touch {kit.canary}')"
    return kit.convert(name, npy(header(f"({code},)")))


@case(r"header says shape \(1000000, 1000000, 20000\) <f4 = 80000000000000000 bytes")
def case_huge_shape(kit, name):
    return kit.convert(name, npy(header("(1000000, 1000000, 20000)")))


@case(r"header says shape .* bytes, but the file holds 24 bytes")
def case_shape_overflowing_int64(kit, name):
    return kit.convert(name, npy(header(f"({2**40}, {2**40})")))


@case(r"negative or non-integer dimensions")
def case_negative_shape(kit, name):
    return kit.convert(name, npy(header("(-2, -3)")))


@case(r"negative or non-integer dimensions")
def case_bool_in_shape(kit, name):
    return kit.convert(name, npy(header("(True, 6)")))


@case(r"invalid \.npy header")
def case_float_in_shape(kit, name):
    return kit.convert(name, npy(header("(2.5, 3)")))


@case(r"invalid \.npy header")
def case_overlong_header(kit, name):
    text = header("(2, 3)")[:-1] + "'pad': '" + "x" * 200_000 + "'}"
    return kit.convert(name, npy(text, version=(2, 0)))


@case(r"invalid \.npy header")
def case_deeply_nested_header(kit, name):
    text = header("(2, 3)", descr="[" * 3000 + "]" * 3000)
    return kit.convert(name, npy(text, version=(2, 0)))


@case(r"invalid \.npy header")
def case_header_not_a_dict(kit, name):
    return kit.convert(name, npy("[1, 2, 3]"))


@case(r"invalid \.npy header")
def case_header_missing_keys(kit, name):
    return kit.convert(name, npy("{'descr': '<f4'}"))


@case(r"invalid \.npy header")
def case_header_extra_keys(kit, name):
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'evil': 1}"
    return kit.convert(name, npy(text))


@case(r"invalid \.npy header")
def case_header_not_latin1_text(kit, name):
    return kit.convert(name, npy(b"\xff\xfe{\x00\x01"))


@case(r"dtype <U6 not supported")
def case_unicode_dtype(kit, name):
    return kit.convert(name, npy(header("(1,)", "'<U6'")))


@case(r"invalid \.npy header|not supported")
def case_absurd_itemsize(kit, name):
    return kit.convert(name, npy(header("(1,)", "'V99999999999999'")))


@case(r"not supported")
def case_subarray_dtype(kit, name):
    return kit.convert(name, npy(header("(1,)", "('<f4', (6,))")))


@case(r"truncated or corrupt")
def case_truncated_data(kit, name):
    return kit.convert(name, npy(header("(2, 3)"), bytes(23)))


@case(r"unsupported \.npy version \(9, 0\)")
def case_unknown_npy_version(kit, name):
    return kit.convert(name, npy(header("(2, 3)"), version=(9, 0)))


@case(r"not a \.npy file \(bad magic\), or truncated")
def case_empty_file(kit, name):
    return kit.convert(name, lambda p: p.write_bytes(b""))


# IDs, from a partition file written as raw JSON text (escapes included).


def _partition_case(kit, name, ids_json: str, files: tuple[str, ...] = ()) -> dict:
    src = kit.src(name)
    for file_name in files:
        (src / file_name).write_bytes((src / "id-0.npy").read_bytes())
    partition = src.parent / "partition.json"
    partition.write_text('{"train": ["id-0", ' + ids_json + "]}")
    return kit.convert_src(src, partition=str(partition))


@case(r"ID '\.\./escape' starts with '\.'")
def case_id_parent_directory(kit, name):
    (kit.root / "escape.npy").write_bytes(npy_bytes(header("(2, 3)"), bytes(24)))
    return _partition_case(kit, name, '"../escape"')


@case(r"ID '/etc/passwd' contains a path separator")
def case_id_absolute_path(kit, name):
    return _partition_case(kit, name, '"/etc/passwd"')


@case(r"contains a control, format or surrogate character")
def case_id_with_nul(kit, name):
    return _partition_case(kit, name, '"id-1\\u0000.npy"')


@case(r"contains a control, format or surrogate character")
def case_id_with_rtl_override(kit, name):
    return _partition_case(kit, name, '"id-\\u202egnp"', files=("id-\u202egnp.npy",))


@case(r"contains a control, format or surrogate character")
def case_id_with_zero_width_space(kit, name):
    return _partition_case(kit, name, '"id\\u200b-1"', files=("id\u200b-1.npy",))


@case(r"contains a control, format or surrogate character")
def case_id_with_lone_surrogate(kit, name):
    return _partition_case(kit, name, '"id-\\ud800"')


@case(r"contains a path separator")
def case_id_with_backslash(kit, name):
    return _partition_case(kit, name, '"id-0\\\\..\\\\etc"')


@case(r"is longer than 200 bytes")
def case_id_too_long(kit, name):
    return _partition_case(kit, name, '"' + "\u00e9" * 150 + '"')


@case(r"ID 42 is a int, expected a string")
def case_id_not_a_string(kit, name):
    return _partition_case(kit, name, "42")


@case(r"sample 'ID-0' has no file")
def case_id_case_collision(kit, name):
    return _partition_case(kit, name, '"ID-0"')  # id-0.npy exists; Linux names are case-sensitive


@case(r"contains a control, format or surrogate character")
def case_undecodable_file_name(kit, name):
    src = kit.src(name)
    os.link(src / "id-0.npy", os.fsencode(src) + b"/id-\xff.npy")
    return kit.convert_src(src)


# The file system of SRC.


@case(r"is a symlink to /etc/passwd, outside")
def case_symlink_out_of_src(kit, name):
    return kit.convert(name, lambda p: p.symlink_to("/etc/passwd"))


@case(r"is a symlink to .*outside")
def case_symlink_to_canary_outside(kit, name):
    return kit.convert(name, lambda p: p.symlink_to(kit.canary))  # a dangling link out of SRC


@case(r"is a symlink to /dev/zero, outside")
def case_symlink_to_dev_zero(kit, name):
    return kit.convert(name, lambda p: p.symlink_to("/dev/zero"))


@case(r"is not a regular file")
def case_fifo(kit, name):
    return kit.convert(name, lambda p: os.mkfifo(p))


@case(r"is not a regular file")
def case_device(kit, name):
    def bad(path):
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
        except PermissionError:
            path.symlink_to(path.with_name("zero-device-not-permitted"))
            os.mkfifo(path.with_name("zero-device-not-permitted"))

    return kit.convert(name, bad)


@case(r"is not a regular file")
def case_directory_named_npy(kit, name):
    return kit.convert(name, lambda p: p.mkdir())


@case(r"samples 'id-0' and 'id-bad' are the same file")
def case_hardlink_duplicate(kit, name):
    return kit.convert(name, lambda p: os.link(p.with_name("id-0.npy"), p))


@case(r"samples 'id-0' and 'id-bad' are the same file")
def case_symlink_duplicate(kit, name):
    return kit.convert(name, lambda p: p.symlink_to(p.with_name("id-0.npy")))


# Labels.


def _labels_case(kit, name, text: str) -> dict:
    src = kit.src(name)
    labels = src.parent / "labels.json"
    labels.write_text(text)
    return kit.convert_src(src, labels=str(labels))


@case(r"has label 10{30}; integer labels are class numbers")
def case_label_huge_integer(kit, name):
    return _labels_case(kit, name, '{"id-0": 1, "id-1": 0, "id-2": 1' + "0" * 30 + "}")


@case(r"cannot read labels JSON")
def case_label_json_deep_nesting(kit, name):
    return _labels_case(kit, name, "[" * 100_000 + "]" * 100_000)


@case(r"cannot read labels JSON")
def case_label_json_huge_number(kit, name):
    return _labels_case(kit, name, '{"id-0": ' + "9" * 50_000 + "}")


@case(r"has label True \(bool\); labels must all be class numbers, class names")
def case_label_bool(kit, name):
    return _labels_case(kit, name, '{"id-0": true, "id-1": false, "id-2": true}')


# HDF5 shards.


@case(r"virtual or external storage")
def case_h5_external_storage_etc_passwd(kit, name):
    store = kit.store(name, "hdf5")
    external = [("/etc/passwd", 0, 96)]
    rewrite_h5_shard(store, lambda f: f.create_dataset("x", (4, 2, 3), "<f4", external=external))
    return kit.open_read(store)


@case(r"virtual or external storage")
def case_h5_virtual_dataset(kit, name):
    store = kit.store(name, "hdf5")
    source = store.parent / "elsewhere.h5"
    with h5py.File(source, "w") as f:
        f.create_dataset("data", data=np.ones((4, 2, 3), "<f4"), chunks=(2, 2, 3))
    layout = h5py.VirtualLayout(shape=(4, 2, 3), dtype="<f4")
    layout[...] = h5py.VirtualSource(str(source), "data", shape=(4, 2, 3))
    rewrite_h5_shard(store, lambda f: f.create_virtual_dataset("x", layout))
    return kit.open_read(store)


@case(r"'x' is an external or soft link, refused")
def case_h5_external_link(kit, name):
    store = kit.store(name, "hdf5")
    rewrite_h5_shard(store, lambda f: f.__setitem__("x", h5py.ExternalLink("/etc/passwd", "/x")))
    return kit.open_read(store)


@case(r"'x' is an external or soft link, refused")
def case_h5_soft_link(kit, name):
    store = kit.store(name, "hdf5")

    def build(f):
        f.create_dataset("y", data=np.ones((4, 2, 3), "<f4"), chunks=(2, 2, 3))
        f["x"] = h5py.SoftLink("/y")

    rewrite_h5_shard(store, build)
    return kit.open_read(store)


@case(r"shape \(4, 3, 2\), expected \(4, 2, 3\)")
def case_h5_wrong_shape(kit, name):
    store = kit.store(name, "hdf5")
    data = np.ones((4, 3, 2), "<f4")
    rewrite_h5_shard(store, lambda f: f.create_dataset("x", data=data, chunks=(2, 3, 2)))
    return kit.open_read(store)


@case(r"dtype <f8, expected <f4")
def case_h5_wrong_dtype(kit, name):
    store = kit.store(name, "hdf5")
    data = np.ones((4, 2, 3), "<f8")
    rewrite_h5_shard(store, lambda f: f.create_dataset("x", data=data, chunks=(2, 2, 3)))
    return kit.open_read(store)


@case(r"filters \[2\], expected \[\]")
def case_h5_unexpected_filter(kit, name):
    store = kit.store(name, "hdf5")
    data = np.ones((4, 2, 3), "<f4")
    chunks = (2, 2, 3)
    rewrite_h5_shard(store, lambda f: f.create_dataset("x", data=data, chunks=chunks, shuffle=True))
    return kit.open_read(store)


@case(r"chunks None, expected \(2, 2, 3\)")
def case_h5_contiguous_dataset(kit, name):
    store = kit.store(name, "hdf5")
    rewrite_h5_shard(store, lambda f: f.create_dataset("x", data=np.ones((4, 2, 3), "<f4")))
    return kit.open_read(store)


@case(r"'x' is not a dataset")
def case_h5_group_instead_of_dataset(kit, name):
    store = kit.store(name, "hdf5")
    rewrite_h5_shard(store, lambda f: f.create_group("x"))
    return kit.open_read(store)


@case(r"not a readable HDF5 shard")
def case_h5_not_hdf5(kit, name):
    store = kit.store(name, "hdf5")
    (store / "shards" / "shard-00000.h5").write_text("root:x:0:0:root:/root:/bin/bash\n" * 10)
    return kit.open_read(store)


@case(r"not a readable HDF5 shard|truncated or corrupt")
def case_h5_truncated(kit, name):
    store = kit.store(name, "hdf5")
    path = store / "shards" / "shard-00001.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return kit.open_read(store)


# Zarr metadata and shards.


@case(r"unreadable array metadata|array does not match the manifest")
def case_zarr_unknown_codec(kit, name):
    store = kit.store(name, "zarr")
    evil = {"name": "evil.codec"}
    edit_json(store / "x" / "zarr.json", lambda m: sharding(m)["codecs"].append(evil))
    return kit.open_read(store)


@case(r"codecs \['transpose', 'bytes'\]|unreadable array metadata")
def case_zarr_transpose_codec(kit, name):
    store = kit.store(name, "zarr")
    edit_json(store / "x" / "zarr.json", lambda m: sharding(m)["codecs"].insert(
        0, {"name": "transpose", "configuration": {"order": [0, 2, 1]}}))  # fmt: skip
    return kit.open_read(store)


@case(r"byte order is not little-endian")
def case_zarr_big_endian_bytes(kit, name):
    store = kit.store(name, "zarr")
    edit_json(store / "x" / "zarr.json",
              lambda m: sharding(m)["codecs"][0]["configuration"].update(endian="big"))  # fmt: skip
    return kit.open_read(store)


@case(r"shard index codecs or location differ")
def case_zarr_index_at_start(kit, name):
    store = kit.store(name, "zarr")
    edit_json(store / "x" / "zarr.json", lambda m: sharding(m).update(index_location="start"))
    return kit.open_read(store)


@case(r"chunks \(1073741824, 2, 3\), expected 2 rows|array does not match the manifest")
def case_zarr_chunk_bomb_in_metadata(kit, name):
    store = kit.store(name, "zarr")

    def bomb(meta):
        meta["shape"] = [2**40, 2, 3]
        meta["chunk_grid"]["configuration"]["chunk_shape"] = [2**31, 2, 3]
        sharding(meta)["chunk_shape"] = [2**30, 2, 3]

    edit_json(store / "x" / "zarr.json", bomb)
    return kit.open_read(store)


@case(r"exceed 4294967296 bytes")
def case_zarr_chunk_bomb_in_metadata_and_manifest(kit, name):
    store = kit.store(name, "zarr")
    edit_json(store / "manifest.json", lambda m: m.update(sample_shape=[100_000, 100_000]))

    def bomb(meta):
        meta["shape"] = [12, 100_000, 100_000]
        meta["chunk_grid"]["configuration"]["chunk_shape"] = [4, 100_000, 100_000]
        sharding(meta)["chunk_shape"] = [2, 100_000, 100_000]

    edit_json(store / "x" / "zarr.json", bomb)
    return kit.open_read(store)


@case(r"chunk 0 claims bytes \[1000000000, \+\d+\) of a \d+-byte file")
def case_zarr_shard_index_past_eof(kit, name):
    store = kit.store(name, "zarr")
    path = zarr_shard(store, 1)
    data = bytearray(path.read_bytes())
    index_at = len(data) - (2 * 16 + 4)
    data[index_at : index_at + 8] = struct.pack("<Q", 10**9)
    path.write_bytes(bytes(data))
    return kit.open_read(store)


@case(r"shard index holds impossible offsets|shard index lacks chunks")
def case_zarr_shard_index_impossible_offset(kit, name):
    store = kit.store(name, "zarr")
    path = zarr_shard(store, 2)
    data = bytearray(path.read_bytes())
    index_at = len(data) - (2 * 16 + 4)
    data[index_at : index_at + 16] = struct.pack("<QQ", 2**63 + 5, 2**63)
    path.write_bytes(bytes(data))
    return kit.open_read(store)


@case(r"shard is shorter than its index")
def case_zarr_shard_truncated_to_nothing(kit, name):
    store = kit.store(name, "zarr")
    zarr_shard(store, 1).write_bytes(b"\x00" * 7)
    return kit.open_read(store)


@case(r"zarr\.json: missing, not a regular file, or too large")
def case_zarr_metadata_is_a_fifo(kit, name):
    store = kit.store(name, "zarr")
    (store / "x" / "zarr.json").unlink()
    os.mkfifo(store / "x" / "zarr.json")
    return kit.open_read(store)


@case(r"zarr\.json: missing, not a regular file, or too large")
def case_zarr_metadata_huge(kit, name):
    store = kit.store(name, "zarr")
    edit_json(store / "x" / "zarr.json", lambda m: m.update(attributes={"pad": "x" * 2_000_000}))
    return kit.open_read(store)


@case(r"unreadable array metadata")
def case_zarr_metadata_not_json(kit, name):
    store = kit.store(name, "zarr")
    (store / "x" / "zarr.json").write_text("{not json")
    return kit.open_read(store)


@case(r"store/x: rows 4\+: .*checksum")
def case_zarr_shard_index_past_eof_library_reader(kit, name):
    store = kit.store(name, "zarr")
    path = zarr_shard(store, 1)
    data = bytearray(path.read_bytes())
    index_at = len(data) - (2 * 16 + 4)
    data[index_at : index_at + 8] = struct.pack("<Q", 10**9)
    path.write_bytes(bytes(data))
    return kit.open_read(store, fast=False)


@case(r"shard-00001\.h5")
def case_h5_truncated_library_reader(kit, name):
    store = kit.store(name, "hdf5")
    path = store / "shards" / "shard-00001.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 40])
    return kit.open_read(store, fast=False)


# Manifests.


def _manifest_case(kit, name, change: Callable[[dict], None], backend="zarr") -> dict:
    store = kit.store(name, backend)
    edit_json(store / "manifest.json", change)
    return kit.open_read(store)


@case(r"shard path '\.\./\.\./etc/passwd' leaves the store")
def case_manifest_shard_path_escapes(kit, name):
    return _manifest_case(kit, name, lambda m: m["shards"][0].update(path="../../etc/passwd"))


@case(r"shard path '/etc/passwd' leaves the store")
def case_manifest_shard_path_absolute(kit, name):
    return _manifest_case(kit, name, lambda m: m["shards"][1].update(path="/etc/passwd"), "hdf5")


@case(r"leaves the store")
def case_manifest_shard_path_with_nul(kit, name):
    return _manifest_case(kit, name, lambda m: m["shards"][0].update(path="x/c/0\u0000/0/0"))


@case(r"holds rows 2-7, expected 1 to 4 rows from row 4")
def case_manifest_inconsistent_rows(kit, name):
    return _manifest_case(kit, name, lambda m: m["shards"][1].update(first_row=2))


@case(r"3 shards of 4 rows cannot hold 1000000000000 samples|split sizes")
def case_manifest_huge_num_samples(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(num_samples=10**12))


@case(r"wrong type for num_samples='12'")
def case_manifest_wrong_type(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(num_samples="12"))


@case(r"wrong type for splits")
def case_manifest_splits_not_a_dict(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(splits=[12]))


@case(r"non-positive sample dimensions")
def case_manifest_negative_sample_shape(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(sample_shape=[-2, 3]))


@case(r"dtype '\|O' not supported")
def case_manifest_object_dtype(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(dtype="|O"))


@case(r"invalid dtype '<<<f4'")
def case_manifest_garbage_dtype(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(dtype="<<<f4"))


@case(r"compression 'lzma' unknown to zarr")
def case_manifest_unknown_compression(kit, name):  # found by test_fuzz.py
    return _manifest_case(kit, name, lambda m: m.update(compression="lzma"))


@case(r"2 class names for 3 classes")
def case_manifest_class_names_mismatch(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(class_names=["a", "b"], num_classes=3))


@case(r"store format version 4 is newer than this shardfeed reads \(version 3\); upgrade")
def case_manifest_newer_version(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(format_version=4))


@case(r"format_version '1' is not a version number")
def case_manifest_version_not_an_int(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(format_version="1"))


@case(r"malformed manifest")
def case_manifest_missing_field(kit, name):
    return _manifest_case(kit, name, lambda m: m.pop("shard_rows"))


@case(r"not valid JSON")
def case_manifest_not_json(kit, name):
    store = kit.store(name, "hdf5")
    (store / "manifest.json").write_bytes(b"\x89PNG\r\n\x1a\n not a manifest")
    return kit.open_read(store)


@case(r"not valid JSON")
def case_manifest_deep_nesting(kit, name):
    store = kit.store(name, "zarr")
    (store / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    return kit.open_read(store)


@case(r"not a shardfeed manifest")
def case_manifest_json_array(kit, name):
    store = kit.store(name, "zarr")
    (store / "manifest.json").write_text("[1, 2, 3]")
    return kit.open_read(store)


@case(r"manifest is not a regular file")
def case_manifest_is_a_fifo(kit, name):
    store = kit.store(name, "zarr")
    (store / "manifest.json").unlink()
    os.mkfifo(store / "manifest.json")
    return kit.open_read(store)


@case(r"manifest is not a regular file")
def case_manifest_symlink_to_dev_zero(kit, name):
    store = kit.store(name, "hdf5")
    (store / "manifest.json").unlink()
    (store / "manifest.json").symlink_to("/dev/zero")
    return kit.open_read(store)


@case(r"links to /etc/passwd, outside the store")
def case_shard_symlink_out_of_store(kit, name):
    store = kit.store(name, "hdf5")
    (store / "shards" / "shard-00002.h5").unlink()
    (store / "shards" / "shard-00002.h5").symlink_to("/etc/passwd")
    return kit.open_read(store)


@case(r"shard 1 is missing")
def case_shard_missing(kit, name):
    store = kit.store(name, "zarr")
    zarr_shard(store, 1).unlink()
    return kit.open_read(store)


# Indexes.


@case(r"unreadable index|index lacks|has shape|has dtype")
def case_index_corrupt_with_matching_checksum(kit, name):
    store = kit.store(name, "hdf5")
    data = bytearray((store / "index.npz").read_bytes())
    for pos in range(40, len(data) - 40, 97):
        data[pos] ^= 0x5A
    (store / "index.npz").write_bytes(bytes(data))
    fix_index_checksum(store)
    return kit.open_read(store)


@case(r"index checksum does not match the manifest")
def case_index_corrupt(kit, name):
    store = kit.store(name, "zarr")
    data = bytearray((store / "index.npz").read_bytes())
    data[len(data) // 2] ^= 1
    (store / "index.npz").write_bytes(bytes(data))
    return kit.open_read(store)


@case(r"unreadable index")
def case_index_not_a_zip(kit, name):
    store = kit.store(name, "zarr")
    (store / "index.npz").write_bytes(os.urandom(4096))
    fix_index_checksum(store)
    return kit.open_read(store)


@case(r"ids has shape \(5,\), expected \(12,\)")
def case_index_wrong_length(kit, name):
    store = kit.store(name, "zarr")
    arrays = index_arrays(store)
    arrays["ids"] = arrays["ids"][:5]
    write_index(store, arrays)
    return kit.open_read(store)


@case(r"unreadable index")
def case_index_member_claims_huge_shape(kit, name):
    store = kit.store(name, "hdf5")
    member = npy_bytes(header("(80000000000,)", "'<u4'"), bytes(48))
    with zipfile.ZipFile(store / "index.npz", "w") as zf:
        for array_name in ("ids", "split_codes", "labels"):
            with zf.open(f"{array_name}.npy", "w") as f:
                np.lib.format.write_array(f, index_arrays(kit.stores["hdf5"])[array_name])
        zf.writestr("checksums.npy", member)
    fix_index_checksum(store)
    return kit.open_read(store)


@case(r"unreadable index")
def case_index_pickled_member(kit, name):
    store = kit.store(name, "zarr")
    arrays = index_arrays(store)
    arrays["labels"] = np.array([Payload(kit.canary)] * 12, dtype=object)
    write_index(store, arrays, allow_pickle=True)
    return kit.open_read(store)


@case(r"split codes outside 0-1")
def case_index_split_code_out_of_range(kit, name):
    store = kit.store(name, "zarr")
    arrays = index_arrays(store)
    arrays["split_codes"] = arrays["split_codes"].copy()
    arrays["split_codes"][3] = 7
    write_index(store, arrays)
    return kit.open_read(store)


@case(r"labels outside 0-2")
def case_index_label_out_of_range(kit, name):
    store = kit.store(name, "hdf5")
    arrays = index_arrays(store)
    arrays["labels"] = arrays["labels"].copy()
    arrays["labels"][0] = 99
    write_index(store, arrays)
    return kit.open_read(store)


@case(r"ids has dtype int64, expected kind 'S'")
def case_index_ids_not_bytes(kit, name):
    store = kit.store(name, "zarr")
    arrays = index_arrays(store)
    arrays["ids"] = np.arange(12)
    write_index(store, arrays)
    return kit.open_read(store)


@case(r"index is not a regular file")
def case_index_symlink_to_dev_zero(kit, name):
    store = kit.store(name, "zarr")
    (store / "index.npz").unlink()
    (store / "index.npz").symlink_to("/dev/zero")
    return kit.open_read(store)


# Variable-shape stores (`storage.ragged`): 12 samples of shape (k % 4 + 1, 3), 4 to a shard, 15 values
# to a chunk, so each shard holds 30 values in 2 chunk rows.


def variable_stores(root: Path) -> dict[str, Path]:
    src = root / "valid-variable-src"
    src.mkdir()
    for k in range(12):
        np.save(src / f"id-{k}.npy", np.full((k % 4 + 1, 3), k, "float32"))
    stores = {}
    for backend in ("hdf5", "zarr"):
        stores[f"{backend}-var"] = root / f"valid-{backend}-var"
        shardfeed.convert(src, stores[f"{backend}-var"], format=backend, chunk_rows=2, shard_size=120,
                          variable_shapes=True)  # fmt: skip
    return stores


# Stores with target arrays (`convert --targets`): the 12 samples above, each with a (2,) uint8 target.


def target_stores(root: Path, src: Path) -> dict[str, Path]:
    masks = root / "valid-targets-src"
    masks.mkdir()
    for k in range(12):
        np.save(masks / f"id-{k}.npy", np.full(2, k, "uint8"))
    stores = {}
    for backend in ("hdf5", "zarr"):
        stores[f"{backend}-targets"] = root / f"valid-{backend}-targets"
        shardfeed.convert(src, stores[f"{backend}-targets"], targets=masks, format=backend, chunk_rows=2,
                          shard_size=4 * 24)  # fmt: skip
    return stores


@case(r"inconsistent manifest: target arrays need format version 3, not 2")
def case_targets_in_format_version_2(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(format_version=2), "zarr-targets")


@case(r"targets: the target arrays link to .*outside the store")
def case_targets_link_outside_the_store(kit, name):
    store = kit.store(name, "hdf5-targets")
    outside = store.parent / "elsewhere"
    (store / "targets").rename(outside)
    (store / "targets").symlink_to(outside)
    return kit.open_read(store)


@case(r"targets: not the target arrays this store was converted with")
def case_targets_manifest_edited_with_its_checksum_copied(kit, name):
    store = kit.store(name, "zarr-targets")
    edit_json(store / "targets" / "manifest.json", lambda m: m["splits"].update(all=12, extra=0))
    return kit.open_read(store)


@case(r"targets: not the target arrays this store was converted with")
def case_targets_of_another_store(kit, name):
    store = kit.store(name, "hdf5-targets")
    shutil.rmtree(store / "targets")
    shutil.copytree(kit.stores["hdf5"], store / "targets")  # a whole valid store, of other samples
    return kit.open_read(store)


@case(r"the store's target arrays are missing")
def case_targets_missing(kit, name):
    store = kit.store(name, "zarr-targets")
    shutil.rmtree(store / "targets")
    return kit.open_read(store)


def _index_case(kit, name, backend: str, change: Callable[[dict], None]) -> dict:
    store = kit.store(name, backend)
    arrays = {k: v.copy() for k, v in index_arrays(store).items()}
    change(arrays)
    write_index(store, arrays)
    return kit.open_read(store)


@case(r"sample 'id-11' \(row 3, shard x/c/0/0\) .*offset 1000000000000: its values would end past its shard's "
      r"cell of 30 values")  # fmt: skip
def case_ragged_offset_past_the_end(kit, name):
    return _index_case(kit, name, "zarr-var", lambda a: a["offsets"].__setitem__(3, 10**12))


@case(r"sample 'id-1' \(row 1, .*samples overlap or leave a gap: it must start where the previous one ends \(3\)")
def case_ragged_overlapping_samples(kit, name):
    return _index_case(kit, name, "hdf5-var", lambda a: a["offsets"].__setitem__(1, 0))


@case(r"sample 'id-10' \(row 2, .*shape \(4611686018427387904, 3\).*more values than a shard cell holds \(30\): "
      r"its product overflows")  # fmt: skip
def case_ragged_shape_product_overflows(kit, name):
    return _index_case(kit, name, "zarr-var", lambda a: a["shapes"].__setitem__(2, [2**62, 3]))


@case(r"sample 'id-0' .*shape \(1, 4\).*axis 1 must be 3, as the manifest says")
def case_ragged_fixed_axis_differs(kit, name):
    return _index_case(kit, name, "hdf5-var", lambda a: a["shapes"].__setitem__((0, 1), 4))


@case(r"sample 'id-3' \(row 5, shard x/c/1/0\) .*shape \(0, 3\).*dimensions must be >= 1")
def case_ragged_zero_length(kit, name):
    return _index_case(kit, name, "zarr-var", lambda a: a["shapes"].__setitem__((5, 0), 0))


@case(r"the index lacks shapes, which a store of variable-shape samples needs")
def case_ragged_index_without_shapes(kit, name):
    return _index_case(kit, name, "zarr-var", lambda a: a.pop("shapes"))


@case(r"shapes has dtype float64 and shape \(12, 2\), expected int64 \(12, 2\)")
def case_ragged_shapes_not_integers(kit, name):
    return _index_case(kit, name, "hdf5-var", lambda a: a.__setitem__("shapes", a["shapes"].astype("f8")))


@case(r"the index holds shapes or offsets, but the manifest's samples all have shape \(2, 3\)")
def case_ragged_shapes_in_a_fixed_store(kit, name):
    def change(arrays):
        arrays["shapes"] = np.tile(np.array([2, 3]), (12, 1))
        arrays["offsets"] = np.zeros(12, dtype=np.int64)

    return _index_case(kit, name, "zarr", change)


@case(r"the samples' shapes add up to 360 bytes, the manifest says data_nbytes 356")
def case_ragged_data_nbytes_lies(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(data_nbytes=m["data_nbytes"] - 4), "hdf5-var")


@case(r"chunks of 1099511627776 or shard cells of 1099511627776 values exceed")
def case_ragged_chunk_bomb_in_manifest(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(chunk_elements=2**40, shard_elements=2**40), "zarr-var")


@case(r"variable-shape samples \(sample_shape \(None, 3\)\) need format version 2, not 1")
def case_ragged_in_format_version_1(kit, name):
    return _manifest_case(kit, name, lambda m: m.update(format_version=1), "hdf5-var")


@case(r"shape \(1, 15\), expected \(2, 15\)")
def case_ragged_shard_holds_fewer_values(kit, name):
    store = kit.store(name, "hdf5-var")
    data = np.zeros((1, 15), "<f4")
    rewrite_h5_shard(store, lambda f: f.create_dataset("x", data=data, chunks=(1, 15)))
    return kit.open_read(store)


@case(r"shard index lacks chunks that hold samples")
def case_ragged_shard_index_lacks_a_chunk(kit, name):
    store = kit.store(name, "zarr-var")
    path = store / "x" / "c" / "1" / "0"
    data = bytearray(path.read_bytes())
    index_at = len(data) - (2 * 16 + 4)
    data[index_at + 16 : index_at + 32] = struct.pack("<QQ", 2**64 - 1, 2**64 - 1)
    path.write_bytes(bytes(data))
    return kit.open_read(store)


# Running the corpus.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Build every case, run them all in one subprocess under RLIMIT_AS, return its report."""
    root = tmp_path_factory.mktemp("hostile")
    stores = {}
    src = root / "valid-src"
    src.mkdir()
    for k in range(12):
        np.save(src / f"id-{k}.npy", np.full((2, 3), k, "float32"))
    partition = {"train": [f"id-{k}" for k in range(8)], "test": [f"id-{k}" for k in range(8, 12)]}
    labels = {f"id-{k}": ["a", "b", "c"][k % 3] for k in range(12)}
    for backend in ("hdf5", "zarr"):
        stores[backend] = root / f"valid-{backend}"
        shardfeed.convert(src, stores[backend], labels=labels, partition=partition, format=backend,
                          chunk_rows=2, shard_size=4 * 24)  # fmt: skip
    stores.update(variable_stores(root))
    stores.update(target_stores(root, src))
    kit = Kit(root, root / "canary", stores)
    cases = [{"name": name, **build(kit, name)} for name, (build, _) in CASES.items()]
    cases.append({"name": "control", "action": "allocate", "args": {"nbytes": ADDRESS_SPACE}})
    spec = root / "spec.json"
    spec.write_text(json.dumps({"address_space_bytes": ADDRESS_SPACE, "seconds_per_case": 10,
                                "cases": cases}))  # fmt: skip
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run([sys.executable, str(RUNNER), str(spec)], capture_output=True, text=True,
                          timeout=240, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    return {"report": report, "kit": kit, "cases": {c["name"]: c for c in cases}}


def test_corpus_has_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case_is_refused_clearly(corpus, name):
    result = corpus["report"]["results"][name]
    _, expected = CASES[name]
    assert result["error"] is not None, f"{name}: accepted"
    assert not result["hung"], f"{name}: hung"
    assert not result["memory_error"], f"{name}: tried to allocate beyond the limit"
    assert result["shardfeed_error"], f"{name}: raw {result['error']}: {result['message']}"
    assert re.search(expected, result["message"]), f"{name}: {result['message']}"
    assert result["seconds"] < MAX_SECONDS, f"{name}: took {result['seconds']:.2f} s"
    case = corpus["cases"][name]
    if case["action"] == "convert":  # refused before anything was written
        assert not Path(case["args"]["out"]).exists(), f"{name}: created OUT"


def test_memory_limit_is_in_force(corpus):
    """The control case allocates the whole limit: it must fail, or the limit guards nothing."""
    control = corpus["report"]["results"]["control"]
    assert control["error"] == "MemoryError" and control["memory_error"]


def test_no_case_touched_the_canary_or_grew_memory(corpus):
    assert not corpus["kit"].canary.exists(), "a payload ran: the canary file exists"
    peak = max(r["peak_rss_mb"] for n, r in corpus["report"]["results"].items() if n != "control")
    worst = sorted(((r["peak_rss_mb"], n) for n, r in corpus["report"]["results"].items()), reverse=True)[:3]
    assert peak < MAX_PEAK_RSS_MB, f"peak RSS {peak:.0f} MB; highest: {worst}"


def test_payloads_are_live(tmp_path):
    """The corpus's pickles would run code if loaded: np.load with allow_pickle creates a canary."""
    canary = tmp_path / "proof"
    path = tmp_path / "payload.npy"
    np.save(path, np.array([Payload(canary)], dtype=object), allow_pickle=True)
    code = f"import numpy as np; np.load({str(path)!r}, allow_pickle=True)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert canary.exists()
