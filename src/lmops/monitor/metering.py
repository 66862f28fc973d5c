"""Metering for the serving gateway, over the store's request log (``store.requests``):
usage reports per key and per deployment, and the flow-back of logged chats into an SFT
dataset.

Bodies are optional: a deployment stores them only when it logs bodies, masked. An exported
conversation is the logged request's ``messages`` followed by the assistant answer taken
from the logged reply, which must be an OpenAI chat completion object
(``choices[0].message``); a streamed reply is logged as the completion it assembles to.

Tool conversations flow back whole, in the shape ``lmops train`` reads
(:mod:`lmops.core.toolrows`): the request's ``tools``, the assistant turns' ``tool_calls``
(their ``arguments`` as the model wrote them), the ``role: tool`` results with their
``tool_call_id``, and an answer that is itself a call. A call whose arguments hold a PII
mask (the log's ``<EMAIL>``, or the deployment's own ``pii_placeholder`` such as
``[REDACTED:{type}]``, which the gateway records beside the row:
:mod:`lmops.monitor.masks`) is skipped (``masked_arguments``): the model would learn to call
tools with placeholders; masked user turns and tool results stay. So is a turn whose text holds a
call that does not read as one (``broken_tool_call``: a ``<tool_call>`` block of broken JSON,
or one never closed, which a tool parser hands back as text). Every row is read as ``lmops
train`` reads it before it is written; one it would refuse (a call of a tool the request
did not list, two user turns in a row) is skipped and counted (``invalid_row``), never
written.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from lmops.core.errors import UserError
from lmops.core.toolrows import has_tool_turns
from lmops.monitor.masks import mask_pattern, placeholder_of
from lmops.store.requests import utc as _utc
from lmops.store.types import RequestRecord

if TYPE_CHECKING:
    from lmops.store import Store, Version

__all__ = [
    "UsageReport",
    "UsageStats",
    "export_conversations",
    "log_request",
    "usage",
]

NO_KEY = "(none)"  # requests served without an API key
# exchanges export_conversations leaves out unless asked to keep them
KEEP_REASONS = frozenset({"failed", "truncated", "content_filtered", "flagged"})
_ROLES = ("system", "user", "assistant", "tool")
# OpenAI's newer name of the system turn; training rows know it as system
_ROLE_NAMES = {"developer": "system"}


def log_request(store: Store, *, at: datetime | None = None, **fields: Any) -> int:
    """Record one served request now (``at`` defaults to now; the other keywords are
    :class:`~lmops.store.types.RequestRecord`'s fields); returns the row id."""
    return store.requests.add(RequestRecord(time=at, **fields))


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
    time); TTFT over the requests that recorded one (streamed replies). ``retried``:
    requests that took more than one try (retries or fallbacks, lmops.serve.fallbacks);
    ``fallback_answers``: those another deployment than the one named answered."""

    requests: int = 0
    errors: int = 0
    retried: int = 0
    fallback_answers: int = 0
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
        self.retried = self.fallback_answers = 0
        self.latency: list[float] = []
        self.ttft: list[float] = []

    def add(
        self,
        status: int,
        pt: int,
        ct: int,
        lat: float | None,
        ttft: float | None,
        tries: list[Any] | None = None,
    ) -> None:
        self.requests += 1
        if tries:
            self.retried += 1
            last = tries[-1] if isinstance(tries[-1], dict) else {}
            first = tries[0] if isinstance(tries[0], dict) else {}
            if last.get("status") == 200 and last.get("deployment") != first.get("deployment"):
                self.fallback_answers += 1
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
            retried=self.retried,
            fallback_answers=self.fallback_answers,
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
    by_key: dict[str, _Acc] = {}
    by_dep: dict[str, _Acc] = {}
    total = _Acc()
    for r in store.requests.scan(key=key, deployment=deployment, since=since, until=until):
        for acc in (
            by_key.setdefault(r.key_name or NO_KEY, _Acc()),
            by_dep.setdefault(r.deployment or NO_KEY, _Acc()),
            total,
        ):
            tries = (r.guardrails or {}).get("tries")
            acc.add(r.status, r.prompt_tokens, r.completion_tokens, r.latency_ms, r.ttft_ms, tries)
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


def _text(content: Any) -> str | None:
    """A message's content as text: a string, or text parts joined (as the gateway reads
    them); None for anything else (images, audio)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def _calls(calls: list[Any]) -> list[dict[str, Any]] | None:
    """Tool calls in training's shape: ``id`` (when there is one), ``type`` and the
    function's ``name`` and ``arguments`` exactly as logged; None if one is not a call."""
    out = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict):
            return None
        call: dict[str, Any] = {"id": c["id"]} if c.get("id") is not None else {}
        call["type"] = "function"
        call["function"] = {"name": fn.get("name"), "arguments": fn.get("arguments")}
        out.append(call)
    return out


