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

A canary passes when every expectation holds, and fails when one does not or the request
failed on the model's side (a 5xx, a 400). A request that shows the setup is wrong (401 or
403: the key; 404: no such model, most often a misspelt deployment; a refused connection or
a connect timeout: the URL) is an ``error``, not a failure: the model was never asked, so it
must not fire the canary alert nor start a retraining round. The run stops at the first such
error (the others would fail alike) and marks the canaries not sent; :func:`setup_error` says
what went wrong and what to do, in one line. A request the gateway took but did not answer
within the timeout is the model's failure (``no answer in 60 s``: a hung deployment is what
canaries are for); after two such in a row the rest fail unsent, so a hung model costs two
timeouts, not one per canary.

A failure has a ``cause``: ``wrong_answer`` (an answer came and broke an expectation: a
quality signal, which may start a retraining round) or ``unanswered`` (none came: no answer
within the timeout, the connection lost after the request was sent, an error status such
as a 5xx: the deployment's availability, which retraining cannot fix). A check fires the
alert ``canary`` on wrong answers and ``availability`` on unanswered canaries.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmops.core.errors import UserError, name_hint
from lmops.core.yamlcfg import load_config
from lmops.monitor.features import REFUSAL
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


Cause = Literal["wrong_answer", "unanswered"]


class CanaryResult(BaseModel):
    id: str
    passed: bool
    # pass / fail (the model's answer, or its endpoint's 5xx) / error (the setup: key,
    # model name, URL; the model was never asked)
    outcome: Literal["pass", "fail", "error"] = "fail"
    # why a canary failed: its answer broke an expectation, or no answer came (module doc)
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
        description=f"{len(cs.prompts)} canary prompts",
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
    if e.max_latency_ms is not None and latency_ms > e.max_latency_ms:
        out.append(f"took {latency_ms:.0f} ms > {e.max_latency_ms:g} ms")
    return out


def _setup_fix(e: Exception, base_url: str, model: str, client: Any) -> str | None:
    """One line naming the cause and what to do, when ``e`` shows the setup is wrong (the
    key, the model name, the URL) rather than the model; else None."""
    import openai

    status = getattr(e, "status_code", None)
    body = getattr(e, "body", None)
    said = body.get("message") if isinstance(body, dict) else None
    said = str(said or getattr(e, "message", None) or e)[:200]
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
    if isinstance(e, openai.APITimeoutError):
        if not _no_connection(e):
            return None  # connected, then no answer in time: the model's, see run_canaries
        return f"{base_url} did not answer in time; is the gateway up and the URL right?"
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e
        if _lost(e):
            return None  # connected and sent, then cut off: the deployment's, see run_canaries
        return (
            f"cannot connect to {base_url} ({type(cause).__name__}: {cause}); is `lmops serve` "
            "running there? check base_url"
        )
    return None


# After this many canaries in a row get no answer in time, the rest are failed unsent: a
# hung model would otherwise hold the run for the timeout once per canary.
_HUNG = 2


def _caused_by(e: Exception, *names: str) -> bool:
    """Whether the transport error behind ``e`` is one of the exception classes ``names``,
    by name: the openai client raises from httpx or, in its newer releases, from httpx2,
    whose classes have the same names."""
    cause = e.__cause__
    return cause is not None and any(t.__name__ in names for t in type(cause).__mro__)


def _no_connection(e: Exception) -> bool:
    """Whether a timeout came before the connection was made (the URL, a firewall), as
    opposed to a gateway that took the request and did not answer (the model)."""
    return e.__cause__ is None or _caused_by(e, "ConnectTimeout", "PoolTimeout")


def _lost(e: Exception) -> bool:
    """Whether a connection error came after the connection was made (the server closed
    or reset it before answering: a crashed or restarting deployment), as opposed to no
    connection at all (a refused one: the URL)."""
    return _caused_by(e, "ReadError", "WriteError", "RemoteProtocolError")


def run_canaries(
    cs: CanarySet,
    *,
    base_url: str,
    model: str,
    api_key: str | None = None,
    timeout_s: float = 60.0,
) -> list[CanaryResult]:
    """Send every canary to ``base_url`` (``.../v1``) as a chat completion for ``model``;
    a setup error (see the module docstring) ends the run, the rest marked not sent."""
    import openai

    client = openai.OpenAI(
        base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=0
    )
    results: list[CanaryResult] = []
    hung = 0  # canaries in a row that got no answer in time
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
                fix = _setup_fix(e, base_url, model, client)
                if fix is not None:
                    results.append(CanaryResult(id=c.id, passed=False, outcome="error", error=fix))
                    results += [
                        CanaryResult(
                            id=rest.id, passed=False, outcome="error", error=f"not sent: {fix}"
                        )
                        for rest in cs.prompts[len(results) :]
                    ]
                    return results
                if isinstance(e, openai.APITimeoutError):  # the gateway took it: a failure
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
                if isinstance(e, openai.APIConnectionError):  # cut off after sending
                    lost = e.__cause__ or e
                    error = f"no answer: the connection was lost ({type(lost).__name__}: {lost})"
                else:  # an error status: no answer to judge
                    error = f"no answer: {type(e).__name__}: {e}"
                results.append(
                    CanaryResult(id=c.id, passed=False, cause="unanswered", error=error[:500])
                )
                continue
            answer, filtered = str(e.message), True  # a gateway's guardrails refused it
        hung = 0
        ms = (time.perf_counter() - started) * 1000
        fails = check_answer(c, answer, ms, filtered=filtered)
        results.append(
            CanaryResult(
                id=c.id,
                passed=not fails,
                outcome="fail" if fails else "pass",
                cause="wrong_answer" if fails else None,
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
    """The ``canaries`` part of a drift report: counts by outcome, the failing ids, split
    by cause (``wrong``: wrong answers; ``unanswered``: no answer, and ``unanswered_why``,
    the first one's reason), and every result."""
    failing = [r for r in results if r.outcome == "fail"]
    unanswered = [r for r in failing if r.cause == "unanswered"]
    return {
        "set": set_ref,
        "passed": sum(r.outcome == "pass" for r in results),
        "failed": len(failing),
        "errors": sum(r.outcome == "error" for r in results),
        "error": setup_error(results),
        "failing": [r.id for r in failing],
        "wrong": [r.id for r in failing if r.cause != "unanswered"],
        "unanswered": [r.id for r in unanswered],
        "unanswered_why": (
            (unanswered[0].error or "; ".join(unanswered[0].failures)) if unanswered else None
        ),
        "results": [r.model_dump(mode="json") for r in results],
    }
