"""Canary prompts: fixed prompts with expected properties, run against a deployment through
its OpenAI-compatible endpoint (the official ``openai`` client, as users call it).

A canary set is a YAML file registered as a ``canary_set`` asset::

    prompts:
      - id: capital
        prompt: What is the capital of France?
        max_tokens: 32                # default 64; temperature is always 0
        expect:
          contains: [Paris]           # every string must appear (case-insensitive)
          not_contains: [London]
          regex: "\\bParis\\b"        # re.search
          json: false                 # true: the answer must parse as JSON
          refusal: false              # true: must refuse; false: must not (bilingual patterns)
          max_latency_ms: 5000

A canary passes when every expectation holds, and fails when one does not or no answer
came. A request that shows the setup is wrong is an ``error``, not a failure: the model was
never asked, so it must not fire an alert nor start a retraining round. The setup errors:

* 401 or 403: the key; 404: no such model, most often a misspelt deployment;
* 400, 413, 422 (other than the content filter's 400, which is a refusal, and the
  ``invalid_prompt`` 400 of a deployment whose bound prompt no longer resolves, which every
  request gets), and any other 4xx but 408 and 429: the gateway refused the canary's request
  (its prompt, its ``max_tokens``): the canary set is to fix;
* a 429 from a limit of the canaries' API key (the error's facts, ``error.lmops``, say
  ``scope: key``; when the caller gives the key's name, another key's is the deployment's)
  and a 429 whose facts say ``too_large`` (the canary alone is over a limit, of the key or
  the deployment, or of an upstream gateway's, and can never pass): the key's limits or
  the canary are to fix. An upstream's 429 passed on (``scope: upstream``) is the
  deployment's. A gateway that sends no facts (older than them) is read by its message,
  which names the scope (``key:<name>``, "request too large");
* a refused connection, a connect timeout, or a server that does not speak HTTP (the
  request's connection is lost, and ``GET /models`` gets bytes back that are not an HTTP
  answer, an SSH banner): the URL.

The run stops at the first such error (the others would fail alike) and marks the canaries
not sent; :func:`setup_error` says what went wrong and what to do, in one line.

A failure has a ``cause``:

* ``wrong_answer``: an answer came and broke an expectation other than ``max_latency_ms``
  (a quality signal, which may start a retraining round);
* ``slow``: an answer came, right but later than ``max_latency_ms`` (the deployment's
  serving: retraining does not make a model faster);
* ``unanswered``: none came, and exactly these count: no answer within the timeout after
  the gateway took the request (``no answer in 60 s``; after two such in a row the rest fail
  unsent, so a hung model costs two timeouts, not one per canary); the connection closed or
  reset after the request was sent, by a server that does answer HTTP or sends nothing back
  (a port forward or TCP load balancer whose gateway is down); a 5xx or a 408; a 429
  from the deployment's own limits (or its upstream's), which callers meet as well.

A check fires the alert ``canary`` on wrong answers and ``availability`` on unanswered and
slow canaries; only wrong answers may start retraining.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmops.core import refusals
from lmops.core.errors import UserError, name_hint
from lmops.core.yamlcfg import load_config
from lmops.monitor.features import REFUSAL
from lmops.monitor.wording import counted
from lmops.store import register_kind

if TYPE_CHECKING:
    from lmops.store import Store, Version

__all__ = [
    "CANARY_SET",
    "Canary",
    "CanaryResult",
    "CanarySet",
    "CanarySetupError",
    "check_answer",
    "key_name",
    "load_canaries",
    "register_canaries",
    "run_canaries",
    "setup_error",
]

CANARY_SET = "canary_set"
register_kind(CANARY_SET)


class CanarySetupError(UserError):
    """The canaries could not reach the model (key, model name, URL): a setup to fix, not
    a regression; the message names the cause and what to do."""


class Expect(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contains: list[str] = Field(default_factory=list)
    not_contains: list[str] = Field(default_factory=list)
    regex: str | None = None
    json_: bool | None = Field(None, alias="json")
    refusal: bool | None = None
    max_latency_ms: float | None = Field(None, gt=0)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return v


class Canary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: str = Field(min_length=1)
    system: str | None = None
    max_tokens: int = Field(64, ge=1)
    expect: Expect = Field(default_factory=Expect)


class CanarySet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: list[Canary] = Field(min_length=1)


Cause = Literal["wrong_answer", "slow", "unanswered"]


class CanaryResult(BaseModel):
    id: str
    passed: bool
    # pass / fail (the model's answer, or no answer: see cause) / error (the setup: key,
    # model name, URL, the canary's request; the model was never asked)
    outcome: Literal["pass", "fail", "error"] = "fail"
    # why a canary failed: its answer broke an expectation, came too late, or did not
    # come (module doc)
    cause: Cause | None = None
    failures: list[str] = Field(default_factory=list)
    latency_ms: float | None = None
    answer: str | None = None
    error: str | None = None


def load_canaries(path: Path) -> CanarySet:
    """Read and validate a canary set; errors name the file, line and field."""
    cs = load_config(path, CanarySet)  # errors name file:line: field
    ids = [c.id for c in cs.prompts]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UserError(f"{path}: prompts: duplicate ids {dup}; give each canary its own id")
    return cs


def register_canaries(store: Store, path: Path, name: str) -> Version:
    """Validate ``path`` and register it as the next version of canary set ``name``."""
    cs = load_canaries(path)
    return store.assets.register(
        CANARY_SET,
        name,
        path,
        metadata={"prompts": len(cs.prompts), "ids": [c.id for c in cs.prompts]},
        description=f"{counted(len(cs.prompts), 'canary prompt')}",
    )


def check_answer(c: Canary, answer: str, latency_ms: float, *, filtered: bool = False) -> list[str]:
    """What the answer breaks of the canary's expectations (empty: it passes). ``filtered``:
    the gateway's content filter refused it (a 400 or ``finish_reason: content_filter``),
    which is a refusal whatever its words."""
    e, low, out = c.expect, answer.lower(), []
    out += [f"missing {s!r}" for s in e.contains if s.lower() not in low]
    out += [f"contains {s!r}" for s in e.not_contains if s.lower() in low]
    if e.regex is not None and not re.search(e.regex, answer):
        out.append(f"does not match /{e.regex}/")
    if e.json_ is not None:
        try:
            json.loads(answer)
            ok = True
        except ValueError:
            ok = False
        if ok != e.json_:
            out.append("not valid JSON" if e.json_ else "is JSON")
    if e.refusal is not None:
        refused = filtered or bool(REFUSAL.search(answer))
        if refused != e.refusal:
            out.append("did not refuse" if e.refusal else "refused")
    late = _too_slow(c, latency_ms)
    return [*out, late] if late else out


def _too_slow(c: Canary, latency_ms: float) -> str | None:
    """The failure of an answer later than the canary's ``max_latency_ms``, or None."""
    limit = c.expect.max_latency_ms
    return (
        f"took {latency_ms:.0f} ms > {limit:g} ms"
        if limit is not None and latency_ms > limit
        else None
    )


