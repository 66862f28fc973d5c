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

    # another key cannot delete it; its owner can: its content is gone at once, the
    # conversation goes on through it to the turn before
    assert not db.responses.delete("r2", key="other")
    assert db.responses.delete("r2", key="app")
    assert not db.responses.delete("r2")
    assert db.responses.get("r2") is None and db.responses.chain("r2") == []
    chain = db.responses.chain("r3")
    assert [(r.id, r.deleted) for r in chain] == [("r1", False), ("r2", True), ("r3", False)]
    assert chain[1].input == [] and chain[1].response == {}
    # what the store keeps for itself never reaches a reader
    assert set(db.responses.get("r3").response) == {"id", "object", "output"}  # type: ignore[union-attr]


def test_expiry_follows_the_last_turn_and_gc_purges(db: Store) -> None:
    then = utcnow() - timedelta(days=10)
    put(db, "old", None, at=then, days=11)  # expires in one day
    put(db, "new", "old", at=utcnow(), days=30)  # continuing it keeps it its 11 days again
    put(db, "gone", None, at=then, days=5)  # expired five days ago
    assert db.responses.get("gone") is None  # gone for readers before gc runs
    assert db.responses.count() == 3
    assert db.gc().responses_expired == 1
    assert db.responses.count() == 2
    kept = db.responses.get("old")
    assert kept is not None and kept.expires_at > utcnow() + timedelta(days=10.99)
    # later, past the new expiry: both go
    assert db.responses.purge(utcnow() + timedelta(days=31)) == 2
    assert db.responses.count() == 0


def test_a_later_turn_keeps_earlier_ones_at_most_their_own_retention(db: Store) -> None:
    """A chain continued on a deployment that keeps responses longer extends each earlier
    turn only as far as that turn's own retention from now, not to the new turn's."""
    then = utcnow() - timedelta(days=5)
    put(db, "short", None, at=then, days=7)  # 2 days left; its own retention: 7 days
    put(db, "long", None, at=then, days=90)  # 85 days left
    put(db, "mid", "short", at=utcnow(), days=30)
    put(db, "end", "mid", at=utcnow(), days=90)
    short, mid = db.responses.get("short"), db.responses.get("mid")
    assert short is not None and mid is not None
    # kept 7 days from now (its own), not 90 (the last turn's)
    assert timedelta(days=6.99) < short.expires_at - utcnow() <= timedelta(days=7)
    assert timedelta(days=29.99) < mid.expires_at - utcnow() <= timedelta(days=30)
    # a turn already kept longer than the new turn's retention is never shortened
    put(db, "after", "long", at=utcnow(), days=1)
    long = db.responses.get("long")
    assert long is not None and long.expires_at - utcnow() > timedelta(days=84)
