"""Flow control for the serving gateway: request and token rates, daily and monthly token
quotas and concurrency caps, shared by every server worker process through the metadata
database (SQLite or PostgreSQL).

A request is admitted against a list of *scopes*, e.g. ``[("key:ci", key_limits),
("dep:chat", deployment_limits)]``; it must fit every limit of every scope::

    lease = limiter.acquire(scopes, request_id, estimate_tokens(prompt, max_tokens))
    try:
        reply = ...  # call the backend, stream the answer
        limiter.reconcile(lease, prompt_tokens + completion_tokens)  # the real count
    finally:
        limiter.release(lease)  # free the concurrency slot, also on disconnect

Windows
-------
``rpm``/``tpm``: a *sliding-window counter*. Counters are kept per UTC minute (window
number ``floor(unix_time / 60)``) and the usage at time ``t``, a fraction ``f`` into minute
``m``, is ``count[m] + count[m-1] * (1 - f)``: the previous minute is weighted by how much of
it still lies inside the 60 s ending now. This is the usual approximation of a true sliding
log (no per-request timestamps to store) and, unlike fixed minutes, it does not let a
client spend its budget twice within a second around a minute boundary. A request costing
``n`` (1 for rpm, its estimated tokens for tpm) is admitted iff ``usage + n <= limit``.

``tokens_per_day`` / ``tokens_per_month``: fixed UTC calendar windows (day number
``floor(unix_time / 86400)``, month number ``year * 12 + month - 1``); quotas reset at
midnight UTC and on the first of the month, which is what people budget against.

``max_concurrent``: one row per request in flight in the ``inflight`` table.

``retry_after`` is the time after which the request would be admitted if nothing else
arrived meanwhile (usage only decays), rounded up to the millisecond: for a sliding window
it solves ``cur + n + prev * (1 - f) <= limit`` for ``f`` (in this minute, or in the next one
where this minute's count becomes the weighted one); for a quota it is the time to the next
calendar window. A sliding window's wait can exceed 60 s (up to 120 s): this minute's count
weighs in full until the minute ends and only then fades, so requests made early in a
minute are forgotten later than 60 s after them; ``Retry-After`` says when admission will
really pass (a shorter one would only be refused again) and the 429's message says why.
The message gives the usage admission counted, the weighted count rounded up to
hundredths ("2.61 of 3 used in the last 60 s"), never a rounded-down whole number that
would look as if the request fitted. A request larger than a limit can never pass: ``retry_after_s`` is
``None``. A concurrency slot frees when some request ends, which cannot be known:
:data:`CONCURRENCY_RETRY_S` is suggested.

Atomicity
---------
:meth:`RateLimiter.acquire` is one write transaction whose first statement *increments*
every counter it needs, with one multi-row UPSERT (``INSERT … VALUES (…), (…) ON CONFLICT
(scope, window) DO UPDATE SET count = count + excluded.count RETURNING count, <the previous
window's count>``) whose rows are in a fixed (sorted) order; it then checks the returned
totals and raises inside the transaction when one is over its limit, so the increments roll
back. Why no two processes can both take the last slot:

* SQLite: the limiter uses ``sqlite3`` connections of the engine's pool, as
  :class:`~lmops.store.db.Database` configures them (WAL, ``busy_timeout``, the driver's
  default ``isolation_level``): their transactions are *deferred* and opened lazily, just
  before the first INSERT/UPDATE/DELETE. Since the first statement of every limiter
  transaction is that UPSERT, the transaction takes the database's single write lock before
  it reads anything (a deferred transaction whose first statement writes waits in the busy
  handler and then reads the newest snapshot, exactly like ``BEGIN IMMEDIATE``). Every
  read in the transaction (the previous minute in ``RETURNING``, in-flight rows) is
  therefore serialised against all other writers, and no read-then-write interleaving can
  happen. A lock error rolls the whole transaction back and the limiter runs it again from
  the first UPSERT.
* PostgreSQL (READ COMMITTED): ``ON CONFLICT DO UPDATE`` locks each row, in the order of
  ``VALUES``, and applies ``count + n`` to its newest committed version, so ``RETURNING``
  is the exact total after this request; a concurrent acquirer of the same scope waits on
  the row lock until this one commits or rolls back. Concurrency caps use the same trick: a
  ``conc:<scope>`` row is upserted (``+ 0``) as a per-scope mutex before the in-flight rows
  are counted; the count is a new statement, so it sees every acquirer that committed
  before the lock was granted. Sorting the rows makes every transaction lock them in the
  same order: no deadlocks. (The previous minute's count is read from the statement's
  snapshot: that row is charged only by requests whose clock still reads the previous
  minute and by reconciliations, which no lock orders against this request in any case.)

Reconciliation (:meth:`RateLimiter.reconcile`) adds ``actual - charged`` to the token
windows the lease charged, after the response: an over-estimate is given back, an
under-estimate charged (to the current window when the charged one no longer counts).

Cost
----
This runs on every request, so the counters are the store's hand-written SQL on kept DBAPI
connections (:class:`lmops.store.rates.RateCounters`, which owns every statement; this module
decides what the counts mean): an admission against a key's RPM and TPM is one statement and
a commit, a reconciliation one UPSERT and a commit: about 55 µs of CPU per request, both
together, on SQLite in a tight loop, of which SQLite itself is about 35 µs (the SQLAlchemy
Core version took about 300 µs); inside the gateway, with colder caches, about 170 µs.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lmops.core import refusals as words
from lmops.core.errors import LmopsError
from lmops.store import ApiKey
from lmops.store.db import Database
from lmops.store.rates import HOST, RateCounters, RateTxn

__all__ = [
    "CONCURRENCY_RETRY_S",
    "DEFAULT_COMPLETION_CAP",
    "Lease",
    "Limits",
    "RateLimited",
    "RateLimiter",
    "estimate_tokens",
    "headers",
]

# Suggested wait when a concurrency cap is full (when a slot frees cannot be known).
CONCURRENCY_RETRY_S = 1.0
# Completion tokens reserved for a request that sets no max_tokens (or a larger one).
DEFAULT_COMPLETION_CAP = 1024
# An in-flight row older than this is dropped even if its process looks alive (pids are
# reused, and another host's pids cannot be checked). Streams can be long: 10 minutes.
STALE_INFLIGHT_S = 600.0
# How often one limiter sweeps old windows and stale in-flight rows of every scope.
SWEEP_EVERY_S = 60.0

_MINUTE = 60
_DAY = 86400


class Limits(BaseModel):
    """The limits of one scope (an API key, a deployment, ...); ``None`` = unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpm: int | None = Field(default=None, ge=1, description="requests per minute")
    tpm: int | None = Field(default=None, ge=1, description="tokens per minute")
    max_concurrent: int | None = Field(default=None, ge=1, description="requests in flight")
    tokens_per_day: int | None = Field(default=None, ge=1, description="per UTC day")
    tokens_per_month: int | None = Field(default=None, ge=1, description="per UTC month")

    @classmethod
    def from_key(cls, key: ApiKey) -> Limits:
        return _key_limits(key.rpm, key.tpm)

    @property
    def unlimited(self) -> bool:
        return all(v is None for v in self.model_dump().values())