# What refused a 429, as the gateway says it in the error's facts (``error.lmops``, see
# lmops.serve.limits.RateLimited.facts): the API key's limits are the canaries' setup; the
# deployment's, its availability; a request over a limit on its own (``too_large``) can
# never pass. A gateway in front of another passes the upstream's 429 on as ``scope:
# upstream``: met by every caller, whatever key that gateway's own limits named.
# A gateway older than those facts named the scope in its message only ("rate limit
# reached for key:ci: ...", "request too large for dep:chat: ..."), and passed an
# upstream's on word for word: canaries may run against one (a base_url is any gateway),
# so a 429 without facts is read by its words, with the gateway's own reader of them
# (lmops.core.refusals, where the gateway's wording lives).
# 4xx statuses that are the request's (the canary's) problem, not the deployment's
_MALFORMED = frozenset({400, 413, 422})
# ... but for these codes, which every request to the deployment gets alike: its bound
# prompt no longer resolves (lmops.serve.handlers), the deployment's to fix
_DEPLOYMENT_CODES = frozenset({"invalid_prompt"})


def _limit(body: Any, message: str) -> tuple[str | None, str | None, str | None, bool]:
    """(scope, name, limit, too_large) of a 429 whose error object is ``body``: its facts
    (``error.lmops``), or for a gateway that sends none, what its ``message`` names
    (:func:`lmops.core.refusals.from_message`); Nones when neither says (another
    server's 429)."""
    facts = refusals.clean(body.get("lmops") if isinstance(body, dict) else None)
    facts = facts or refusals.from_message(message)
    if facts is None:
        return None, None, None, False
    return facts["scope"], facts["name"], facts["limit"], facts["too_large"]


