"""API keys (hashed, shown once, revocable, expiring) and the audit trail of changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from lmops.core.errors import ConflictError, PermissionDenied, UserError
from lmops.store import Store


def test_key_secret_is_shown_once_and_stored_hashed(store: Store, lmops_home: Path) -> None:
    key, secret = store.keys.create("svc", role="admin", rpm=60, tpm=10_000, scopes=["chat"])
    assert secret.startswith("lmk-") and key.prefix == secret[:12]
    assert (key.rpm, key.tpm, key.scopes, key.role) == (60, 10_000, ["chat"], "admin")
    assert store.keys.authenticate(secret).name == "svc"
    with store.db.engine.connect() as c:
        dump = "\n".join(str(r) for r in c.execute(text("SELECT * FROM api_keys")))
    assert secret not in dump and key.prefix in dump
    assert secret.encode() not in (lmops_home / "lmops.db").read_bytes()


def test_revoked_expired_and_wrong_keys_are_refused(store: Store) -> None:
    _, secret = store.keys.create("a")
    store.keys.revoke("a")
    with pytest.raises(PermissionDenied, match="'a' was revoked"):
        store.keys.authenticate(secret)
    _, soon = store.keys.create("b", expires_at=datetime.now(UTC) + timedelta(seconds=1))
    assert store.keys.authenticate(soon).name == "b"
    with store.db.engine.begin() as c:  # let it expire without sleeping
        c.execute(text("UPDATE api_keys SET expires_at = '2000-01-01 00:00:00' WHERE name='b'"))
    with pytest.raises(PermissionDenied, match="'b' expired"):
        store.keys.authenticate(soon)
    with pytest.raises(PermissionDenied, match="invalid API key"):
        store.keys.authenticate("lmk-not-a-key")
    assert {k.name: k.active for k in store.keys.list()} == {"a": False, "b": False}


def test_key_validation(store: Store) -> None:
    store.keys.create("dup")
    with pytest.raises(ConflictError, match="'dup' exists"):
        store.keys.create("dup")
    with pytest.raises(UserError, match="invalid role"):
        store.keys.create("x", role="root")
    with pytest.raises(UserError, match="--rpm must be a positive"):
        store.keys.create("x", rpm=0)
    with pytest.raises(UserError, match="in the past"):
        store.keys.create("x", expires_at=datetime(2001, 1, 1, tzinfo=UTC))


def test_every_change_is_audited_with_actor_and_origin(store: Store, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("f")
    api = store.as_actor("ci-key", "api")
    api.assets.register("dataset", "d", tmp_path / "f")
    store.assets.alias("d:1", "prod")
    store.keys.create("k")
    store.keys.revoke("k")
    store.assets.delete("d:1", force=True)
    events = list(reversed(store.audit.list()))
    assert [(e.action, e.target) for e in events] == [
        ("asset.register", "d:1"),
        ("asset.alias", "d@prod"),
        ("key.create", "k"),
        ("key.revoke", "k"),
        ("asset.delete", "d:1"),
    ]
    assert (events[0].actor, events[0].origin) == ("ci-key", "api")
    assert events[1].origin == "lib" and events[1].actor == store.actor
    assert events[1].details == {"to": "d:1", "from": None}
