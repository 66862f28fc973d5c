"""Rate limits, quotas and concurrency caps: exact under two worker processes (SQLite and
PostgreSQL), reconciled to real token counts, with correct retry_after and headers. The
limiter's SQL is hand-written, so every test that takes the ``store`` fixture runs on both
databases."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, select

from lmops.serve.limits import (
    CONCURRENCY_RETRY_S,
    Lease,
    Limits,
    RateLimited,
    RateLimiter,
    _duration,
    estimate_tokens,
    headers,
)
from lmops.store import Store
from lmops.store.models import InflightRow, RateWindowRow

# 2024-05-10 12:00:30 UTC: 30 s into a minute, mid-day, mid-month.
T = datetime(2024, 5, 10, 12, 0, 30, tzinfo=UTC).timestamp()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(
    request: pytest.FixtureRequest, lmops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """The store on SQLite, then on PostgreSQL: the limiter's SQL is written for both."""
    if request.param == "postgres":
        monkeypatch.setenv("LMOPS_DATABASE_URL", request.getfixturevalue("pg_url"))
    s = Store()
    yield s
    s.close()


@pytest.fixture
def limiter(store: Store) -> RateLimiter:
    return RateLimiter(store.db)


def refused(
    limiter: RateLimiter, scopes: list[tuple[str, Limits]], tokens: int, now: float
) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        limiter.acquire(scopes, "refused", tokens, now=now)
    return info.value


def counters(store: Store) -> dict[tuple[str, int], int]:
    with store.db.session() as s:
        return {(r.scope, r.window): r.count for r in s.scalars(select(RateWindowRow))}


# -- exactness across worker processes -------------------------------------------------------
def _hammer(home: str, url: str | None, mode: str, n: int, barrier: object) -> int:
    """One server worker: its own Store on the shared home/database, ``n`` requests."""
    os.environ["LMOPS_HOME"] = home
    if url:
        os.environ["LMOPS_DATABASE_URL"] = url
    store = Store()
    limiter = RateLimiter(store.db)
    limits = Limits(rpm=25, tpm=10_000) if mode == "rpm" else Limits(max_concurrent=7)
    barrier.wait()  # type: ignore[attr-defined]  # start together to maximise contention
    ok = 0
    for i in range(n):
        try:  # concurrency leases are never released here: exactly 7 may be held
            limiter.acquire([("key:ci", limits)], f"{os.getpid()}-{i}", 10, now=T)
            ok += 1
        except RateLimited:
            pass
    store.close()
    return ok


