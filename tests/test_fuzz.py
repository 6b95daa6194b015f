"""Property-based fuzzing of every parser that reads untrusted bytes: the `.npy` header reader,
the manifest parser, the index parser, and opening (and reading, and verifying) a store whose
manifest or index was mutated. Only our typed errors may escape: `InputError` from the header
reader, `StoreFormatError` from the manifest and index parsers, some `ShardfeedError` from a
store; every example finishes within 5 s.

Inputs are random bytes, structured-but-wrong headers and manifests, and mutations (bit flips,
insertions, deletions, truncations, replaced JSON values) of valid files.

Runs briefly by default (200 examples per test). For a long run, as in the RELIABILITY goal:

    SHARDFEED_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz.py -p no:cacheprovider --timeout=0
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import struct
import tempfile
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shardfeed
from shardfeed.errors import InputError, ShardfeedError, StoreFormatError
from shardfeed.inputs.npy import read_npy_header
from shardfeed.storage.format import INDEX_NAME, MANIFEST_NAME
from shardfeed.storage.index import Index
from shardfeed.storage.manifest import Manifest

EXAMPLES = int(os.environ.get("SHARDFEED_FUZZ_EXAMPLES", 200))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
    derandomize=EXAMPLES <= 200,  # the quick default run is reproducible; long runs explore
)
pytestmark = pytest.mark.timeout(0 if EXAMPLES > 200 else 600)


# Mutations of bytes and of JSON values.


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """`original` with a few random flips, insertions, deletions, truncations or splices."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "splice":
            data[pos : pos + draw(st.integers(0, 16))] = draw(st.sampled_from(SPLICES))
    return bytes(data)


SPLICES = [b"(", b")", b"-1", b"99999999999999999999", b"'O'", b"'|V8'", b"[", b"{", b"}", b"\x00",
           b"True", b"1e400", b"NaN", b'"', b"\\ud800", b"..", b"/", b"\xff\xfe"]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)


@st.composite
def mutated_json(draw, original: dict) -> dict:
    """`original` with a few values replaced, keys removed or added, at any depth."""
    data = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 3))):
        node = data
        while True:  # walk down to a random container
            children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            containers = [(k, v) for k, v in children if isinstance(v, (dict, list)) and v]
            if not containers or draw(st.booleans()):
                break
            node = draw(st.sampled_from(containers))[1]
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if keys and action == "replace":
            node[draw(st.sampled_from(keys))] = draw(json_values)
        elif keys and action == "remove":
            node.pop(draw(st.sampled_from(keys)))
        elif isinstance(node, dict):
            node[draw(st.text(max_size=12))] = draw(json_values)
        else:
            node.append(draw(json_values))
    return data


# The .npy header reader.


def _valid_npy(shape, dtype, fortran) -> bytes:
    buf = io.BytesIO()
    array = np.zeros(shape, dtype=dtype)
    np.save(buf, np.asfortranarray(array) if fortran else array)
    return buf.getvalue()


VALID_NPY = [_valid_npy(s, d, f) for s, d, f in [((2, 3), "<f4", False), ((4,), "|u1", False),
             ((2, 2, 2), ">i8", True), ((), "<c8", False), ((3, 1), "|b1", False)]]  # fmt: skip

DESCRS = ["'<f4'", "'|O'", "'<U3'", "'V8'", "[('a', '<f4')]", "('<f4', (2,))", "'<f16'", "'m8[s]'",
          "'x'", "''", "None", "'<f4' + '<f4'", "'|V99999999999999999'"]  # fmt: skip


