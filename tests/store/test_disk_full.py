"""A full disk is reported as such, at once, naming the path: not as a lock after 30 s.

The database is made full for real (``PRAGMA max_page_count`` caps the SQLite file at its
current size); a full artifact disk is injected where the bytes are copied, since a tiny
filesystem needs root to mount.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from lmops.core.errors import DiskFullError, UserError
from lmops.store import Store, VersionStatus
from lmops.store import artifacts as artifacts_mod
from lmops.store.db import disk_full


def _fill_database(store: Store) -> None:
    """Cap the SQLite file at its current page count on every connection."""
    with store.db.engine.connect() as c:
        pages = c.exec_driver_sql("PRAGMA page_count").scalar()

    @event.listens_for(store.db.engine, "connect")
    def _cap(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

    store.db.engine.dispose()  # new connections get the cap


def test_full_database_is_reported_at_once_naming_the_file(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "a.txt"
    f.write_text("a")
    _fill_database(store)
    slept: list[float] = []
    monkeypatch.setattr("lmops.store.db.time.sleep", slept.append)
    with pytest.raises(DiskFullError) as e:
        store.assets.register("dataset", "a", f, metadata={"pad": "x" * 200_000})
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg
    assert "disk full" in msg and str(store.settings.home / "lmops.db") in msg
    assert "locked" not in msg
    assert slept == []  # not retried as if it were a lock


def _no_space(*_a: object, **_k: object) -> tuple[str, int]:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_artifact_disk_fails_the_version_and_cleans_staging(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * 10_000)
    monkeypatch.setattr(artifacts_mod, "_copy", _no_space)
    with pytest.raises(DiskFullError) as e:
        store.assets.register("model", "big", f)
    msg = str(e.value)
    assert "\n" not in msg and "disk full" in msg and store.settings.artifacts in msg
    v = store.assets.get("big:1")
    assert v.status is VersionStatus.FAILED and "No space left" in (v.error or "")
    assert list(store.artifacts.staging.iterdir()) == []  # the temp file went too


def test_postgres_disk_full_is_recognised() -> None:
    psycopg = pytest.importorskip("psycopg")
    err = psycopg.errors.DiskFull("could not extend file: No space left on device")
    full = disk_full(err, "postgresql://u:secret@db/lmops")
    assert full is not None and "secret" not in str(full) and "db/lmops" in str(full)
    assert disk_full(psycopg.errors.UniqueViolation("duplicate"), "postgresql://db/x") is None
