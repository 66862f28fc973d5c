"""The request log: one row per served request, for metering, usage reports and the data
flow-back. The store's part ``store.requests``; its rows go in and come out as
:class:`~lmops.store.types.RequestRecord` (ORM rows never leave the store).

    store.requests.add(record)                    # one row, written now
    writer = store.requests.writer()              # rows written in batches by a thread
    writer.submit(record, mask=fn)                # (the gateway's path)
    for r in store.requests.scan(deployment="chat", with_bodies=True): ...

The writer (:class:`RequestLogWriter`) takes a row when its request ends; a writer that was
idle writes it at once (about a millisecond after the reply), and after each write it rests
``interval_s`` (20 ms) before taking everything that arrived meanwhile, so under load there
are at most 50 small transactions a second per worker and no thread wake-up per request.
Trade-off: a worker killed with SIGKILL (or a machine that loses power) loses the rows not
yet committed: those of the last ``interval_s`` plus one write, or up to ``max_pending`` rows
while the database is stuck. A normal shutdown (SIGTERM/SIGINT, the app's shutdown event,
interpreter exit) flushes everything.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session

from lmops.store.models import RequestLogRow
from lmops.store.types import RequestRecord

if TYPE_CHECKING:
    from lmops.store.db import Database
    from lmops.store.store import Store

__all__ = ["RequestLog", "RequestLogWriter"]

_TABLE = cast(Table, RequestLogRow.__table__)
_BODIES = ("request_body", "response_body")


def utc(dt: datetime | None) -> datetime | None:
    """UTC (naive values are taken as UTC), so comparisons work on SQLite too."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _values(r: RequestRecord) -> dict[str, Any]:
    """The column values of one row, normalised."""
    values: dict[str, Any] = {
        "request_id": r.request_id[:64],
        "x_request_id": r.x_request_id[:128] if r.x_request_id is not None else None,
        "time": utc(r.time) or datetime.now(UTC),
        "key_name": r.key_name,
        "deployment": r.deployment,
        "model_ref": r.model_ref,
        "replica": r.replica[:255] if r.replica is not None else None,
        "prompt_ref": r.prompt_ref,
        "endpoint": r.endpoint,
        "status": int(r.status),
        "prompt_tokens": max(0, int(r.prompt_tokens)),
        "completion_tokens": max(0, int(r.completion_tokens)),
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "error": r.error,
        "guardrails": dict(r.guardrails or {}),
    }
    # Absent rather than None: an explicit None would be stored as JSON 'null', not NULL.
    if r.request_body is not None:
        values["request_body"] = r.request_body
    if r.response_body is not None:
        values["response_body"] = r.response_body
    return values


def _record(row: RequestLogRow) -> RequestRecord:
    return RequestRecord(
        request_id=row.request_id,
        x_request_id=row.x_request_id,
        time=utc(row.time),
        key_name=row.key_name,
        deployment=row.deployment,
        model_ref=row.model_ref,
        replica=row.replica,
        prompt_ref=row.prompt_ref,
        endpoint=row.endpoint,
        status=row.status,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        latency_ms=row.latency_ms,
        ttft_ms=row.ttft_ms,
        error=row.error,
        guardrails=dict(row.guardrails or {}),
        request_body=row.request_body,
        response_body=row.response_body,
    )


class RequestLog:
    """The request log of one store (``store.requests``)."""

    def __init__(self, store: Store) -> None:
        self._db = store.db

    def add(self, record: RequestRecord) -> int:
        """Write one row now; its id. Bodies must already be masked."""
        row = RequestLogRow(**_values(record))

        def add(s: Session) -> int:
            s.add(row)
            s.flush()
            return row.id

        return self._db.write(add)

    def writer(self, **kw: Any) -> RequestLogWriter:
        """A batched background writer (see the module docstring); close it at shutdown."""
        return RequestLogWriter(self._db, **kw)

    def get(self, id: str, *, key: str | None = None) -> RequestRecord | None:
        """The logged request a client's id names, bodies included: the answer's ``id``
        (``request_id``), else the response's ``x-request-id`` (``x_request_id``; the newest
        such row, as a client may choose it and send it twice). ``key``: that key's only.
        A Responses API id (``resp_<hex>``) names the chat request it was answered as
        (``chatcmpl-<hex>``)."""
        c = RequestLogRow
        if id.startswith("resp_"):
            id = "chatcmpl-" + id.removeprefix("resp_")
        with self._db.session() as s:
            for col in (c.request_id, c.x_request_id):
                q = select(c).where(col == id)
                if key is not None:
                    q = q.where(c.key_name == key)
                row = s.scalars(q.order_by(c.time.desc(), c.id.desc()).limit(1)).first()
                if row is not None:
                    return _record(row)
        return None

    def count(self, *, x_request_id: str, key: str | None = None) -> int:
        """How many logged requests (of ``key``) carry this ``x-request-id``."""
        c = RequestLogRow
        q = select(func.count()).select_from(c).where(c.x_request_id == x_request_id)
        if key is not None:
            q = q.where(c.key_name == key)
        with self._db.session() as s:
            return int(s.scalar(q) or 0)

    def latest(
        self, *, deployment: str | None = None, key: str | None = None
    ) -> RequestRecord | None:
        """The newest logged request (of one deployment and/or key), bodies included."""
        c = RequestLogRow
        q = select(c)
        if deployment is not None:
            q = q.where(c.deployment == deployment)
        if key is not None:
            q = q.where(c.key_name == key)
        with self._db.session() as s:
            row = s.scalars(q.order_by(c.time.desc(), c.id.desc()).limit(1)).first()
            return None if row is None else _record(row)

    def deployments(self) -> list[str]:
        """The deployments that have logged requests, sorted."""
        c = RequestLogRow
        q = select(c.deployment).where(c.deployment.is_not(None)).distinct()
        with self._db.session() as s:
            return sorted(str(d) for d in s.scalars(q))

    def scan(
        self,
        *,
        deployment: str | None = None,
        key: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        with_bodies: bool = False,
    ) -> Iterator[RequestRecord]:
        """Logged requests in time order (``[since, until)``), optionally of one deployment
        and/or key; ``with_bodies`` keeps only rows that have a request body (and reads the
        bodies, which are skipped otherwise)."""
        c = RequestLogRow
        if with_bodies:
            q = select(c)
        else:
            cols = [col for col in _TABLE.c if col.name not in (*_BODIES, "id")]
            q = select(*cols)
        since, until = utc(since), utc(until)
        if deployment is not None:
            q = q.where(c.deployment == deployment)
        if key is not None:
            q = q.where(c.key_name == key)
        if since is not None:
            q = q.where(c.time >= since)
        if until is not None:
            q = q.where(c.time < until)
        if with_bodies:
            q = q.where(c.request_body.is_not(None))
        q = q.order_by(c.time, c.id).execution_options(yield_per=500)
        with self._db.session() as s:
            if with_bodies:
                for row in s.scalars(q):
                    yield _record(row)
            else:
                for m in s.execute(q).mappings():
                    yield RequestRecord(**{**m, "time": utc(m["time"])})