def _message(m: Any) -> dict[str, Any] | None:
    """One logged message with the keys training reads (role and content, an assistant
    turn's tool calls, a tool result's call id and name), or None when it has no text
    form (an image) or an unknown role."""
    if not isinstance(m, dict):
        return None
    role = _ROLE_NAMES.get(m.get("role"), m.get("role"))  # type: ignore[arg-type]
    if role not in _ROLES:
        return None
    raw = m.get("tool_calls") if role == "assistant" else None
    calls = _calls(raw) if isinstance(raw, list) and raw else None
    if raw and calls is None:
        return None
    text = _text(m.get("content"))
    if text is None and not (calls and m.get("content") is None):
        return None
    out: dict[str, Any] = {"role": role, "content": (text or None) if calls else text}
    if calls:
        out["tool_calls"] = calls
    if role == "tool":
        out.update({k: m[k] for k in ("tool_call_id", "name") if m.get(k) is not None})
    return out


def _masked_call(messages: list[dict[str, Any]], placeholder: str | None = None) -> bool:
    """Whether an assistant turn calls a tool with arguments that hold a PII mask (the
    log's ``<EMAIL>``, or the deployment's own ``placeholder``, see
    :mod:`lmops.monitor.masks`): trained on, the model would learn to call
    ``send_mail(to="<EMAIL>")``."""
    masks = mask_pattern(placeholder)
    return any(
        masks.search(c["function"].get("arguments") or "")
        for m in messages
        if m["role"] == "assistant"
        for c in m.get("tool_calls") or []
        if isinstance(c["function"].get("arguments"), str)
    )


def _broken_call(text: str) -> bool:
    """Whether ``text`` (an assistant turn's content) holds a call the gateway's reader
    (:func:`lmops.models.toolformat.read_call`) cannot read: a ``<tool_call>`` block whose
    JSON is not a whole call (vLLM's hermes parser hands such a block back as content, with
    finish_reason ``stop``), or an opening tag with no closing one where a call begins after
    it (a ``{``, or nothing: a call cut by a stop word or by max_tokens). A tag only named in
    prose ("I write <tool_call> and the call.") is not a call."""
    from lmops.models.toolformat import CLOSE, OPEN, read_call

    at = text.find(OPEN)
    while at != -1:
        rest = text[at + len(OPEN) :]
        end, after = rest.find(CLOSE), rest.find(OPEN)
        if end != -1 and (after == -1 or end < after):  # a block: it must read as a call
            if read_call(rest[:end].strip()) is None:
                return True
            at = text.find(OPEN, at + len(OPEN) + end + len(CLOSE))
            continue
        began = (rest if after == -1 else rest[:after]).lstrip()
        if not began or began.startswith("{"):  # a call begun and never closed
            return True
        at = -1 if after == -1 else at + len(OPEN) + after
    return False


