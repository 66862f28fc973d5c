"""The same store on PostgreSQL: migrations, registration, aliases, lineage, audit,
contention. Needs Debian's postgresql binaries (skipped with a reason otherwise)."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from lmops.core.config import Settings
from lmops.store import Store, VersionStatus
from lmops.store.db import head_revision

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_store(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("LMOPS_DATABASE_URL", pg_url)
    return Store(Settings.from_env())


def test_migrated_and_masked(pg_store: Store) -> None:
    assert pg_store.db.current_revision() == head_revision()
    assert "secret" not in pg_store.db.masked_url and "***" in pg_store.db.masked_url
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from lmops.store.models import Base

    with pg_store.db.engine.connect() as c:
        assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []


def test_register_alias_lineage_delete(pg_store: Store, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    pg_store.assets.register("dataset", "d", tmp_path / "a", metadata={"rows": 1})
    pg_store.assets.register("dataset", "d", tmp_path / "b")
    pg_store.assets.register("model", "m", tmp_path / "a", inputs=[("d:1", "dataset")])
    pg_store.assets.alias("d:1", "production")
    assert pg_store.assets.resolve("d@production").metadata == {"rows": 1}
    assert pg_store.assets.resolve("d").version == 2
    assert [e.parent for e in pg_store.assets.lineage("m").upstream] == ["d:1"]
    pg_store.assets.delete("d:2")
    assert pg_store.assets.get("d:2").status is VersionStatus.DELETED
    with pytest.raises(Exception, match="append-only"), pg_store.db.engine.begin() as c:
        c.execute(text("DELETE FROM audit"))


def _register(url: str, home: str, worker: int, barrier: object) -> list[int]:
    os.environ["LMOPS_DATABASE_URL"] = url
    os.environ["LMOPS_HOME"] = home
    store = Store()
    barrier.wait()  # type: ignore[attr-defined]
    out = []
    for i in range(5):
        f = Path(home) / f"w{worker}-{i}"
        f.write_text(f"{worker}/{i}")
        out.append(store.assets.register("dataset", "shared", f).version)
    store.close()
    return out


def test_four_processes_on_postgres(pg_url: str, lmops_home: Path) -> None:
    lmops_home.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(4)
    with ctx.Pool(4) as pool:
        res = pool.starmap(_register, [(pg_url, str(lmops_home), w, barrier) for w in range(4)])
    assert sorted(n for r in res for n in r) == list(range(1, 21))


def test_nan_in_metadata_is_stored_as_null(pg_store: Store, tmp_path: Path) -> None:
    # an eval report of one-item tasks has NaN stderrs: PostgreSQL refuses NaN in JSON
    (tmp_path / "r").write_text("{}")
    meta = {"results": {"t": {"acc": 1.0, "acc_stderr": float("nan")}}, "inf": [float("inf")]}
    v = pg_store.assets.register("eval_report", "r", tmp_path / "r", metadata=meta)
    assert pg_store.assets.get(v.ref).metadata == {
        "results": {"t": {"acc": 1.0, "acc_stderr": None}},
        "inf": [None],
    }


def test_request_log_gains_x_request_id(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.store.test_migrations import request_log_gains_x_request_id

    request_log_gains_x_request_id(pg_url, monkeypatch)


def test_request_log_gains_replica(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.store.test_migrations import request_log_gains_replica

    request_log_gains_replica(pg_url, monkeypatch)


def test_responses_table_up_and_down(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.store.test_migrations import responses_table_up_and_down

    responses_table_up_and_down(pg_url, monkeypatch)
