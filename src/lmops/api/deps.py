"""Authentication dependencies of every ``/api`` route: a bearer API key, any active key
(:data:`Reader`) or an admin key (:data:`Admin`); the store handed to the route acts as that
key, so the audit log names it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from pydantic import AfterValidator

from lmops.core.errors import PermissionDenied
from lmops.security.auth import Unauthorized, authenticate
from lmops.store import ApiKey, Store

__all__ = ["Admin", "Reader", "ServerPath", "Text", "Unauthorized", "admin", "reader"]


def _authenticate(request: Request) -> ApiKey:
    store: Store = request.app.state.store
    key = authenticate(request.headers.get("authorization"), store.keys.authenticate)
    request.state.lmops_key = key  # the access log names the key (prefix and name only)
    return key


def reader(request: Request) -> Store:
    """Any active key; returns the store acting as that key."""
    key = _authenticate(request)
    store: Store = request.app.state.store
    return store.as_actor(key.name, "api")


def admin(request: Request) -> Store:
    """An active admin key."""
    key = _authenticate(request)
    if key.role != "admin":
        raise PermissionDenied(f"API key {key.name!r} has role {key.role!r}; this needs admin")
    store: Store = request.app.state.store
    return store.as_actor(key.name, "api")


Reader = Annotated[Store, Depends(reader)]
Admin = Annotated[Store, Depends(admin)]


# -- request fields that reach the file system -------------------------------------------------
def _plain_text(value: str) -> str:
    """Refuse what no name, ref or path can hold: NUL (the OS refuses it deep inside a job,
    as a 500) and lone surrogates (they cannot be encoded for the file system)."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _server_path(value: str) -> str:
    """A path on the server: plain text whose ``~`` (if any) expands."""
    _plain_text(value)
    if value.startswith("~"):
        try:
            Path(value).expanduser()
        except RuntimeError:  # ~user of no such user
            raise ValueError(
                f"cannot expand {value.split('/', 1)[0]!r}; give an absolute path"
            ) from None
    return value


Text = Annotated[str, AfterValidator(_plain_text)]
"""A request string that names something (an asset, a ref, a label): no NUL, no surrogates."""
ServerPath = Annotated[str, AfterValidator(_server_path)]
"""A request string that is a path on the server (or an asset ref in its place)."""