@functools.lru_cache(maxsize=1024)
def _key_limits(rpm: int | None, tpm: int | None) -> Limits:
    # Called per request by the gateway; the model is frozen, so one instance can be shared.
    return Limits(rpm=rpm, tpm=tpm)


def estimate_tokens(
    prompt_tokens: int, max_tokens: int | None, *, cap: int = DEFAULT_COMPLETION_CAP
) -> int:
    """Tokens to reserve before the call: the prompt plus ``max_tokens``, at most ``cap``
    (a huge ``max_tokens`` would otherwise be refused outright; what it really produces
    is charged by :meth:`RateLimiter.reconcile`)."""
    completion = cap if max_tokens is None else min(max_tokens, cap)
    return max(0, prompt_tokens) + max(0, completion)


# What a scope's prefix says it is ("key:ci" is an API key's), in a refusal's facts.
_SCOPE_KINDS = {"key": "key", "dep": "deployment"}


class RateLimited(LmopsError):
    """A limit of some scope is reached (HTTP 429). ``retry_after_s`` is ``None`` when the
    request can never pass (it alone is larger than the limit)."""

    def __init__(
        self,
        message: str,
        retry_after_s: float | None,
        limit_name: str,
        scope: str,
        headers: dict[str, str],
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.limit_name = limit_name
        self.scope = scope
        self.headers = headers

    def facts(self) -> dict[str, Any]:
        """The refusal as data, for programs (the 429's ``error.lmops``, which the message
        says in words): ``scope`` (``key``, ``deployment``) and its ``name``, the ``limit``
        reached (a :class:`Limits` field: ``rpm``, ``tpm``, ``tokens_per_day``,
        ``tokens_per_month``, ``max_concurrent``), ``retry_after_s`` (seconds, to the
        millisecond; ``None`` when waiting cannot help) and ``too_large`` (the request
        alone is over the limit: it never passes, whatever the wait)."""
        kind, _, name = self.scope.partition(":")
        return {
            "scope": _SCOPE_KINDS.get(kind, kind),
            "name": name,
            "limit": self.limit_name,
            "retry_after_s": self.retry_after_s,
            "too_large": self.retry_after_s is None,
        }


@dataclass
class Lease:
    """An admitted request: what it was charged, so it can be reconciled and released."""

    request_id: str
    acquired_at: float  # unix time
    estimated_tokens: int
    # Tokens currently charged to the token windows: the estimate, then the actual count.
    charged_tokens: int
    # OpenAI-style x-ratelimit-* headers as of admission.
    headers: dict[str, str] = field(default_factory=dict)
    released: bool = False
    # (counter row, window kind, window number) of each token window charged.
    token_windows: tuple[tuple[str, str, int], ...] = ()
    inflight_ids: tuple[int, ...] = ()


# -- windows ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Dim:
    """One kind of counter: its limit field, row prefix, window kind and unit."""

    limit_name: str  # field of Limits
    prefix: str  # counter rows are named "<prefix>:<scope>"
    window: str  # "minute" | "day" | "month"
    unit: str  # "requests" | "tokens"


_DIMS = (
    _Dim("rpm", "rpm", "minute", "requests"),
    _Dim("tpm", "tpm", "minute", "tokens"),
    _Dim("tokens_per_day", "tpd", "day", "tokens"),
    _Dim("tokens_per_month", "tpmo", "month", "tokens"),
)
_TOKEN_DIMS = {d.prefix: d for d in _DIMS if d.unit == "tokens"}


def _window(kind: str, now: float) -> tuple[int, float, float]:
    """(window number, start, end) of the ``kind`` window holding unix time ``now``."""
    if kind == "minute":
        w = math.floor(now / _MINUTE)
        return w, w * _MINUTE, (w + 1) * _MINUTE
    if kind == "day":
        w = math.floor(now / _DAY)
        return w, w * _DAY, (w + 1) * _DAY
    return _month_of_day(math.floor(now / _DAY))


@functools.lru_cache(maxsize=8)
def _month_of_day(day: int) -> tuple[int, float, float]:
    """(month number, start, end) of the UTC month holding day number ``day``."""
    dt = datetime.fromtimestamp(day * _DAY, UTC)
    w = dt.year * 12 + dt.month - 1
    return w, _month_start(w), _month_start(w + 1)


def _month_start(w: int) -> float:
    return datetime(w // 12, w % 12 + 1, 1, tzinfo=UTC).timestamp()


def _ceil_ms(seconds: float) -> float:
    """Round a wait up to the millisecond (at least 1 ms: the request does not fit now)."""
    return max(0.001, math.ceil(seconds * 1000 - 1e-6) / 1000)


# Counts are integers; this only absorbs float noise in the sliding-window weights.
_EPS = 1e-9


@dataclass(slots=True)  # not frozen: built per request, and frozen __init__ is 3x slower
class _Usage:
    """One counter of one scope as seen in the acquiring transaction."""

    scope: str
    dim: _Dim
    limit: int
    window: int
    cur: int  # this window's count, *without* the request being decided
    prev: int  # previous window's count (weighted for sliding windows)
    start: float
    end: float
    cost: int  # what the request costs here

    def used(self, now: float, with_request: bool) -> float:
        cur = self.cur + (self.cost if with_request else 0)
        if self.dim.window != "minute":
            return float(cur)
        frac = (now - self.start) / (self.end - self.start)
        return cur + self.prev * (1.0 - frac)

    def fits(self, now: float) -> bool:
        return self.used(now, with_request=True) <= self.limit + _EPS

    def retry_after(self, now: float) -> float | None:
        """Seconds until the request fits if nothing else arrives; None if it never can."""
        if self.cost > self.limit:
            return None
        if self.fits(now):
            return 0.0
        span = self.end - self.start
        if self.dim.window != "minute":
            return _ceil_ms(self.end - now)
        frac = (now - self.start) / span
        room = self.limit - self.cur - self.cost
        if room >= 0:  # fits in this minute once enough of the previous one has slid out
            need = 1.0 - room / self.prev
            return _ceil_ms((need - frac) * span)
        # Next minute: this one's count becomes the weighted one, the new one starts at 0.
        need = 1.0 - (self.limit - self.cost) / self.cur
        return _ceil_ms((1.0 - frac) * span + need * span)

    def reset(self, now: float, with_request: bool) -> float:
        """Seconds until this counter's budget is whole again, as OpenAI's reset headers
        count it: a rate limit replenishes continuously over its window, so ``used / limit``
        of the window (never more than the window); a quota at the end of its day or month.
        A counter that refused a request reports its ``Retry-After`` instead (see
        ``_headers``), so the headers of one response never contradict each other."""
        used = self.used(now, with_request)
        if used <= _EPS:
            return 0.0
        if self.dim.window != "minute":
            return self.end - now
        return min(1.0, used / self.limit) * (self.end - self.start)


# -- headers ------------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    """Go-style durations as OpenAI sends them: ``20ms``, ``8.64s``, ``6m0s``, ``1h2m3s``."""
    ms = round(seconds * 1000)
    if seconds <= 0:
        return "0s"
    if ms < 1000:
        return f"{max(1, ms)}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return out + f"{rest / 1000:g}s"


_HEADER_SUFFIX = {"rpm": "requests", "tpm": "tokens", "tpd": "tokens-day", "tpmo": "tokens-month"}


def _headers(usages: Iterable[_Usage], now: float, *, with_request: bool) -> dict[str, str]:
    """x-ratelimit-* for the most constrained scope of each counter kind. For a refused
    request (``with_request=False``) a counter the request does not fit reports its wait
    (the ``Retry-After`` it causes) as its reset, so the two headers agree."""
    tightest: dict[str, tuple[float, float, int]] = {}  # prefix -> (remaining, reset, limit)
    for u in usages:
        remaining = u.limit - u.used(now, with_request)
        reset = u.reset(now, with_request)
        if not with_request and not u.fits(now):
            wait = u.retry_after(now)
            reset = wait if wait is not None else reset
        cand = (remaining, -reset, u.limit)
        if u.dim.prefix not in tightest or cand < tightest[u.dim.prefix]:
            tightest[u.dim.prefix] = cand
    out: dict[str, str] = {}
    for prefix, suffix in _HEADER_SUFFIX.items():
        if prefix in tightest:
            remaining, neg_reset, limit = tightest[prefix]
            out[f"x-ratelimit-limit-{suffix}"] = str(limit)
            out[f"x-ratelimit-remaining-{suffix}"] = str(max(0, math.floor(remaining + _EPS)))
            out[f"x-ratelimit-reset-{suffix}"] = _duration(-neg_reset)
    return out


def headers(lease_or_error: Lease | RateLimited) -> dict[str, str]:
    """OpenAI-style rate-limit headers for a response: ``x-ratelimit-{limit,remaining,
    reset}-{requests,tokens}`` (plus ``-tokens-day``/``-tokens-month`` for quotas) of the
    most constrained scope, and ``Retry-After``/``retry-after-ms`` on a refusal."""
    return dict(lease_or_error.headers)


def _retry_headers(retry_after_s: float | None) -> dict[str, str]:
    if retry_after_s is None:
        return {}
    return {
        "Retry-After": str(max(1, math.ceil(retry_after_s))),
        "retry-after-ms": str(max(1, math.ceil(retry_after_s * 1000))),
    }


def _used(u: _Usage, now: float) -> str:
    """How much of ``u``'s limit is used, as admission counted it: a sliding window's
    weighted count rounded *up* to hundredths (so "used + cost" visibly passes the limit
    of a refused request), a quota's whole count."""
    used = u.used(now, with_request=False)
    if u.dim.window != "minute":
        return f"{round(used)} of {u.limit} used this UTC {u.dim.window}"
    shown = math.ceil(used * 100 - 1e-6) / 100
    return f"{shown:g} of {u.limit} used in the last 60 s (a sliding window)"


# -- the limiter --------------------------------------------------------------------------------
@dataclass(slots=True)  # not frozen: built per request (see _Usage)
class _Charge:
    row: str  # counter row scope, "<prefix>:<scope>"
    window: int
    amount: int
    scope: str = ""
    dim: _Dim | None = None  # None for a concurrency mutex row
    limit: int = 0
    start: float = 0.0
    end: float = 0.0


class _Refused(Exception):
    """Raised inside the transaction to roll its increments back."""

    def __init__(self, error: RateLimited) -> None:
        self.error = error


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


class RateLimiter:
    """Admits requests against per-scope :class:`Limits`, atomically across processes.

    ``stale_after_s``: in-flight rows older than this are dropped. Rows whose process is
    dead are dropped at once when their pid can be checked: on SQLite (a SQLite file is
    local to one host) and, on PostgreSQL, for rows written on this host (each row records
    its host); a row from another host (or from before the host was recorded) frees only
    by age.
    """

    def __init__(
        self,
        db: Database,
        *,
        stale_after_s: float = STALE_INFLIGHT_S,
        sweep_every_s: float = SWEEP_EVERY_S,
    ) -> None:
        self.counters = RateCounters(db)
        self.stale_after_s = stale_after_s
        self.sweep_every_s = sweep_every_s
        self._next_sweep = 0.0

    def close(self) -> None:
        """Hand the counters' kept database connections back (also done when the limiter
        is garbage-collected). The limiter stays usable."""
        self.counters.close()

    def _drop_stale(self, txn: RateTxn, now: float, scope: str | None) -> int:
        """Free in-flight rows (of ``scope``) that are too old, or whose process is dead
        where its pid can be checked; how many."""
        local = self.counters.local
        stale = [
            r.id
            for r in txn.inflight_rows(scope)
            if now - r.started > self.stale_after_s
            or ((local or r.host == HOST) and not _pid_alive(r.pid))
        ]
        txn.free(stale)
        return len(stale)

    # -- acquire --------------------------------------------------------------------------
    def acquire(
        self,
        scopes: Sequence[tuple[str, Limits]],
        request_id: str,
        estimated_tokens: int,
        now: float | None = None,
    ) -> Lease:
        """Admit one request costing ``estimated_tokens`` against every scope's limits, or
        raise :class:`RateLimited` having changed nothing. See the module docstring."""
        now = time.time() if now is None else now
        estimated_tokens = max(0, int(estimated_tokens))
        names = [name for name, _ in scopes]
        if len(set(names)) != len(names):
            raise ValueError(f"scopes named twice: {names}")
        charges: list[_Charge] = []
        capped: list[tuple[str, int]] = []  # (scope, max_concurrent)
        for name, limits in scopes:
            for dim in _DIMS:
                limit = getattr(limits, dim.limit_name)
                if limit is None:
                    continue
                w, start, end = _window(dim.window, now)
                cost = 1 if dim.unit == "requests" else estimated_tokens
                charges.append(
                    _Charge(f"{dim.prefix}:{name}", w, cost, name, dim, limit, start, end)
                )
            if limits.max_concurrent is not None:
                charges.append(_Charge(f"conc:{name}", 0, 0))  # the scope's mutex row
                capped.append((name, limits.max_concurrent))
        if not charges:
            return Lease(request_id, now, estimated_tokens, estimated_tokens)
        self._maybe_sweep(now)

        too_large = [c for c in charges if c.dim is not None and c.amount > c.limit]
        if too_large:  # no need to touch the database: waiting cannot help
            raise self._refusal(self._peek(charges, now), now)
        # Rows in one order: every transaction locks them alike (see the module docstring).
        ordered = sorted(charges, key=lambda c: c.row)

        def attempt(txn: RateTxn) -> Lease:
            # The write comes first: it takes SQLite's write lock / PostgreSQL's row locks
            # before anything is read.
            counts = txn.charge([(c.row, c.window, c.amount) for c in ordered])
            usages = self._usages(charges, counts)
            in_flight: dict[str, int] = {}
            for name, cap in capped:
                n = txn.in_flight(name)
                if n >= cap and self._drop_stale(txn, now, name):
                    n = txn.in_flight(name)
                in_flight[name] = n
            over = [u for u in usages if not u.fits(now)]
            full = [(name, cap) for name, cap in capped if in_flight[name] >= cap]
            if over or full:
                raise _Refused(self._refusal(usages, now, full, in_flight))
            ids = [txn.hold(name, request_id, now) for name, _ in capped]
            token_windows = tuple(
                (c.row, c.dim.window, c.window)
                for c in charges
                if c.dim is not None and c.dim.unit == "tokens"
            )
            return Lease(
                request_id,
                now,
                estimated_tokens,
                estimated_tokens,
                headers=_headers(usages, now, with_request=True),
                token_windows=token_windows,
                inflight_ids=tuple(ids),
            )

        try:
            return self.counters.transaction(attempt)
        except _Refused as e:
            raise e.error from None

    @staticmethod
    def _usages(charges: list[_Charge], counts: dict[str, tuple[int, int]]) -> list[_Usage]:
        """Each limit's usage from ``counts`` (row -> (count with this request, previous
        window's count))."""
        out = []
        for c in charges:
            if c.dim is None:
                continue
            total, prev = counts[c.row]
            if c.dim.window != "minute":
                prev = 0
            out.append(
                _Usage(
                    c.scope,
                    c.dim,
                    c.limit,
                    c.window,
                    total - c.amount,
                    prev,
                    c.start,
                    c.end,
                    c.amount,
                )
            )
        return out

    def _peek(self, charges: list[_Charge], now: float) -> list[_Usage]:
        """Current usage without charging anything (for refusals decided up front)."""

        def read(txn: RateTxn) -> dict[str, tuple[int, int]]:
            return {
                c.row: (txn.count(c.row, c.window) + c.amount, txn.count(c.row, c.window - 1))
                for c in charges
                if c.dim is not None
            }

        return self._usages(charges, self.counters.transaction(read))

    def _refusal(
        self,
        usages: list[_Usage],
        now: float,
        full: Sequence[tuple[str, int]] = (),
        in_flight: dict[str, int] | None = None,
    ) -> RateLimited:
        """The error for a refused request: the limit that takes longest to clear."""
        hdrs = _headers(usages, now, with_request=False)
        candidates: list[tuple[float, str, str, str]] = []  # (wait, limit, scope, message)
        for u in usages:
            if u.fits(now):
                continue
            wait = u.retry_after(now)
            what = f"{u.dim.limit_name} {u.limit}"
            if wait is None:
                msg = (
                    f"{words.too_large(u.scope)}it needs {u.cost} {u.dim.unit} and "
                    f"the limit is {what} per {u.dim.window}; lower max_tokens or shorten "
                    "the prompt"
                )
                candidates.append((math.inf, u.dim.limit_name, u.scope, msg))
            else:
                msg = (
                    f"{words.rate_limit_reached(u.scope)}{what} {u.dim.unit} per "
                    f"{u.dim.window}; {_used(u, now)} and this request needs {u.cost}; "
                    f"retry in {_duration(wait)}"
                )
                if u.dim.window == "minute" and wait > u.end - u.start:
                    msg += (
                        " (the requests of this minute count in full until it ends, then "
                        "fade out over the next one)"
                    )
                candidates.append((wait, u.dim.limit_name, u.scope, msg))
        for name, cap in full:
            n = (in_flight or {}).get(name, cap)
            msg = (
                f"{words.too_many_concurrent(name)}{n} in flight, max_concurrent "
                f"{cap}; retry in {_duration(CONCURRENCY_RETRY_S)}"
            )
            candidates.append((CONCURRENCY_RETRY_S, "max_concurrent", name, msg))
        wait, limit_name, scope, msg = max(candidates, key=lambda c: c[0])
        retry = None if math.isinf(wait) else wait
        return RateLimited(msg, retry, limit_name, scope, {**hdrs, **_retry_headers(retry)})

    # -- after the call ------------------------------------------------------------------
    def reconcile(self, lease: Lease, actual_tokens: int, now: float | None = None) -> None:
        """Charge the tokens really used (prompt + completion) instead of the estimate.

        Adds ``actual - charged`` to each token window the lease charged; calling it again
        with a new total adjusts by the difference only. A window that no longer counts
        (an older minute than the previous one, yesterday, last month) keeps its charge:
        a give-back there would free nothing, and an extra charge goes to the current
        window instead, so under-estimates are never lost."""
        now = time.time() if now is None else now
        actual = max(0, int(actual_tokens))
        delta = actual - lease.charged_tokens
        if delta == 0 or not lease.token_windows:
            lease.charged_tokens = actual
            return
        plan: dict[tuple[str, int], int] = {}
        for row, kind, window in lease.token_windows:
            cur, _, _ = _window(kind, now)
            counts = window >= cur - 1 if kind == "minute" else window == cur
            if counts:
                plan[(row, window)] = plan.get((row, window), 0) + delta
            elif delta > 0:
                plan[(row, cur)] = plan.get((row, cur), 0) + delta
        if plan:
            steps = sorted(plan.items())

            def apply(txn: RateTxn) -> None:
                for (row, window), amount in steps:
                    txn.add(row, window, amount)

            self.counters.transaction(apply)
        lease.charged_tokens = actual

    def release(self, lease: Lease) -> None:
        """Free the lease's concurrency slots. Idempotent; call it in ``finally`` (also when
        the client disconnects mid-stream)."""
        if lease.released:
            return
        lease.released = True
        if not lease.inflight_ids:
            return
        ids = lease.inflight_ids
        self.counters.transaction(lambda txn: txn.free(ids))

    def headers(self, lease_or_error: Lease | RateLimited) -> dict[str, str]:
        """Same as the module-level :func:`headers`."""
        return headers(lease_or_error)

    # -- housekeeping --------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> tuple[int, int]:
        """Drop counters of windows that no longer count and stale in-flight rows of every
        scope; returns (windows dropped, in-flight rows dropped)."""
        now = time.time() if now is None else now

        def run(txn: RateTxn) -> tuple[int, int]:
            dropped = sum(txn.prune(prefix, _window(kind, now)[0] - 1) for prefix, kind in _SWEPT)
            return dropped, self._drop_stale(txn, now, None)

        return self.counters.transaction(run)

    def _maybe_sweep(self, now: float) -> None:
        clock = time.monotonic()
        if clock >= self._next_sweep:
            self._next_sweep = clock + self.sweep_every_s
            self.sweep(now)


# Counter rows dropped by the sweep once their window is older than the previous one.
_SWEPT = (("rpm", "minute"), ("tpm", "minute"), ("tpd", "day"), ("tpmo", "month"))
