"""`lmops store copy`: a whole store into another database and artifact root (SQLite ->
SQLite home, SQLite -> PostgreSQL + an fsspec root and back), ids and lineage kept, a
destination that is complete or empty, blobs verified on the way, the source only read."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Text, cast, select
from sqlalchemy.types import JSON, DateTime

from lmops.core.config import Settings
from lmops.store import Store
from lmops.store.models import Base
from lmops.store.types import RequestRecord


def _populate(store: Store, tmp: Path) -> dict[str, str]:
    """Every kind of row a store holds; returns the secret of its key."""
    data = tmp / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"text": "hello"}\n')
    (data / "b.jsonl").write_text('{"text": "world"}\n')
    store.assets.register("dataset", "corpus", data, metadata={"rows": 2, "nan": float("nan")})
    run = store.runs.start("train", name="sft", params={"lr": 3e-4})
    store.runs.log_metrics(run.id, {"loss": 2.5, "acc": 0.25}, step=1)
    store.runs.log_metrics(run.id, {"loss": 1.5}, step=2)
    (tmp / "weights.bin").write_bytes(os.urandom(4096))
    store.assets.register(
        "model", "tiny", tmp / "weights.bin", inputs=[("corpus:1", "dataset")], run_id=run.id
    )
    store.runs.finish(run.id)
    store.assets.alias("tiny:1", "production")
    (tmp / "gone.txt").write_text("soon deleted")
    store.assets.register("dataset", "scratch", tmp / "gone.txt")
    store.assets.delete("scratch:1")
    _, secret = store.keys.create("ci", role="admin", rpm=60, scopes=["chat"])
    store.requests.add(
        RequestRecord(
            request_id="req-1",
            endpoint="/v1/chat/completions",
            status=200,
            key_name="ci",
            deployment="chat",
            model_ref="tiny:1",
            prompt_tokens=12,
            completion_tokens=3,
            request_body={"messages": [{"role": "user", "content": "hi"}]},
            response_body={"id": "chatcmpl-1"},
        )
    )
    store.requests.add(RequestRecord(request_id="req-2", endpoint="/v1/completions", status=429))
    store.steps.put(
        "k" * 64, pipeline="release", step="train", step_type="train", outputs={"model": "tiny:1"}
    )
    return {"secret": secret}


def _dump(db_url: str) -> dict[str, list[dict[str, Any]]]:
    """Every copied table's rows, JSON as text and datetimes in UTC, in primary-key order;
    the copy's own audit entry left out."""
    from lmops.store.copy import _tables
    from lmops.store.db import Database

    db = Database(db_url)
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        with db.engine.connect() as conn:
            for t in _tables():
                cols = [
                    cast(c, Text).label(c.name) if isinstance(c.type, JSON) else c
                    for c in t.columns
                ]
                rows = []
                for r in conn.execute(select(*cols).order_by(*t.primary_key.columns)).mappings():
                    row = dict(r)
                    for c in t.columns:
                        v = row[c.name]
                        if isinstance(c.type, DateTime) and isinstance(v, datetime):
                            row[c.name] = (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC)
                        elif isinstance(c.type, JSON) and v is not None:
                            row[c.name] = ("json", json.loads(v))
                    if not (t.name == "audit" and row["action"] == "store.copy"):
                        rows.append(row)
                out[t.name] = rows
    finally:
        db.dispose()
    return out


def _settings(home: Path, db: str | None = None, artifacts: str | None = None) -> Settings:
    return Settings(
        home=home,
        database_url=db or f"sqlite:///{home / 'lmops.db'}",
        artifacts=artifacts or str(home / "artifacts"),
        shared_datasets=None,
    )


