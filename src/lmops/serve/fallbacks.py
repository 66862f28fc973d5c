"""Retries and fallbacks: when a deployment cannot start a reply, try it again, then the
deployments it falls back to, before the client hears of it.

```yaml
deployments:
  - name: chat
    upstream: http://10.0.0.5:8000/v1
    retries: 2                  # two more tries of chat (three in all)
    retry_backoff_s: 0.25       # waits 0.25 s, then 0.5 s (or the upstream's Retry-After)
    retry_max_wait_s: 10        # a longer Retry-After skips chat's tries left
    fallbacks: [chat-local, big]
  - name: chat-local
    model: chat@production
    fallbacks: [tiny]           # followed on: chat, chat-local, tiny, big
```

**What is tried.** The deployment the client named, with its ``retries``; then its
``fallbacks`` in order, each with its own retries and, depth first, its own fallbacks
(:func:`chain`; a deployment is tried once per request, and a cycle is refused when the
file loads). Backoff doubles from ``retry_backoff_s``; an upstream's ``Retry-After``
(or ``retry-after-ms``) replaces it, and one longer than ``retry_max_wait_s`` ends that
deployment's tries at once (it said it will not be back in time) and moves to the next.

**What triggers the next try** (:func:`failure_reason`), always before the first byte of a
reply reached the client: an upstream that refused the connection or closed it
(``connect``), that sent nothing within ``upstream_timeout_s`` (``timeout``), that
answered 429/500/502/503/504 (``http_<status>``), a built-in engine whose queue is full
(``overloaded``), and, only where a later try exists, a stream that broke before its
first event (``stream``: such a stream is read up to its first event before the response
starts). Never the client's own error (a 400, a content filter, a key's 401/403/429: those
are decided once, before any try) and never a failure after the first byte went out (the
stream ends with an error event, as without fallbacks).

**What each try is charged.** The key's limits and scopes are checked once, against the
deployment the client named, as are that deployment's limits, guardrails and bound prompt
(its input check runs once; its output check reads whatever answers). A fallback's own
deployment-level limits (RPM, TPM, ``max_concurrent``, quotas) are its capacity
protection and are acquired when it is used; one that refuses is skipped
(``limit:<name>``) and the next is tried. The answering fallback's lease is reconciled with
the real tokens, as the named deployment's is.

**What is recorded.** The request log row keeps the named deployment; ``model_ref`` is the
version that answered, and ``replica`` the replica of a list of them (``upstream: [...]``,
:mod:`lmops.serve.replicas`) whose reply it got; ``guardrails.tries`` lists every try
(deployment, model_ref, the replica where there are several, why it failed or
``status: 200``) when there was more than one, a request sent on from a replica that
refused the connection or answered 429/401/403/404 included (``lmops trace`` prints them;
``lmops usage`` counts retries and fallback answers). The response's ``model`` is the
named deployment; ``x-lmops-tries: N`` when more than one try was made and
``x-lmops-fallback: <deployment>`` when another deployment answered. Prometheus:
``lmops_retries_total{deployment, reason}`` and
``lmops_fallbacks_total{deployment, fallback, reason}``. When every try failed the client
gets one error in OpenAI's shape: the last failure's status and code, its message ending
with what was tried.

**A client that hangs up** ends the tries at once, a backoff wait included (the handler's
task is cancelled: :class:`~lmops.serve.replies.Hangup`); the request is logged as a 499
with the tries made until then, the one in flight among them (reason ``hangup``, status
499) and its replica as the request's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from lmops.serve.backends import Backend, Generation, Job
from lmops.serve.protocol import OpenAIError

if TYPE_CHECKING:
    from lmops.serve.replicas import Sent

__all__ = [
    "RETRY_STATUSES",
    "Try",
    "chain",
    "failure_reason",
    "once",
    "openai_error",
    "start",
]

T = TypeVar("T")

# Statuses of an upstream that a later try may not get (overload, a restart, a hiccup);
# 501 and 505 are definitive answers.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass
class Try:
    """One try of one deployment: ``reason`` is why it failed (None: it answered;
    ``hangup``: the client hung up while it was in flight)."""

    deployment: str
    model_ref: str | None
    reason: str | None = None
    status: int = 200
    message: str | None = None
    replica: str | None = None  # of a list of replicas: the one tried (credentials masked)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"deployment": self.deployment, "model_ref": self.model_ref}
        if self.replica is not None:
            out["replica"] = self.replica
        out["status"] = self.status
        if self.reason is not None:
            out["reason"] = self.reason
            out["error"] = (self.message or "")[:300]
        return out


def chain(registry: Any, name: str) -> list[str]:
    """The deployments a request to ``name`` may be answered by, in the order they are
    tried: ``name``, then each of its fallbacks followed depth first, each once."""
    order: list[str] = []

    def visit(n: str) -> None:
        if n in order:
            return
        order.append(n)
        for fb in registry.get(n).spec.fallbacks:
            visit(fb)

    visit(name)
    return order


def failure_reason(e: BaseException) -> str | None:
    """Why a try that raised ``e`` before any byte went to the client may be tried again
    (see the module docstring), or None when ``e`` is an answer to pass on."""
    from lmops.models.engine import EngineOverloaded
    from lmops.serve.upstream import UpstreamError

    if isinstance(e, EngineOverloaded):
        return "overloaded"
    if isinstance(e, UpstreamError):
        if e.kind in ("connect", "timeout", "stream"):
            return e.kind
        if e.status in RETRY_STATUSES:
            return f"http_{e.status}"
        return None
    if isinstance(e, OpenAIError) and e.status == 429:
        # an upstream's 429, passed on by its backend (the gateway's own limits are
        # decided before any try, so they never reach here)
        return "http_429"
    return None


def openai_error(e: Exception) -> OpenAIError:
    """``e`` as the client gets it: an engine's full queue is a 503, an upstream's
    failure a 502, an ``OpenAIError`` itself."""
    from lmops.models.engine import EngineOverloaded

    if isinstance(e, OpenAIError):
        return e
    if isinstance(e, EngineOverloaded):
        return OpenAIError(
            503,
            f"The engine is currently overloaded ({e}); please retry",
            type_="server_error",
            code="engine_overloaded",
        )
    return OpenAIError(502, str(e), type_="server_error", code="upstream_error")


def _wait_s(spec: Any, retry: int, asked: float | None) -> float | None:
    """Seconds to wait before retry number ``retry`` (1-based) of ``spec``; None when the
    upstream asked for longer than ``retry_max_wait_s`` (the tries left are skipped).
    Without an ask: ``retry_backoff_s`` doubled per retry, between half and all of it
    (so clients failed together do not come back together)."""
    cap = float(spec.retry_max_wait_s)
    if asked is not None:
        return asked if asked <= cap else None
    full = float(spec.retry_backoff_s) * 2 ** (retry - 1)
    return min(cap, full * (0.5 + random.random() / 2))


def _asked_wait(e: BaseException) -> float | None:
    value = getattr(e, "retry_after_s", None)
    return float(value) if value is not None else None


class _Primed:
    """A stream whose first batch was read before the response started, so that a stream
    breaking before its first event could still be tried elsewhere."""

    def __init__(self, gen: Generation, it: AsyncIterator[Any], first: Any) -> None:
        self._gen = gen
        self._it = it
        self._first = first

    @property
    def prompt_tokens(self) -> int:
        return self._gen.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self._gen.completion_tokens

    async def batches(self) -> AsyncIterator[Any]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        async for batch in self._it:
            yield batch

    async def aclose(self) -> None:
        try:
            close = getattr(self._it, "aclose", None)
            if close is not None:
                await close()
        finally:
            await self._gen.aclose()


async def _prime(gen: Generation) -> Generation:
    it = aiter(gen.batches())
    try:
        first = await anext(it)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await _Primed(gen, it, None).aclose()
        raise
    return _Primed(gen, it, first)


def _went_on(
    ctx: Any, tries: list[Try], name: str, model_ref: str | None, sent: list[Sent]
) -> str | None:
    """Add to ``tries`` the replicas of one try of ``name`` that its request went on from
    (each is a try of its own, and a retry in the metrics); the replica whose reply or
    failure the try got (None: not a list of replicas)."""
    for s in sent[:-1]:
        tries.append(Try(name, model_ref, s.reason, s.status, s.message, s.url))
        ctx.retrying(name, s.reason or "")
    return sent[-1].url if sent else None


def _failed_try(name: str, model_ref: str | None, e: Exception, replica: str | None) -> Try:
    """The try of ``name`` that raised ``e``: a failure to try past (its reason) or an
    answer to pass on (no reason), with the status and message the client would get."""
    err = openai_error(e)
    return Try(name, model_ref, failure_reason(e), err.status, err.message, replica)


def _hung_up(name: str, model_ref: str | None, replica: str | None) -> Try:
    """The try of ``name`` in flight when the client hung up (the task was cancelled)."""
    return Try(name, model_ref, "hangup", 499, "the client hung up before the reply", replica)


def _gave_up(err: OpenAIError, tries: list[Try]) -> OpenAIError:
    """``err``, the last of several failed tries, as the client gets it: its message ends
    with what was tried."""
    tried = ", ".join(f"{t.deployment} ({t.reason})" for t in tries if t.reason is not None)
    return OpenAIError(
        err.status,
        f"{err.message} (tried {len(tries)} times: {tried})",
        type_=err.type,
        param=err.param,
        code=err.code,
        headers=dict(err.headers),
        lmops=err.lmops,
    )


async def start(
    registry: Any,
    dep: Any,
    backend: Backend,
    job: Job,
    ctx: Any,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tuple[Generation, Backend, Job]:
    """Prepare and start ``job`` (input already guarded and admitted against ``dep``, the
    deployment the client named, whose ``backend`` was picked) on ``dep``, retrying and
    falling back as its spec says; the started generation, the backend that answers and
    the job as that backend prepared it.
    Raises the first error no try may follow (as the client gets it), or, when every try
    failed, the last failure with what was tried in its message."""
    from lmops.models.engine import EngineOverloaded
    from lmops.serve.replicas import recording
    from lmops.serve.upstream import UpstreamError

    order = chain(registry, dep.name) if dep.spec.fallbacks else [dep.name]
    if len(order) == 1 and dep.spec.retries == 0:  # as without fallbacks: no copy, no prime
        await backend.prepare(job)
        return await once(ctx, dep.name, backend.model_ref, backend.start(job)), backend, job
    base = dataclasses.replace(job)  # the guarded job, before a backend prepared it
    tries: list[Try] = []
    last: Exception | None = None
    for pos, name in enumerate(order):
        d = dep if pos == 0 else registry.get(name)
        if pos > 0:
            refused = ctx.admit_fallback(d)  # its capacity protection; a refusal skips it
            if refused is not None:
                tries.append(Try(name, None, refused, 429, f"{name} is over its limits"))
                _moving_on(ctx, order, pos, tries)
                continue
            backend = d.backend()
            # the guarded text, encoded by the fallback's own tokenizer: ids the client sent
            # are the first model's, and reading them again would skip the input check
            job = dataclasses.replace(
                base, max_tokens=min(base.max_tokens, d.spec.max_tokens_cap), token_ids=None
            )
        try:
            if pos > 0:
                backend.precheck(job)
            await backend.prepare(job)
        except OpenAIError as e:
            if pos == 0:  # the deployment the client named refuses it: that is the answer
                ctx.route([t.to_dict() for t in tries], None, None)
                raise e from None
            # a fallback that cannot take this request (a smaller context, text only): the
            # next one may; the client hears of it only if none answers
            tries.append(Try(name, backend.model_ref, f"refused_{e.status}", e.status, e.message))
            last = e
            _moving_on(ctx, order, pos, tries)
            continue
        retries = int(d.spec.retries)
        for k in range(retries + 1):
            final = pos == len(order) - 1 and k == retries
            with recording() as sent:
                try:
                    gen = await backend.start(job)
                    if job.stream and not final:
                        gen = await _prime(gen)
                except (OpenAIError, EngineOverloaded, UpstreamError) as e:
                    failed: Exception | None = e
                except asyncio.CancelledError:  # the client hung up during this try
                    replica = _went_on(ctx, tries, name, backend.model_ref, sent)
                    tries.append(_hung_up(name, backend.model_ref, replica))
                    ctx.route([t.to_dict() for t in tries], None, None, replica)
                    raise
                else:
                    failed = None
            replica = _went_on(ctx, tries, name, backend.model_ref, sent)
            if failed is None:
                tries.append(Try(name, backend.model_ref, replica=replica))
                answered = None if d is dep else name
                ctx.route([t.to_dict() for t in tries], answered, backend.model_ref, replica)
                return gen, backend, job
            tried = _failed_try(name, backend.model_ref, failed, replica)
            reason = tried.reason
            if reason is None:  # an answer, not a failure to try past
                if tries:  # after other tries, it is one of them
                    tries.append(tried)
                ctx.route([t.to_dict() for t in tries], None, None, replica)
                raise openai_error(failed) from None
            tries.append(tried)
            last = failed
            if k == retries:
                break
            wait = _wait_s(d.spec, k + 1, _asked_wait(failed))
            if wait is None:
                break  # asked to wait longer than allowed: on to the next deployment
            ctx.retrying(name, reason)
            try:
                await sleep(wait)
            except asyncio.CancelledError:  # the client hung up: no more tries
                ctx.route([t.to_dict() for t in tries], None, None, replica)
                raise
        _moving_on(ctx, order, pos, tries)
    assert last is not None  # the named deployment was tried at least once
    err = openai_error(last)
    ctx.route([t.to_dict() for t in tries], None, None, tries[-1].replica)
    if len(tries) == 1:  # asked to wait too long, and nowhere else to go
        raise err from None
    raise _gave_up(err, tries) from None


async def once(ctx: Any, name: str, model_ref: str | None, call: Awaitable[T]) -> T:
    """``await call``: the one try of deployment ``name`` (no retries, no fallbacks; an
    embeddings request), with the replicas it went to recorded on ``ctx``. When its
    request went on from other replicas and the last failed too, the error (as the client
    gets it) ends with what was tried, as after retries."""
    from lmops.serve.replicas import recording

    with recording() as sent:
        try:
            out = await call
        except BaseException as e:
            tries = _one_try(ctx, name, model_ref, sent, e)
            if isinstance(e, Exception) and len(tries) > 1 and tries[-1].reason is not None:
                raise _gave_up(openai_error(e), tries) from None
            raise
    _one_try(ctx, name, model_ref, sent, None)
    return out


def _one_try(
    ctx: Any, name: str, model_ref: str | None, sent: list[Sent], e: BaseException | None
) -> list[Try]:
    """Record the one try of a deployment without retries or fallbacks (``e``: how it
    failed, a cancellation when the client hung up; None: it answered): the replica that
    answered and, when its request went on from others first, those tries too. The tries
    recorded (none where the deployment is not a list of replicas)."""
    if not sent:  # not a list of replicas: nothing to add to model_ref
        return []
    tries: list[Try] = []
    replica = _went_on(ctx, tries, name, model_ref, sent)
    if e is None:
        tries.append(Try(name, model_ref, replica=replica))
    elif isinstance(e, Exception):
        tries.append(_failed_try(name, model_ref, e, replica))
    else:
        tries.append(_hung_up(name, model_ref, replica))
    ctx.route([t.to_dict() for t in tries], None, model_ref if e is None else None, replica)
    return tries


def _moving_on(ctx: Any, order: list[str], pos: int, tries: list[Try]) -> None:
    """Deployment ``order[pos]`` gave up: count the fallback to the next one, if any."""
    if pos + 1 < len(order):
        ctx.falling_back(order[pos], order[pos + 1], tries[-1].reason or "")
