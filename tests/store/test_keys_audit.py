"""API keys (hashed, shown once, revocable, expiring) and the audit trail of changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from lmops.core.errors import ConflictError, NotFoundError, PermissionDenied, UserError
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


# -- update and rotate ------------------------------------------------------------------------
def test_update_changes_limits_in_place_and_audits_old_and_new(store: Store) -> None:
    key, secret = store.keys.create("svc", rpm=60, scopes=["chat"])
    later = datetime(2099, 1, 31, tzinfo=UTC)
    updated = store.keys.update("svc", rpm=1, tpm=500, scopes=["chat", "embed"], expires_at=later)
    assert (updated.rpm, updated.tpm, updated.scopes, updated.expires_at) == (
        1,
        500,
        ["chat", "embed"],
        later,
    )
    assert (updated.prefix, updated.created_at) == (key.prefix, key.created_at)
    assert store.keys.authenticate(secret).rpm == 1  # the same secret, the new limits
    # None removes a limit; what is left out stays
    cleared = store.keys.update("svc", rpm=None, scopes=None, expires_at=None, role="admin")
    assert (cleared.rpm, cleared.tpm, cleared.scopes, cleared.expires_at, cleared.role) == (
        None,
        500,
        None,
        None,
        "admin",
    )
    events = store.audit.list(action="key.update")
    assert [e.target for e in events] == ["svc", "svc"]
    assert events[1].details == {
        "rpm": [60, 1],
        "tpm": [None, 500],
        "scopes": [["chat"], ["chat", "embed"]],
        "expires_at": [None, later.isoformat()],
    }
    assert events[0].details == {
        "role": ["user", "admin"],
        "rpm": [1, None],
        "scopes": [["chat", "embed"], None],
        "expires_at": [later.isoformat(), None],
    }
    assert secret not in str([e.details for e in store.audit.list()])
    # the same values again: nothing is written, no event
    store.keys.update("svc", tpm=500, role="admin")
    assert len(store.audit.list(action="key.update")) == 2


def test_update_validates_as_create_does_and_refuses_revoked_keys(store: Store) -> None:
    store.keys.create("svc", rpm=5)
    for changes, match in [
        ({"rpm": 0}, "--rpm must be a positive"),
        ({"tpm": -3}, "--tpm must be a positive"),
        ({"rpm": 2**31}, "--rpm: .* out of range"),
        ({"role": "root"}, "invalid role 'root'"),
        ({"expires_at": datetime(2001, 1, 1, tzinfo=UTC)}, "in the past"),
        ({}, "nothing to change for key 'svc'"),
    ]:
        with pytest.raises(UserError, match=match):
            store.keys.update("svc", **changes)  # type: ignore[arg-type]
    assert store.keys.get("svc").rpm == 5  # a refused update changes nothing
    with pytest.raises(NotFoundError, match="'svx' not found; did you mean 'svc'"):
        store.keys.update("svx", rpm=1)
    store.keys.revoke("svc")
    with pytest.raises(ConflictError, match=r"'svc' was revoked .* cannot update it"):
        store.keys.update("svc", rpm=1)
    with pytest.raises(ConflictError, match="cannot rotate it"):
        store.keys.rotate("svc")
    assert not store.audit.list(action="key.update") and not store.audit.list(action="key.rotate")


def test_an_expired_key_can_be_given_a_new_expiry(store: Store) -> None:
    _, secret = store.keys.create("late", expires_at=datetime.now(UTC) + timedelta(seconds=1))
    with store.db.engine.begin() as c:
        c.execute(text("UPDATE api_keys SET expires_at = '2000-01-01 00:00:00' WHERE name='late'"))
    with pytest.raises(PermissionDenied, match="expired"):
        store.keys.authenticate(secret)
    store.keys.update("late", expires_at=datetime.now(UTC) + timedelta(days=1))
    assert store.keys.authenticate(secret).name == "late"


def test_rotate_gives_a_new_secret_and_keeps_everything_else(store: Store) -> None:
    later = datetime(2099, 1, 31, tzinfo=UTC)
    before, old = store.keys.create(
        "svc", role="admin", rpm=7, tpm=70, scopes=["chat"], expires_at=later
    )
    after, new = store.keys.rotate("svc")
    assert new != old and new.startswith("lmk-") and after.prefix == new[:12] != before.prefix
    keep = ("name", "role", "rpm", "tpm", "scopes", "expires_at", "created_at", "created_by")
    assert after.model_dump(include=set(keep)) == before.model_dump(include=set(keep))
    assert store.keys.authenticate(new).name == "svc"
    with pytest.raises(PermissionDenied, match="invalid API key"):
        store.keys.authenticate(old)
    [event] = store.audit.list(action="key.rotate")
    assert (event.target, event.details) == ("svc", {"prefix": [before.prefix, after.prefix]})
    assert old not in str(event.details) and new not in str(event.details)
    assert [k.name for k in store.keys.list()] == ["svc"]  # the same key, not a second one
    with pytest.raises(NotFoundError, match="'nope' not found; keys are: svc"):
        store.keys.rotate("nope")


def test_the_last_active_admin_key_is_kept_where_asked(store: Store) -> None:
    """/api and the console (``keep_an_admin``) never revoke or demote the last active
    admin key: nothing could administer them after it. The local CLI may."""
    from fastapi.testclient import TestClient

    from lmops.api.app import create_app
    from lmops.core.errors import ConflictError

    _, boss = store.keys.create("boss", role="admin")
    store.keys.create("viewer")
    with pytest.raises(ConflictError, match="'boss' is the last active admin key"):
        store.keys.revoke("boss", keep_an_admin=True)
    with pytest.raises(ConflictError, match="create another admin key first, then make a user"):
        store.keys.update("boss", role="user", keep_an_admin=True)
    store.keys.update("boss", rpm=10, keep_an_admin=True)  # other changes are fine
    store.keys.revoke("viewer", keep_an_admin=True)  # not an admin

    client = TestClient(create_app(store))
    auth = {"Authorization": f"Bearer {boss}"}
    r = client.delete("/api/keys/boss", headers=auth)
    assert r.status_code == 409 and "last active admin key" in r.text
    r = client.patch("/api/keys/boss", json={"role": "user"}, headers=auth)
    assert r.status_code == 409
    assert client.post("/api/keys", json={"name": "boss2", "role": "admin"},
                       headers=auth).status_code == 201  # fmt: skip
    assert client.delete("/api/keys/boss", headers=auth).status_code == 200
    # the local CLI's store may still revoke the last one (it needs no key to undo it)
    assert store.keys.revoke("boss2").revoked_at is not None
