"""Metering for the serving gateway: one ``request_log`` row per served request, usage
reports per key and per deployment, and the flow-back of logged chats into an SFT dataset.

Bodies are optional: a deployment stores them only when it logs bodies, and the caller
masks PII before handing them here. An exported conversation is the logged request's
``messages`` followed by the assistant answer taken from the logged reply, which must be
an OpenAI chat completion object (``choices[0].message.content``); a streamed reply is
logged as the completion it assembles to.

The gateway logs through :class:`RequestLog`, which writes rows from a background thread,
many per transaction (group commit): a row is handed over when its request ends; a writer
that was idle writes it at once (about a millisecond after the reply), and after each
write the writer rests ``interval_s`` (20 ms) before taking everything that arrived
meanwhile, so under load there are at most 50 small transactions a second per worker and
no thread wake-up per request. Trade-off: a worker killed with SIGKILL (or a machine that
loses power) loses the rows not yet committed: those of the last ``interval_s`` plus one
write, or up to ``max_pending`` rows while the database is stuck. A normal shutdown
(SIGTERM/SIGINT, the app's shutdown event, interpreter exit) flushes everything.
:func:`log_request` writes one row at once.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, Field
from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from lmops.core.errors import UserError
from lmops.store.models import RequestLogRow

if TYPE_CHECKING:
    from lmops.store import Store, Version

__all__ = [
    "RequestLog",
    "UsageReport",
    "UsageStats",
    "export_conversations",
    "log_request",
    "usage",
]

NO_KEY = "(none)"  # requests served without an API key
# exchanges export_conversations leaves out unless asked to keep them
KEEP_REASONS = frozenset({"failed", "truncated", "content_filtered", "flagged"})
_ROLES = ("system", "user", "assistant")


def _utc(dt: datetime | None) -> datetime | None:
    """UTC (naive values are taken as UTC), so comparisons work on SQLite too."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def log_request(
    store: Store,
    *,
    request_id: str,
    key_name: str | None,
    deployment: str | None,
    model_ref: str | None,
    endpoint: str,
    status: int,
    prompt_tokens: int,
    completion_tokens: int,
    latency_ms: float | None,
    ttft_ms: float | None,
    error: str | None = None,
    guardrails: dict[str, Any] | None = None,
    request_body: dict[str, Any] | None = None,
    response_body: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> int:
    """Record one served request (``at`` defaults to now); returns the row id.

    ``model_ref`` should be the concrete ``name:version`` that answered, so exports can
    link their rows to it. Bodies must already be masked."""
    row = RequestLogRow(
        **_row_values(
            request_id=request_id,
            key_name=key_name,
            deployment=deployment,
            model_ref=model_ref,
            endpoint=endpoint,
            status=status,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            error=error,
            guardrails=guardrails,
            request_body=request_body,
            response_body=response_body,
            at=at,
        )
    )

    def add(s: Session) -> int:
        s.add(row)
        s.flush()
        return row.id

    return store.db.write(add)


_LOG_TABLE = cast(Table, RequestLogRow.__table__)
_BODIES = ("request_body", "response_body")


