"""Several copies of one upstream behind a deployment (vLLM replicas on several GPUs or
hosts): ``upstream: [http://gpu0:8000/v1, http://gpu1:8000/v1]``.

Each request goes to the replica with the fewest requests in flight from this gateway
worker (a stream counts until it ends), ties taken in turn, as LiteLLM's ``least-busy``
routing does. A replica that fails (no connection, a timeout, a 5xx, a broken stream, a
429, a 401/403/404) is left out for ``upstream_cooldown_s`` (or the wait its 429 asks for, if longer);
when every replica is cooling down, the one whose cooldown ends first is tried.

A request that never reached a replica (no connection: refused, closed before a reply, or
not made within 10 s) or that a replica refused without generating (a 429; a 401, 403 or 404:
a replica set up unlike the others) is sent to the next one at once: nothing was generated,
so nothing is repeated. Any other failure (a timeout, a 5xx, a broken stream) is the
deployment's, as with one upstream: ``retries:`` tries again, after no wait when another
replica is ready (the failed one is cooling down, so another answers), then ``fallbacks:``.

State is per gateway worker, as LiteLLM's is without Redis: each worker learns of a dead
replica from its own first failure.

Which replicas a request went to is recorded for the request log: inside
``with recording() as sent:`` every replica a request is sent to in this task is appended
to ``sent`` (:class:`Sent`: its URL with credentials masked, and for one the request went
on from, why). The last one is the replica whose reply, or failure, the request got (or
that had it when the task was cancelled: the client hung up); the others are tries of
their own (``guardrails.tries``, ``x-lmops-tries``: :mod:`lmops.serve.fallbacks`). A
context variable rather than an argument, so that the backends between the gateway's
handler and this class need not carry it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from lmops.serve.upstream import Upstream, UpstreamError, UpstreamRefused, UpstreamStream

__all__ = ["Replicas", "Sent", "recording"]

_log = logging.getLogger("lmops.serve")


@dataclass
class Sent:
    """One replica a request was sent to. ``reason`` (``connect``, ``http_429``...), with
    ``status`` (502 for no reply) and ``message``: why the request went on to the next
    replica; None: this replica's reply (``status`` 200) or failure was the request's."""

    url: str  # credentials masked
    status: int = 200
    reason: str | None = None
    message: str | None = None


_sent: ContextVar[list[Sent] | None] = ContextVar("lmops_replicas_sent", default=None)


@contextmanager
def recording() -> Iterator[list[Sent]]:
    """The replicas that requests made by this task inside the block were sent to, in
    order (empty for a deployment that is not a list of replicas)."""
    sent: list[Sent] = []
    token = _sent.set(sent)
    try:
        yield sent
    finally:
        _sent.reset(token)


def _note(r: _Replica, e: UpstreamError | None = None, *, went_on: bool = False) -> None:
    """Record, where a caller is recording, that the request went to ``r`` (and, when it
    ``went_on`` to the next replica, why: ``e``)."""
    sent = _sent.get()
    if sent is None:
        return
    if e is None or not went_on:
        sent.append(Sent(r.upstream.shown_url))
        return
    reason = f"http_{e.status}" if isinstance(e, UpstreamRefused) else e.kind
    sent.append(Sent(r.upstream.shown_url, e.status or 502, reason, str(e)[:300]))


class _Replica:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.in_flight = 0
        self.cool_until = 0.0  # monotonic time before which it is left out


class Replicas:
    """Upstreams that serve the same model, used as one :class:`Upstream` by the backend
    (``request``, ``open_stream``, ``aclose``)."""

    def __init__(
        self,
        upstreams: list[Upstream],
        *,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not upstreams:
            raise ValueError("no upstream")
        self._replicas = [_Replica(u) for u in upstreams]
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._turn = 0  # where the next tie is broken
        self.model = upstreams[0].model
        self.base_url = ",".join(u.base_url for u in upstreams)
        self.shown_url = ", ".join(u.shown_url for u in upstreams)

    @property
    def connections_opened(self) -> int:
        return sum(r.upstream.connections_opened for r in self._replicas)

    def state(self) -> list[dict[str, Any]]:
        """Each replica's URL (credentials masked), requests in flight and seconds of
        cooldown left (0: in use)."""
        now = self._clock()
        return [
            {
                "url": r.upstream.shown_url,
                "in_flight": r.in_flight,
                "cooldown_s": round(max(0.0, r.cool_until - now), 3),
            }
            for r in self._replicas
        ]

    def _order(self) -> list[_Replica]:
        """The replicas in the order to try them: those in use by fewest requests in
        flight (ties in turn), then those cooling down by the end of their cooldown."""
        now = self._clock()
        n = len(self._replicas)
        start = self._turn
        self._turn = (self._turn + 1) % n
        turn = [self._replicas[(start + i) % n] for i in range(n)]
        ready = sorted((r for r in turn if r.cool_until <= now), key=lambda r: r.in_flight)
        cooling = sorted((r for r in turn if r.cool_until > now), key=lambda r: r.cool_until)
        return ready + cooling

    def _failed(self, r: _Replica, e: UpstreamError) -> None:
        wait = max(self.cooldown_s, e.retry_after_s or 0.0)
        r.cool_until = self._clock() + wait
        _log.warning(
            "upstream replica %s failed (%s); left out for %.0f s", r.upstream.shown_url, e, wait
        )

    @staticmethod
    def _verdict(e: UpstreamError) -> tuple[bool, bool]:
        """(whether ``e`` says the replica is unwell, whether the request may go to the
        next replica at once: nothing was generated). No connection, a 429 and a 401, 403
        or 404 (a replica set up unlike the others) are both; a timeout, a 5xx or a broken
        stream only the first (``retries`` decide); another 4xx is the request's own."""
        if isinstance(e, UpstreamRefused):
            mine = e.status in (401, 403, 404, 429)
            return mine, mine
        return True, e.kind == "connect"

    def _raised(self, e: UpstreamError) -> UpstreamError:
        """``e`` as the deployment's failure: its wait is until the soonest replica is back
        (0 when one is ready), not the failed replica's own ``Retry-After``."""
        now = self._clock()
        soonest = min(max(0.0, r.cool_until - now) for r in self._replicas)
        e.retry_after_s = soonest if e.retry_after_s is None else min(soonest, e.retry_after_s)
        return e

    async def request(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        order = self._order()
        for i, r in enumerate(order):
            r.in_flight += 1
            try:
                reply = await r.upstream.request(path, body)
            except UpstreamError as e:
                unwell, resend = self._verdict(e)
                if unwell:
                    self._failed(r, e)
                went_on = resend and i < len(order) - 1
                _note(r, e, went_on=went_on)
                if not went_on:
                    raise self._raised(e) if unwell else e from None
                continue
            except BaseException:  # cancelled (the client hung up): this replica had it
                _note(r)
                raise
            finally:
                r.in_flight -= 1
            _note(r)
            return reply
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def open_stream(self, path: str, body: dict[str, Any]) -> UpstreamStream:
        order = self._order()
        for i, r in enumerate(order):
            r.in_flight += 1
            try:
                stream = await r.upstream.open_stream(path, body)
            except UpstreamError as e:
                r.in_flight -= 1
                unwell, resend = self._verdict(e)
                if unwell:
                    self._failed(r, e)
                went_on = resend and i < len(order) - 1
                _note(r, e, went_on=went_on)
                if not went_on:
                    raise self._raised(e) if unwell else e from None
                continue
            except BaseException:  # cancelled (the client hung up): this replica had it
                r.in_flight -= 1
                _note(r)
                raise
            _note(r)
            return _CountedStream(stream, self, r)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def aclose(self) -> None:
        for r in self._replicas:
            await r.upstream.aclose()


class _CountedStream(UpstreamStream):
    """A replica's stream that counts as in flight until it ends or is closed; a stream
    that breaks puts its replica in cooldown."""

    def __init__(self, inner: UpstreamStream, replicas: Replicas, replica: _Replica) -> None:
        self._inner = inner
        self._replicas = replicas
        self._replica = replica
        self._open = True

    def _done(self) -> None:
        if self._open:
            self._open = False
            self._replica.in_flight -= 1

    async def batches(self) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
        try:
            async for batch in self._inner.batches():
                yield batch
        except UpstreamError as e:
            self._replicas._failed(self._replica, e)
            raise
        finally:
            self._done()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._done()
