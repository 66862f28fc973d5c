"""What the monitors look at, read once per window: a :class:`Sample` holds one value per
request (or dataset row) for every feature, ``None`` where the source does not have it.

Sources: the request log (:func:`traffic_sample`: bodies give the texts, the row gives tokens,
latency, TTFT, status and guardrail actions) and a dataset asset (:func:`dataset_sample`: the
texts of ``sft_chat``/``sft_alpaca``/``preference`` rows, a ``prompt``/``text`` field
otherwise). A monitor compares only the features both sides have.

Features computed from text:

- ``language``: ``zh`` when at least 30 % of the letters are CJK ideographs, else
  py3langid's ISO 639-1 code (a dependency of lmops; without it ``en`` when most letters are
  Latin, ``other`` otherwise); text without letters is ``other``;
- ``refusal``: the answer matches a bilingual refusal pattern (:data:`REFUSAL`);
- ``pii``: a PII guardrail acted on the request, or the (masked) text holds a mask placeholder
  such as ``<EMAIL>``.

A failed request (status >= 400) has its prompt and its error; its answer, completion tokens
and latency are unknown (``None``), whatever the log kept of them; its prompt tokens are
unknown where the gateway logged 0 (it never counted them: a timeout, a 5xx) and the count
where it did (a client gone, 499, or a stream broken after its 200); its time to first token
counts where the log has one (a stream broken after its first token had one).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lmops.core.errors import UserError
from lmops.store.types import RequestRecord
from lmops.text.cjk import HAN_RE

if TYPE_CHECKING:
    from lmops.store import Store

__all__ = ["REFUSAL", "Sample", "dataset_sample", "language", "traffic_sample"]

REFUSAL = re.compile(
    r"\b(I(?:'m| am) sorry,? but|I (?:can(?:'|no)t|cannot|am unable to|won't) "
    r"(?:help|assist|provide|do|comply|answer|fulfil)|as an AI(?: language model)?|"
    r"I must (?:decline|refuse))\b"
    r"|抱歉|对不起|我不能|我无法|无法(?:提供|协助|帮助|回答)|作为一个?(?:AI|人工智能)",
    re.IGNORECASE,
)
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]{1,24}>")
_CJK = HAN_RE  # lmops.text.cjk
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")


def language(text: str) -> str:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "other"
    cjk = sum(1 for c in letters if _CJK.match(c))
    if cjk >= 0.3 * len(letters):
        return "zh"  # before langid, which reads short Chinese as Wu or Cantonese
    try:
        import py3langid

        return str(py3langid.classify(text)[0])
    except ImportError:
        pass
    latin = sum(1 for c in letters if _LATIN.match(c))
    return "en" if latin > len(letters) / 2 else "other"


@dataclass
class Sample:
    """Per-row features of one window or dataset (lists are aligned; ``None`` = unknown)."""

    source: str
    prompts: list[str | None] = field(default_factory=list)
    responses: list[str | None] = field(default_factory=list)
    prompt_tokens: list[float | None] = field(default_factory=list)
    completion_tokens: list[float | None] = field(default_factory=list)
    latency_ms: list[float | None] = field(default_factory=list)
    ttft_ms: list[float | None] = field(default_factory=list)
    error: list[bool | None] = field(default_factory=list)
    guardrail: list[str | None] = field(default_factory=list)
    pii: list[bool | None] = field(default_factory=list)
    model_refs: list[str] = field(default_factory=list)
    first: datetime | None = None
    last: datetime | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def add(
        self,
        prompt: str | None,
        response: str | None,
        *,
        prompt_tokens: float | None = None,
        completion_tokens: float | None = None,
        latency_ms: float | None = None,
        ttft_ms: float | None = None,
        error: bool | None = None,
        guardrail: str | None = None,
        pii: bool | None = None,
    ) -> None:
        self.prompts.append(prompt)
        self.responses.append(response)
        self.prompt_tokens.append(prompt_tokens)
        self.completion_tokens.append(completion_tokens)
        self.latency_ms.append(latency_ms)
        self.ttft_ms.append(ttft_ms)
        self.error.append(error)
        self.guardrail.append(guardrail)
        if pii is None and (prompt is not None or response is not None):
            pii = bool(_PLACEHOLDER.search((prompt or "") + " " + (response or "")))
        self.pii.append(pii)


def _last_user(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    return None


def _request_text(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    if "messages" in body:
        return _last_user(body["messages"])
    for k in ("prompt", "input"):
        v = body.get(k)
        if isinstance(v, str):
            return v
        if isinstance(v, list) and v and isinstance(v[0], str):
            return str(v[0])
    return None


def _response_text(body: Any) -> str | None:
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None
    msg = choice.get("message") if isinstance(choice, dict) else None
    text = msg.get("content") if isinstance(msg, dict) else choice.get("text")
    return text if isinstance(text, str) else None


def _guardrail(guardrails: Any) -> tuple[str, bool]:
    """The first guardrail action's type (``none`` without one) and whether any was PII."""
    actions = guardrails.get("actions") if isinstance(guardrails, dict) else None
    types = [str(a.get("type")) for a in actions or [] if isinstance(a, dict)]
    return (types[0] if types else "none"), any("pii" in t for t in types)