@st.composite
def npy_files(draw) -> bytes:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(st.binary(max_size=512))
    if choice == 1:
        return draw(mutated(draw(st.sampled_from(VALID_NPY))))
    dims = draw(st.lists(st.integers(-(2**65), 2**65) | st.integers(0, 5), max_size=4))
    as_tuple = "(" + ", ".join(map(str, dims)) + ",)"
    shape = draw(st.sampled_from([as_tuple, "()", "[2, 3]", "(2.0,)"]))
    text = (f"{{'descr': {draw(st.sampled_from(DESCRS))}, "
            f"'fortran_order': {draw(st.sampled_from(['False', 'True', '0', 'None']))}, "
            f"'shape': {shape}, }}")  # fmt: skip
    version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (0, 0)]))
    size_format = "<H" if version == (1, 0) else "<I"
    body = text.encode() + b" " * draw(st.integers(0, 70)) + b"\n"
    head = b"\x93NUMPY" + bytes(version) + struct.pack(size_format, len(body) % 2**16) + body
    return head + bytes(draw(st.integers(0, 64)))


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@FUZZ
@given(data=npy_files())
def test_npy_header_reader_raises_only_input_error(scratch, data):
    path = scratch / "sample.npy"
    path.write_bytes(data)
    try:
        header = read_npy_header(path, "sample")
    except InputError:
        return
    # Accepted: the header's promise holds for this very file.
    assert header.dtype.kind in "biufc" and not header.dtype.hasobject
    expected = int(np.prod(header.shape, dtype=object)) * header.dtype.itemsize
    assert header.data_offset + expected == len(data)


# The manifest and index parsers.


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small valid store (both parsers' mutation seeds): 12 samples, labels, two splits."""
    root = tmp_path_factory.mktemp("fuzz-store")
    src = root / "src"
    src.mkdir()
    for k in range(12):
        np.save(src / f"id-{k}.npy", np.full((2, 3), k, "float32"))
    out = root / "store"
    ids = [f"id-{k}" for k in range(12)]
    shardfeed.convert(src, out, format="zarr", chunk_rows=2, shard_size=4 * 24,
                      labels={i: k % 3 for k, i in enumerate(ids)},
                      partition={"a": ids[:9], "b": ids[9:]})  # fmt: skip
    return out


@FUZZ
@given(data=st.data())
def test_manifest_parser_raises_only_store_format_error(store, data):
    original = json.loads((store / MANIFEST_NAME).read_text())
    if data.draw(st.booleans()):
        text = json.dumps(data.draw(mutated_json(original)))
    else:
        text = data.draw(mutated(json.dumps(original).encode()))
    try:
        manifest = Manifest.from_json(text)
    except StoreFormatError:
        return
    # Accepted: the shards tile the rows exactly.
    assert sum(s.num_rows for s in manifest.shards) == manifest.num_samples
    assert sum(manifest.splits.values()) == manifest.num_samples


@FUZZ
@given(data=st.data())
def test_index_parser_raises_only_store_format_error(store, data):
    original = (store / INDEX_NAME).read_bytes()
    blob = data.draw(mutated(original) | st.binary(max_size=2048))
    num_samples = data.draw(st.sampled_from([12, 0, 5, 2**40]))
    try:
        index = Index.from_bytes(blob, num_samples)
    except StoreFormatError:
        return
    assert index.ids.shape == (num_samples,)


# Opening, reading and verifying a store with a mutated manifest or index.


@FUZZ
@given(data=st.data())
def test_store_with_mutated_metadata_raises_only_shardfeed_errors(store, scratch, data):
    target = scratch / "store"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(store, target)
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    what = data.draw(st.sampled_from(["manifest", "index", "both"]))
    if what in ("index", "both"):
        blob = data.draw(mutated((store / INDEX_NAME).read_bytes()))
        (target / INDEX_NAME).write_bytes(blob)
        manifest["index_checksum"] = zlib.crc32(blob)  # let the parser see the mutated bytes
    if what in ("manifest", "both"):
        manifest = data.draw(mutated_json(manifest))
    (target / MANIFEST_NAME).write_text(json.dumps(manifest))
    try:
        with shardfeed.open_store(target) as opened:
            opened.read(np.arange(len(opened)))
            shardfeed.verify_store(opened)
    except ShardfeedError:
        pass
