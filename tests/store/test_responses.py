"""The store's part ``store.responses``: a conversation read back through its chain,
owners, deletion, expiry that follows a conversation's last turn, and purging; on SQLite
and on PostgreSQL (the chain is one recursive query, which both must read alike)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from lmops.core.config import Settings
from lmops.store import Store
from lmops.store._time import utcnow
from lmops.store.types import StoredResponse


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    if request.param == "postgres":
        monkeypatch.setenv("LMOPS_DATABASE_URL", request.getfixturevalue("pg_url"))
    store = Store(Settings.from_env())
    yield store
    store.close()


def put(
    store: Store, rid: str, prev: str | None, *, key: str = "app", at: datetime, days: float = 30
) -> None:
    store.responses.put(
        StoredResponse(
            id=rid,
            key_name=key,
            deployment="chat",
            previous_id=prev,
            created_at=at,
            expires_at=at + timedelta(days=days),
            input=[{"type": "message", "role": "user", "content": f"q{rid}"}],
            response={"id": rid, "object": "response", "output": []},
        )
    )


def test_a_chain_is_read_oldest_first_and_only_by_its_key(db: Store) -> None:
    now = utcnow()
    put(db, "r1", None, at=now)
    put(db, "r2", "r1", at=now)
    put(db, "r3", "r2", at=now)
    put(db, "x", "r1", at=now)  # a branch from r1: its own chain
    assert [r.id for r in db.responses.chain("r3", key="app")] == ["r1", "r2", "r3"]
    assert [r.id for r in db.responses.chain("x")] == ["r1", "x"]
    assert db.responses.chain("r3", key="other") == []
    assert db.responses.get("r3", key="other") is None
    got = db.responses.get("r3", key="app")
    assert got is not None and got.previous_id == "r2" and got.input[0]["content"] == "qr3"
    assert got.created_at.tzinfo is not None
    assert db.responses.chain("nope") == []

    # another key cannot delete it; its owner can; the chain stops where it was cut
    assert not db.responses.delete("r2", key="other")
    assert db.responses.delete("r2", key="app")
    assert not db.responses.delete("r2")
    assert [r.id for r in db.responses.chain("r3")] == ["r3"]


def test_expiry_follows_the_last_turn_and_gc_purges(db: Store) -> None:
    then = utcnow() - timedelta(days=10)
    put(db, "old", None, at=then, days=11)  # expires in one day
    put(db, "new", "old", at=utcnow(), days=30)  # continuing it keeps it as long
    put(db, "gone", None, at=then, days=5)  # expired five days ago
    assert db.responses.get("gone") is None  # gone for readers before gc runs
    assert db.responses.count() == 3
    assert db.gc().responses_expired == 1
    assert db.responses.count() == 2
    kept = db.responses.get("old")
    assert kept is not None and kept.expires_at > utcnow() + timedelta(days=29)
    # later, past the new expiry: both go
    assert db.responses.purge(utcnow() + timedelta(days=31)) == 2
    assert db.responses.count() == 0
