"""Migrations: empty database, upgrade from the previous schema, refusing unknown schemas,
and the ORM models agreeing with what the migrations build."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from lmops.core.errors import MigrationError
from lmops.store import Store
from lmops.store.db import Database, head_revision


def test_empty_database_is_migrated_to_head(lmops_home: Path) -> None:
    store = Store()
    assert store.db.current_revision() == head_revision() == "0012"
    with store.db.engine.connect() as c:
        tables = {
            r[0] for r in c.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
        }
        mode = c.execute(text("PRAGMA journal_mode")).scalar()
    assert {
        "assets",
        "versions",
        "aliases",
        "lineage",
        "runs",
        "metrics",
        "audit",
        "api_keys",
    } <= tables
    assert mode == "wal"


def test_upgrade_from_previous_schema_keeps_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Database(url, migrate=False)
    old.migrate("0001")  # the first released schema: no api_keys, no audit triggers
    with old.engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO assets (id, name, kind, description, created_at) "
                "VALUES (1, 'legacy', 'dataset', '', '2026-01-01 00:00:00')"
            )
        )
        c.execute(
            text(
                "INSERT INTO versions (asset_id, version, status, digest, layout, manifest, size,"
                " meta, tags, description, created_at, created_by) VALUES (1, 1, 'READY', 'ab',"
                " 'file', '[]', 0, '{}', '[]', '', '2026-01-01 00:00:00', 'me')"
            )
        )
    old.dispose()
    new = Database(url)  # opening migrates automatically
    assert new.current_revision() == head_revision()
    with new.engine.connect() as c:
        assert c.execute(text("SELECT name FROM assets")).scalar() == "legacy"
        assert c.execute(text("SELECT count(*) FROM api_keys")).scalar() == 0


def test_database_newer_than_this_lmops_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'future.db'}"
    Database(url).dispose()
    db = Database(url, migrate=False)
    with db.engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(MigrationError, match=r"schema revision '9999'.*upgrade lmops"):
        Database(url)


def test_models_match_migrations(lmops_home: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from lmops.store.models import Base

    store = Store()
    with store.db.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
    assert diff == []


def test_audit_log_is_append_only_in_the_database(store: Store, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    store.assets.register("dataset", "a", tmp_path / "a")
    with pytest.raises(Exception, match="append-only"), store.db.engine.begin() as c:
        c.execute(text("UPDATE audit SET actor = 'mallory'"))
    with pytest.raises(Exception, match="append-only"), store.db.engine.begin() as c:
        c.execute(text("DELETE FROM audit"))
    assert store.audit.list()[0].actor != "mallory"


def request_log_gains_x_request_id(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """0009 -> 0010 on the database at ``url`` (SQLite or PostgreSQL): a row logged before
    keeps its answer id and has no x-request-id; rows after are found by either id, through
    the new index; and the revision goes down again."""
    from alembic import command
    from sqlalchemy import inspect

    from lmops.core.config import Settings
    from lmops.store.db import _alembic_config
    from lmops.store.types import RequestRecord

    old = Database(url, migrate=False)
    old.migrate("0009")
    with old.engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO request_log (request_id, time, key_name, deployment, endpoint, "
                "status, prompt_tokens, completion_tokens, guardrails) VALUES ('chatcmpl-old', "
                "'2026-01-01 00:00:00', 'app', 'chat', 'chat', 200, 1, 2, '{}')"
            )
        )
    old.dispose()
    monkeypatch.setenv("LMOPS_DATABASE_URL", url)
    store = Store(Settings.from_env())  # opening migrates to the head, past 0010
    try:
        assert store.db.current_revision() == head_revision()
        indexes = inspect(store.db.engine).get_indexes("request_log")
        assert {"name": "ix_request_log_x_request_id", "column_names": ["x_request_id"]} in [
            {"name": i["name"], "column_names": i["column_names"]} for i in indexes
        ]
        before = store.requests.get("chatcmpl-old")
        assert before is not None and before.x_request_id is None and before.key_name == "app"
        for rid, xid, key in [("cmpl-a", "req-1", "app"), ("cmpl-b", "req-1", "ops")]:
            store.requests.add(
                RequestRecord(
                    request_id=rid, x_request_id=xid, key_name=key, endpoint="chat", status=429
                )
            )
        newest = store.requests.get("req-1")  # a client may send one id twice: the newest
        assert newest is not None and newest.request_id == "cmpl-b"
        mine = store.requests.get("req-1", key="app")
        assert mine is not None and mine.request_id == "cmpl-a" and mine.x_request_id == "req-1"
        assert store.requests.get("cmpl-a", key="ops") is None
        assert store.requests.count(x_request_id="req-1") == 2
        assert store.requests.count(x_request_id="req-1", key="app") == 1
    finally:
        store.close()
    down = Database(url, migrate=False)
    with down.engine.connect() as conn:
        command.downgrade(_alembic_config(conn), "0009")
        conn.commit()
    assert "x_request_id" not in {
        c["name"] for c in inspect(down.engine).get_columns("request_log")
    }
    down.dispose()


def test_request_log_gains_x_request_id_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_log_gains_x_request_id(f"sqlite:///{tmp_path / 'old.db'}", monkeypatch)


def request_log_gains_replica(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """0010 -> 0011 on the database at ``url`` (SQLite or PostgreSQL): a row logged before
    has no replica, a row after keeps the one that answered, and the revision goes down
    again."""
    from alembic import command
    from sqlalchemy import inspect

    from lmops.core.config import Settings
    from lmops.store.db import _alembic_config
    from lmops.store.types import RequestRecord

    old = Database(url, migrate=False)
    old.migrate("0010")
    with old.engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO request_log (request_id, time, key_name, deployment, endpoint, "
                "status, prompt_tokens, completion_tokens, guardrails) VALUES ('chatcmpl-old', "
                "'2026-01-01 00:00:00', 'app', 'chat', 'chat', 200, 1, 2, '{}')"
            )
        )
    old.dispose()
    monkeypatch.setenv("LMOPS_DATABASE_URL", url)
    store = Store(Settings.from_env())  # opening migrates to the head, past 0011
    try:
        assert store.db.current_revision() == head_revision()
        before = store.requests.get("chatcmpl-old")
        assert before is not None and before.replica is None
        store.requests.add(
            RequestRecord(
                request_id="chatcmpl-new",
                endpoint="chat",
                status=200,
                model_ref="http://a:1/v1, http://b:1/v1",
                replica="http://b:1/v1",
            )
        )
        after = store.requests.get("chatcmpl-new")
        assert after is not None and after.replica == "http://b:1/v1"
        assert [r.replica for r in store.requests.scan()] == [None, "http://b:1/v1"]
    finally:
        store.close()
    down = Database(url, migrate=False)
    with down.engine.connect() as conn:
        command.downgrade(_alembic_config(conn), "0010")
        conn.commit()
    assert "replica" not in {c["name"] for c in inspect(down.engine).get_columns("request_log")}
    down.dispose()


def test_request_log_gains_replica_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_log_gains_replica(f"sqlite:///{tmp_path / 'old.db'}", monkeypatch)


def responses_table_up_and_down(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """0011 -> 0012 on the database at ``url`` (SQLite or PostgreSQL): the responses table,
    its expiry index, a response stored and continued through it (the recursive query), and
    the revision going down again without touching the request log."""
    from datetime import timedelta

    from alembic import command
    from sqlalchemy import inspect

    from lmops.core.config import Settings
    from lmops.store._time import utcnow
    from lmops.store.db import _alembic_config
    from lmops.store.types import StoredResponse

    old = Database(url, migrate=False)
    old.migrate("0011")
    assert "responses" not in inspect(old.engine).get_table_names()
    old.dispose()
    monkeypatch.setenv("LMOPS_DATABASE_URL", url)
    store = Store(Settings.from_env())
    try:
        assert store.db.current_revision() == head_revision()
        indexes = inspect(store.db.engine).get_indexes("responses")
        assert ["expires_at"] in [i["column_names"] for i in indexes]
        now = utcnow()
        for rid, prev in [("resp_a", None), ("resp_b", "resp_a")]:
            store.responses.put(
                StoredResponse(
                    id=rid,
                    key_name="app",
                    previous_id=prev,
                    created_at=now,
                    expires_at=now + timedelta(days=1),
                    input=[{"type": "message", "role": "user", "content": rid}],
                    response={"id": rid, "output": []},
                )
            )
        assert [r.id for r in store.responses.chain("resp_b", key="app")] == ["resp_a", "resp_b"]
    finally:
        store.close()
    down = Database(url, migrate=False)
    with down.engine.connect() as conn:
        command.downgrade(_alembic_config(conn), "0011")
        conn.commit()
    assert "responses" not in inspect(down.engine).get_table_names()
    assert "replica" in {c["name"] for c in inspect(down.engine).get_columns("request_log")}
    down.dispose()


def test_responses_table_up_and_down_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    responses_table_up_and_down(f"sqlite:///{tmp_path / 'old.db'}", monkeypatch)