def key_name(store: Store, secret: str | None) -> str | None:
    """The name of the API key ``secret`` in ``store`` (what the gateway's 429 calls
    ``key:<name>``), or None when the store does not know it (a gateway with a store of
    its own)."""
    from lmops.core.errors import LmopsError

    if not secret:
        return None
    try:
        return store.keys.authenticate(secret).name
    except LmopsError:
        return None


def _setup_fix(
    e: Exception, c: Canary, base_url: str, model: str, client: Any, key: str | None = None
) -> str | None:
    """One line naming the cause and what to do, when ``e`` (canary ``c``'s error) shows
    the setup is wrong (the key, the model name, the URL, the canary's request) rather
    than the deployment; else None (module docstring). ``key``: the canaries' key's name,
    when known."""
    import openai

    status = getattr(e, "status_code", None)
    if getattr(e, "code", None) in _DEPLOYMENT_CODES:
        return None
    body = getattr(e, "body", None)
    full = body.get("message") if isinstance(body, dict) else None
    full = str(full or getattr(e, "message", None) or e)
    said = full[:200]
    if isinstance(e, openai.AuthenticationError):
        return (
            f"the gateway at {base_url} refused the API key ({status}: {said}); set api_key, "
            "or $LMOPS_API_KEY, to a valid key (lmops keys create)"
        )
    if isinstance(e, openai.PermissionDeniedError):
        return (
            f"the API key may not call {model!r} at {base_url} ({status}: {said}); use a key "
            "allowed to call that deployment"
        )
    if isinstance(e, openai.NotFoundError):
        hint = "check the deployment name (the model canaries ask for)"
        try:
            names = sorted(m.id for m in client.models.list())
        except openai.OpenAIError:
            names = []
        if names:
            hint = name_hint(model, names, "the gateway serves")
        return f"the gateway at {base_url} has no model {model!r} ({status}: {said}); {hint}"
    if isinstance(e, openai.RateLimitError):
        scope, name, limit, too_large = _limit(body, full)
        if too_large:
            whose = f"the upstream of {name}" if scope == "upstream" else f"{scope}:{name}"
            return (
                f"canary {c.id!r} can never pass a limit of {whose} at {base_url} (429: "
                f"{said}); lower its max_tokens or shorten its prompt, or raise that limit"
            )
        if scope == "key" and key in (None, name):  # the canaries' key, or not known
            if limit == "max_concurrent":  # canaries go one at a time: others use it too
                return (
                    f"the API key's max_concurrent was taken by other requests at {base_url} "
                    f"(429: {said}); give the canaries a key of their own, or raise its "
                    "max_concurrent"
                )
            return (
                f"the API key's own limits stopped the canaries at {base_url} (429: {said}); "
                "give the canaries a key whose rpm and tpm allow a whole run (or none)"
            )
        return None  # the deployment's own limit, or its upstream's: callers are refused too
    if isinstance(e, openai.APIStatusError) and status in _MALFORMED:
        return (
            f"the gateway at {base_url} refused canary {c.id!r} ({status}: {said}); fix the "
            "canary in the set (its prompt, its max_tokens) so the deployment takes it"
        )
    if isinstance(e, openai.APIStatusError) and 400 <= e.status_code < 500:
        if e.status_code == 408:
            return None  # the server gave up waiting: its availability
        return (
            f"the gateway at {base_url} refused canary {c.id!r} ({status}: {said}); check "
            "base_url (the gateway's /v1 URL) and the canary"
        )
    if isinstance(e, openai.APITimeoutError):
        if not _no_connection(e):
            return None  # connected, then no answer in time: the model's, see run_canaries
        return f"{base_url} did not answer in time; is the gateway up and the URL right?"
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e
        if _lost(e):
            return None  # connected and sent, then cut off: see _not_http, run_canaries
        return (
            f"cannot connect to {base_url} ({type(cause).__name__}: {cause}); is `lmops serve` "
            "running there? check base_url"
        )
    return None


