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
    assert store.db.current_revision() == head_revision() == "0009"
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
