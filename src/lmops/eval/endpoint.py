"""``OpenAIEvalModel``: the ``EvalModel`` seam (:mod:`lmops.eval.lm`) over any
OpenAI-compatible endpoint (moved out of ``lm.py``, which re-exports it)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from lmops.core.errors import UserError

__all__ = ["ChatPrompt", "EndpointDown", "OpenAIEvalModel"]


class ChatPrompt(str):
    """A chat prompt for an endpoint, whose template is on the server: the text is the
    turns as JSON (what reports show); ``messages`` are sent as they are."""

    messages: list[dict[str, str]]

    def __new__(cls, messages: list[dict[str, str]]) -> ChatPrompt:
        self = super().__new__(cls, json.dumps(messages, ensure_ascii=False))
        self.messages = messages
        return self


class EndpointDown(UserError):
    """Requests in a row failed after their retries: the endpoint is not answering."""


class OpenAIEvalModel:
    """Any OpenAI-compatible endpoint: generation via chat or completions; log-likelihood
    via ``/v1/completions`` with ``echo`` and prompt ``logprobs`` where the server returns
    them (vLLM does; most hosted APIs do not)."""

    # Chat prompts keep their turns for the server's template, so a log-likelihood of a
    # continuation after them cannot be asked for.
    chat_loglikelihood = False

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        chat: bool = True,
        timeout: float = 60.0,
        retries: int = 3,
        max_failures_in_a_row: int = 5,
    ) -> None:
        import httpx

        self.name = model
        self.model = model
        self.chat = chat
        self.retries = retries
        self.failed = 0
        # A request that fails after its retries counts as failed and the run goes on; this
        # many in a row means the endpoint is down: stop (finished tasks are kept) rather
        # than score every remaining document as a failure.
        self.max_failures_in_a_row = max_failures_in_a_row
        self._in_a_row = 0
        self._last_error = ""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                r = self.client.post(path, json=body)
                if r.status_code < 500 and r.status_code != 429:
                    r.raise_for_status()
                    self._in_a_row = 0
                    return dict(r.json())
                self._last_error = f"HTTP {r.status_code} {r.text[:120]}".strip()
            except httpx.HTTPStatusError as e:
                raise UserError(
                    f"endpoint refused the request: {e.response.status_code} {e.response.text[:200]}"
                ) from None
            except httpx.HTTPError as e:
                self._last_error = f"{type(e).__name__}: {e}"
            if attempt < self.retries:
                import time

                time.sleep(min(8.0, 0.5 * 2**attempt))
        self.failed += 1
        self._in_a_row += 1
        if self._in_a_row >= self.max_failures_in_a_row:
            raise EndpointDown(
                f"endpoint {self.client.base_url}: {self._in_a_row} requests in a row failed "
                f"after {self.retries} retries (last: {self._last_error})"
            )
        return None

    @property
    def has_chat_template(self) -> bool:
        """Through the chat API, the server applies the model's template."""
        return self.chat

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool
    ) -> str:
        """The turns themselves: the endpoint applies its own template."""
        return ChatPrompt(messages)

    def generate(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        outs = []
        for context, kw in requests:
            until = kw.get("until") or None
            body: dict[str, Any] = {
                "model": self.model,
                "max_tokens": int(kw.get("max_gen_toks", 256)),
                "temperature": float(kw.get("temperature", 0.0)),
            }
            if until:
                body["stop"] = ([until] if isinstance(until, str) else list(until))[:4]
            if isinstance(context, ChatPrompt):
                if not self.chat:
                    raise UserError(
                        "--apply-chat-template sends chat messages: use the endpoint's chat API"
                    )
                body["messages"] = context.messages
                if context.messages[-1]["role"] == "assistant":
                    # a gen_prefix opened the answer: vLLM's (and lmops') continuation flags
                    body["add_generation_prompt"] = False
                    body["continue_final_message"] = True
                res = self._post("/chat/completions", body)
                outs.append(res["choices"][0]["message"]["content"] or "" if res else "")
            elif self.chat:
                body["messages"] = [{"role": "user", "content": context}]
                res = self._post("/chat/completions", body)
                outs.append(res["choices"][0]["message"]["content"] or "" if res else "")
            else:
                body["prompt"] = context
                res = self._post("/completions", body)
                outs.append(res["choices"][0]["text"] if res else "")
        return outs

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        out = []
        for context, continuation in requests:
            if isinstance(context, ChatPrompt):
                raise UserError(
                    "--apply-chat-template with log-likelihood tasks needs the model's chat "
                    "template here: evaluate a local model, or use a generation task"
                )
            res = self._post(
                "/completions",
                {
                    "model": self.model,
                    "prompt": context + continuation,
                    "max_tokens": 0,
                    "echo": True,
                    "logprobs": 1,
                    "temperature": 0,
                },
            )
            if res is None:
                out.append((float("-inf"), False))
                continue
            lp = res["choices"][0].get("logprobs") or {}
            offsets, tokens = lp.get("text_offset"), lp.get("token_logprobs")
            if not offsets or tokens is None:
                raise UserError(
                    f"endpoint {self.client.base_url} returns no prompt logprobs; use a generation task"
                )
            start = len(context)
            total = sum(
                t
                for o, t in zip(offsets, tokens, strict=True)
                if o >= start and t is not None and not math.isnan(t)
            )
            top = lp.get("top_logprobs") or []
            greedy = all(
                (max(d, key=d.get) == tok)
                for o, tok, d in zip(offsets, lp.get("tokens", []), top, strict=False)
                if o >= start and d
            )
            out.append((float(total), greedy))
        return out

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        return [
            (ll, max(1, len(t.split())))
            for (ll, _), t in zip(self.loglikelihood([("", t) for t in texts]), texts, strict=True)
        ]
