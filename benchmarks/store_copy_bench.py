"""`lmops store copy` throughput, beside the raw-file floor, printed as a table.

    python benchmarks/store_copy_bench.py [--assets 20] [--mb 10] [--requests 50000]
        [--pg-url postgresql://user:pass@host/postgres]

Builds a source store in a temp ``LMOPS_HOME``: ``--assets`` single-file assets of ``--mb``
MB of random bytes, each with a lineage edge to the one before, and ``--requests`` request
log rows with small JSON bodies (the table that grows on a busy gateway). Then it times:

* ``raw files`` (the floor, not a peer doing the same job): SQLite's online backup of the
  database file plus ``shutil.copytree`` of the artifact folder. It verifies nothing and
  only works between two local SQLite homes;
* ``store copy -> home``: :func:`lmops.store.copy.copy_store` into a new SQLite home (every
  blob re-hashed on the way, rows through SQLAlchemy, row counts compared);
* ``store copy -> postgres``, with ``--pg-url`` (a server URL; a new database is made on it
  for the run and dropped after): the same into PostgreSQL, artifacts to a local folder;
* ``re-run, blobs there``: the copy again after the rows were dropped from the destination,
  which is what a re-run after a failed row step costs (every blob found intact: re-hashed
  on a local root).

Not a test: figures only. Needs nothing beyond the dev install (PostgreSQL only with the flag).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmops.core.config import Settings  # noqa: E402
from lmops.store import Store  # noqa: E402
from lmops.store.copy import copy_store  # noqa: E402


def settings(home: Path, db: str | None = None) -> Settings:
    return Settings(
        home=home,
        database_url=db or f"sqlite:///{home / 'lmops.db'}",
        artifacts=str(home / "artifacts"),
        shared_datasets=None,
    )


def build_source(home: Path, assets: int, mb: int, requests: int) -> tuple[Store, int]:
    from sqlalchemy import insert

    from lmops.store._time import utcnow
    from lmops.store.models import RequestLogRow

    store = Store(settings(home))
    files = home.parent / "files"
    files.mkdir()
    prev: str | None = None
    for i in range(assets):
        f = files / f"weights-{i}.bin"
        f.write_bytes(os.urandom(mb << 20))
        v = store.assets.register(
            "model", f"m{i}", f, inputs=[(prev, "base_model")] if prev else []
        )
        prev = v.ref
    now = utcnow()
    rows = [
        {
            "request_id": f"req-{i}",
            "time": now,
            "key_name": "ci",
            "deployment": "chat",
            "model_ref": prev,
            "endpoint": "/v1/chat/completions",
            "status": 200,
            "prompt_tokens": 40,
            "completion_tokens": 12,
            "latency_ms": 80.0,
            "guardrails": {},
            "request_body": {"messages": [{"role": "user", "content": f"question {i}"}]},
            "response_body": {"content": f"answer {i}"},
        }
        for i in range(requests)
    ]
    with store.db.engine.begin() as c:
        for at in range(0, len(rows), 5000):
            c.execute(insert(RequestLogRow), rows[at : at + 5000])
    return store, assets * (mb << 20)


def raw_copy(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    with sqlite3.connect(src / "lmops.db") as a, sqlite3.connect(dest / "lmops.db") as b:
        a.backup(b)
    shutil.copytree(src / "artifacts" / "blobs", dest / "artifacts" / "blobs")


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def new_pg_database(server: str) -> tuple[str, Any]:
    import psycopg

    base = server.rsplit("/", 1)[0] if server.count("/") > 2 else server
    name = f"lmops_copy_bench_{os.getpid()}"
    admin = base.replace("postgresql://", "postgresql://", 1) + "/postgres"

    def run(sql: str) -> None:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(sql)

    run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    run(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}", lambda: run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", type=int, default=20)
    ap.add_argument("--mb", type=int, default=10)
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--pg-url", default=None)
    args = ap.parse_args()

    results: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src_home = root / "src" / "home"
        src_home.mkdir(parents=True)
        t_build, (store, nbytes) = timed(
            lambda: build_source(src_home, args.assets, args.mb, args.requests)
        )
        rows = args.requests
        print(
            f"source: {args.assets} assets, {nbytes / 2**20:.0f} MB of blobs, {rows:,} request "
            f"log rows (built in {t_build:.1f}s)"
        )

        def note(sec: float) -> str:
            return f"{nbytes / 2**20 / sec:7.1f} MB/s  {rows / sec:9,.0f} rows/s"

        sec, _ = timed(lambda: raw_copy(src_home, root / "raw"))
        results.append(("raw files (floor)", sec, note(sec)))

        dest = root / "home"
        sec, rep = timed(
            lambda: copy_store(
                store.settings, f"sqlite:///{dest / 'lmops.db'}", str(dest / "artifacts")
            )
        )
        assert rep.blobs_copied == args.assets and rep.rows["request_log"] == rows
        results.append(("store copy -> home", sec, note(sec)))

        (dest / "lmops.db").unlink()
        sec, rep = timed(
            lambda: copy_store(
                store.settings, f"sqlite:///{dest / 'lmops.db'}", str(dest / "artifacts")
            )
        )
        assert rep.blobs_present == args.assets
        results.append(("re-run, blobs there", sec, note(sec)))

        if args.pg_url:
            url, drop = new_pg_database(args.pg_url)
            try:
                sec, rep = timed(
                    lambda: copy_store(store.settings, url, str(root / "pg-artifacts"))
                )
                assert rep.rows["request_log"] == rows
                results.append(("store copy -> postgres", sec, note(sec)))
            finally:
                drop()
        store.close()

    print(f"{'':24} {'seconds':>8}  throughput")
    for name, sec, what in results:
        print(f"{name:24} {sec:8.2f}  {what}")


if __name__ == "__main__":
    main()
