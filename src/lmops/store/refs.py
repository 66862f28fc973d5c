"""Asset references: ``name`` (latest READY), ``name:3`` (a version), ``name@alias``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmops.core.errors import UserError

__all__ = ["NAME_RE", "Ref", "check_alias", "check_name", "parse_ref"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


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
            f"invalid asset name {name!r}: use letters, digits, '.', '_' or '-' "
            "(start with a letter or digit, at most 128 characters)"
        )
    return name


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias) or alias == "latest":
        raise UserError(
            f"invalid alias {alias!r}: start with a letter, then letters, digits, '_' or '-'"
            " ('latest' is reserved)"
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
        if not ver.isdigit() or int(ver) < 1:
            raise UserError(f"invalid version in reference {ref!r}: expected name:N with N >= 1")
        return Ref(name, version=int(ver))
    return Ref(check_name(ref))