def _not_http(client: Any, base_url: str, timeout_s: float) -> str | None:
    """After a request's connection was lost: the setup error when what answers at
    ``base_url`` does not speak HTTP (an SSH port, a database: ``GET /models`` too fails at
    the protocol level, and the bytes that came back are not an HTTP answer), else None.

    A connection closed with no byte sent back is not that: it is what a port forward
    (``ssh -L``, ``kubectl port-forward``) or a TCP load balancer does while the gateway
    behind it is down, as well as an HTTP server dropping the request: the deployment's."""
    import openai

    wait = min(timeout_s, 10.0)
    try:
        client.with_options(timeout=wait).models.list()
    except openai.APIConnectionError as e:
        # the HTTP library says "Server disconnected without sending a response." whether
        # nothing came or a line that is not HTTP did: the bytes themselves tell
        if _caused_by(e, "RemoteProtocolError"):
            said = _first_bytes(base_url, wait)
            if said and not said.startswith(b"HTTP/"):
                return (
                    f"{base_url} does not answer HTTP (GET /models got {said[:40]!r}); is "
                    "`lmops serve` running there? check base_url (host and port)"
                )
    except openai.OpenAIError:
        pass  # an HTTP status: a server that speaks HTTP
    return None


def _first_bytes(base_url: str, timeout_s: float) -> bytes:
    """The first bytes (64 at most) that the server at ``base_url``'s host and port sends
    back to a plain ``GET`` of its ``/models``; empty when it closes or resets the
    connection without sending any, or cannot be reached. Over https the certificate is
    not checked: nothing secret is sent, and only the answer's first bytes are read."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    tls = url.scheme == "https"
    got = b""
    try:
        with socket.create_connection(
            (url.hostname or "localhost", url.port or (443 if tls else 80)), timeout=timeout_s
        ) as raw:
            sock = raw
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                sock = ctx.wrap_socket(raw, server_hostname=url.hostname)
            path = url.path.rstrip("/") + "/models"
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode()
            )
            while len(got) < 64:
                chunk = sock.recv(64 - len(got))
                if not chunk:
                    break
                got += chunk
    except OSError:  # refused, reset, timed out, TLS: what came so far is all there is
        pass
    return got


# After this many canaries in a row get no answer in time, the rest are failed unsent: a
# hung model would otherwise hold the run for the timeout once per canary.
_HUNG = 2


@functools.lru_cache(maxsize=16)
def _transport_errors(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    """The exception classes ``names`` of httpx and of httpx2, whichever are installed:
    the openai client raises from httpx or, in its newer releases, from httpx2."""
    found: list[type[BaseException]] = []
    for lib in ("httpx", "httpx2"):
        try:
            mod = importlib.import_module(lib)
        except ImportError:
            continue
        found += [t for n in names if isinstance(t := getattr(mod, n, None), type)]
    return tuple(found)


def _caused_by(e: Exception, *names: str) -> bool:
    """Whether the transport error behind ``e`` is one of the classes ``names``."""
    return isinstance(e.__cause__, _transport_errors(names))


def _no_connection(e: Exception) -> bool:
    """Whether a timeout came before the connection was made (the URL, a firewall), as
    opposed to a gateway that took the request and did not answer (the model)."""
    return e.__cause__ is None or _caused_by(e, "ConnectTimeout", "PoolTimeout")


def _lost(e: Exception) -> bool:
    """Whether a connection error came after the connection was made (the server closed
    or reset it before answering, or answered what is not HTTP), as opposed to no
    connection at all (a refused one: the URL)."""
    return _caused_by(e, "ReadError", "WriteError", "RemoteProtocolError")


def _no_answer(e: Exception) -> str:
    """Why an error that is not the setup's left the canary unanswered."""
    import openai

    if isinstance(e, openai.APIConnectionError):  # cut off after sending
        lost = e.__cause__ or e
        return f"no answer: the connection was lost ({type(lost).__name__}: {lost})"[:500]
    return f"no answer: {type(e).__name__}: {e}"[:500]  # a 5xx, a 408, the deployment's 429


