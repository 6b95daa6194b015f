"""One extra per Keras backend, and a missing framework named with the extra that brings it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
FRAMEWORKS = ("tensorflow", "jax", "torch")


def names(extra: str) -> set[str]:
    return {req.split(";")[0].split(">")[0].split("=")[0].split("[")[0].strip() for req in EXTRAS[extra]}


@pytest.mark.parametrize("backend", FRAMEWORKS)
def test_each_backend_extra_brings_keras_and_its_framework_only(backend):
    brought = names(backend)
    assert "keras" in brought
    others = {f for f in FRAMEWORKS if f != backend}
    assert not {n.removesuffix("-cpu") for n in brought} & others
    assert brought & {backend, f"{backend}-cpu"}


def test_keras_extra_is_the_tensorflow_one():
    assert EXTRAS["keras"] == ["shardfeed[tensorflow]"]


def blocked(module: str, code: str, backend: str = "tensorflow") -> subprocess.CompletedProcess:
    """`code` run where `module` cannot be imported (None in sys.modules: the import system says
    'No module named' for it, as when it is not installed)."""
    prelude = f"import os, sys; os.environ['KERAS_BACKEND'] = {backend!r}; sys.modules[{module!r}] = None; "
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("module", "backend", "extra"),
    [("keras", "tensorflow", "shardfeed[tensorflow]"), ("jax", "jax", "shardfeed[jax]"),
     ("torch", "torch", "shardfeed[torch]")],
)  # fmt: skip
def test_a_missing_framework_names_the_extra_to_install(module, backend, extra):
    code = "import shardfeed\ntry:\n shardfeed.DataGenerator\nexcept ImportError as e:\n print(repr(e))"
    done = blocked(module, code, backend)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MissingDependencyError" in done.stdout and f"pip install '{extra}'" in done.stdout
    assert f"{module} is not installed" in done.stdout


@pytest.mark.parametrize("backend", ["zarr"])
def test_the_cli_names_the_extra_in_one_line(small_store):
    store, _ = small_store
    done = blocked("keras", f"from shardfeed.cli import main; sys.exit(main(['bench', {str(store)!r}, '--fit']))")
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "shardfeed: error: keras is not installed: pip install 'shardfeed[tensorflow]' "
        "(or [jax] or [torch]: the Keras backend you train with)"
    ]
