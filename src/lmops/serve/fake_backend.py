"""The seam's in-package fake backend: a deployment with no model behind it (``fake:`` in
a deployments file), for tests and for users wiring up their own stack."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from lmops.serve.backends import ChoiceDelta, Generation, Job, fit_context

__all__ = ["FakeBackend", "echo_text"]


class FakeBackend:
    """A deployment with no model behind it (``fake:`` in a deployments file): replies are
    deterministic (token *i* of a reply is ``tok{i}``, or the words of ``reply``), paced by
    ``ttft_s``/``itl_s``, and embeddings are hashed bags of words. A reply holding the
    gateway's call text (``<tool_call>{"name": …, "arguments": …}</tool_call>``) comes back
    as parsed ``tool_calls`` when the request lists tools, as an engine's does. With ``echo`` a reply is
    what the model was given instead (:func:`echo_text`), so a test sees the history a
    request carried. With ``context`` a chat prompt's words are its tokens, held to that
    context as the engine's are (:func:`~lmops.serve.backends.fit_context`). The seam's
    in-package fake: a gateway's keys, limits, guardrails, logs and clients can be exercised
    without weights, in tests and by users wiring up their own stack."""

    def __init__(self, options: Any, name: str) -> None:
        self.options = options
        self.model_ref = f"fake:{name}"
        self.sampling: dict[str, float] = {}
        self.default_max_tokens = int(options.tokens)
        self.chat_template_fallback = False
        reply = options.reply
        self._words = (
            re.findall(r"\s*\S+", reply)
            if reply
            else [f"tok{i}" if i == 0 else f" tok{i}" for i in range(options.tokens)]
        )

    def estimate_prompt(self, job: Job) -> int:
        return job.estimate()

    def precheck(self, job: Job) -> None:
        if job.token_ids:  # its own vocabulary: token i is the word ``tok{i}``
            job.prompts = [
                " ".join(f"tok{t}" for t in ids) if ids is not None else text
                for text, ids in zip(job.prompts or [], job.token_ids, strict=True)
            ]

    async def prepare(self, job: Job) -> None:
        # a reply holding the gateway's call text is parsed into tool_calls, as an
        # engine's is, when the request lists tools (so fake deployments exercise them)
        job.parse_tools = job.tools is not None and job.tools.parses_calls
        # with a context, a chat prompt's words are its tokens, checked as the engine's
        if self.options.context is not None and job.messages is not None:
            fit_context(
                job, lambda m: replace(job, messages=m).text().split(), self.options.context
            )

    async def start(self, job: Job) -> Generation:
        return _FakeGeneration(self, job)

    async def embed(
        self, texts: list[str], dimensions: int | None = None
    ) -> tuple[list[list[float]], int]:
        import hashlib

        dims = dimensions or int(self.options.dims)  # hashed buckets: any size will do
        out = []
        for t in texts:
            v = [0.0] * dims
            for w in t.split():
                h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "big")
                v[h % dims] += 1.0 if (h >> 32) & 1 else -1.0
            norm = sum(x * x for x in v) ** 0.5 or 1.0
            out.append([x / norm for x in v])
        return out, sum(len(t.split()) for t in texts)


def echo_text(job: Job) -> str:
    """What a chat job gives the model, one ``role: text`` per message (a tool call as
    ``name(arguments)``) joined by `` | ``; a completion job's prompt as it is."""
    if job.messages is None:
        return " | ".join(job.prompts or [])
    said = []
    for m in job.messages:
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        calls = [
            f"{(c.get('function') or {}).get('name')}({(c.get('function') or {}).get('arguments')})"
            for c in m.get("tool_calls") or []
        ]
        said.append(f"{m.get('role')}: " + " ".join(x for x in [content or "", *calls] if x))
    return " | ".join(said)


class _FakeGeneration:
    def __init__(self, backend: FakeBackend, job: Job) -> None:
        self._b = backend
        self._job = job
        self.prompt_tokens = max(1, len(job.text().split()))
        self.completion_tokens = 0

    async def batches(self) -> AsyncIterator[list[ChoiceDelta]]:
        opts, job = self._b.options, self._job
        every = re.findall(r"\s*\S+", echo_text(job)) if opts.echo else self._b._words
        words = every[: job.max_tokens]
        finish = "length" if len(every) > job.max_tokens else "stop"
        prompts = job.prompts or [""]  # chat: one choice per n
        choices = range(job.n * len(prompts))
        if job.echo:
            yield [ChoiceDelta(i, prompts[i // job.n]) for i in choices]
        for k, word in enumerate(words):
            await asyncio.sleep(opts.ttft_s if k == 0 else opts.itl_s)
            self.completion_tokens += len(choices)
            yield [ChoiceDelta(i, word) for i in choices]
        yield [ChoiceDelta(i, finish_reason=finish) for i in choices]

    async def aclose(self) -> None:
        return None
