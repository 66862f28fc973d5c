"""API keys: the secret is shown once and only its sha256 is stored.

A secret looks like ``lmk-<40 url-safe chars>``; its first 12 characters (the prefix) are
stored in clear so people can tell keys apart in listings and logs. Roles: ``admin``
(may change state through ``/api``) and ``user``. ``rpm``/``tpm`` limits and ``scopes``
(allowed deployments) are stored here and enforced by the serving gateway.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmops.core.errors import ConflictError, NotFoundError, PermissionDenied, UserError
from lmops.store import _rows
from lmops.store._time import aware, utcnow
from lmops.store.models import ApiKeyRow
from lmops.store.refs import INT32_MAX, check_int, check_name
from lmops.store.types import ApiKey

if TYPE_CHECKING:
    from lmops.store.store import Store

__all__ = ["ROLES", "KeyRing", "hash_secret"]

ROLES = ("admin", "user")
SECRET_PREFIX = "lmk-"


def hash_secret(secret: str) -> str:
    # Secrets carry 240 bits of randomness, so a plain (fast) hash is enough: there is
    # nothing to brute-force that a slow KDF would protect.
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRing:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store.db

    def create(
        self,
        name: str,
        *,
        role: str = "user",
        rpm: int | None = None,
        tpm: int | None = None,
        expires_at: datetime | None = None,
        scopes: list[str] | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key; returns the record and the secret (the only time it is shown)."""
        check_name(name)
        if role not in ROLES:
            raise UserError(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
        for label, v in (("rpm", rpm), ("tpm", tpm)):
            if v is not None and v <= 0:
                raise UserError(f"--{label} must be a positive integer, got {v}")
            if v is not None:
                check_int(v, f"--{label}", maximum=INT32_MAX)  # an INTEGER column
        expires_at = aware(expires_at)
        if expires_at is not None and expires_at <= utcnow():
            raise UserError(f"--expires {expires_at.date()} is in the past")
        secret = SECRET_PREFIX + secrets.token_urlsafe(30)

        def add(s: Session) -> ApiKey:
            if s.scalar(select(ApiKeyRow.id).where(ApiKeyRow.name == name)) is not None:
                raise ConflictError(f"a key named {name!r} exists; revoke it or pick another name")
            row = ApiKeyRow(
                name=name,
                prefix=secret[:12],
                secret_hash=hash_secret(secret),
                role=role,
                rpm=rpm,
                tpm=tpm,
                scopes=scopes,
                expires_at=expires_at,
                created_at=utcnow(),
                created_by=self._store.actor,
            )
            s.add(row)
            self._store.audit.record(
                s, "key.create", name, {"role": role, "rpm": rpm, "tpm": tpm, "scopes": scopes}
            )
            return _rows.api_key(row)

        return self._db.write(add), secret

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        with self._db.session() as s:
            q = select(ApiKeyRow).order_by(ApiKeyRow.name)
            if not include_revoked:
                q = q.where(ApiKeyRow.revoked_at.is_(None))
            return [_rows.api_key(r) for r in s.scalars(q)]

    def get(self, name: str) -> ApiKey:
        with self._db.session() as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.name == name))
            if row is None:
                raise NotFoundError(f"key {name!r} not found; see `lmops keys list`")
            return _rows.api_key(row)

    def revoke(self, name: str) -> ApiKey:
        """Revoke a key; effective for the very next request that presents it."""

        def rev(s: Session) -> ApiKey:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.name == name))
            if row is None:
                raise NotFoundError(f"key {name!r} not found; see `lmops keys list`")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                self._store.audit.record(s, "key.revoke", name, {})
            return _rows.api_key(row)

        return self._db.write(rev)

    def authenticate(self, secret: str) -> ApiKey:
        """The active key for ``secret``; ``PermissionDenied`` if unknown, revoked or expired."""
        digest = hash_secret(secret)
        with self._db.session() as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.secret_hash == digest))
        if row is None or not hmac.compare_digest(row.secret_hash, digest):
            raise PermissionDenied("invalid API key")
        key = _rows.api_key(row)
        if key.revoked_at is not None:
            raise PermissionDenied(f"API key {key.name!r} was revoked")
        if key.expires_at is not None and key.expires_at <= utcnow():
            raise PermissionDenied(f"API key {key.name!r} expired on {key.expires_at.date()}")
        return key