def traffic_sample(records: Iterable[RequestRecord], source: str) -> Sample:
    """Features of logged requests (read them with bodies to get the texts)."""
    s = Sample(source=source)
    for r in records:
        action, pii_action = _guardrail(r.guardrails)
        ok = r.status < 400
        # A failed request (a timeout, a 5xx, a stream broken after its 200) has no answer
        # and no completion count, whatever part of a reply the log kept; a timeout's or a
        # 5xx's prompt tokens were never counted (logged 0). Read as values, a hung server's
        # failures would be a content shift (prompts of 0 tokens, empty answers). Its prompt
        # is still what was asked, and a count the gateway made (499, a broken stream) holds.
        prompt = _request_text(r.request_body)
        response = _response_text(r.response_body) if ok else None
        counted = ok or r.prompt_tokens > 0
        text_pii = bool(_PLACEHOLDER.search(f"{prompt or ''} {response or ''}"))
        s.add(
            prompt,
            response,
            prompt_tokens=float(r.prompt_tokens) if counted else None,
            completion_tokens=float(r.completion_tokens) if ok else None,
            latency_ms=r.latency_ms if ok else None,
            ttft_ms=r.ttft_ms,
            error=r.status >= 400,
            guardrail=action,
            # without logged bodies only a PII guardrail's action can say "yes": unknown then
            pii=(pii_action or text_pii) if r.request_body is not None else None,
        )
        if r.model_ref:
            s.model_refs.append(r.model_ref)
        s.first = s.first or r.time
        s.last = r.time
    return s


# Endpoints of the request log that are no traffic to the model: the gateway's tokenizer
# routes (lmops.serve.tokenize) log only their 429s (the key's rpm), with no text; read as
# traffic they would be error samples and token-less prompts of the deployment, so a client
# counting tokens with a tight key (lm-eval) would move error_rate and prompt_tokens while
# the model served every request it got. `lmops usage` still counts them: the key spent them.
NOT_TRAFFIC = frozenset({"tokenize", "detokenize"})


def read_traffic(
    store: Store,
    deployment: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    last: int | None = None,
) -> Iterator[RequestRecord]:
    """Logged requests of ``deployment`` in ``[since, until)``, only the ``last`` N when given,
    in time order, those of :data:`NOT_TRAFFIC` left out. Rows without bodies are read too;
    bodies come along where they were logged (read in a second pass that starts at the
    window's first row)."""
    rows: deque[RequestRecord] = deque(maxlen=last)  # maxlen None: unbounded
    scanned = store.requests.scan(deployment=deployment, since=since, until=until)
    rows.extend(r for r in scanned if r.endpoint not in NOT_TRAFFIC)
    if not rows:
        return
    start = rows[0].time if last is not None else since
    with_bodies = {
        (r.request_id, r.time): r
        for r in store.requests.scan(
            deployment=deployment, since=start, until=until, with_bodies=True
        )
    }
    for r in rows:
        yield with_bodies.get((r.request_id, r.time), r)


def dataset_sample(store: Store, ref: str, *, limit: int | None = None) -> Sample:
    """Features of a dataset asset's rows (texts only; no latency, tokens or guardrails)."""
    from lmops.core.formats import detect_format, to_chat
    from lmops.core.rows import read_rows

    version = store.assets.resolve(ref)
    s = Sample(source=version.ref)
    for row in read_rows([store.assets.path(version.ref)], on_error="skip"):
        v = row.values
        fmt = detect_format(v)
        prompt: str | None
        response: str | None
        if fmt in ("sft_chat", "sft_alpaca", "preference"):
            try:
                chat = to_chat(v, fmt)
            except UserError:
                continue
            prompt = _last_user(chat)
            response = chat[-1]["content"] if chat and chat[-1]["role"] == "assistant" else None
        else:
            text = v.get("prompt", v.get("text", v.get("question", v.get("instruction"))))
            if not isinstance(text, str):
                continue
            prompt = text
            answer = v.get("response", v.get("answer", v.get("output")))
            response = answer if isinstance(answer, str) else None
        s.add(prompt, response)
        if limit is not None and len(s) >= limit:
            break
    if not len(s):
        raise UserError(
            f"dataset {version.ref} has no rows with text (chat, alpaca, preference rows or a "
            "prompt/text/question field); give a dataset of prompts or conversations"
        )
    return s
