"""API keys: the secret is shown once and only its sha256 is stored.

A secret looks like ``lmk-<40 url-safe chars>``; its first 12 characters (the prefix) are
stored in clear so people can tell keys apart in listings and logs. Roles: ``admin``
(may change state through ``/api``) and ``user``. ``rpm``/``tpm`` limits and ``scopes``
(allowed deployments) are stored here and enforced by the serving gateway.

A key is known by its name: :meth:`KeyRing.update` changes its role, limits, scopes or expiry
and :meth:`KeyRing.rotate` gives it a new secret, both in place, so the rate counters
(``key:<name>``) and the request log (``key_name``) of the key carry on through either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmops.core.errors import (
    ConflictError,
    NotFoundError,
    PermissionDenied,
    UserError,
    name_hint,
)
from lmops.store import _rows
from lmops.store._time import aware, utcnow
from lmops.store.models import ApiKeyRow
from lmops.store.refs import INT32_MAX, check_int, check_name
from lmops.store.types import ApiKey

if TYPE_CHECKING:
    from lmops.store.store import Store

__all__ = ["ROLES", "UNSET", "KeyRing", "hash_secret"]

ROLES = ("admin", "user")
SECRET_PREFIX = "lmk-"


class _Unset(Enum):
    UNSET = "unset"


UNSET: Final = _Unset.UNSET
"""An argument of :meth:`KeyRing.update` left as it is (``None`` removes a limit)."""
_Scopes = list[str]  # named here: inside KeyRing, ``list`` is its method


def hash_secret(secret: str) -> str:
    # Secrets carry 240 bits of randomness, so a plain (fast) hash is enough: there is
    # nothing to brute-force that a slow KDF would protect.
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(30)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UserError(f"invalid role {role!r}: use one of {', '.join(ROLES)}")


def _check_limit(label: str, v: int | None) -> None:
    if v is not None and v <= 0:
        raise UserError(f"--{label} must be a positive integer, got {v}")
    if v is not None:
        check_int(v, f"--{label}", maximum=INT32_MAX)  # an INTEGER column


def _check_scopes(scopes: list[str] | None) -> list[str] | None:
    """The deployments a key may call, each named once; an empty list (a key that could
    call nothing) is refused: ``None`` means every deployment."""
    if scopes is None:
        return None
    kept = list(dict.fromkeys(str(d).strip() for d in scopes if str(d).strip()))
    if not kept:
        raise UserError(
            "scopes: give at least one deployment name, or none at all for every deployment"
        )
    return kept


def _check_expiry(expires_at: datetime | None) -> datetime | None:
    """``expires_at`` in UTC; a time already past is refused."""
    expires_at = aware(expires_at)
    if expires_at is not None and expires_at <= utcnow():
        raise UserError(f"--expires {expires_at.date()} is in the past")
    return expires_at


def _row(s: Session, name: str) -> ApiKeyRow:
    """The row of the key ``name``; ``NotFoundError`` with a did-you-mean if none."""
    row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.name == name))
    if row is None:
        known = list(s.scalars(select(ApiKeyRow.name).order_by(ApiKeyRow.name)))
        hint = name_hint(name, known, "keys are") or "there are no keys yet"
        raise NotFoundError(
            f"key {name!r} not found; {hint}",
            cli="see `lmops keys list`",
            api="GET /api/keys lists them",
        )
    return row


def _keep_an_admin(s: Session, row: ApiKeyRow, verb: str) -> None:
    """Refuse (``ConflictError``) a change that would leave no active admin key."""
    if row.role != "admin":
        return
    now = utcnow()
    others = [
        k
        for k in s.scalars(
            select(ApiKeyRow).where(
                ApiKeyRow.role == "admin", ApiKeyRow.revoked_at.is_(None), ApiKeyRow.id != row.id
            )
        )
        if k.expires_at is None or aware(k.expires_at) > now  # type: ignore[operator]
    ]
    if not others:
        raise ConflictError(
            f"key {row.name!r} is the last active admin key: nothing could administer the API "
            f"and the console if it were gone; create another admin key first, then {verb} it"
        )


def _audit_value(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


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
        _check_role(role)
        _check_limit("rpm", rpm)
        _check_limit("tpm", tpm)
        expires_at = _check_expiry(expires_at)
        scopes = _check_scopes(scopes)
        secret = _new_secret()

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
            return _rows.api_key(_row(s, name))

    def revoke(self, name: str, *, keep_an_admin: bool = False) -> ApiKey:
        """Revoke a key: refused at once by ``/api`` and the console, and by the gateway
        within ``KEY_CACHE_S`` (it trusts an authenticated key that long). With
        ``keep_an_admin`` (``/api`` and the console pass it) the last active admin key is
        not revoked: nothing could administer them after it (the local CLI needs no key)."""

        def rev(s: Session) -> ApiKey:
            row = _row(s, name)
            if keep_an_admin and row.revoked_at is None:
                _keep_an_admin(s, row, "revoke")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                self._store.audit.record(s, "key.revoke", name, {})
            return _rows.api_key(row)

        return self._db.write(rev)

    def update(
        self,
        name: str,
        *,
        role: str | _Unset = UNSET,
        rpm: int | _Unset | None = UNSET,
        tpm: int | _Unset | None = UNSET,
        expires_at: datetime | _Unset | None = UNSET,
        scopes: _Scopes | _Unset | None = UNSET,
        keep_an_admin: bool = False,
    ) -> ApiKey:
        """Change a key's role, limits, scopes or expiry; its secret stays the same.

        An argument left out keeps its value; ``None`` removes that limit (no ``rpm``/``tpm``
        limit, every deployment, no expiry). Values are checked as :meth:`create` checks
        them. A revoked key is refused (``ConflictError``); an update that changes nothing
        writes nothing. The audit event ``key.update`` names each change as ``[old, new]``.
        The gateway sees a change within ``KEY_CACHE_S``; ``/api`` and the console at once.
        """
        asked: dict[str, Any] = {
            k: v
            for k, v in (
                ("role", role),
                ("rpm", rpm),
                ("tpm", tpm),
                ("expires_at", expires_at),
                ("scopes", scopes),
            )
            if v is not UNSET
        }
        if not asked:
            raise UserError(
                f"nothing to change for key {name!r}: give a new role, rpm, tpm, scopes or expiry"
            )
        if "role" in asked:
            _check_role(asked["role"])
        for label in ("rpm", "tpm"):
            if label in asked:
                _check_limit(label, asked[label])
        if "expires_at" in asked:
            asked["expires_at"] = _check_expiry(asked["expires_at"])
        if "scopes" in asked:
            asked["scopes"] = _check_scopes(asked["scopes"])

        def upd(s: Session) -> ApiKey:
            row = self._active_row(s, name, "update")
            if keep_an_admin and asked.get("role", "admin") != "admin":
                _keep_an_admin(s, row, "make a user of")
            changes: dict[str, list[Any]] = {}
            for field, new in asked.items():
                old = aware(row.expires_at) if field == "expires_at" else getattr(row, field)
                if old != new:
                    changes[field] = [_audit_value(old), _audit_value(new)]
                    setattr(row, field, new)
            if changes:
                self._store.audit.record(s, "key.update", name, changes)
            return _rows.api_key(row)

        return self._db.write(upd)

    def rotate(self, name: str) -> tuple[ApiKey, str]:
        """Give a key a new secret; returns the record and the secret (shown this once).

        The name, role, limits, scopes, expiry and usage history stay; the old secret is
        refused from now on (by the gateway within ``KEY_CACHE_S``, as for a revoked key).
        A revoked key is refused (``ConflictError``). Audited as ``key.rotate`` with the old
        and new prefix (never the secret).
        """
        secret = _new_secret()

        def rot(s: Session) -> ApiKey:
            row = self._active_row(s, name, "rotate")
            self._store.audit.record(s, "key.rotate", name, {"prefix": [row.prefix, secret[:12]]})
            row.prefix = secret[:12]
            row.secret_hash = hash_secret(secret)
            return _rows.api_key(row)

        return self._db.write(rot), secret

    def _active_row(self, s: Session, name: str, verb: str) -> ApiKeyRow:
        """The row of the key ``name`` for a change; revoked: ``ConflictError``."""
        row = _row(s, name)
        if row.revoked_at is not None:
            raise ConflictError(
                f"key {name!r} was revoked on {row.revoked_at.date()}; cannot {verb} it: "
                "create a new key"
            )
        return row

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
