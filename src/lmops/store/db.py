"""The metadata database: engine set-up, automatic migrations, retried write transactions.

SQLite is the embedded default (WAL journal, a busy timeout, foreign keys on); PostgreSQL
works through the same code. Migrations run on open under a lock (a file lock for SQLite,
an advisory lock for PostgreSQL) so that many processes opening a fresh home at once apply
them exactly once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from lmops.core.config import mask_url
from lmops.core.errors import DiskFullError, MigrationError, StoreError, UserError
from lmops.core.jsonl import finite

__all__ = ["Database", "disk_full", "head_revision", "is_lock_conflict", "sqlite_file"]

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


def json_dumps(value: Any) -> str:
    """How the JSON columns (metadata, params, details) are written: NaN and infinities as
    ``null``, the same on both databases. JSON has no NaN: PostgreSQL refuses the whole
    row (an eval report with one stderr of a one-item task could not be registered), and
    SQLite would keep text that other JSON readers cannot parse."""
    return json.dumps(finite(value))


class Database:
    """An engine plus a session factory, with the schema migrated to this lmops' head."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.busy_timeout = _busy_timeout()
        _check_scheme(url)
        _check_url(url)
        try:
            self.engine = self._make_engine(url)
        except ModuleNotFoundError as e:  # e.g. postgres URL without the driver
            raise StoreError(
                f"database driver {e.name!r} is not installed for {url.split(':')[0]}; "
                "install the extra: pip install 'lmops[postgres]'"
            ) from None
        except (ArgumentError, ValueError):  # the parser's own message may quote the password
            raise UserError(
                f"LMOPS_DATABASE_URL {self.masked_url} is not a valid database URL; expected "
                "dialect://user:password@host:port/database with special characters in the "
                "user and password percent-encoded"
            ) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    # -- engine ---------------------------------------------------------------------------
    def _make_engine(self, url: str) -> Engine:
        if not self.is_sqlite:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            return create_engine(url, pool_pre_ping=True, json_serializer=json_dumps)

        path = sqlite_file(url)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": self.busy_timeout}, json_serializer=json_dumps
        )

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
            path = self.sqlite_path
            if path is None:
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
            if full := disk_full(e.orig, self.where):
                raise full from None
            raise StoreError(
                f"cannot open database {self.masked_url}: {mask_url(str(e.orig))}; "
                "check LMOPS_DATABASE_URL and that the server is running"
            ) from None

    @staticmethod
    def _current(conn: Connection) -> str | None:
        from alembic.runtime.migration import MigrationContext

        return MigrationContext.configure(conn).get_current_revision()

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def sqlite_path(self) -> str | None:
        """The database file of a SQLite URL (None for PostgreSQL or ``:memory:``)."""
        return sqlite_file(self.url)

    @property
    def where(self) -> str:
        """Where the data lives, for messages: the file, or the masked URL."""
        return self.sqlite_path or self.masked_url

    # -- locks ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold a named lock that every process using this database sees (a file lock next
        to a SQLite file, a session advisory lock on PostgreSQL); waits for it."""
        path = self.sqlite_path
        if self.is_sqlite and path is None:
            with _MEMORY_LOCKS.setdefault(name, threading.Lock()):
                yield
        elif path is not None:
            with open(f"{path}.{name}.lock", "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        else:
            key = _LOCK_BASE + sum(name.encode())  # stable across processes, unlike hash()
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()

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
                if full := disk_full(e.orig, self.where):
                    raise full from None  # waiting frees no space: say so at once
                if not _is_lock_error(e):
                    raise StoreError(
                        f"database {self.masked_url} is unavailable: {mask_url(str(e.orig))}; "
                        "check LMOPS_DATABASE_URL and that the server is running"
                    ) from None
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"database {self.masked_url} is locked ({mask_url(str(e.orig))}) after "
                        f"{self.busy_timeout:g}s; another process holds a long write: retry, or "
                        "raise LMOPS_DB_BUSY_TIMEOUT"
                    ) from None
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


_MEMORY_LOCKS: dict[str, threading.Lock] = {}
_LOCK_BASE = 727_300  # advisory lock keys of ``Database.exclusive`` (migrations use 727274)
_SQLITE_FULL = 13
_SQLITE_IOERR = 10
_PG_DISK_FULL = "53100"


def sqlite_file(url: str) -> str | None:
    """The database file a SQLite URL names, without its ``?options`` (None for another
    database or ``:memory:``)."""
    if not url.startswith("sqlite") or "///" not in url:
        return None
    path = url.split("///", 1)[1].split("?", 1)[0]
    return path if path and path != ":memory:" else None


def _check_scheme(url: str) -> None:
    """Refuse, naming the fix, a URL of a database lmops does not run on (only SQLite and
    PostgreSQL have its migrations and locks), and ``postgres://``, which SQLAlchemy no
    longer reads (Heroku and others still hand it out)."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        return  # not a URL at all: the parser's refusal below says what is expected
    base = scheme.lower().split("+", 1)[0]
    if base == "postgres":
        raise UserError(
            f"LMOPS_DATABASE_URL {mask_url(url)}: SQLAlchemy does not accept the scheme "
            f"{scheme}://; write postgresql:// instead (the rest of the URL unchanged)"
        )
    if base not in ("sqlite", "postgresql"):
        raise UserError(
            f"LMOPS_DATABASE_URL {mask_url(url)}: {scheme}:// is not supported; lmops runs "
            "on SQLite (sqlite:///PATH, the default) or PostgreSQL (postgresql://...) only"
        )


def _check_url(url: str) -> None:
    """Refuse a URL whose user or password holds an unencoded ``@``: drivers would read the
    rest of the password as the host name and show it in their errors."""
    _, sep, rest = url.partition("://")
    if not sep or rest.count("@") < 2:
        return
    between = rest[rest.index("@") + 1 : rest.rindex("@")]
    if "/" not in between and "?" not in between:  # not an "@" in the path or query
        raise UserError(
            f"LMOPS_DATABASE_URL {mask_url(url)}: the user name or password holds an '@'; "
            "percent-encode it as %40 (and ':' as %3A, '/' as %2F)"
        )


def disk_full(err: BaseException | None, where: str) -> DiskFullError | None:
    """A ``DiskFullError`` naming ``where`` if ``err`` (a driver error or ``OSError``) means
    the disk or quota is full, else None. SQLite says SQLITE_FULL ("database or disk is
    full"), or a disk I/O error when it cannot even create its shared-memory file; the
    latter counts only when the filesystem really has no space left."""
    if err is None:
        return None
    code = getattr(err, "sqlite_errorcode", None)
    full = (
        (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT))
        or (code is not None and code & 0xFF == _SQLITE_FULL)
        or getattr(err, "sqlstate", None) == _PG_DISK_FULL
        or "database or disk is full" in str(err)
        or "no space left on device" in str(err).lower()
    )
    if not full and code is not None and code & 0xFF == _SQLITE_IOERR:
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(where)))
            full = st.f_bavail * st.f_frsize < 64 * 1024
        except OSError:
            pass
    if not full:
        return None
    return DiskFullError(
        f"disk full: cannot write {mask_url(where)} (no space left on its filesystem or "
        "quota); free space there and retry (`lmops gc` frees unreferenced blobs)"
    )


def _is_lock_error(e: OperationalError) -> bool:
    return is_lock_conflict(e.orig)


def is_lock_conflict(e: BaseException | None) -> bool:
    """A driver error (sqlite3, psycopg) for a lock or serialisation conflict, which a retry
    of the whole transaction resolves."""
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg or "could not serialize" in msg or "deadlock" in msg
