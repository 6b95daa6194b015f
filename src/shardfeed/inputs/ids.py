"""Sample IDs: plain file names, the same rule for inputs, partitions and a store's index."""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Sequence

from ..errors import InputError

# What most IDs are: printable ASCII, no separator, not hidden, at most 200 bytes. One match, where the
# checks below cost 2.5 us an ID (a partition of 100,000 IDs is checked as it is read, and by the scan).
# The first character is one of space to '~' but '.', '/' and '\'; up to 199 more may also be '.'.
_PLAIN_ASCII_ID = re.compile(r"[ -\-0-\[\]-~][ -.0-\[\]-~]{0,199}")
_PLAIN_ASCII_IDS = re.compile(rf"(?:{_PLAIN_ASCII_ID.pattern}\n)*{_PLAIN_ASCII_ID.pattern}")  # lines of them


def all_plain(ids: Sequence[object]) -> bool:
    """Whether every ID is of the common kind `check_id` passes at once, found by one match over them
    all (0.1 us an ID, where a call of `check_id` costs 0.4): then none needs checking one by one."""
    try:
        lines = "\n".join(ids)  # type: ignore[arg-type]  # refused below unless all are strings
    except TypeError:
        return False
    return lines.count("\n") == len(ids) - 1 and _PLAIN_ASCII_IDS.fullmatch(lines) is not None  # no "\n" in one


def check_id(sample_id: object, where: str) -> str:
    """Refuse IDs that are not plain file names inside the source folder."""
    if type(sample_id) is str and _PLAIN_ASCII_ID.fullmatch(sample_id):
        return sample_id
    if not isinstance(sample_id, str):
        raise InputError(f"{where}: ID {sample_id!r} is a {type(sample_id).__name__}, expected a string")
    bad = None
    if not sample_id:
        bad = "is empty"
    elif sample_id in (".", "..") or sample_id.startswith("."):
        bad = "starts with '.' (hidden or parent-directory names are not sample IDs)"
    elif "/" in sample_id or "\\" in sample_id or os.sep in sample_id:
        bad = "contains a path separator"
    elif has_control(sample_id):
        bad = "contains a control, format or surrogate character"
    elif len(sample_id.encode("utf-8", "surrogatepass")) > 200:
        bad = "is longer than 200 bytes"
    if bad:
        raise InputError(f"{where}: ID {sample_id!r} {bad}; IDs must be plain file names inside SRC")
    return sample_id


def check_id_list(ids: Sequence[object], where: Callable[[int], str]) -> list[str]:
    """Check every ID of a list that names samples in order (`--ids`), and that none comes twice;
    `where(k)` names entry k (a file's line, a list's index) in errors."""
    checked = [check_id(sample_id, where(k)) for k, sample_id in enumerate(ids)]
    first: dict[str, int] = {}
    for k, sample_id in enumerate(checked):
        if first.setdefault(sample_id, k) != k:
            raise InputError(f"{where(k)}: ID {sample_id!r} is listed twice (also at {where(first[sample_id])})")
    return checked


def has_control(text: str) -> bool:
    """Control, format (RTL overrides, zero-width), surrogate or line-separator characters: text a
    terminal would act on rather than show. ASCII text has only the control characters of these,
    exactly what `isprintable` refuses: the common case costs one C call, not a lookup per character."""
    if text.isascii():
        return not text.isprintable()
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in text)


def check_name(name: str, what: str) -> str:
    """A split or class name that prints as itself: no newline, ANSI escape or RTL override."""
    if has_control(name):
        raise InputError(f"{what} {name!r} contains a control or format character; names must print as they are")
    return name