def run_canaries(
    cs: CanarySet,
    *,
    base_url: str,
    model: str,
    api_key: str | None = None,
    timeout_s: float = 60.0,
    key: str | None = None,
) -> list[CanaryResult]:
    """Send every canary to ``base_url`` (``.../v1``) as a chat completion for ``model``;
    a setup error (see the module docstring) ends the run, the rest marked not sent.
    ``key``: the name of ``api_key`` (:func:`key_name`); a 429 naming another key (an
    upstream gateway's limit passed on) is then the deployment's, where without it any
    key's limit counts as the canaries'."""
    import openai

    client = openai.OpenAI(
        base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=0
    )
    results: list[CanaryResult] = []
    hung = 0  # canaries in a row that got no answer in time
    probed = False  # whether a lost connection made us ask if base_url speaks HTTP
    for c in cs.prompts:
        if hung >= _HUNG:
            why = (
                f"not sent: the model answered none of the last {hung} canaries in {timeout_s:g} s"
            )
            results.append(CanaryResult(id=c.id, passed=False, cause="unanswered", failures=[why]))
            continue
        messages: list[Any] = [{"role": "system", "content": c.system}] if c.system else []
        messages.append({"role": "user", "content": c.prompt})
        started = time.perf_counter()
        try:
            resp = client.chat.completions.create(
                model=model, messages=messages, max_tokens=c.max_tokens, temperature=0
            )
            answer = resp.choices[0].message.content or ""
            filtered = resp.choices[0].finish_reason == "content_filter"
        except openai.OpenAIError as e:
            if not (isinstance(e, openai.BadRequestError) and e.code == "content_filter"):
                fix = _setup_fix(e, c, base_url, model, client, key)
                if fix is None and not probed and _lost(e):
                    probed = True
                    fix = _not_http(client, base_url, timeout_s)
                if fix is not None:
                    results.append(CanaryResult(id=c.id, passed=False, outcome="error", error=fix))
                    results += [
                        CanaryResult(
                            id=rest.id, passed=False, outcome="error", error=f"not sent: {fix}"
                        )
                        for rest in cs.prompts[len(results) :]
                    ]
                    return results
                if isinstance(e, openai.APITimeoutError):  # the gateway took it: no answer
                    hung += 1
                    late = f"no answer in {timeout_s:g} s"
                    results.append(
                        CanaryResult(
                            id=c.id,
                            passed=False,
                            cause="unanswered",
                            failures=[late],
                            latency_ms=timeout_s * 1000,
                        )
                    )
                    continue
                hung = 0  # answered, with an error: not hung
                results.append(
                    CanaryResult(id=c.id, passed=False, cause="unanswered", error=_no_answer(e))
                )
                continue
            answer, filtered = str(e.message), True  # a gateway's guardrails refused it
        hung = 0
        ms = (time.perf_counter() - started) * 1000
        fails = check_answer(c, answer, ms, filtered=filtered)
        # right but late is the serving's (latency), not the model's quality
        cause: Cause = "slow" if fails == [_too_slow(c, ms)] else "wrong_answer"
        results.append(
            CanaryResult(
                id=c.id,
                passed=not fails,
                outcome="fail" if fails else "pass",
                cause=cause if fails else None,
                failures=fails,
                latency_ms=ms,
                answer=answer[:2000],
            )
        )
    return results


def setup_error(results: list[CanaryResult]) -> str | None:
    """The one-line setup error of a run (None when every canary reached the model)."""
    return next((r.error for r in results if r.outcome == "error"), None)


def summarize(results: list[CanaryResult], set_ref: str) -> dict[str, Any]:
    """The ``canaries`` part of a drift report: counts by outcome (``failed``: every
    failure, whatever its cause), the failing ids, split by cause (``wrong``, ``slow``,
    ``unanswered``, with ``slow_why`` and ``unanswered_why``: the first one's reason), and
    every result."""
    failing = [r for r in results if r.outcome == "fail"]

    def of(cause: str) -> list[CanaryResult]:
        return [r for r in failing if r.cause == cause]

    def why(rs: list[CanaryResult]) -> str | None:
        return (rs[0].error or "; ".join(rs[0].failures)) if rs else None

    slow, unanswered = of("slow"), of("unanswered")
    return {
        "set": set_ref,
        "passed": sum(r.outcome == "pass" for r in results),
        "failed": len(failing),
        "errors": sum(r.outcome == "error" for r in results),
        "error": setup_error(results),
        "failing": [r.id for r in failing],
        "wrong": [r.id for r in failing if r.cause not in ("slow", "unanswered")],
        "slow": [r.id for r in slow],
        "slow_why": why(slow),
        "unanswered": [r.id for r in unanswered],
        "unanswered_why": why(unanswered),
        "results": [r.model_dump(mode="json") for r in results],
    }