def _exact_across_processes(home: Path, url: str | None) -> None:
    Store().close()  # migrate once up front (fair timing; each process would lock anyway)
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(2)
    with ctx.Pool(2) as pool:
        rpm = pool.starmap(_hammer, [(str(home), url, "rpm", 40, barrier)] * 2)
        conc = pool.starmap(_hammer, [(str(home), url, "conc", 20, barrier)] * 2)
    assert sum(rpm) == 25, rpm
    assert sum(conc) == 7, conc
    store = Store()
    minute = int(T // 60)
    got = counters(store)  # refused requests left no trace
    assert got[("rpm:key:ci", minute)] == 25
    assert got[("tpm:key:ci", minute)] == 250
    with store.db.session() as s:
        assert len(s.scalars(select(InflightRow)).all()) == 7
    store.close()


def test_exact_limits_across_two_processes_sqlite(lmops_home: Path) -> None:
    _exact_across_processes(lmops_home, None)


@pytest.mark.postgres
def test_exact_limits_across_two_processes_postgres(
    lmops_home: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMOPS_DATABASE_URL", pg_url)
    _exact_across_processes(lmops_home, pg_url)


def test_first_statement_of_acquire_is_a_write(lmops_home: Path) -> None:
    """SQLite's deferred transaction takes the write lock at its first write: nothing may
    be read before it, or two processes could both see the last free slot. Traced in
    SQLite itself (on the connections the limiter checks out), so the driver's implicit
    BEGIN is seen too."""
    store = Store()
    scopes = [("key:ci", Limits(rpm=5, tpm=100, max_concurrent=2))]
    seen: list[str] = []
    traced: list[sqlite3.Connection] = []

    def trace(dbapi_conn: sqlite3.Connection, _record: object, _proxy: object) -> None:
        dbapi_conn.set_trace_callback(seen.append)
        traced.append(dbapi_conn)

    event.listen(store.db.engine, "checkout", trace)
    try:
        limiter = RateLimiter(store.db)
        limiter.acquire(scopes, "warm-up", 1, now=T)  # also runs the periodic sweep
        seen.clear()
        limiter.acquire(scopes, "r", 1, now=T)
    finally:
        event.remove(store.db.engine, "checkout", trace)
        for conn in traced:
            conn.set_trace_callback(None)
    # a deferred BEGIN, the UPSERT of the counters, the in-flight count, the slot, COMMIT
    words = [statement.split()[0].upper() for statement in seen]
    assert words == ["BEGIN", "INSERT", "SELECT", "INSERT", "COMMIT"], seen
    # one UPSERT charges the mutex, rpm and tpm rows, in sorted order, before any SELECT
    upsert = seen[1]
    assert upsert.startswith("INSERT INTO rate_windows")
    assert (
        upsert.index("'conc:key:ci'") < upsert.index("'rpm:key:ci'") < upsert.index("'tpm:key:ci'")
    )
    assert seen[2].startswith("SELECT count(*) FROM inflight")
    store.close()


# -- rates, quotas, reconciliation ---------------------------------------------------------
def test_rpm_sliding_window_and_retry_after(limiter: RateLimiter) -> None:
    scopes = [("key:ci", Limits(rpm=10))]
    for i in range(10):
        limiter.acquire(scopes, f"r{i}", 0, now=T)
    err = refused(limiter, scopes, 0, T)
    assert (err.limit_name, err.scope) == ("rpm", "key:ci")
    # This minute is full; in the next one it weighs (1 - f): 10 * (1 - f) + 1 <= 10 at
    # f = 0.1, i.e. 30 s (rest of this minute) + 6 s.
    assert err.retry_after_s == 36.0
    assert err.headers["Retry-After"] == "36"
    refused(limiter, scopes, 0, T + 35.5)
    limiter.acquire(scopes, "after-wait", 0, now=T + 36.0)
    # Half-way through the next minute the previous one weighs 5: four more fit (5 + 1 + 4).
    mid = T + 60
    for i in range(4):
        limiter.acquire(scopes, f"m{i}", 0, now=mid)
    err = refused(limiter, scopes, 0, mid)
    # cur 5 + 1 <= 10 once the previous minute weighs <= 4: f = 0.6, 6 s from f = 0.5.
    assert err.retry_after_s == 6.0
    limiter.acquire(scopes, "m-late", 0, now=mid + 6.0)


def test_no_double_burst_at_minute_boundary(limiter: RateLimiter) -> None:
    scopes = [("key:ci", Limits(rpm=10))]
    end = T + 29.9  # the last 0.1 s of the minute
    for i in range(10):
        limiter.acquire(scopes, f"r{i}", 0, now=end)
    refused(limiter, scopes, 0, T + 30.5)  # a fixed window would admit 10 more here


def test_tpm_reconciles_estimate_with_actual(store: Store, limiter: RateLimiter) -> None:
    scopes = [("key:ci", Limits(tpm=1000)), ("dep:chat", Limits(tpm=5000))]
    first = limiter.acquire(scopes, "a", 600, now=T)
    assert (first.estimated_tokens, first.charged_tokens) == (600, 600)
    err = refused(limiter, scopes, 600, T)  # 600 + 600 > 1000
    assert (err.limit_name, err.scope) == ("tpm", "key:ci")
    limiter.reconcile(first, 100, now=T + 1)  # over-estimate given back
    limiter.reconcile(first, 100, now=T + 2)  # idempotent
    assert first.charged_tokens == 100
    second = limiter.acquire(scopes, "b", 600, now=T + 3)
    limiter.reconcile(second, 950, now=T + 4)  # under-estimate charged
    minute = int(T // 60)
    assert counters(store)[("tpm:key:ci", minute)] == 100 + 950
    assert counters(store)[("tpm:dep:chat", minute)] == 100 + 950
    err = refused(limiter, scopes, 1, T + 5)
    # 1050 + 1 <= 1000 next minute once this one weighs <= 999: f = 1 - 999/1050.
    assert err.retry_after_s == pytest.approx(25 + (1 - 999 / 1050) * 60, abs=0.001)


def test_reconcile_after_the_window_passed(store: Store, limiter: RateLimiter) -> None:
    scopes = [("key:ci", Limits(tpm=1000))]
    lease = limiter.acquire(scopes, "long", 100, now=T)
    later = T + 300  # a five-minute stream: its minute no longer counts
    limiter.reconcile(lease, 700, now=later)
    got = counters(store)
    assert got[("tpm:key:ci", int(T // 60))] == 100
    assert got[("tpm:key:ci", int(later // 60))] == 600  # the extra is not lost
    assert limiter.sweep(now=later) == (1, 0)  # the old minute no longer counts
    assert counters(store) == {("tpm:key:ci", int(later // 60)): 600}


def test_daily_and_monthly_quotas(limiter: RateLimiter) -> None:
    scopes = [("key:ci", Limits(tokens_per_day=1000, tokens_per_month=1500))]
    limiter.acquire(scopes, "a", 400, now=T)
    limiter.acquire(scopes, "b", 400, now=T)
    err = refused(limiter, scopes, 400, T)
    midnight = datetime(2024, 5, 11, tzinfo=UTC).timestamp()
    assert (err.limit_name, err.retry_after_s) == ("tokens_per_day", midnight - T)
    limiter.acquire(scopes, "c", 400, now=midnight)  # a new day
    err = refused(limiter, scopes, 400, midnight)  # 1200 + 400 > 1500 this month
    june = datetime(2024, 6, 1, tzinfo=UTC).timestamp()
    assert (err.limit_name, err.retry_after_s) == ("tokens_per_month", june - midnight)
    lease = limiter.acquire(scopes, "d", 400, now=june)
    assert lease.headers["x-ratelimit-remaining-tokens-day"] == "600"
    assert lease.headers["x-ratelimit-remaining-tokens-month"] == "1100"


def test_refusal_changes_nothing_and_too_large_never_passes(
    store: Store, limiter: RateLimiter
) -> None:
    scopes = [("key:ci", Limits(rpm=5, tpm=100))]
    limiter.acquire(scopes, "a", 90, now=T)
    before = counters(store)
    err = refused(limiter, scopes, 20, T)  # tpm full; its rpm increment rolls back
    assert err.limit_name == "tpm"
    assert counters(store) == before
    big = refused(limiter, scopes, 101, T)
    assert big.retry_after_s is None and "too large" in str(big)
    assert "Retry-After" not in headers(big)
    assert counters(store) == before
    lease = limiter.acquire(scopes, "b", 10, now=T)
    assert lease.headers["x-ratelimit-remaining-requests"] == "3"


# -- concurrency ----------------------------------------------------------------------------
def test_concurrency_cap_and_release(limiter: RateLimiter) -> None:
    scopes = [("dep:chat", Limits(max_concurrent=2))]
    a = limiter.acquire(scopes, "a", 0, now=T)
    limiter.acquire(scopes, "b", 0, now=T)
    err = refused(limiter, scopes, 0, T)
    assert (err.limit_name, err.scope, err.retry_after_s) == (
        "max_concurrent",
        "dep:chat",
        CONCURRENCY_RETRY_S,
    )
    assert err.headers["Retry-After"] == "1"
    limiter.release(a)
    limiter.release(a)  # idempotent: frees one slot, not two
    limiter.acquire(scopes, "c", 0, now=T)
    refused(limiter, scopes, 0, T)


def test_client_disconnect_releases_the_slot(limiter: RateLimiter) -> None:
    scopes = [("dep:chat", Limits(max_concurrent=1))]

    async def stream(lease: Lease) -> AsyncGenerator[str, None]:
        try:
            for i in range(1000):
                yield f"tok{i}"
                await asyncio.sleep(0.01)
        finally:  # what the gateway does: release however the stream ends
            limiter.release(lease)

    async def client_goes_away() -> None:
        lease = limiter.acquire(scopes, "s", 0, now=T)
        gen = stream(lease)

        async def consume() -> None:
            async for _ in gen:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        refused(limiter, scopes, 0, T)  # still streaming: the slot is taken
        task.cancel()  # the server cancels the response task on disconnect
        with pytest.raises(asyncio.CancelledError):
            await task
        await gen.aclose()

    asyncio.run(client_goes_away())
    limiter.acquire(scopes, "next", 0, now=T)


def _dead_pid() -> int:
    code = "import os; print(os.getpid())"
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(proc.stdout)


def test_stale_inflight_rows_are_cleaned(store: Store) -> None:
    limiter = RateLimiter(store.db, stale_after_s=600)
    scopes = [("dep:chat", Limits(max_concurrent=1))]
    started = datetime.fromtimestamp(T, UTC)

    def add_row(pid: int, at: datetime, host: str | None = socket.gethostname()) -> None:
        row = InflightRow(scope="dep:chat", request_id="x", started_at=at, pid=pid, host=host)
        store.db.write(lambda s: s.add(row))

    add_row(_dead_pid(), started)  # a worker on this host that crashed mid-request
    limiter.release(limiter.acquire(scopes, "a", 0, now=T))  # its pid is checked: freed
    add_row(_dead_pid(), started, host="another-host")  # its pid means nothing here
    if store.db.is_sqlite:  # one host: whatever the row says, a dead pid frees its slot
        limiter.release(limiter.acquire(scopes, "a", 0, now=T))
    else:  # only the age counts
        refused(limiter, scopes, 0, T)
        limiter.release(limiter.acquire(scopes, "a", 0, now=T + 601))
    add_row(os.getpid(), started - timedelta(seconds=601))  # alive but too old
    lease = limiter.acquire(scopes, "b", 0, now=T)
    limiter.release(lease)
    add_row(os.getpid(), started - timedelta(seconds=10))  # alive and recent: holds
    refused(limiter, scopes, 0, T)
    add_row(_dead_pid(), started)
    add_row(_dead_pid(), started, host=None)  # written before hosts were recorded
    # the periodic sweep, across scopes
    if store.db.is_sqlite:
        assert limiter.sweep(now=T) == (0, 2)
    else:
        assert limiter.sweep(now=T) == (0, 1)  # this host's dead pid
        assert limiter.sweep(now=T + 601) == (0, 2)


def test_a_dead_connection_is_replaced(store: Store) -> None:
    """The limiter keeps its connections between transactions, so the pool's pre-ping does
    not see them: one that died (a database restart) is replaced and the transaction run
    again, charging once."""
    checked_out: list[object] = []
    event.listen(store.db.engine, "checkout", lambda conn, *_: checked_out.append(conn))
    limiter = RateLimiter(store.db)
    scopes = [("key:ci", Limits(rpm=10, max_concurrent=5))]
    limiter.acquire(scopes, "a", 0, now=T)
    assert len(checked_out) == 1  # kept: the acquire and its sweep share one connection
    if store.db.is_sqlite:
        for conn in checked_out:
            conn.close()  # type: ignore[attr-defined]
    else:
        with store.db.engine.connect() as c:  # what a server restart does to them
            c.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
    before = len(checked_out)
    lease = limiter.acquire(scopes, "b", 0, now=T)
    limiter.release(lease)
    assert len(checked_out) == before + 1  # one new connection, kept again for the release
    assert counters(store)[("rpm:key:ci", int(T // 60))] == 2
    with store.db.session() as s:
        assert [r.request_id for r in s.scalars(select(InflightRow))] == ["a"]


# -- headers and helpers ---------------------------------------------------------------------
def test_headers_report_the_tightest_scope(limiter: RateLimiter) -> None:
    scopes = [("key:ci", Limits(rpm=10, tpm=1000)), ("dep:chat", Limits(rpm=5, tpm=50_000))]
    lease = limiter.acquire(scopes, "a", 100, now=T)
    assert headers(lease) == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        # replenished over the window as OpenAI counts it: used / limit of 60 s
        "x-ratelimit-reset-requests": "12s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6s",
    }
    assert limiter.headers(lease) == headers(lease)
    err = refused(limiter, scopes, 950, T)
    assert headers(err) == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",  # the refused request is not counted
        "x-ratelimit-reset-requests": "12s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "1m0s",  # the counter that refused: its Retry-After
        "Retry-After": "60",  # next minute, once 100 * (1 - f) + 950 <= 1000: f = 0.5
        "retry-after-ms": "60000",
    }
    assert "retry in 1m0s" in str(err)


def test_a_refusal_resets_when_retry_after_says(limiter: RateLimiter) -> None:
    """The reset of the counter that refused equals its Retry-After (issue #13 item 7:
    'x-ratelimit-reset-requests said 1m9.6s while Retry-After said 40 and the window is
    60 s'), and no reset is longer than the window."""
    scopes = [("key:ci", Limits(rpm=2))]
    limiter.release(limiter.acquire(scopes, "r0", 0, now=T - 50))  # the minute before
    limiter.release(limiter.acquire(scopes, "r1", 0, now=T - 10))
    err = refused(limiter, scopes, 0, T)  # used: 1 + 1 * (1 - 0.5), and 1 more is over 2
    h = headers(err)
    assert h["Retry-After"] == "30" and h["x-ratelimit-reset-requests"] == "30s"
    later = limiter.acquire(scopes, "ok", 0, now=T + 35)
    reset = headers(later)["x-ratelimit-reset-requests"]
    assert reset.endswith("s") and "m" not in reset  # under a minute


def test_unlimited_scopes_touch_nothing(store: Store, limiter: RateLimiter) -> None:
    lease = limiter.acquire([("key:ci", Limits())], "a", 10**9, now=T)
    assert lease.headers == {} and lease.inflight_ids == ()
    limiter.reconcile(lease, 5)
    limiter.release(lease)
    assert counters(store) == {}


def test_helpers(limiter: RateLimiter) -> None:
    assert [_duration(s) for s in (0, 0.02, 8.64, 59.9995, 360, 3723.5)] == [
        "0s",
        "20ms",
        "8.64s",
        "1m0s",
        "6m0s",
        "1h2m3.5s",
    ]
    assert estimate_tokens(30, 100) == 130
    assert estimate_tokens(30, None, cap=512) == 542
    assert estimate_tokens(30, 10**6, cap=512) == 542
    from lmops.store import ApiKey

    key = ApiKey(name="ci", prefix="lmk-x", role="user", rpm=60, created_at=datetime.now(UTC))
    assert Limits.from_key(key) == Limits(rpm=60)
    with pytest.raises(ValueError, match="twice"):
        limiter.acquire([("a", Limits()), ("a", Limits())], "x", 0)


def test_the_limiter_never_checkpoints_sqlite_on_the_request_path(
    store: Store, limiter: RateLimiter
) -> None:
    """A commit that crosses SQLite's auto-checkpoint size copies the WAL into the database
    and fsyncs it, a stall of the gateway's event loop: the limiter's connections have
    auto-checkpoint off, the rest of the store (the request log's writer) keeps the
    default, so the WAL is still checkpointed."""
    if not store.db.is_sqlite:
        pytest.skip("a SQLite setting")
    lease = limiter.acquire([("key:a", Limits(rpm=10, tpm=1000))], "r1", 5)
    limiter.reconcile(lease, 3)
    limiter.release(lease)
    kept = limiter.counters._idle[-1].dbapi_connection
    assert kept is not None
    assert kept.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    with store.db.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000


def test_a_refusal_says_the_usage_admission_counted(limiter: RateLimiter) -> None:
    """The 429 said "rpm 3 requests per minute, 2 used" for a weighted 2.5 (a rounded
    count that looks as if one more fitted), and a Retry-After past 60 s unexplained."""
    scopes = [("key:ci", Limits(rpm=3))]
    for i in range(3):
        limiter.acquire(scopes, f"p{i}", 0, now=T - 60)  # the previous minute: weighs 1.5
    limiter.acquire(scopes, "now", 0, now=T)
    err = refused(limiter, scopes, 0, T)
    assert str(err) == (
        "rate limit reached for key:ci: rpm 3 requests per minute; 2.5 of 3 used in the "
        "last 60 s (a sliding window) and this request needs 1; retry in 10s"
    )
    # three requests 5 s into a minute count in full for 55 s, then fade: the 4th fits 75 s
    # later (1/3 into the next minute), which Retry-After says and the message explains
    early = [("key:early", Limits(rpm=3))]
    for i in range(3):
        limiter.acquire(early, f"e{i}", 0, now=T - 25)
    err = refused(limiter, early, 0, T - 25)
    assert err.retry_after_s == 75.0 and headers(err)["Retry-After"] == "75"
    assert "3 of 3 used in the last 60 s" in str(err)
    assert str(err).endswith(
        "retry in 1m15s (the requests of this minute count in full until it ends, then fade "
        "out over the next one)"
    )
    refused(limiter, early, 0, T + 49.9)
    limiter.acquire(early, "e-late", 0, now=T + 50)
