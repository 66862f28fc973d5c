"""``OpenAIEvalModel``: the ``EvalModel`` seam (:mod:`lmops.eval.lm`) over any
OpenAI-compatible endpoint, with up to ``concurrency`` requests in flight.

A call (``generate``, ``loglikelihood``) sends one request per item from a pool of
``concurrency`` threads over one ``httpx.Client`` (thread-safe; it keeps a connection per
thread alive) and returns the answers in the items' order, whatever order they came in.

Per request: a 429, a 5xx or a transport error is tried again ``retries`` times, waiting
0.5 s, 1 s, 2 s ... (at most 8 s) between tries; any other 4xx raises ``UserError`` at
once. A request that still fails counts in ``failed`` and its item gets the failure value
(an empty generation, a log-likelihood of -inf), and the run goes on; ``max_failures_in_a_row``
failures in a row raise ``EndpointDown``. "In a row" is in the order requests complete (with
one request in flight, the items' order): each completion is counted under a lock as it
happens, and a success sets the count back to 0.

The first error of a call, or an interrupt (Ctrl-C), stops it at once: requests not yet
sent are never sent, requests in flight are not tried again (they end in the background,
within ``timeout``, on daemon threads that never hold up the process's exit), nothing after
it is counted, and that error is raised.
"""

from __future__ import annotations

import json
import math
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lmops.core.errors import UserError

__all__ = ["DEFAULT_CONCURRENCY", "ChatPrompt", "EndpointDown", "OpenAIEvalModel"]

# Requests in flight by default: what an lmops deployment runs at once (its max_running,
# 8), so a gateway's batch is full, and few enough that a hosted API's rate limit is not
# hit at once (a 429 is retried anyway).
DEFAULT_CONCURRENCY = 8

T = TypeVar("T")


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


def _backoff_s(attempt: int) -> float:
    """Seconds to wait before try ``attempt`` (1, 2, ...): 0.5 doubling, at most 8."""
    return min(8.0, 0.5 * 2 ** (attempt - 1))


