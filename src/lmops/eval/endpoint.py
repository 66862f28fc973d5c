"""``OpenAIEvalModel``: the ``EvalModel`` seam (:mod:`lmops.eval.lm`) over any
OpenAI-compatible endpoint, with up to ``concurrency`` requests in flight, each carrying up
to ``batch_size`` prompts.

A call (``generate``, ``loglikelihood``) sends its items from a pool of ``concurrency``
threads over one ``httpx.Client`` (thread-safe; it keeps a connection per thread alive) and
returns the answers in the items' order, whatever order they came in.

Batches: items for ``/v1/completions`` whose requests differ only in their text prompt (every
log-likelihood item; generations with the same sampling parameters) go ``batch_size`` at a
time in one request, ``prompt: [...]``, prompt p's answer its choice p (as OpenAI, vLLM and
an lmops gateway answer; lm-evaluation-harness's ``local-completions`` sends the same).
Generations go longest prompts first; log-likelihood items longest context first, a
context's continuations side by side, so that a batch mostly carries whole questions (with
8 a batch, two of four choices; a question of 3 or 5 choices may straddle two batches): an lmops engine runs the context the prompts of a batch share
once for all of them (``models/prefill.py``). lm-eval's API models sort by the whole
prompt's length, which scatters a question's choices across batches (its HF model groups
by context only to reuse the logits of one-token continuations). Chat requests go one at
a time. ``batch_size="auto"`` is 8, fewer above ``concurrency`` 8 so
that at most 64 prompts are in flight: a default lmops deployment takes 8 running and 64
queued, so none is refused as overloaded (a deployment that takes fewer answers a 503, tried
again as any: ``concurrency`` x ``batch_size`` prompts are what it must take at once).

An endpoint that refuses a list (a 400, 413 or 422 to a request of several prompts, or a
reply without one choice per prompt) gets one prompt per request from then on, for the
rest of this model's calls: the refused batch's prompts are sent again one by one and a
warning says so once (logger ``lmops.eval``). A prompt that was the trouble then gets its
own answer (a 4xx raises, as below), so nothing is hidden by the fall-back: a 400, 413 or
422 to one prompt raises ``ItemFailed`` with its place in the call and the server's message
in one line, which the eval loop turns into the task and document that were refused.

Per request: a 429, a 5xx or a transport error is tried again ``retries`` times, waiting
0.5 s, 1 s, 2 s ... (at most 8 s) between tries; any other 4xx raises ``UserError`` at
once. A request that still fails gives each of its prompts the failure value (an empty
generation, a log-likelihood of -inf) and counts each in ``failed``, and the run goes on;
``max_failures_in_a_row`` failed requests in a row (a batch counts once: the endpoint is
what is judged, not its prompts) raise ``EndpointDown``. "In a row" is in the order
requests complete (with one request in flight, the order they are sent in: the items'
order, batches in the order above): each completion is counted under a lock as it
happens, and a success sets the count back to 0.

The first error of a call, or an interrupt (Ctrl-C), stops it at once: requests not yet
sent are never sent, requests in flight are not tried again (they end in the background,
within ``timeout``, on daemon threads that never hold up the process's exit), nothing after
it is counted, and that error is raised.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lmops.core.errors import UserError
from lmops.eval._batching import CHANGE_ITEM_OR_SERVER, ItemFailed

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CONCURRENCY",
    "ChatPrompt",
    "EndpointDown",
    "OpenAIEvalModel",
    "auto_batch_size",
]

# Requests in flight by default: what an lmops deployment runs at once (its max_running,
# 8), so a gateway's batch is full, and few enough that a hosted API's rate limit is not
# hit at once (a 429 is retried anyway).
DEFAULT_CONCURRENCY = 8
# Prompts per completions request with batch_size "auto": as many as a deployment runs at
# once, so that one request at a time keeps its batch full (a forward pass over 8 prompts
# costs little more than over one; benchmarks/endpoint_eval_bench.py) ...
DEFAULT_BATCH_SIZE = 8
# ... and fewer above concurrency 8, so that no more prompts than this are in flight: a
# default lmops deployment runs 8 and queues 64, and refuses more as overloaded (a 503).
_AUTO_IN_FLIGHT = 64
# Statuses that, to a request of several prompts, may mean "not a list": a 400 (vLLM, lmops,
# most), a 422 (a schema that types prompt as a string), a 413 (the body too large).
_LIST_REFUSALS = (400, 413, 422)

T = TypeVar("T")
log = logging.getLogger("lmops.eval")


def auto_batch_size(concurrency: int) -> int:
    """Prompts per request for ``batch_size="auto"`` at ``concurrency`` requests in flight."""
    return max(1, min(DEFAULT_BATCH_SIZE, _AUTO_IN_FLIGHT // max(1, concurrency)))


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


class _ListRefused(Exception):
    """A request of several prompts was refused, or answered without a choice per prompt."""


class _PromptRefused(UserError):
    """A request of one prompt was refused as a bad request (a 400, 413 or 422): the
    caller names the prompt (``ItemFailed``) and says what must change (``fix``)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


