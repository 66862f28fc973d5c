"""Errors that lmops raises on purpose.

The tree::

    LmopsError                      base; the CLI prints ``error: <message>`` and exits 1
    ├── UserError                   bad input the user can fix (the message says how)
    │   ├── NotFoundError           an unknown asset, version, alias, run or key
    │   ├── ConflictError           the thing exists already / is in the wrong state
    │   ├── PermissionDenied        an API key lacks the role or scope
    │   └── DiskFullError           no space left where the database or artifacts live
    ├── IntegrityError              stored bytes no longer match their digest
    └── StoreError                  the database or artifact store cannot be used
        └── MigrationError          the database schema is newer/older than this lmops

Messages are one line, name the thing (file, line, field, reference) and say what to do.
What to do is often a command in one skin and a route in another: ``cli=`` ends the message
the CLI prints (``str(e)``), ``api=`` the one the REST API and the gateway answer
(:func:`api_message`), so an API client is never told to run ``lmops ...``.
"""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "DiskFullError",
    "IntegrityError",
    "LmopsError",
    "MigrationError",
    "NotFoundError",
    "PermissionDenied",
    "StoreError",
    "UserError",
    "api_message",
    "first_line",
    "name_hint",
]


def first_line(e: BaseException) -> str:
    """The first non-empty line of ``e``'s message, or its type's name when it has none
    (``RuntimeError()``), terminal colour codes dropped: for one-line errors that quote a
    library's exception."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # torch.onnx colours its messages
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].strip() if lines else type(e).__name__


def name_hint(name: str, known: list[str], what: str, cutoff: float = 0.6) -> str:
    """The tail of an "unknown NAME" error: ``did you mean 'X'?`` for a close one of
    ``known`` (difflib, at least ``cutoff`` alike), else ``WHAT: a, b, ...`` (ten at
    most), else ``""``."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    if close:
        return f"did you mean {close[0]!r}?"
    if not known:
        return ""
    return f"{what}: " + ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")


class LmopsError(Exception):
    """Base of every error lmops raises deliberately. ``cli``/``api``: the hint that ends
    the message in each skin (see the module docstring)."""

    exit_code = 1
    cli: str | None = None
    api: str | None = None

    def __init__(self, *args: object, cli: str | None = None, api: str | None = None) -> None:
        super().__init__(*args)
        if cli is not None:
            self.cli = cli
        if api is not None:
            self.api = api

    def __str__(self) -> str:
        return _with(super().__str__(), self.cli)


def _with(message: str, hint: str | None) -> str:
    return f"{message}; {hint}" if hint else message


def api_message(e: BaseException) -> str:
    """``e``'s message as an API or gateway client should read it: with the route to use
    where the CLI's message names a command."""
    if isinstance(e, LmopsError):
        return _with(Exception.__str__(e), e.api)
    return str(e)


class UserError(LmopsError):
    """Bad input that the user can fix; the message says how."""

    exit_code = 2


class NotFoundError(UserError):
    """An unknown asset, version, alias, run or key."""


class ConflictError(UserError):
    """The target exists already or is in a state that forbids the action."""


class PermissionDenied(UserError):
    """The caller's key lacks the role or scope for the action."""


class DiskFullError(UserError):
    """The disk (or quota) holding the database or the artifacts is full. Reported at once,
    naming the path; the user frees space (``lmops gc`` frees unreferenced blobs)."""


class IntegrityError(LmopsError):
    """Stored bytes no longer match their recorded digest."""


class StoreError(LmopsError):
    """The metadata database or artifact store cannot be used."""


class MigrationError(StoreError):
    """The database schema does not match what this lmops version expects."""
