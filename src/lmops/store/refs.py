"""Asset references: ``name`` (latest READY), ``name:3`` (a version), ``name@alias``.

Also the one place where numbers that reach the database from users are parsed and bounded
(:func:`parse_int`, :func:`check_int`): SQLite's and PostgreSQL's integers are 64-bit, so a
larger number (``x:99999999999999999999``, or 5000 digits, which Python refuses to even
convert) is a one-line ``UserError`` here instead of an overflow deep in the driver.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from lmops.core.errors import UserError

__all__ = [
    "INT32_MAX",
    "INT64_MAX",
    "NAME_RE",
    "Ref",
    "check_alias",
    "check_int",
    "check_name",
    "clip",
    "name_views",
    "parse_int",
    "parse_ref",
    "remember_view",
]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
INT64_MAX = 2**63 - 1  # the largest INTEGER of SQLite and BIGINT of PostgreSQL
INT32_MAX = 2**31 - 1  # the largest INTEGER of PostgreSQL (columns declared ``Integer``)


def clip(text: str, limit: int = 80) -> str:
    """``text`` for a one-line message: at most ``limit`` characters, ``…`` marking a cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_int(value: int, field: str, *, minimum: int = 1, maximum: int = INT64_MAX) -> int:
    """``value`` if ``minimum <= value <= maximum``, else a ``UserError`` naming ``field``."""
    if not minimum <= value <= maximum:
        shown = clip(str(value)) if value.bit_length() < 14000 else "a huge number"
        raise UserError(f"{field}: {shown} is out of range; expected {minimum}..{maximum}")
    return value


def parse_int(text: str, field: str, *, minimum: int = 1, maximum: int = INT64_MAX) -> int:
    """Parse decimal digits into a bounded int (no sign, no spaces, no ``1_000``)."""
    if not text.isascii() or not text.isdigit():
        raise UserError(f"{field}: {clip(text)!r} is not a whole number")
    if len(text.lstrip("0")) > len(str(maximum)):  # too long to be in range: don't convert
        raise UserError(f"{field}: {clip(text)} is out of range; expected {minimum}..{maximum}")
    return check_int(int(text), field, minimum=minimum, maximum=maximum)


@dataclass(frozen=True, slots=True)
class Ref:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UserError(
            f"invalid asset name {clip(name)!r}: use letters, digits, '.', '_' or '-' "
            "(start with a letter or digit, at most 128 characters)"
        )
    return name


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias) or alias == "latest":
        raise UserError(
            f"invalid alias {clip(alias)!r}: start with a letter, then letters, digits, '_' or"
            " '-' ('latest' is reserved)"
        )
    return alias


def parse_ref(ref: str) -> Ref:
    """Parse ``name``, ``name:N`` or ``name@alias`` (``name@latest`` = ``name``)."""
    ref = ref.strip()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        check_name(name)
        if alias == "latest":
            return Ref(name)
        return Ref(name, alias=check_alias(alias))
    if ":" in ref:
        name, ver = ref.rsplit(":", 1)
        check_name(name)
        if not ver.isascii() or not ver.isdigit() or ver.strip("0") == "":
            raise UserError(
                f"invalid version in reference {clip(ref)!r}: expected name:N with N >= 1"
            )
        return Ref(name, version=parse_int(ver, f"version in reference {clip(ref)!r}"))
    return Ref(check_name(ref))


# A version's files are read from a view folder named by a digest (views/<hex>/...); a
# message naming a file there names it by the version instead (mix:1/part-00000.jsonl:17).
_VIEWS: dict[str, str] = {}  # view folder -> the version it was last handed out for
_VIEWS_LOCK = threading.Lock()
_VIEWS_MAX = 4096


def remember_view(folder: Path, ref: str) -> None:
    """Note that ``folder`` (a version's view folder) shows ``ref``."""
    with _VIEWS_LOCK:
        if len(_VIEWS) >= _VIEWS_MAX:
            _VIEWS.clear()
        _VIEWS[str(folder)] = ref


def name_views(text: str) -> str:
    """``text`` (an error message) with each view folder handed out in this process written
    as its version's ref: ``<home>/artifacts/views/2faa8…/part-00000.jsonl:17`` reads
    ``mix1:1/part-00000.jsonl:17`` (``lmops assets path mix1:1`` gives the folder)."""
    if "views" not in text:
        return text
    with _VIEWS_LOCK:
        views = list(_VIEWS.items())
    for folder, ref in views:
        text = text.replace(folder, ref)
    return text