def test_copy_to_a_home_keeps_everything(cli, store: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    secret = _populate(store, tmp_path)["secret"]
    before = _dump(store.settings.database_url)
    dest = tmp_path / "backup"

    r = cli("store", "copy", "--to-home", str(dest))
    assert r.code == 0, r.err
    assert "blobs: 3 copied" in r.out and f"LMOPS_HOME={dest}" in r.out
    assert "not copied" in r.err and "runs" in r.err  # run logs stay in the source's home
    # the source was only read; the destination has the same rows, ids and all
    assert _dump(store.settings.database_url) == before
    copied = _dump(f"sqlite:///{dest / 'lmops.db'}")
    # the run's log was copied into the new home, and the run points at it there
    [run] = copied["runs"]
    assert run["log_path"] == str(dest / "runs" / run["id"] / "run.log")
    assert "run ended: SUCCEEDED" in Path(run["log_path"]).read_text()
    assert "run logs: 1 copied" in r.out
    run["log_path"] = before["runs"][0]["log_path"]
    assert copied == before
    assert before["metrics"] and before["lineage"] and before["request_log"]

    other = Store(_settings(dest))
    try:
        assert other.assets.resolve("tiny@production").ref == "tiny:1"
        assert [e.parent for e in other.assets.lineage("tiny:1").upstream] == ["corpus:1"]
        assert other.assets.verify() == {"corpus:1": [], "tiny:1": []}
        got = Path(other.assets.path("tiny:1"))
        assert got.read_bytes() == (tmp_path / "weights.bin").read_bytes()
        assert other.keys.authenticate(secret).name == "ci"
        assert other.requests.get("req-1").request_body == {  # type: ignore[union-attr]
            "messages": [{"role": "user", "content": "hi"}]
        }
        (tmp_path / "new.txt").write_text("new")
        v = other.assets.register("dataset", "corpus", tmp_path / "new.txt")
        assert v.version == 2
        assert [e.action for e in other.audit.list(action="store.copy")] == ["store.copy"]
    finally:
        other.close()

    # a second copy into the same place is refused, and changes nothing there
    again = cli("store", "copy", "--to-home", str(dest))
    assert again.code == 2
    assert "is not empty" in again.err and "fills a new database only" in again.err


def test_dry_run_writes_nothing(cli, store: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _populate(store, tmp_path)
    dest = tmp_path / "nowhere"
    r = cli("store", "copy", "--to-home", str(dest), "--dry-run", "--json")
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["dry_run"] and rep["blobs_copied"] == 3 and rep["rows"]["versions"] == 3
    assert not dest.exists()


def test_corrupt_source_blob_stops_before_any_row(cli, store: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _populate(store, tmp_path)
    blob = Path(store.artifacts.blobs.path(store.assets.get("tiny:1").digest))  # type: ignore[attr-defined]
    blob.chmod(0o644)
    good = blob.read_bytes()
    blob.write_bytes(b"x" + good[1:])
    dest = tmp_path / "backup"

    r = cli("store", "copy", "--to-home", str(dest))
    assert r.code == 1
    assert "corrupt" in r.err and "used by model tiny:1 (weights.bin)" in r.err
    assert "nothing was written to the destination database" in r.err
    assert all(not rows for rows in _dump(f"sqlite:///{dest / 'lmops.db'}").values())
    # the other blobs were copied and are kept: the next run skips them
    blob.write_bytes(good)
    r = cli("store", "copy", "--to-home", str(dest), "--json")
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert (rep["blobs_copied"], rep["blobs_present"]) == (1, 2)


def test_failure_while_writing_rows_leaves_the_destination_empty(
    cli, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import lmops.store.copy as copy_mod

    _populate(store, tmp_path)
    real = copy_mod._rows_of

    def failing(t: Any, batch: Any) -> list[dict[str, Any]]:
        if t.name == "request_log":  # after assets, versions, runs, ... were written
            raise OSError("connection lost")
        return real(t, batch)

    monkeypatch.setattr(copy_mod, "_rows_of", failing)
    dest = tmp_path / "backup"
    with pytest.raises(OSError, match="connection lost"):
        copy_mod.copy_store(
            store.settings, f"sqlite:///{dest / 'lmops.db'}", str(dest / "a"), home=dest
        )
    assert all(not rows for rows in _dump(f"sqlite:///{dest / 'lmops.db'}").values())
    assert not (dest / "runs").exists()  # run logs are copied only once the rows committed
    monkeypatch.setattr(copy_mod, "_rows_of", real)
    r = cli("store", "copy", "--to-database", f"sqlite:///{dest / 'lmops.db'}",
            "--to-artifacts", str(dest / "a"))  # fmt: skip
    assert r.code == 0, r.err
    assert "0 copied" in r.out and "3 already there" in r.out


def test_rows_come_from_one_snapshot_of_the_source(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registration that commits in the source while the rows are being read is not
    half copied (its version without its asset, or the other way round)."""
    import lmops.store.copy as copy_mod

    _populate(store, tmp_path)
    before = _dump(store.settings.database_url)
    real = copy_mod._rows_of
    writer = Store(store.settings)
    (tmp_path / "late.txt").write_text("late")

    def register_meanwhile(t: Any, batch: Any) -> list[dict[str, Any]]:
        if t.name == "assets" and not (tmp_path / "done").exists():
            (tmp_path / "done").touch()
            writer.assets.register("dataset", "late", tmp_path / "late.txt")
        return real(t, batch)

    monkeypatch.setattr(copy_mod, "_rows_of", register_meanwhile)
    dest = tmp_path / "backup"
    copy_mod.copy_store(store.settings, f"sqlite:///{dest / 'lmops.db'}", str(dest / "a"))
    writer.close()
    assert (tmp_path / "done").exists()
    assert store.assets.resolve("late").version == 1  # it did commit in the source
    assert _dump(f"sqlite:///{dest / 'lmops.db'}") == before


def test_a_database_of_an_older_lmops_is_refused_as_it_is_not_upgraded(
    cli, store: Store, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    from lmops.store.db import Database

    _populate(store, tmp_path)
    url = f"sqlite:///{tmp_path / 'prod-old.db'}"
    old = Database(url, migrate=False)
    old.migrate("0009")
    with old.engine.begin() as c:
        c.execute(text("INSERT INTO assets (name, kind, description, created_at) "
                       "VALUES ('live', 'model', '', '2026-01-01 00:00:00')"))  # fmt: skip
    r = cli("store", "copy", "--to-database", url, "--to-artifacts", str(tmp_path / "a"))
    assert r.code == 2 and "is not empty (it holds 1 assets)" in r.err
    assert old.current_revision() == "0009"  # another lmops still opens it
    old.dispose()


def test_bad_destinations_are_one_line_errors(cli, store: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("store", "copy", "--to-database", f"sqlite:///{tmp_path / 'x.db'}")
    assert r.code == 2 and "--to-artifacts is missing" in r.err
    r = cli("store", "copy", "--to-home", str(tmp_path / "h"), "--to-artifacts", "/x")
    assert r.code == 2 and "give it alone" in r.err
    r = cli("store", "copy", "--to-database", store.settings.database_url, "--to-artifacts", "/x")
    assert r.code == 2 and "is the source database itself" in r.err


@pytest.mark.postgres
def test_sqlite_to_postgres_and_object_storage_and_back(
    cli, store: Store, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    secret = _populate(store, tmp_path)["secret"]
    before = _dump(store.settings.database_url)
    bucket = "memory://lmops-copy-test"  # an fsspec root, as s3:// is

    r = cli("store", "copy", "--to-database", pg_url, "--to-artifacts", bucket)
    assert r.code == 0, r.err
    assert "secret" not in r.out  # the database password is masked
    assert _dump(pg_url) == before

    server = Store(_settings(tmp_path / "server-home", pg_url, bucket))
    try:
        assert server.keys.authenticate(secret).name == "ci"
        assert server.assets.verify("tiny:1") == {"tiny:1": []}
        assert (
            Path(server.assets.path("tiny:1")).read_bytes()
            == (tmp_path / "weights.bin").read_bytes()
        )
        # ids continue after the copied ones (the sequences moved past them)
        (tmp_path / "more.txt").write_text("more")
        v = server.assets.register("dataset", "more", tmp_path / "more.txt")
        assert v.version == 1
        ids = [row["id"] for row in _dump(pg_url)["versions"]]
        assert ids[-1] == max(row["id"] for row in before["versions"]) + 1
        assert len(list(server.requests.scan(with_bodies=True))) == 1  # SQL NULL stayed NULL
    finally:
        server.close()

    # and back, from the server to a laptop folder: the same rows again (+ "more")
    back = tmp_path / "laptop"
    monkeypatch.setenv("LMOPS_DATABASE_URL", pg_url)
    monkeypatch.setenv("LMOPS_ARTIFACTS", bucket)
    r = cli("store", "copy", "--to-home", str(back))
    assert r.code == 0, r.err
    again = _dump(f"sqlite:///{back / 'lmops.db'}")
    assert again["versions"][: len(before["versions"])] == before["versions"]
    assert again["request_log"] == before["request_log"]


@pytest.mark.postgres
def test_a_row_postgresql_refuses_is_named_without_its_values(
    cli, store: Store, tmp_path: Path, pg_url: str
) -> None:  # type: ignore[no-untyped-def]
    _populate(store, tmp_path)
    # SQLite keeps a value longer than its column; PostgreSQL refuses it
    store.requests.add(RequestRecord(request_id="req-long", endpoint="/v1/chat/completions",
                                     status=200, model_ref="/models/" + "x" * 300,
                                     request_body={"messages": "private words"}))  # fmt: skip
    r = cli("store", "copy", "--to-database", pg_url, "--to-artifacts", str(tmp_path / "a"))
    assert r.code == 1, r.err
    [line] = r.err.strip().splitlines()[-1:]
    assert line.startswith("error: cannot write table request_log (rows ")
    assert "nothing was written to the destination database" in line
    assert "private words" not in r.err and "xxxxxxxxxx" not in r.err
    assert all(not rows for rows in _dump(pg_url).values())
    # a database that does not exist: one line, dry run or not
    missing = pg_url.rsplit("/", 1)[0] + "/no_such_db"
    for extra in ([], ["--dry-run"]):
        r = cli("store", "copy", "--to-database", missing, "--to-artifacts", "/tmp/x", *extra)
        assert r.code == 1 and r.err.startswith("error: cannot open database"), r.err
        assert "secret" not in r.err and "Traceback" not in r.err


def test_every_table_is_copied_or_named_as_skipped() -> None:
    from lmops.store.copy import SKIPPED_TABLES, _tables

    assert {t.name for t in _tables()} | SKIPPED_TABLES == set(Base.metadata.tables)