def _conversation(
    request: Any, response: Any, placeholder: str | None = None
) -> tuple[dict[str, Any] | None, str]:
    """The training row of one logged exchange (``{"messages"}``, with the request's
    ``tools`` when it listed some), or None and why not: ``not_chat``,
    ``unsupported_message`` (an image, an unknown role), ``no_answer``, ``cut_tool_call``
    (an answer cut by max_tokens in the text of a call the gateway could not parse),
    ``broken_tool_call`` (an assistant turn's text holds a call that does not read as one,
    see :func:`_broken_call`), or ``masked_arguments`` (a call's arguments hold a PII
    mask: the log's, or ``placeholder``, the deployment's own)."""
    from lmops.models.toolformat import OPEN

    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list) or not messages:
        return None, "not_chat"
    out: list[dict[str, Any]] = []
    for m in messages:
        msg = _message(m)
        if msg is None:
            return None, "unsupported_message"
        out.append(msg)
    try:
        said = response["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        said = None
    answer = _message({**said, "role": "assistant"}) if isinstance(said, dict) else None
    if answer is None or not (answer.get("tool_calls") or (answer["content"] or "").strip()):
        return None, "no_answer"
    tools = request.get("tools")
    try:
        cut = response["choices"][0].get("finish_reason") == "length"
    except (AttributeError, KeyError, IndexError, TypeError):
        cut = False
    if tools and cut and OPEN in (answer["content"] or ""):
        return None, "cut_tool_call"
    out.append(answer)
    # a call the model wrote but the parser left as text (unreadable, or cut by a stop
    # word): trained on, the model would learn to write it so
    if tools and any(m["role"] == "assistant" and _broken_call(m["content"] or "") for m in out):
        return None, "broken_tool_call"
    if _masked_call(out, placeholder):
        return None, "masked_arguments"
    row: dict[str, Any] = {"messages": out}
    if tools:
        row["tools"] = tools  # as the client listed them (masked, as the whole body)
    return row, ""


def _trainable(row: dict[str, Any]) -> str | None:
    """Why ``lmops train`` (stage sft) would refuse ``row``, or None."""
    from lmops.core.shapes import RowProblem, RowReader

    try:
        RowReader("sft").read(row)
    except RowProblem as e:
        return str(e)
    return None


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
    {"role": "assistant", "content": answer}]}``, plus ``tools`` and the tool turns of a
    tool conversation, see the module docstring) registered as the next version of
    dataset ``output``.

    Not worth learning from, and skipped unless ``keep`` names the reason: ``failed``
    requests, ``truncated`` answers (``finish_reason: length``), ``content_filtered`` ones,
    and exchanges a guardrail ``flagged`` (moderation or injection; masked PII is fine).
    Never kept, whatever ``keep`` says: an answer cut by ``max_tokens`` inside a tool call
    (``cut_tool_call``), text holding a call that does not read as one
    (``broken_tool_call``), a call whose arguments hold a PII mask (``masked_arguments``) and
    a row ``lmops train`` would refuse (``invalid_row``; the first such problem is in the
    metadata's ``first_invalid``).
    The version's lineage points at every model version that answered (role
    ``served_by``); its metadata holds the deployment, the time range, the count (and
    ``tool_rows``, those with tool calls or results) and the rows skipped per reason (those
    above, ``not_chat``, ``unsupported_message``, ``no_answer``, ``duplicate``). Raises
    :class:`UserError` when nothing is exportable."""
    keep = frozenset(keep)
    unknown = keep - KEEP_REASONS
    if unknown:
        raise UserError(
            f"unknown reasons to keep {sorted(unknown)}; use some of {sorted(KEEP_REASONS)}"
        )
    since, until = _utc(since), _utc(until)
    window = f" since {since.isoformat()}" if since else ""
    skipped: dict[str, int] = {}
    seen: set[str] = set()
    models: list[str] = []
    first: datetime | None = None
    last: datetime | None = None
    count = tool_rows = 0
    first_invalid: str | None = None
    with tempfile.TemporaryDirectory(prefix="lmops-export-") as tmp:
        path = Path(tmp) / "conversations.jsonl"
        logged = store.requests.scan(
            deployment=deployment, since=since, until=until, with_bodies=True
        )
        with path.open("w", encoding="utf-8") as fh:
            for r in logged:
                time, model_ref, request, response = (
                    r.time,
                    r.model_ref,
                    r.request_body,
                    r.response_body,
                )
                unfit = _unfit(r.status, response, r.guardrails, keep)
                if unfit is not None:
                    skipped[unfit] = skipped.get(unfit, 0) + 1
                    continue
                chat, reason = _conversation(request, response, placeholder_of(r.guardrails))
                if chat is not None and (problem := _trainable(chat)) is not None:
                    chat, reason = None, "invalid_row"
                    first_invalid = first_invalid or f"request {r.request_id}: {problem}"
                if chat is not None:
                    line = json.dumps(chat, ensure_ascii=False)
                    digest = hashlib.sha256(line.encode()).hexdigest()
                    if digest in seen:
                        chat, reason = None, "duplicate"
                    seen.add(digest)
                if chat is None:
                    skipped[reason] = skipped.get(reason, 0) + 1
                    continue
                fh.write(line + "\n")
                count += 1
                tool_rows += has_tool_turns(chat["messages"])
                first = first or time
                last = time
                if model_ref:
                    models.append(model_ref)
        if count == 0:
            why = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items()))
            raise UserError(
                f"no chat requests with logged bodies for deployment {deployment!r}{window}"
                + (f" (skipped: {why})" if why else "")
                + (f"; first invalid row: {first_invalid}" if first_invalid else "")
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
            "tool_rows": tool_rows,
            "skipped": dict(sorted(skipped.items())),
            "first_invalid": first_invalid,
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
