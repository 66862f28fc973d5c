"""The rate limiter's counters and in-flight rows: the store's SQL for
:mod:`lmops.serve.limits`, which decides what the counts mean.

    counters = RateCounters(store.db)
    lease = counters.transaction(lambda txn: ...)   # txn.charge / in_flight / hold / free ...

Every limiter transaction runs through :meth:`RateCounters.transaction` on a :class:`RateTxn`:
fixed, hand-written SQL, the same for SQLite and PostgreSQL (only the placeholder style
differs), on DBAPI connections checked out of the engine's pool (``engine.raw_connection()``,
so the engine's connect-time set-up applies) and kept between transactions. This runs on
every request, so it bypasses SQLAlchemy's execution layer, whose per-statement overhead is
many times SQLite's own work (an admission against a key's RPM and TPM is one statement and
a commit, about 55 us of CPU with the reconciliation, in a loop; SQLAlchemy Core took 300).

Tables: ``rate_windows`` (one counter per ``(scope, window)``) and ``inflight`` (one row per
request in flight under a concurrency cap, with the writer's pid and host).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import Table
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.pool import PoolProxiedConnection

from lmops.core.errors import StoreError
from lmops.store.db import Database, disk_full, is_lock_conflict
from lmops.store.models import InflightRow

__all__ = ["InflightEntry", "RateCounters", "RateTxn"]

_T = TypeVar("_T")
_INFLIGHT = cast(Table, InflightRow.__table__)

# The hot statements, written once for both databases in ``?`` placeholders (turned into
# ``%s`` for psycopg). ``window`` is quoted: it is a keyword in both.
#
# Charge n counters: one row per counter, in sorted order, amounts >= 0; returns each
# row's new count and the previous window's count (NULL when that row does not exist).
_CHARGE = (
    'INSERT INTO rate_windows (scope, "window", count) VALUES {rows} '
    'ON CONFLICT (scope, "window") DO UPDATE SET count = rate_windows.count + excluded.count '
    'RETURNING scope, "window", count, (SELECT p.count FROM rate_windows AS p '
    'WHERE p.scope = rate_windows.scope AND p."window" = rate_windows."window" - 1)'
)
# Add a possibly negative amount to one counter, never below 0 (reconciliation).
_ADD = (
    'INSERT INTO rate_windows (scope, "window", count) VALUES (?, ?, ?) '
    'ON CONFLICT (scope, "window") DO UPDATE SET count = CASE '
    "WHEN rate_windows.count + ? < 0 THEN 0 ELSE rate_windows.count + ? END"
)
_COUNT = 'SELECT count FROM rate_windows WHERE scope = ? AND "window" = ?'
_PRUNE = 'DELETE FROM rate_windows WHERE scope LIKE ? AND "window" < ?'
_IN_FLIGHT = "SELECT count(*) FROM inflight WHERE scope = ?"
_HOLD = (
    "INSERT INTO inflight (scope, request_id, started_at, pid, host) VALUES (?, ?, ?, ?, ?) "
    "RETURNING id"
)
_FREE = "DELETE FROM inflight WHERE id IN ({rows})"
_IN_FLIGHT_ROWS = "SELECT id, pid, started_at, host FROM inflight"
# The pid of an in-flight row can be checked only on the host that wrote it.
HOST = socket.gethostname()[:255]

# Connections kept between transactions: one per thread that uses the counters at once.
_KEEP_CONNECTIONS = 4
# A forked child's copies of its parent's kept connections (see RateCounters._checkout).
_INHERITED: list[PoolProxiedConnection] = []


def _close_all(conns: list[PoolProxiedConnection]) -> None:
    while conns:
        with contextlib.suppress(Exception):  # a dead connection: the pool discards it
            conns.pop().close()


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


class InflightEntry(NamedTuple):
    """One in-flight row."""

    id: int
    pid: int
    started: float  # unix time
    host: str | None


class RateTxn:
    """The statements of one limiter transaction (see :meth:`RateCounters.transaction`)."""

    def __init__(self, counters: RateCounters, cur: DBAPICursor) -> None:
        self._c = counters
        self._cur = cur

    def charge(self, rows: Sequence[tuple[str, int, int]]) -> dict[str, tuple[int, int]]:
        """Add ``amount`` to each ``(row, window, amount)`` counter (give them sorted: every
        transaction then locks rows in one order) in one statement; row -> (its new count,
        the previous window's count)."""
        params: list[Any] = []
        for row in rows:
            params += row
        self._cur.execute(self._c._sql_n(_CHARGE, len(rows), "(?, ?, ?)"), params)
        return {row: (int(n), int(prev or 0)) for row, _, n, prev in self._cur.fetchall()}

    def add(self, row: str, window: int, amount: int) -> None:
        """Add ``amount`` (which may be negative) to one counter, never below 0."""
        self._cur.execute(self._c._add_sql, (row, window, max(0, amount), amount, amount))

    def count(self, row: str, window: int) -> int:
        self._cur.execute(self._c._count_sql, (row, window))
        found = self._cur.fetchone()
        return int(found[0]) if found else 0

    def prune(self, prefix: str, before: int) -> int:
        """Drop the ``prefix:`` counters of windows before ``before``; how many."""
        self._cur.execute(self._c._prune_sql, (f"{prefix}:%", before))
        return max(0, self._cur.rowcount)

    def in_flight(self, scope: str) -> int:
        self._cur.execute(self._c._in_flight_sql, (scope,))
        return int(cast(Sequence[int], self._cur.fetchone())[0])

    def hold(self, scope: str, request_id: str, started: float) -> int:
        """Record one request in flight under ``scope``; the row id."""
        when: Any = datetime.fromtimestamp(started, UTC)
        if self._c._store_time is not None:
            when = self._c._store_time(when)
        self._cur.execute(self._c._hold_sql, (scope, request_id[:64], when, os.getpid(), HOST))
        return int(cast(Sequence[int], self._cur.fetchone())[0])

    def free(self, ids: Sequence[int]) -> None:
        if ids:
            self._cur.execute(self._c._sql_n(_FREE, len(ids), "?"), list(ids))

    def inflight_rows(self, scope: str | None = None) -> list[InflightEntry]:
        """Every in-flight row (of ``scope``): id, pid, start time, host."""
        if scope is None:
            self._cur.execute(_IN_FLIGHT_ROWS, ())
        else:
            self._cur.execute(self._c._sql(_IN_FLIGHT_ROWS + " WHERE scope = ?"), (scope,))
        out = []
        for row_id, pid, started, host in self._cur.fetchall():
            if self._c._load_time is not None:
                started = self._c._load_time(started)
            out.append(InflightEntry(row_id, pid, _aware(started).timestamp(), host))
        return out


class RateCounters:
    """The limiter's tables behind kept DBAPI connections (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        dialect = db.engine.dialect
        self._dialect = dialect
        if dialect.paramstyle == "qmark":
            self._placeholder = "?"
        elif dialect.paramstyle in ("format", "pyformat"):
            self._placeholder = "%s"
        else:  # pragma: no cover - lmops supports sqlite3 and psycopg
            raise StoreError(f"database driver {dialect.driver!r} is not supported for limits")
        self._dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
        # in-flight start times are stored as SQLAlchemy stores them (a string on SQLite)
        started = _INFLIGHT.c.started_at.type.dialect_impl(dialect)
        self._store_time = started.bind_processor(dialect)
        self._load_time = started.result_processor(dialect, None)
        self._sql_cache: dict[tuple[str, int], str] = {}
        # DBAPI connections kept checked out between transactions (see transaction)
        self._idle: list[PoolProxiedConnection] = []
        self._pid = os.getpid()
        weakref.finalize(self, _close_all, self._idle)
        self._add_sql = self._sql(_ADD)
        self._count_sql = self._sql(_COUNT)
        self._prune_sql = self._sql(_PRUNE)
        self._in_flight_sql = self._sql(_IN_FLIGHT)
        self._hold_sql = self._sql(_HOLD)

    @property
    def local(self) -> bool:
        """Whether every in-flight row's pid can be checked here (a SQLite file is local
        to one host); on PostgreSQL only rows whose host is :data:`HOST` can."""
        return self.db.is_sqlite

    # -- SQL ----------------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text if self._placeholder == "?" else text.replace("?", self._placeholder)

    def _sql_n(self, template: str, n: int, row: str) -> str:
        """``template`` with ``{rows}`` filled by ``n`` copies of ``row``; cached."""
        key = (template, n)
        sql = self._sql_cache.get(key)
        if sql is None:
            sql = self._sql_cache[key] = self._sql(template.format(rows=", ".join([row] * n)))
        return sql

    # -- connections --------------------------------------------------------------------------
    def _checkout(self) -> PoolProxiedConnection:
        """A kept connection if one is idle, else one from the engine's pool."""
        if self._pid != os.getpid():  # forked: the parent's connections are not ours to use
            _INHERITED.extend(self._idle)  # nor to close: referenced, never touched again
            self._idle.clear()
            self._pid = os.getpid()
        try:
            return self._idle.pop()  # atomic: a thread never gets one another one holds
        except IndexError:
            conn = self.db.engine.raw_connection()
            if self.db.is_sqlite:
                # A commit that pushes SQLite's WAL past its auto-checkpoint size copies the
                # WAL into the database file and fsyncs it, milliseconds during which the
                # gateway's event loop would stand still. These connections never
                # checkpoint: the request log's background writer (and any other connection)
                # still does, with SQLite's default threshold.
                cur = cast(Any, conn.dbapi_connection).cursor()
                cur.execute("PRAGMA wal_autocheckpoint=0")
                cur.close()
            return conn

    def close(self) -> None:
        """Hand the kept connections back to the engine's pool (also done when the counters
        are garbage-collected). They stay usable."""
        _close_all(self._idle)

    def transaction(self, fn: Callable[[RateTxn], _T]) -> _T:
        """Run ``fn`` in one transaction and commit, retrying while the database is locked
        (as ``Database.write`` does). An exception from ``fn`` rolls everything back at once
        (freeing SQLite's write lock / PostgreSQL's row locks) and propagates.

        The connection is kept for the next transaction rather than handed back to the pool
        (a pool round trip, with its reset, costs about as much CPU as SQLite's commit).
        Kept connections skip the pool's pre-ping (PostgreSQL), so a connection found dead
        before the commit is dropped, with the other kept ones, and the transaction runs
        again on a fresh pooled connection: nothing of it was committed. A full disk is a
        :class:`~lmops.core.errors.DiskFullError` at once."""
        delay = 0.01
        deadline = time.monotonic() + self.db.busy_timeout
        reconnected = False
        while True:
            conn = self.db.engine.raw_connection() if reconnected else self._checkout()
            raw = conn.dbapi_connection
            assert raw is not None
            keep = committing = False
            try:
                cur = raw.cursor()
                try:
                    out = fn(RateTxn(self, cur))
                except BaseException:
                    raw.rollback()
                    keep = True
                    raise
                committing = True
                raw.commit()
                keep = True
                return out
            except self._dbapi_error as e:
                if self._dialect.is_disconnect(cast(Any, e), raw, None):
                    keep = False
                    conn.invalidate()
                    _close_all(self._idle)  # they likely died with it (a server restart)
                    if not committing and not reconnected:
                        reconnected = True
                        continue
                if full := disk_full(e, self.db.where):
                    raise full from None
                if not is_lock_conflict(e) or time.monotonic() >= deadline:
                    raise StoreError(
                        f"database {self.db.masked_url} is locked or unavailable ({e}) "
                        f"after {self.db.busy_timeout:g}s; raise LMOPS_DB_BUSY_TIMEOUT"
                    ) from None
            finally:
                if keep and len(self._idle) < _KEEP_CONNECTIONS:
                    self._idle.append(conn)
                else:  # back to the pool, which rolls back whatever is left open
                    conn.close()
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)
