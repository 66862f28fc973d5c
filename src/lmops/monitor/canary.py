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

A canary passes when every expectation holds; a request error fails it with the error. A run
never raises for a failing endpoint: each canary records what happened.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmops.core.errors import UserError
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
    "check_answer",
    "load_canaries",
    "register_canaries",
    "run_canaries",
]

CANARY_SET = "canary_set"
register_kind(CANARY_SET)


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


class CanaryResult(BaseModel):
    id: str
    passed: bool
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


def run_canaries(
    cs: CanarySet,
    *,
    base_url: str,
    model: str,
    api_key: str | None = None,
    timeout_s: float = 60.0,
) -> list[CanaryResult]:
    """Send every canary to ``base_url`` (``.../v1``) as a chat completion for ``model``."""
    import openai

    client = openai.OpenAI(
        base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=0
    )
    results = []
    for c in cs.prompts:
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
                error = f"{type(e).__name__}: {e}"[:500]
                results.append(CanaryResult(id=c.id, passed=False, error=error))
                continue
            answer, filtered = str(e.message), True  # a gateway's guardrails refused it
        ms = (time.perf_counter() - started) * 1000
        fails = check_answer(c, answer, ms, filtered=filtered)
        results.append(
            CanaryResult(
                id=c.id, passed=not fails, failures=fails, latency_ms=ms, answer=answer[:2000]
            )
        )
    return results


def summarize(results: list[CanaryResult], set_ref: str) -> dict[str, Any]:
    """The ``canaries`` part of a drift report."""
    return {
        "set": set_ref,
        "passed": sum(r.passed for r in results),
        "failed": sum(not r.passed for r in results),
        "failing": [r.id for r in results if not r.passed],
        "results": [r.model_dump(mode="json") for r in results],
    }
