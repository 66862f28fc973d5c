"""The metadata database: engine set-up, automatic migrations, retried write transactions.

SQLite is the embedded default (WAL journal, a busy timeout, foreign keys on); PostgreSQL
works through the same code. Migrations run on open under a lock (a file lock for SQLite,
an advisory lock for PostgreSQL) so that many processes opening a fresh home at once apply
them exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from lmops.core.errors import MigrationError, StoreError

__all__ = ["Database", "head_revision"]

T = TypeVar("T")
_MIGRATIONS = Path(__file__).parent / "migrations"
# Writers wait this long for a locked database before the error reaches the user
# (LMOPS_DB_BUSY_TIMEOUT overrides it, in seconds).
BUSY_TIMEOUT_S = 30.0


def _busy_timeout() -> float:
    raw = os.environ.get("LMOPS_DB_BUSY_TIMEOUT")
    try:
        return float(raw) if raw else BUSY_TIMEOUT_S
    except ValueError:
        raise StoreError(f"LMOPS_DB_BUSY_TIMEOUT={raw!r}: expected seconds, e.g. 30") from None


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration this lmops ships."""
    from alembic.script import ScriptDirectory

    cfg_script = ScriptDirectory(str(_MIGRATIONS))
    head = cfg_script.get_current_head()
    assert head is not None
    return head


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory(str(_MIGRATIONS)).walk_revisions()}


class Database:
    """An engine plus a session factory, with the schema migrated to this lmops' head."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.busy_timeout = _busy_timeout()
        try:
            self.engine = self._make_engine(url)
        except ModuleNotFoundError as e:  # e.g. postgres URL without the driver
            raise StoreError(
                f"database driver {e.name!r} is not installed for {url.split(':')[0]}; "
                "install the extra: pip install 'lmops[postgres]'"
            ) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    # -- engine ---------------------------------------------------------------------------
    def _make_engine(self, url: str) -> Engine:
        if not self.is_sqlite:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            return create_engine(url, pool_pre_ping=True)

        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": self.busy_timeout})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine

    # -- migrations -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _migration_lock(self, conn: Connection) -> Iterator[None]:
        if self.is_sqlite:
            path = self.url.split("///", 1)[1] if "///" in self.url else ""
            if not path or path == ":memory:":
                yield
                return
            with open(path + ".migrate.lock", "w") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        else:
            conn.execute(text("SELECT pg_advisory_lock(727274)"))
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(727274)"))

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to ``revision``; refuse a database newer than this lmops."""
        from alembic import command

        try:
            with self.engine.connect() as conn, self._migration_lock(conn):
                current = self._current(conn)
                if current is not None and current not in _known_revisions():
                    raise MigrationError(
                        f"database {self.masked_url} is at schema revision {current!r}, "
                        f"which this lmops does not know (its newest is {head_revision()!r}); "
                        "upgrade lmops or point LMOPS_DATABASE_URL at another database"
                    )
                target = head_revision() if revision == "head" else revision
                if current != target:
                    command.upgrade(_alembic_config(conn), target)
                    conn.commit()
        except OperationalError as e:
            raise StoreError(
                f"cannot open database {self.masked_url}: {e.orig}; "
                "check LMOPS_DATABASE_URL and that the server is running"
            ) from None

    @staticmethod
    def _current(conn: Connection) -> str | None:
        from alembic.runtime.migration import MigrationContext

        return MigrationContext.configure(conn).get_current_revision()

    @property
    def masked_url(self) -> str:
        from lmops.core.config import mask_url

        return mask_url(self.url)

    # -- sessions -------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (no commit)."""
        with self._sessions() as s:
            yield s

    def write(self, fn: Callable[[Session], T], *, attempts: int = 60) -> T:
        """Run ``fn`` in a transaction and commit, retrying on lock and unique-key races.

        Two writers that both compute "next version = max + 1" collide on a unique
        constraint; the loser rolls back and recomputes (up to ``attempts`` times). Lock
        errors are retried until the busy timeout has passed. ``fn`` must therefore have
        no side effects outside its own database writes.
        """
        delay = 0.01
        deadline = time.monotonic() + self.busy_timeout
        for attempt in range(attempts):
            try:
                with self._sessions() as s, s.begin():
                    return fn(s)
            except IntegrityError:
                if attempt == attempts - 1:
                    raise
            except OperationalError as e:
                if not _is_lock_error(e) or time.monotonic() >= deadline:
                    raise StoreError(
                        f"database {self.masked_url} is locked or unavailable ({e.orig}) after "
                        f"{self.busy_timeout:g}s; another process holds a long write: retry, or "
                        "raise LMOPS_DB_BUSY_TIMEOUT"
                    ) from None
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


def _is_lock_error(e: OperationalError) -> bool:
    return is_lock_conflict(e.orig)


def is_lock_conflict(e: BaseException | None) -> bool:
    """A driver error (sqlite3, psycopg) for a lock or serialisation conflict, which a retry
    of the whole transaction resolves."""
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg or "could not serialize" in msg or "deadlock" in msg