# A refusal of a parameter the request sends, not of the prompt (a 422 "Extra inputs are not
# permitted", OpenAI's "Unsupported parameter"): shortening the item would not help
_PARAMETER_REFUSAL = re.compile(
    r"unsupported|not supported|unrecognized|unknown (?:field|parameter|argument)|extra "
    r"(?:fields|inputs)|not permitted|unexpected keyword",
    re.IGNORECASE,
)
_CHANGE_PARAMETERS_OR_SERVER = (
    "the server does not take a parameter of the request (its message names it): change the "
    "task's generation_kwargs or the eval flags that set it, or use a server that takes it"
)


def _what_must_change(r: Any) -> str:
    """What must change before a prompt refused alone can pass: the item or the server's
    limit (a 413, or a 400 or 422 about the prompt: its length, most often), or the
    parameters the request sends (a refusal that names a parameter other than the prompt)."""
    if r.status_code == 413:
        return CHANGE_ITEM_OR_SERVER
    try:
        param = r.json()["error"].get("param")
    except Exception:
        param = None
    named = isinstance(param, str) and param not in ("prompt", "messages", "input", "")
    if named or _PARAMETER_REFUSAL.search(r.text):
        return _CHANGE_PARAMETERS_OR_SERVER
    return CHANGE_ITEM_OR_SERVER


def _said(r: Any, chars: int = 160) -> str:
    """A refusal in one line: its status and its OpenAI error's message (or text), at most
    ``chars`` of it."""
    try:
        message = str(r.json()["error"]["message"])
    except Exception:
        message = r.text
    return f"{r.status_code} {' '.join(message.split())[:chars]}".strip()


def _backoff_s(attempt: int) -> float:
    """Seconds to wait before try ``attempt`` (1, 2, ...): 0.5 doubling, at most 8."""
    return min(8.0, 0.5 * 2 ** (attempt - 1))


