"""Authentication dependencies of every ``/api`` route: a bearer API key, any active key
(:data:`Reader`) or an admin key (:data:`Admin`); the store handed to the route acts as that
key, so the audit log names it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from lmops.core.errors import PermissionDenied
from lmops.security.auth import Unauthorized, authenticate
from lmops.store import ApiKey, Store

__all__ = ["Admin", "Reader", "Unauthorized", "admin", "reader"]


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