class OpenAIEvalModel:
    """Any OpenAI-compatible endpoint: generation via chat or completions; log-likelihood
    via ``/v1/completions`` with ``echo`` and prompt ``logprobs`` where the server returns
    them (vLLM and lmops do; most hosted APIs do not)."""

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
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        import httpx

        if concurrency < 1:
            raise UserError(f"concurrency must be at least 1, got {concurrency}")
        self.name = model
        self.model = model
        self.chat = chat
        self.retries = retries
        self.concurrency = concurrency
        # The eval loop hands generate() this many documents per call (its progress moves
        # per call): a few per thread, so that the pool is rarely waiting on a call's last
        # and longest generations; with one thread, eval.run's 8 as before.
        self.generate_chunk = max(8, 4 * concurrency)
        self.failed = 0
        # A request that fails after its retries counts as failed and the run goes on; this
        # many in a row means the endpoint is down: stop (finished tasks are kept) rather
        # than score every remaining document as a failure.
        self.max_failures_in_a_row = max_failures_in_a_row
        self._in_a_row = 0
        self._lock = threading.Lock()  # failed, _in_a_row: counted as requests complete
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(
            max_connections=max(100, concurrency), max_keepalive_connections=max(20, concurrency)
        )
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, limits=limits
        )

    # -- requests --------------------------------------------------------------------------------
    def _map(
        self,
        path: str,
        bodies: Sequence[dict[str, Any]],
        read: Callable[[int, dict[str, Any]], T],
        failed: T,
    ) -> list[T]:
        """``read(i, reply)`` for each body's reply, in the bodies' order, with up to
        ``concurrency`` requests in flight; ``failed`` for a request that failed after its
        retries. The first error (a refusal, ``EndpointDown``, one of ``read``'s) stops the
        call and is raised at once, as is an interrupt (Ctrl-C).

        The threads are daemons: a request still in flight when the call stops ends in the
        background, and never holds up the process's exit (an executor's threads would,
        for up to ``timeout`` against an endpoint that hangs)."""
        if not bodies:
            return []
        results = [failed] * len(bodies)
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(len(bodies)):
            todo.put(i)
        stop = threading.Event()  # no more requests: an error, or the call was interrupted
        ended = threading.Event()  # every thread has finished, or one failed
        errors: list[BaseException] = []
        running = [min(self.concurrency, len(bodies))]

        def work() -> None:
            try:
                while not stop.is_set():
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    reply = self._post(path, bodies[i], stop)
                    if reply is not None:
                        results[i] = read(i, reply)
            except BaseException as e:
                errors.append(e)
                stop.set()
            finally:
                with self._lock:
                    running[0] -= 1
                    if running[0] == 0 or errors:
                        ended.set()

        for _ in range(running[0]):
            threading.Thread(target=work, name="lmops-eval-request", daemon=True).start()
        try:
            ended.wait()
        finally:
            stop.set()
        if errors:
            raise errors[0]
        return results

    def _post(
        self, path: str, body: dict[str, Any], stop: threading.Event
    ) -> dict[str, Any] | None:
        """One request with its retries: the reply's JSON, or None when it failed after
        them (or the call stopped before it got one)."""
        import httpx

        error = ""
        for attempt in range(self.retries + 1):
            if attempt and stop.wait(_backoff_s(attempt)):
                return None  # the call stopped meanwhile: no more tries
            try:
                r = self.client.post(path, json=body)
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                error = f"HTTP {r.status_code} {r.text[:120]}".strip()
                continue
            if not r.is_success:
                hint = ""
                if r.status_code in (404, 405) and path == "/completions":
                    hint = (
                        " (this endpoint has no /v1/completions: chat-only APIs take generation "
                        "tasks with --apply-chat-template, and cannot score log-likelihood tasks)"
                    )
                raise UserError(
                    f"endpoint refused the request: {r.status_code} {r.text[:200]}{hint}"
                )
            self._count(stop, error=None)
            return dict(r.json())
        self._count(stop, error=error)
        return None

    def _count(self, stop: threading.Event, *, error: str | None) -> None:
        """Count a request that completed (``error`` None) or failed after its retries, in
        the order they end; raise ``EndpointDown`` at ``max_failures_in_a_row`` failures in a
        row. Once the call has stopped, what ends after is not counted."""
        with self._lock:
            if stop.is_set():
                return
            if error is None:
                self._in_a_row = 0
                return
            self.failed += 1
            self._in_a_row += 1
            if self._in_a_row >= self.max_failures_in_a_row:
                stop.set()  # under the lock: no completion after this one is counted
                raise EndpointDown(
                    f"endpoint {self.client.base_url}: {self._in_a_row} requests in a row "
                    f"failed after {self.retries} retries (last: {error})"
                )

    # -- the EvalModel seam ----------------------------------------------------------------------
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
        bodies = []
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
            elif self.chat:
                body["messages"] = [{"role": "user", "content": context}]
            else:
                body["prompt"] = context
            bodies.append(body)

        def text(_: int, res: dict[str, Any]) -> str:
            try:
                choice = res["choices"][0]
                return str(choice["message"]["content"] or "" if self.chat else choice["text"])
            except (KeyError, IndexError, TypeError):
                field = "choices[0].message.content" if self.chat else "choices[0].text"
                raise UserError(
                    f"endpoint {self.client.base_url}: a reply without {field} "
                    f"({json.dumps(res)[:160]}); is it an OpenAI-compatible "
                    f"{'chat' if self.chat else 'completions'} API?"
                ) from None

        return self._map("/chat/completions" if self.chat else "/completions", bodies, text, "")

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        if any(isinstance(context, ChatPrompt) for context, _ in requests):
            raise UserError(
                "--apply-chat-template with log-likelihood tasks needs the model's chat "
                "template here: evaluate a local model, or use a generation task"
            )
        bodies = [
            {
                "model": self.model,
                "prompt": context + continuation,
                "max_tokens": 0,
                "echo": True,
                "logprobs": 1,
                "temperature": 0,
            }
            for context, continuation in requests
        ]

        def scored(i: int, res: dict[str, Any]) -> tuple[float, bool]:
            lp = res["choices"][0].get("logprobs") or {}
            offsets, tokens = lp.get("text_offset"), lp.get("token_logprobs")
            if not offsets or tokens is None:
                raise UserError(
                    f"endpoint {self.client.base_url} returns no prompt logprobs; use a "
                    "generation task"
                )
            start = len(requests[i][0])
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
            return float(total), greedy

        return self._map("/completions", bodies, scored, (float("-inf"), False))

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        return [
            (ll, max(1, len(t.split())))
            for (ll, _), t in zip(self.loglikelihood([("", t) for t in texts]), texts, strict=True)
        ]
