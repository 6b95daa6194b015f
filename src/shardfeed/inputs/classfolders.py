"""A folder per class as SRC, `SRC/<class>/<id>.npy`: the convention of Keras' `image_dataset_from_directory`.

SRC is read this way when it holds no `.npy` file itself and at least one (non-hidden) folder. Class
names are the folder names, sorted, numbered from 0; every folder is a class, so an empty one is
refused (a class without samples is a mistake, not a class). The folders label every sample, so
`--labels` is refused with them rather than checked against them: two sources of truth that agree
add nothing, and ones that disagree have no right answer. An ID names one file in one folder: the
same ID in two class folders is refused, naming both. What is not a `.npy` file (in SRC or in a
class folder), and hidden entries, are left out, as in a flat SRC; hidden `.npy` files are counted
as unlisted. Samples are ordered by class, then by ID. Each file is checked as in a flat SRC
(`local.py`): links may not leave SRC, FIFOs and devices are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .ids import check_name
from .local import LocalFinder


def is_class_folders(root: Path) -> bool:
    """Whether a local SRC folder holds a folder per class: no `.npy` file of its own, some folder."""
    has_folder = False
    try:
        with os.scandir(root) as entries:
            for e in entries:  # stops at the first .npy: a flat SRC of 100,000 files is not listed whole
                if e.name.endswith(".npy"):
                    return False
                has_folder = has_folder or (not e.name.startswith(".") and e.is_dir())
    except OSError:
        return False
    return has_folder


class ClassFolderFinder(LocalFinder):
    """`<class>/<id>.npy` files under a local folder; `class_names` and `labels` come from the folders."""

    def __init__(self, src: str | os.PathLike) -> None:
        super().__init__(src)
        self.class_names: list[str] = []
        self.labels: dict[str, int] = {}  # ID -> class number
        self._folders: dict[str, Path] = {}  # ID -> its class folder
        self._ids: list[str] = []
        entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        for entry in (e for e in entries if not e.name.startswith(".") and e.is_dir()):
            self._add_class(entry.name, self._class_folder(entry.name))

    def npy_names(self) -> list[str]:
        return list(self._ids)

    def _folder_of(self, sample_id: str) -> Path:
        # docstring inherited
        folder = self._folders.get(sample_id)
        if folder is None:
            raise InputError(f"{self.root}: sample {sample_id!r} has no file in any class folder "
                             f"(expected <class>/{sample_id}.npy)")  # fmt: skip
        return folder

    def _class_folder(self, name: str) -> Path:
        """The class folder `name`; one that is a link must stay inside SRC, as sample links must."""
        check_name(name, f"{self.root}: class folder")
        folder = Path(os.path.realpath(self.root / name))
        if not folder.is_relative_to(self.root) or folder == self.root:
            raise InputError(f"{self.root / name}: class folder {name!r} is a symlink to {folder}, outside "
                             f"{self.root}")  # fmt: skip
        return folder

    def _add_class(self, name: str, folder: Path) -> None:
        try:
            ids = sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".npy"))
        except OSError as exc:
            raise InputError(f"{folder}: cannot list class folder {name!r}: {exc.strerror}") from exc
        if all(i.startswith(".") for i in ids):
            raise InputError(f"{folder}: class folder {name!r} holds no .npy files; add its samples or remove it")
        label = len(self.class_names)
        self.class_names.append(name)
        for sample_id in ids:
            other = self._folders.setdefault(sample_id, folder)
            if other != folder:
                raise InputError(
                    f"{folder / (sample_id + '.npy')}: sample {sample_id!r} is also in class folder "
                    f"{other.name!r} ({other / (sample_id + '.npy')}); an ID may be in one class only"
                )
            self.labels[sample_id] = label
            self._ids.append(sample_id)