def _row_values(
    *,
    request_id: str,
    key_name: str | None,
    deployment: str | None,
    model_ref: str | None,
    endpoint: str,
    status: int,
    prompt_tokens: int,
    completion_tokens: int,
    latency_ms: float | None,
    ttft_ms: float | None,
    error: str | None = None,
    guardrails: dict[str, Any] | None = None,
    request_body: dict[str, Any] | None = None,
    response_body: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """The column values of one row, normalised as :func:`log_request` does them."""
    values: dict[str, Any] = {
        "request_id": request_id[:64],
        "time": _utc(at) or datetime.now(UTC),
        "key_name": key_name,
        "deployment": deployment,
        "model_ref": model_ref,
        "endpoint": endpoint,
        "status": int(status),
        "prompt_tokens": max(0, int(prompt_tokens)),
        "completion_tokens": max(0, int(completion_tokens)),
        "latency_ms": latency_ms,
        "ttft_ms": ttft_ms,
        "error": error,
        "guardrails": dict(guardrails or {}),
    }
    # Absent rather than None: an explicit None would be stored as JSON 'null', not NULL.
    if request_body is not None:
        values["request_body"] = request_body
    if response_body is not None:
        values["response_body"] = response_body
    return values


class RequestLog:
    """Request-log rows written from a background thread, many per transaction.

    ``submit(**row)`` takes :func:`log_request`'s keyword arguments and returns at once;
    the thread writes whatever is pending in one transaction (at most ``max_batch`` rows),
    then rests ``interval_s`` (see the module docstring). ``flush()`` waits until every
    row submitted before the call is written; ``close()`` flushes and stops the thread
    (also run at interpreter exit); rows submitted after it are written at once. When
    ``max_pending`` rows wait (the database is stuck), ``submit`` blocks until there is
    room, so memory and what a crash can lose stay bounded. A batch that cannot be written
    (after ``Database.write``'s retries) is reported on the ``lmops.serve`` logger and
    counted in ``failed``; its rows are lost.
    """

    def __init__(
        self,
        store: Store,
        *,
        interval_s: float = 0.02,
        max_batch: int = 512,
        max_pending: int = 10_000,
    ) -> None:
        self._db = store.db
        self.interval_s = interval_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._pending: list[dict[str, Any]] = []
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

    def submit(self, *, mask: Callable[[Any], Any] | None = None, **row: Any) -> None:
        """Hand over one row (:func:`log_request`'s keyword arguments). ``mask`` is applied
        to its bodies on the writer thread, before they are written (it may be slow)."""
        values = _row_values(**row)
        if mask is not None:
            values["_mask"] = mask
        with self._cv:
            if self._closed:  # after shutdown: write it here rather than lose it
                self._write_or_report([values])
                return
            if len(self._pending) >= self.max_pending:
                self._cv.wait_for(lambda: len(self._pending) < self.max_pending)
            self._pending.append(values)
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

    def _write_or_report(self, rows: list[dict[str, Any]]) -> None:
        try:
            self._write(rows)
        except Exception:  # never let one bad batch stop the log
            self.failed += len(rows)
            logging.getLogger("lmops.serve").exception(
                "request log: %d rows could not be written", len(rows)
            )

    def _write(self, rows: list[dict[str, Any]]) -> None:
        # One INSERT per set of columns: rows without bodies leave those columns NULL.
        groups: dict[tuple[bool, ...], list[dict[str, Any]]] = {}
        for r in rows:
            mask = r.pop("_mask", None)
            if mask is not None:
                for b in _BODIES:
                    if b in r:
                        r[b] = mask(r[b])
            groups.setdefault(tuple(b in r for b in _BODIES), []).append(r)

        def add(s: Session) -> None:
            for group in groups.values():
                s.execute(insert(_LOG_TABLE), group)

        self._db.write(add)


# -- usage ------------------------------------------------------------------------------------
def _percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by linear interpolation between closest ranks (numpy's
    default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class UsageStats(BaseModel):
    """Usage of one key, one deployment, or all of them.

    ``errors`` counts replies with status >= 400 (refusals included). Latency percentiles
    are over successful requests only (a refusal's few milliseconds are not service
    time); TTFT over the requests that recorded one (streamed replies)."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    ttft_p50_ms: float | None = None


class UsageReport(BaseModel):
    since: datetime | None
    until: datetime
    key: str | None = None  # the filters applied, if any
    deployment: str | None = None
    by_key: dict[str, UsageStats] = Field(default_factory=dict)
    by_deployment: dict[str, UsageStats] = Field(default_factory=dict)
    total: UsageStats = Field(default_factory=UsageStats)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class _Acc:
    def __init__(self) -> None:
        self.requests = self.errors = self.prompt = self.completion = 0
        self.latency: list[float] = []
        self.ttft: list[float] = []

    def add(self, status: int, pt: int, ct: int, lat: float | None, ttft: float | None) -> None:
        self.requests += 1
        self.prompt += pt
        self.completion += ct
        if status >= 400:
            self.errors += 1
        elif lat is not None:
            self.latency.append(lat)
        if ttft is not None:
            self.ttft.append(ttft)

    def stats(self) -> UsageStats:
        return UsageStats(
            requests=self.requests,
            errors=self.errors,
            prompt_tokens=self.prompt,
            completion_tokens=self.completion,
            total_tokens=self.prompt + self.completion,
            latency_p50_ms=_percentile(self.latency, 0.5),
            latency_p90_ms=_percentile(self.latency, 0.9),
            ttft_p50_ms=_percentile(self.ttft, 0.5),
        )


def usage(
    store: Store,
    *,
    key: str | None = None,
    deployment: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> UsageReport:
    """Requests, errors, tokens and latency per key and per deployment (and in total) for
    requests logged in ``[since, until)``, optionally for one key and/or deployment."""
    since, until = _utc(since), _utc(until) or datetime.now(UTC)
    c = RequestLogRow
    cols = (c.key_name, c.deployment, c.status, c.prompt_tokens, c.completion_tokens)
    q = select(*cols, c.latency_ms, c.ttft_ms).where(c.time < until)
    if since is not None:
        q = q.where(c.time >= since)
    if key is not None:
        q = q.where(c.key_name == key)
    if deployment is not None:
        q = q.where(c.deployment == deployment)
    by_key: dict[str, _Acc] = {}
    by_dep: dict[str, _Acc] = {}
    total = _Acc()
    with store.db.session() as s:
        for k, d, status, pt, ct, lat, ttft in s.execute(q):
            for acc in (
                by_key.setdefault(k or NO_KEY, _Acc()),
                by_dep.setdefault(d or NO_KEY, _Acc()),
                total,
            ):
                acc.add(status, pt, ct, lat, ttft)
    return UsageReport(
        since=since,
        until=until,
        key=key,
        deployment=deployment,
        by_key={k: a.stats() for k, a in sorted(by_key.items())},
        by_deployment={d: a.stats() for d, a in sorted(by_dep.items())},
        total=total.stats(),
    )


# -- flow-back ----------------------------------------------------------------------------------
# Guardrail actions that make an exchange unfit to learn from (a PII mask is not one: the
# logged bodies are masked).
_FLAGS = frozenset(
    {"moderation_flag", "moderation_block", "injection_flag", "injection_block", "pii_block"}
)


def _unfit(status: int, response: Any, guardrails: Any, keep: frozenset[str]) -> str | None:
    """Why a logged exchange should not become training data (None: it may): the request
    failed, the answer was cut at max_tokens (``truncated``), a content filter ended it
    (``content_filtered``), or a guardrail flagged it (``flagged``); ``keep`` names the
    reasons to let through anyway."""
    if not 200 <= status < 300:
        return "failed"
    reasons = set()
    try:
        finish = response["choices"][0].get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        finish = None
    if finish == "length":
        reasons.add("truncated")
    elif finish == "content_filter":
        reasons.add("content_filtered")
    actions = guardrails.get("actions") if isinstance(guardrails, dict) else None
    if any(isinstance(a, dict) and a.get("type") in _FLAGS for a in actions or []):
        reasons.add("flagged")
    left = sorted(reasons - keep)
    return left[0] if left else None


def _conversation(request: Any, response: Any) -> tuple[list[dict[str, str]] | None, str]:
    """The chat (messages + answer) of one logged exchange, or None and why not."""
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list) or not messages:
        return None, "not_chat"
    out: list[dict[str, str]] = []
    for m in messages:
        if not (
            isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str)
        ):
            return None, "unsupported_message"  # tool turns, images, ...
        out.append({"role": m["role"], "content": m["content"]})
    try:
        answer = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        answer = None
    if not isinstance(answer, str) or not answer.strip():
        return None, "no_answer"
    out.append({"role": "assistant", "content": answer})
    return out, ""


def _served_by(store: Store, model_refs: Iterable[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(lineage inputs for the model versions in the store, refs that are not in it)."""
    inputs: list[tuple[str, str]] = []
    external: list[str] = []
    for ref in sorted(set(model_refs)):
        try:
            inputs.append((store.assets.resolve(ref).ref, "served_by"))
        except UserError:  # not a registered model (an upstream API, a deleted version)
            external.append(ref)
    return inputs, external


def export_conversations(
    store: Store,
    *,
    deployment: str,
    output: str,
    since: datetime | None = None,
    until: datetime | None = None,
    keep: Iterable[str] = (),
) -> Version:
    """Turn the logged chat requests of ``deployment`` that have bodies and are worth
    learning from into an SFT dataset (``sft_chat`` JSONL: ``{"messages": [...,
    {"role": "assistant", "content": answer}]}``) registered as the next version of
    dataset ``output``.

    Not worth learning from, and skipped unless ``keep`` names the reason: ``failed``
    requests, ``truncated`` answers (``finish_reason: length``), ``content_filtered`` ones,
    and exchanges a guardrail ``flagged`` (moderation or injection; masked PII is fine).
    The version's lineage points at every model version that answered (role
    ``served_by``); its metadata holds the deployment, the time range, the count and the
    rows skipped per reason (those above, ``not_chat``, ``unsupported_message``,
    ``no_answer``, ``duplicate``). Raises :class:`UserError` when nothing is exportable."""
    keep = frozenset(keep)
    unknown = keep - KEEP_REASONS
    if unknown:
        raise UserError(
            f"unknown reasons to keep {sorted(unknown)}; use some of {sorted(KEEP_REASONS)}"
        )
    since, until = _utc(since), _utc(until)
    c = RequestLogRow
    q = (
        select(c.time, c.model_ref, c.request_body, c.response_body, c.status, c.guardrails)
        .where(
            c.deployment == deployment,
            c.request_body.is_not(None),
        )
        .order_by(c.time, c.id)
        .execution_options(yield_per=500)
    )
    if since is not None:
        q = q.where(c.time >= since)
    if until is not None:
        q = q.where(c.time < until)
    window = f" since {since.isoformat()}" if since else ""
    skipped: dict[str, int] = {}
    seen: set[str] = set()
    models: list[str] = []
    first: datetime | None = None
    last: datetime | None = None
    count = 0
    with tempfile.TemporaryDirectory(prefix="lmops-export-") as tmp:
        path = Path(tmp) / "conversations.jsonl"
        with store.db.session() as s, path.open("w", encoding="utf-8") as fh:
            for time, model_ref, request, response, status, guardrails in s.execute(q):
                unfit = _unfit(status, response, guardrails, keep)
                if unfit is not None:
                    skipped[unfit] = skipped.get(unfit, 0) + 1
                    continue
                chat, reason = _conversation(request, response)
                if chat is not None:
                    line = json.dumps({"messages": chat}, ensure_ascii=False)
                    digest = hashlib.sha256(line.encode()).hexdigest()
                    if digest in seen:
                        chat, reason = None, "duplicate"
                    seen.add(digest)
                if chat is None:
                    skipped[reason] = skipped.get(reason, 0) + 1
                    continue
                fh.write(line + "\n")
                count += 1
                first = first or time
                last = time
                if model_ref:
                    models.append(model_ref)
        if count == 0:
            why = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items()))
            raise UserError(
                f"no chat requests with logged bodies for deployment {deployment!r}{window}"
                + (f" (skipped: {why})" if why else "")
                + "; enable body logging on the deployment and serve some chat requests first"
            )
        inputs, external = _served_by(store, models)
        assert first is not None and last is not None
        meta = {
            "format": "sft_chat",
            "source": "request_log",
            "deployment": deployment,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "first": first.replace(tzinfo=first.tzinfo or UTC).isoformat(),
            "last": last.replace(tzinfo=last.tzinfo or UTC).isoformat(),
            "count": count,
            "skipped": dict(sorted(skipped.items())),
            "kept": sorted(keep),
            "models": sorted(set(models)),
            "unregistered_models": external,
        }
        return store.assets.register(
            "dataset",
            output,
            path,
            metadata=meta,
            inputs=inputs,
            description=f"chats served by deployment {deployment}",
        )