def _one_per_prompt(reply: dict[str, Any], prompts: int) -> list[dict[str, Any]]:
    """A reply to ``prompts`` prompts as one reply per prompt, each with its own choice
    (prompt p's is the choice of index p; choices without an index in order);
    ``_ListRefused`` when they are not one per prompt (a server that took the list for
    something else)."""
    choices = reply.get("choices")
    if isinstance(choices, list) and len(choices) == prompts:
        at = {c.get("index", k) if isinstance(c, dict) else k: c for k, c in enumerate(choices)}
        if set(at) == set(range(prompts)):
            return [{**reply, "choices": [at[p]]} for p in range(prompts)]
    n = len(choices) if isinstance(choices, list) else 0
    raise _ListRefused(f"a reply of {n} choice(s) to {prompts} prompts")


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
        batch_size: int | str = "auto",
    ) -> None:
        import httpx

        if concurrency < 1:
            raise UserError(f"concurrency must be at least 1, got {concurrency}")
        if batch_size == "auto":
            batch_size = auto_batch_size(concurrency)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be auto or at least 1, got {batch_size!r}")
        self.name = model
        self.model = model
        self.chat = chat
        self.retries = retries
        self.concurrency = concurrency
        # prompts per completions request; 1 from the first list the endpoint refuses
        self.batch_size = batch_size
        # the prompts per request each call sent (1 for chat requests; a call during which
        # the endpoint refused a list adds 1 too): eval.run reports a task's
        self.batches_run: list[int] = []
        self.failed = 0  # prompts given the failure value
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

    @property
    def generate_chunk(self) -> int:
        """The eval loop hands generate() this many documents per call (its progress moves
        per call): a few per thread, so that the pool is rarely waiting on a call's last and
        longest generations, and a full batch for every thread; with one thread and one
        prompt a request, eval.run's 8 as before."""
        return max(8, 4 * self.concurrency, self.concurrency * self.batch_size)

    # -- requests --------------------------------------------------------------------------------
    def _units(
        self, bodies: Sequence[dict[str, Any]], order: Sequence[Any] | None = None
    ) -> list[list[int]]:
        """The items' indices grouped into requests, in the order to send them: items whose
        bodies differ only in a text ``prompt`` go ``batch_size`` at a time, sorted by
        ``order`` (a key per item; by default longest prompts first, as lm-eval sends them:
        an lmops engine pads the prompts it prefills together to the longest and splits a
        batch whose padding would waste more than a quarter, so prompts of about one length
        go in one forward pass; log-likelihood scoring took about 15 % less gateway CPU than
        in the documents' order); others (chat messages) alone, first, in their order."""
        groups: dict[str, list[int]] = {}
        units: list[list[int]] = []
        for i, body in enumerate(bodies):
            if self.batch_size > 1 and isinstance(body.get("prompt"), str):
                rest = {k: v for k, v in body.items() if k != "prompt"}
                groups.setdefault(json.dumps(rest, sort_keys=True), []).append(i)
            else:
                units.append([i])
        size = self.batch_size
        for group in groups.values():
            if order is None:
                group.sort(key=lambda i: -len(bodies[i]["prompt"]))  # stable: ties in order
            else:
                group.sort(key=lambda i: order[i])
            units += [group[at : at + size] for at in range(0, len(group), size)]
        return units

    def _fall_back(self, prompts: int, why: str) -> None:
        """One prompt per request from now on; said once."""
        with self._lock:
            if self.batch_size == 1:
                return
            self.batch_size = 1
        log.warning(
            "endpoint %s did not take %d prompts in one request (%s): sending one prompt per "
            "request from now on (--batch-size 1 sends no lists)",
            self.client.base_url,
            prompts,
            why,
        )

    def _map(
        self,
        path: str,
        bodies: Sequence[dict[str, Any]],
        read: Callable[[int, dict[str, Any]], T],
        failed: T,
        order: Sequence[Any] | None = None,
    ) -> list[T]:
        """``read(i, reply)`` for each body's reply, in the bodies' order, with up to
        ``concurrency`` requests in flight, each of up to ``batch_size`` bodies (one
        request with their prompts as a list, sent in ``order``: :meth:`_units`; ``read``
        is given the reply with only body i's choice); ``failed`` for a request that
        failed after its retries. The first
        error (a refusal, ``EndpointDown``, one of ``read``'s) stops the call and is raised
        at once, as is an interrupt (Ctrl-C).

        The threads are daemons: a request still in flight when the call stops ends in the
        background, and never holds up the process's exit (an executor's threads would,
        for up to ``timeout`` against an endpoint that hangs)."""
        if not bodies:
            return []
        listed = any(isinstance(b.get("prompt"), str) for b in bodies)
        self.batches_run.append(self.batch_size if listed else 1)
        results = [failed] * len(bodies)
        todo: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        units = self._units(bodies, order)
        for unit in units:
            todo.put(unit)
        stop = threading.Event()  # no more requests: an error, or the call was interrupted
        ended = threading.Event()  # every thread has finished, or one failed
        errors: list[BaseException] = []
        running = [min(self.concurrency, len(units))]

        def one_by_one(unit: list[int]) -> None:
            """The unit's items back in the queue alone, with threads for them (this one
            takes one of them)."""
            for i in unit:
                todo.put([i])
            with self._lock:
                more = max(0, min(self.concurrency - running[0], len(unit) - 1))
                running[0] += more
            for _ in range(more):
                threading.Thread(target=work, name="lmops-eval-request", daemon=True).start()

        def work() -> None:
            try:
                while not stop.is_set():
                    try:
                        unit = todo.get_nowait()
                    except queue.Empty:
                        return
                    if len(unit) > 1 and self.batch_size == 1:  # lists were refused meanwhile
                        one_by_one(unit)
                        continue
                    if len(unit) == 1:
                        try:
                            reply = self._post(path, bodies[unit[0]], stop)
                        except _PromptRefused as e:
                            raise ItemFailed(unit[0], f"{e}; {e.fix}") from None
                        if reply is not None:
                            results[unit[0]] = read(unit[0], reply)
                        continue
                    body = {**bodies[unit[0]], "prompt": [bodies[i]["prompt"] for i in unit]}
                    try:
                        reply = self._post(path, body, stop, prompts=len(unit))
                        answers = None if reply is None else _one_per_prompt(reply, len(unit))
                    except _ListRefused as e:
                        self._fall_back(len(unit), str(e))
                        one_by_one(unit)
                        continue
                    for i, answer in zip(unit, answers or [], strict=False):
                        results[i] = read(i, answer)
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
            if listed and self.batches_run[-1] != self.batch_size:  # a list was refused
                self.batches_run.append(self.batch_size)
        if errors:
            raise errors[0]
        return results

    def _post(
        self, path: str, body: dict[str, Any], stop: threading.Event, *, prompts: int = 1
    ) -> dict[str, Any] | None:
        """One request (of ``prompts`` prompts) with its retries: the reply's JSON, or None
        when it failed after them (or the call stopped before it got one). ``_ListRefused``
        for a 400, 413 or 422 to several prompts."""
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
            if not r.is_success and r.status_code in _LIST_REFUSALS:
                if prompts > 1:
                    raise _ListRefused(_said(r))
                # the whole of a usual message (vLLM's context length one is ~190 chars)
                raise _PromptRefused(
                    f"endpoint refused the request: {_said(r, 300)}", _what_must_change(r)
                )
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
        self._count(stop, error=error, prompts=prompts)
        return None

    def _count(self, stop: threading.Event, *, error: str | None, prompts: int = 1) -> None:
        """Count a request that completed (``error`` None) or failed after its retries, in
        the order they end (its ``prompts`` in ``failed``, the request once in a row); raise
        ``EndpointDown`` at ``max_failures_in_a_row`` failures in a row. Once the call has
        stopped, what ends after is not counted."""
        with self._lock:
            if stop.is_set():
                return
            if error is None:
                self._in_a_row = 0
                return
            self.failed += prompts
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

        # a context's continuations side by side (longest context first): a batch carries
        # whole questions, whose shared context an lmops engine runs once for all their
        # choices (models/prefill.py). lm-eval's API models sort by the whole prompt's
        # length instead, which scatters a question's choices across batches.
        order = [(-len(c), c, -len(x)) for c, x in requests]
        return self._map("/completions", bodies, scored, (float("-inf"), False), order)

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        return [
            (ll, max(1, len(t.split())))
            for (ll, _), t in zip(self.loglikelihood([("", t) for t in texts]), texts, strict=True)
        ]
