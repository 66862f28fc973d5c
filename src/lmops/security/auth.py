"""Key authentication: the one bearer-key check of ``/api`` (:mod:`lmops.api.deps`) and ``/v1``
(:class:`lmops.serve.openai_api.Gateway`).

Contract of :func:`authenticate`: a request authenticates with ``Authorization: Bearer
<key>`` (scheme case-insensitive, blanks around the key ignored); no header, another scheme
or an empty key raise :class:`Unauthorized` with the caller's ``missing`` message, and a key
the store refuses (unknown, revoked, expired) raises :class:`Unauthorized` with the store's
message. Both skins answer 401; each keeps its own error shape (``/api``: lmops's,
``/v1``: OpenAI's ``invalid_api_key``).
"""

from __future__ import annotations

from collections.abc import Callable

from lmops.core.errors import PermissionDenied
from lmops.store import ApiKey

__all__ = ["MISSING_KEY", "Unauthorized", "authenticate", "bearer_token"]

MISSING_KEY = "missing API key: send 'Authorization: Bearer <key>'"


class Unauthorized(PermissionDenied):
    """No key, or a key that does not authenticate (HTTP 401)."""


def bearer_token(authorization: str | None) -> str | None:
    """The key of a ``Bearer`` ``Authorization`` header value, or ``None`` without one."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def authenticate(
    authorization: str | None,
    lookup: Callable[[str], ApiKey],
    *,
    missing: str = MISSING_KEY,
) -> ApiKey:
    """The active key that the ``Authorization`` header value carries.

    ``lookup`` is ``store.keys.authenticate`` or a cache in front of it; it raises
    :class:`PermissionDenied` for a key it refuses. Raises :class:`Unauthorized`.
    """
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized(missing)
    try:
        return lookup(token)
    except Unauthorized:
        raise
    except PermissionDenied as e:
        raise Unauthorized(str(e)) from None
