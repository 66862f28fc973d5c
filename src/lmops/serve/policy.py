"""The gateway's policy layer, one request at a time: guardrails on the way in, flow
control (RPM, TPM, concurrency, daily/monthly quotas, per key and per deployment) before
the model runs, reconciliation with the real token count after it, guardrails on the way
out, the request log, and Prometheus metrics.

    ctx = policy.begin(key, deployment, "chat", body, answer_id, x_request_id=request_id)
    messages = ctx.check_input(messages)       # PII masked; 400 content_filter if blocked
    ctx.admit(prompt_tokens, max_tokens, model_ref="chat:3")   # 429 with headers if over
    ... generate (ctx.stream_guard() for streams, ctx.check_output(text) otherwise) ...
    ctx.finish(200, prompt_tokens, completion_tokens, response=body)   # or ctx.fail(...)

Admission comes first, on a cheap estimate (the prompt's characters, plus the completion
budget ``max_tokens`` times ``n``, charged in full as OpenAI counts it): a key over its limit
is refused before its body is guardrailed or tokenized. ``finish`` (and ``fail``, which
charges nothing) reconciles the estimate with the real counts.

Request-log bodies (``log_bodies: true``) are masked *completely*: every string anywhere in
the request and the response (every role, a completion's prompt and text, ``metadata``,
unknown fields) goes through PII masking of every type, whatever the deployment's
guardrails are set to; the masking runs on the request log's writer thread.

:class:`NullPolicy` is the policy where there is no store (nothing is limited, checked or
logged), so the gateway's handlers never test whether a policy exists.

Per request the policy reads nothing from the database (limits and guardrails are built
once per deployment); it runs one limiter transaction to admit and, when the token estimate
was off, one to reconcile; the request-log row is handed to the store's request-log writer
(:class:`~lmops.store.requests.RequestLogWriter`),
which writes rows in batches from a background thread. ``Policy.close()`` (the app's
shutdown) flushes it.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from lmops.monitor.metrics import Metrics
from lmops.security import Guardrails
from lmops.serve.limits import Limits, RateLimited, RateLimiter
from lmops.serve.limits import headers as limit_headers
from lmops.store.types import RequestRecord

if TYPE_CHECKING:
    from lmops.serve.protocol import OpenAIError

__all__ = ["NullPolicy", "Policy", "RequestContext", "mask_body"]


class Policy:
    def __init__(self, store: Any, registry: Any) -> None:
        self.store = store
        self.registry = registry
        self.limiter = RateLimiter(store.db)
        self.metrics = Metrics(registry)
        self.log = store.requests.writer()
        self.guards: dict[str, Guardrails] = {}
        self.limits: dict[str, Limits] = {}
        for name, dep in registry.deployments.items():
            self.limits[name] = Limits(**dep.spec.limits)
            self.guards[name] = Guardrails(dep.spec.guardrail_config())

    def begin(
        self,
        key: Any,
        dep: Any,
        kind: str,
        body: Any,
        request_id: str,
        *,
        x_request_id: str | None = None,
        counted: dict[str, str] | None = None,
    ) -> RequestContext:
        """The context of one request: ``request_id`` is the answer's id, ``x_request_id``
        the response's ``x-request-id`` header (both go on the request log); ``counted``:
        the request was counted against the key's requests per minute already
        (:meth:`count_request`, whose headers these are), so admission charges the key its
        tokens only."""
        ctx = RequestContext(self, key, dep, kind, body, request_id, x_request_id)
        ctx.counted = counted
        return ctx

    def count_request(
        self,
        key: Any,
        route: str,
        *,
        dep: Any = None,
        kind: str | None = None,
        body: Any = None,
        x_request_id: str | None = None,
        state: Any = None,
    ) -> dict[str, str]:
        """Count a request to ``route`` (``/tokenize``, a Responses continuation) against
        the key's requests per minute, never its tokens, before the work it asks for (the
        tokenizer routes are not unmetered CPU; a conversation is not read). Its
        ``x-ratelimit-*-requests`` headers; OpenAI's 429 (with its headers and facts) when
        the key is over its RPM. Deployment limits are not charged: they protect the model,
        which has not run (yet).

        A refusal of a request for ``dep`` (a deployment the key may call: the one it
        names, or the only one the key reaches) is counted and logged as admission's are: a request-log row of endpoint ``kind``
        with status 429 (its ``body``, where the deployment logs bodies; ``x_request_id``),
        ``lmops_requests_total`` and ``lmops_rate_limited_total`` under the deployment
        (the context goes on ``state``, the request's, for the access log). Without one,
        only ``lmops_rate_limited_total``, under ``deployment="<route>"``, as a request
        of no known deployment is not logged."""
        if key.rpm is None:
            return {}
        try:
            lease = self.limiter.acquire([(f"key:{key.name}", Limits(rpm=key.rpm))], route, 0)
        except RateLimited as e:
            refusal = _refusal(e)
            self.metrics.rate_limited(route if dep is None else dep.name, e.limit_name)
            if dep is not None:
                kind = kind or route.strip("/")
                ctx = self.begin(key, dep, kind, body, _refused_id(kind), x_request_id=x_request_id)
                if not dep.spec.split:  # what would have answered (a split had not picked)
                    ctx.model_ref = dep.backend().model_ref
                if state is not None:
                    state.lmops_ctx = ctx
                ctx.fail(429, refusal.message)
            raise refusal from None
        self.limiter.release(lease)
        return limit_headers(lease)

    def close(self) -> None:
        """Write the request-log rows still pending and give the limiter's kept database
        connections back (call at shutdown; idempotent)."""
        self.log.close()
        self.limiter.close()


class RequestContext:
    def __init__(
        self,
        policy: Policy,
        key: Any,
        dep: Any,
        kind: str,
        body: Any,
        request_id: str,
        x_request_id: str | None = None,
    ) -> None:
        self.policy = policy
        self.key = key
        self.dep = dep
        self.kind = kind
        self.body = _without_token_ids(body) if isinstance(body, dict) else None
        self.request_id = request_id
        self.x_request_id = x_request_id
        self.guard = policy.guards[dep.name]
        self.started = time.perf_counter()
        self.lease: Any = None
        self.estimate = 0  # the tokens admission charged (a fallback is charged the same)
        self.counted: dict[str, str] | None = None  # see Policy.begin
        self.fallback_lease: Any = None  # the limits of the fallback in use (fallbacks.py)
        self.tries: list[dict[str, Any]] = []  # when more than one (fallbacks.py)
        self.answered_by: str | None = None  # the fallback deployment that answered
        self.model_ref: str | None = None
        self.replica: str | None = None  # of a list of replicas: the one that answered
        self.prompt_ref: str | None = None  # set when a registered prompt wrapped it
        self.ttft_s: float | None = None
        self.actions: list[dict[str, Any]] = []
        self.warnings: list[str] = []  # e.g. chat_template_fallback (for the access log)
        self._headers: dict[str, str] = {}
        self._done = False
        # the outcome, once finish()/fail() ran (read by the access log)
        self.status: int | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._stream_guards: list[Any] = []

    # -- guardrails ---------------------------------------------------------------------------------
    def check_input(
        self, messages: list[dict[str, Any]], param: str = "messages"
    ) -> list[dict[str, Any]]:
        """``messages`` masked; a 400 ``content_filter`` naming ``param`` when blocked."""
        from lmops.serve.protocol import OpenAIError

        decision = self.guard.check_input(messages)
        self._record(decision.actions, "input")
        if decision.blocked:
            raise OpenAIError(
                400,
                decision.refusal or "This request was blocked by the content policy.",
                param=param,
                code="content_filter",
            )
        return list(decision.messages)

    def check_prompt(self, prompt: str, param: str = "prompt") -> str:
        """A completions prompt or an embeddings input (``param``), checked as a user turn."""
        return str(self.check_input([{"role": "user", "content": prompt}], param)[0]["content"])

    def check_output(self, text: str) -> tuple[str, bool]:
        decision = self.guard.check_output(text)
        self._record(decision.actions, "output")
        return decision.text, decision.finish_reason == "content_filter"

    def stream_guard(self) -> Any:
        g = self.guard.stream_guard()
        self._stream_guards.append(g)
        return g

    def _record(self, actions: list[dict[str, Any]], direction: str) -> None:
        for a in actions:
            self.actions.append({**a, "direction": direction})
            self.policy.metrics.guardrail(direction, str(a.get("type")), self.dep.name)

    # -- flow control -------------------------------------------------------------------------------
    def admit(self, prompt_tokens: int, max_completion: int, *, model_ref: str | None) -> None:
        self.model_ref = model_ref
        mine = Limits.from_key(self.key)
        if self.counted is not None:  # its request is counted already: its tokens only
            mine = Limits(tpm=self.key.tpm)
        scopes = [
            (f"key:{self.key.name}", mine),
            (f"dep:{self.dep.name}", self.policy.limits[self.dep.name]),
        ]
        self.estimate = max(0, prompt_tokens) + max(0, max_completion)
        try:
            self.lease = self.policy.limiter.acquire(scopes, self.request_id, self.estimate)
        except RateLimited as e:
            self.policy.metrics.rate_limited(self.dep.name, e.limit_name)
            self._headers = _with_counted(self.counted, dict(e.headers))
            raise _refusal(e, self._headers) from None
        self._headers = _with_counted(self.counted, limit_headers(self.lease))

    def admit_fallback(self, dep: Any) -> str | None:
        """Acquire fallback ``dep``'s own deployment limits (its capacity protection, not
        the key's: those were decided once) for this request's estimate, giving back those
        of a fallback tried before. None when admitted, else why not (``limit:rpm``...)."""
        self._drop_fallback_lease(0)
        limits = self.policy.limits[dep.name]
        if limits.unlimited:
            return None
        try:
            self.fallback_lease = self.policy.limiter.acquire(
                [(f"dep:{dep.name}", limits)], self.request_id, self.estimate
            )
        except RateLimited as e:
            self.policy.metrics.rate_limited(dep.name, e.limit_name)
            return f"limit:{e.limit_name}"
        return None

    def _end_lease(self, lease: Any, tokens: int) -> None:
        """Charge ``lease`` what was used (``tokens``) and free its concurrency slots."""
        if lease is not None:
            try:
                self.policy.limiter.reconcile(lease, tokens)
            finally:
                self.policy.limiter.release(lease)

    def _drop_fallback_lease(self, tokens: int) -> None:
        lease, self.fallback_lease = self.fallback_lease, None
        self._end_lease(lease, tokens)

    def _give_back(self, tokens: int) -> None:
        """End this request's leases, its own and a fallback's, at ``tokens`` used."""
        try:
            self._end_lease(self.lease, tokens)
        finally:
            self._drop_fallback_lease(tokens)

    def retrying(self, deployment: str, reason: str) -> None:
        self.policy.metrics.retry(deployment, reason)

    def falling_back(self, deployment: str, fallback: str, reason: str) -> None:
        self.policy.metrics.fallback(deployment, fallback, reason)

    def route(
        self,
        tries: list[dict[str, Any]],
        answered_by: str | None,
        model_ref: str | None,
        replica: str | None = None,
    ) -> None:
        """What the tries came to (lmops.serve.fallbacks): every try, the fallback that
        answered (None: the named deployment, or none), the version that answered and,
        of a list of replicas, the one whose reply (or failure) the request got."""
        self.tries = tries if len(tries) > 1 else []
        self.answered_by = answered_by
        self.replica = replica
        if model_ref is not None:
            self.model_ref = model_ref

    def headers(self) -> dict[str, str]:
        return {**self._headers, **route_headers(self.tries, self.answered_by)}

    def first_token(self, seconds: float) -> None:
        self.ttft_s = seconds

    # -- the end of a request -----------------------------------------------------------------------
    def finish(
        self,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        response: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """The request is over (``status``; a stream's 200 was sent before it could fail,
        so ``error`` says why one that began did not end well: a 499, 500 or 502)."""
        if self._done:
            return
        self._done = True
        self.status, self.prompt_tokens, self.completion_tokens = (
            status,
            prompt_tokens,
            completion_tokens,
        )
        for g in self._stream_guards:
            self._record(list(getattr(g, "actions", [])), "output")
        latency = time.perf_counter() - self.started
        self._give_back(prompt_tokens + completion_tokens)
        self.policy.metrics.request(
            self.dep.name, status, prompt_tokens, completion_tokens, latency, self.ttft_s
        )
        error = error[:2000] if error else None
        self._log(status, prompt_tokens, completion_tokens, latency, error, response)

    def fail(self, status: int, error: str) -> None:
        if self._done:
            return
        self._done = True
        self.status = status
        self._give_back(0)  # a request that failed used no tokens: its estimate comes back
        latency = time.perf_counter() - self.started
        self.policy.metrics.request(self.dep.name, status, 0, 0, latency, None)
        self._log(status, 0, 0, latency, error[:2000], None)

    def _log(
        self,
        status: int,
        prompt: int,
        completion: int,
        latency: float,
        error: str | None,
        response: dict[str, Any] | None,
    ) -> None:
        record = RequestRecord(
            request_id=self.request_id,
            x_request_id=self.x_request_id,
            key_name=self.key.name,
            deployment=self.dep.name,
            model_ref=self.model_ref,
            replica=self.replica,
            prompt_ref=self.prompt_ref,
            endpoint=self.kind,
            status=status,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=latency * 1000,
            ttft_ms=self.ttft_s * 1000 if self.ttft_s is not None else None,
            error=error,
            # a copy: a check still running on a worker thread when the client went away
            # may record an action after this (counted in the metrics, not in this record)
            guardrails=self._record_json(),
        )
        if self.dep.spec.log_bodies and self.body is not None:
            # the client's body, masked on the writer thread (mask_body) whatever the
            # guardrails were set to
            record.request_body, record.response_body = self.body, response
            self.policy.log.submit(record, mask=mask_body)
        else:
            self.policy.log.submit(record)

    def _record_json(self) -> dict[str, Any] | None:
        """The row's ``guardrails`` column: the actions, the tries when there were several
        (kept there rather than in a column of their own: no migration), and the
        deployment's ``pii_placeholder`` when it masks with one of its own: text it masked
        holds that, not PII the log's mask would find (``lmops.monitor.masks``)."""
        from lmops.text.pii import DEFAULT_PLACEHOLDER

        out: dict[str, Any] = {}
        if self.actions:
            out["actions"] = list(self.actions)
        if self.tries:
            out["tries"] = self.tries
        cfg = self.guard.config
        masks = "mask" in (cfg.pii_input, cfg.pii_output)
        if masks and cfg.pii_placeholder != DEFAULT_PLACEHOLDER:
            out["pii_placeholder"] = cfg.pii_placeholder
        return out or None


def _refusal(e: RateLimited, headers: dict[str, str] | None = None) -> OpenAIError:
    """Flow control's refusal ``e`` as OpenAI's 429 (an ``OpenAIError``), with its
    ``x-ratelimit-*`` and ``Retry-After`` headers (or ``headers``) and its facts as data
    (``error.lmops``: :meth:`~lmops.serve.limits.RateLimited.facts`)."""
    from lmops.serve.protocol import OpenAIError

    return OpenAIError(
        429,
        str(e),
        type_="rate_limit_error",
        code="rate_limit_exceeded",
        headers=dict(e.headers if headers is None else headers),
        lmops=e.facts(),
    )


def _refused_id(kind: str) -> str:
    """The request-log id of a request refused before it was made (its answer's id, which
    it never got): the id an answer of ``kind`` would have had."""
    from lmops.serve.protocol import completion_id

    if kind in ("chat", "completion"):
        return completion_id(kind)
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def _with_counted(counted: dict[str, str] | None, headers: dict[str, str]) -> dict[str, str]:
    """Admission's ``headers`` with the ``x-ratelimit-*-requests`` of the key's request
    counted before it (``counted``), where those are the tighter (admission counted the
    deployment's requests only, if any)."""
    if not counted or "x-ratelimit-remaining-requests" not in counted:
        return headers
    theirs = headers.get("x-ratelimit-remaining-requests")
    if theirs is not None and int(theirs) <= int(counted["x-ratelimit-remaining-requests"]):
        return headers
    return {**headers, **{k: v for k, v in counted.items() if k.endswith("-requests")}}


def route_headers(tries: list[dict[str, Any]], answered_by: str | None) -> dict[str, str]:
    """``x-lmops-tries`` (when more than one) and ``x-lmops-fallback`` (the deployment
    that answered, when it is not the one the client named)."""
    out = {"x-lmops-tries": str(len(tries))} if len(tries) > 1 else {}
    if answered_by is not None:
        out["x-lmops-fallback"] = answered_by
    return out


def _without_token_ids(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with a completions prompt of token ids written as how many there are: ids
    decode to text that no mask reads (the handler puts the decoded, masked text in once
    it has it)."""
    prompt = body.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        return body
    if all(isinstance(t, int) for t in prompt):
        return {**body, "prompt": f"<{len(prompt)} token ids>"}
    if any(isinstance(p, list) for p in prompt):
        shown = [f"<{len(p)} token ids>" if isinstance(p, list) else p for p in prompt]
        return {**body, "prompt": shown}
    return body


def mask_body(body: Any) -> Any:
    """A copy of a JSON value with PII of every type masked in every string (dict keys
    included): what the request log keeps of a body."""
    from lmops.security.long import mask_pii_long

    if isinstance(body, str):  # a long one window by window, offering the GIL between them
        return mask_pii_long(body) if body else body
    if isinstance(body, dict):
        return {mask_body(k): mask_body(v) for k, v in body.items()}
    if isinstance(body, list):
        return [mask_body(v) for v in body]
    return body


class NullContext:
    """The request context of :class:`NullPolicy`: everything passes, nothing is kept."""

    model_ref: str | None = None
    replica: str | None = None
    prompt_ref: str | None = None
    ttft_s: float | None = None
    status: int | None = None
    prompt_tokens = 0
    completion_tokens = 0

    def __init__(self, dep: Any, request_id: str, x_request_id: str | None = None) -> None:
        self.dep = dep
        self.request_id = request_id
        self.x_request_id = x_request_id
        self.actions: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.tries: list[dict[str, Any]] = []
        self.answered_by: str | None = None

    def check_input(
        self, messages: list[dict[str, Any]], param: str = "messages"
    ) -> list[dict[str, Any]]:
        return messages

    def check_prompt(self, prompt: str, param: str = "prompt") -> str:
        return prompt

    def check_output(self, text: str) -> tuple[str, bool]:
        return text, False

    def stream_guard(self) -> Any:
        return _PassThrough()

    def admit(self, prompt_tokens: int, max_completion: int, *, model_ref: str | None) -> None:
        self.model_ref = model_ref

    def admit_fallback(self, dep: Any) -> str | None:
        return None

    def retrying(self, deployment: str, reason: str) -> None:
        return None

    def falling_back(self, deployment: str, fallback: str, reason: str) -> None:
        return None

    def route(
        self,
        tries: list[dict[str, Any]],
        answered_by: str | None,
        model_ref: str | None,
        replica: str | None = None,
    ) -> None:
        self.tries = tries if len(tries) > 1 else []
        self.answered_by = answered_by
        self.replica = replica
        if model_ref is not None:
            self.model_ref = model_ref

    def headers(self) -> dict[str, str]:
        return route_headers(self.tries, self.answered_by)

    def first_token(self, seconds: float) -> None:
        self.ttft_s = seconds

    def finish(
        self,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        response: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        self.status, self.prompt_tokens, self.completion_tokens = (
            status,
            prompt_tokens,
            completion_tokens,
        )

    def fail(self, status: int, error: str) -> None:
        self.status = status


class _PassThrough:
    """A stream guard that lets everything through."""

    stopped = False
    actions: tuple[dict[str, Any], ...] = ()

    def feed(self, delta: str) -> tuple[str, bool]:
        return delta, False

    def finish(self) -> str:
        return ""


class NullPolicy:
    """The policy where there is none: no limits, guardrails, log or metrics."""

    metrics = None

    def begin(
        self,
        key: Any,
        dep: Any,
        kind: str,
        body: Any,
        request_id: str,
        *,
        x_request_id: str | None = None,
        counted: dict[str, str] | None = None,
    ) -> NullContext:
        return NullContext(dep, request_id, x_request_id)

    def count_request(self, key: Any, route: str, **_: Any) -> dict[str, str]:
        return {}

    def close(self) -> None:
        return None