class RequestLogWriter:
    """Request-log rows written from a background thread, many per transaction.

    :meth:`submit` returns at once; the thread writes whatever is pending in one transaction
    (at most ``max_batch`` rows), then rests ``interval_s`` (see the module docstring).
    ``flush()`` waits until every row submitted before the call is written; ``close()``
    flushes and stops the thread (also at interpreter exit). If more than ``max_pending``
    rows wait (the database is stuck), ``submit`` blocks until there is room, so memory and
    what a crash can lose stay bounded. A batch that cannot be written (after
    ``Database.write``'s retries) is reported on the ``lmops.serve`` logger and counted in
    ``failed``; its rows are lost.
    """

    def __init__(
        self,
        db: Database,
        *,
        interval_s: float = 0.02,
        max_batch: int = 512,
        max_pending: int = 10_000,
    ) -> None:
        self._db = db
        self.interval_s = interval_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._pending: list[tuple[RequestRecord, Callable[[Any], Any] | None]] = []
        self._cv = threading.Condition()
        self._submitted = 0  # rows handed over
        self._settled = 0  # rows written or given up
        self.failed = 0
        self._closed = False
        self._idle = False  # the writer waits for rows (rather than writing or resting)
        self._flushing = 0  # callers waiting in flush()
        self._thread = threading.Thread(target=self._run, name="lmops-request-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def submit(self, record: RequestRecord, *, mask: Callable[[Any], Any] | None = None) -> None:
        """Hand over one row. ``mask`` is applied to its bodies on the writer thread,
        before they are written (it may be slow)."""
        with self._cv:
            if self._closed:  # after shutdown: write it here rather than lose it
                self._write_or_report([(record, mask)])
                return
            if len(self._pending) >= self.max_pending:
                self._cv.wait_for(lambda: len(self._pending) < self.max_pending)
            self._pending.append((record, mask))
            self._submitted += 1
            if self._idle:  # wake the writer only when it waits for work, not per row
                self._cv.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the rows submitted so far are written; False on timeout."""
        with self._cv:
            target = self._submitted
            self._flushing += 1  # cut the writer's rest short
            self._cv.notify_all()
            try:
                return self._cv.wait_for(lambda: self._settled >= target, timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush and stop the writer thread (idempotent)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)
        atexit.unregister(self.close)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._idle = True
                self._cv.wait_for(lambda: bool(self._pending) or self._closed)
                self._idle = False
                if not self._pending:  # closed and drained
                    return
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                self._cv.notify_all()  # room for blocked submitters
            self._write_or_report(batch)
            with self._cv:
                self._settled += len(batch)
                self._cv.notify_all()
                # rest, so that rows arriving meanwhile share the next transaction
                self._cv.wait_for(lambda: self._closed or self._flushing > 0, self.interval_s)

    def _write_or_report(
        self, rows: list[tuple[RequestRecord, Callable[[Any], Any] | None]]
    ) -> None:
        try:
            self._write(rows)
        except Exception:  # never let one bad batch stop the log
            self.failed += len(rows)
            logging.getLogger("lmops.serve").exception(
                "request log: %d rows could not be written", len(rows)
            )

    def _write(self, rows: list[tuple[RequestRecord, Callable[[Any], Any] | None]]) -> None:
        # One INSERT per set of columns: rows without bodies leave those columns NULL.
        groups: dict[tuple[bool, ...], list[dict[str, Any]]] = {}
        for record, mask in rows:
            values = _values(record)
            if mask is not None:
                for b in _BODIES:
                    if b in values:
                        values[b] = mask(values[b])
            groups.setdefault(tuple(b in values for b in _BODIES), []).append(values)

        def add(s: Session) -> None:
            for group in groups.values():
                s.execute(insert(_TABLE), group)

        self._db.write(add)
