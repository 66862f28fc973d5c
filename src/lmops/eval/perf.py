"""Serving performance of an OpenAI-compatible endpoint (``lmops eval perf``).

Two ways to load the server, one level at a time, each level ``requests`` streaming requests
over one HTTP/1.1 keep-alive client with at most *C* connections (``aiohttp``, as vLLM's
benchmark uses: its CPU per request is a fraction of ``httpx``'s, so the load generator
disturbs a server on the same machine less):

* **Closed loop** (``request_rate=None``, the default): for each concurrency level *C*, all
  requests are created at once and at most *C* are in flight (a semaphore; request rate
  unbounded): a new request starts as soon as one finishes. Latency then includes the
  queueing this loop makes by itself (at *C* in flight, p50 is about *C* / throughput).
* **Open loop** (``request_rate=R`` req/s, as ``vllm bench serve --request-rate``): the
  requests *arrive* on a schedule drawn before the level starts, whatever the server does,
  and each level's *C* (``concurrency``) is a **cap** on requests in flight (vLLM's
  ``--max-concurrency``): an arrival that finds *C* in flight waits for one to finish. Give a
  cap far above rate x latency (``DEFAULT_RATE_CAP``, the default in this mode) to measure
  latency at the offered rate alone. See *Open loop* below.

Each prompt is about ``input_len`` tokens of random common English words; each asks for
``max_tokens=output_len`` with ``stream_options.include_usage``. One untimed warm-up request
precedes the first level. The stream is read as server-sent events whose lines end in LF or
CRLF; each event's clock time is read as it is decoded.

The metrics are those of vLLM's serving benchmark (``vllm bench serve``,
``benchmarks/benchmark_serving.py``), measured on the client with ``time.perf_counter``:

Per request (timed from just before the request is sent, after the semaphore is taken):

* **TTFT** (time to first token): from sending the request to receiving the first
  *content chunk*: an SSE event whose first choice carries generated text (``text`` for
  completions; ``delta.content``, ``delta.reasoning_content``, ``delta.reasoning`` or
  ``delta.tool_calls`` for chat), non-empty.
* **ITL** (inter-token latency): the gaps between successive content chunks of one
  request, one value per gap. A server that packs several tokens into a chunk yields one
  (larger) gap for them, as in vLLM.
* **E2E latency** (E2EL): from sending the request to receiving its *last content
  chunk* (the closing ``finish_reason``/usage chunks and ``[DONE]`` do not count).
* **Output tokens**: ``usage.completion_tokens`` of the final usage chunk when the server
  sends one, else the number of content chunks. **Input tokens**: ``usage.prompt_tokens``
  when sent, else the number of prompt words.
* **TPOT** (time per output token, excluding the first): ``(E2EL - TTFT) /
  (output_tokens - 1)``, only for requests with more than one output token.

Per level (only successful requests count; times in ms):

* mean, median, standard deviation (population), p90 and p99 (linear interpolation, as
  ``numpy.percentile``) of TTFT, TPOT and E2EL over requests, and of ITL over all gaps of
  all requests pooled. ``None`` where there is no value (vLLM prints 0 there).
* **duration**: wall time from creating the level's requests to the last one finishing.
* **request throughput** = successful requests / duration (req/s);
  **output token throughput** = sum of output tokens / duration (tok/s);
  **total token throughput** = (sum of input + output tokens) / duration (tok/s).

Open loop (``request_rate``), per level (see :func:`arrival_times`):

* **Schedule**: ``n = requests`` gaps are drawn from a gamma distribution with shape
  ``burstiness`` and mean ``1 / request_rate`` (``burstiness=1``: exponential gaps, a
  Poisson process; below 1 burstier, above 1 more even; ``inf``: evenly spaced), from
  ``numpy.random.default_rng(seed)`` (one generator for the run, levels drawn in order, so
  a run is reproducible and two runs with the same seed and sizes offer the same arrivals).
  Request *i* is due at the sum of the first *i + 1* gaps, all scaled by one factor so that
  the last is due at exactly ``n / request_rate`` s: the level offers exactly
  ``request_rate`` (raw gamma sums miss it by about ``1 / sqrt(n * burstiness)``; vLLM
  rescales the same way). ``request_rate=inf``: every request is due at once.
* Each request is sent at its due time (a dispatcher sleeps until then and starts it). Its
  TTFT, ITL and E2EL are timed **from the actual send**, as in vLLM, not from the due time.
* **send lag** (``send_lag_ms``, the Stats above): actual send - due time, per request, the
  wait for a slot under the cap included. asyncio's timers wake in whole milliseconds
  (``epoll``), rounded up, so the dispatcher aims 0.5 ms early: sends land within about
  +-0.5 ms of their due time (a lag can be slightly negative), p50 ~0.1-0.2 ms on an idle
  client. A p50 of ``SEND_LAG_LIMIT_MS`` (1 ms) or more means the load generator (or the
  cap) could not keep the schedule and the server did not see the offered rate: the level
  is not valid (``LevelResult.lagged``; the table says so).
* **cap waits** (``cap_waits``): how many requests found *C* in flight when they were due.
* **offered rate** (``request_rate``) against the **sent rate** (``send_rate``: requests /
  time from the start of the schedule to the last send; the offered rate when the client
  keeps up, ``inf`` when all were sent at once) and the **achieved rate**, the request
  throughput above: successful requests / duration, where the duration runs from the start
  of the schedule (not the first send) to the last request finishing, so a server that keeps
  up achieves just under the offered rate, and one that falls behind less than the sent rate.

Where this differs from vLLM, on purpose: vLLM's chat client counts *any* chunk with a
choice as a token (so an opening role-only chunk that arrives before the first token
makes its TTFT too small, and a closing empty-delta chunk adds a near-zero ITL); here only
chunks with text count. A request that fails is retried up to ``retries`` times (HTTP
408, 409, 429 and 5xx, transport errors, timeouts, an ``error`` event in the stream), with
a short back-off; its figures are those of the attempt that succeeded. A request that
still fails is counted in ``failed`` with its error; the run never stops for it.
``timeout_s`` bounds each attempt, from sending to the end of the stream.

``endpoint`` is a base URL (``http://host:8000`` or ``http://host:8000/v1``) or the full
URL of ``/v1/chat/completions`` or ``/v1/completions``. ``max_tokens`` is sent (not
``max_completion_tokens``) because every OpenAI-compatible server accepts it; servers
that can ignore EOS (vLLM, SGLang) take ``extra_body={"ignore_eos": True}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np

from lmops.core.errors import UserError
from lmops.core.sse import SSEDecoder
from lmops.eval.perf_report import (
    DEFAULT_RATE_CAP,
    SEND_LAG_LIMIT_MS,
    LevelResult,
    PerfConfig,
    PerfReport,
    RequestResult,
    Stats,
    _config,
    format_table,
)

__all__ = [
    "DEFAULT_RATE_CAP",
    "SEND_LAG_LIMIT_MS",
    "LevelResult",
    "PerfConfig",
    "PerfReport",
    "RequestResult",
    "Stats",
    "arrival_times",
    "arun_perf",
    "format_table",
    "run_perf",
]

# Common English words that are one token in the usual BPE vocabularies, so a prompt of
# N words is about N tokens (plus the chat template's few).
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them these so some her "
    "would make like him into time has look two more write go see number no way could "
    "people my than first water been call who oil its now find long down day did get come "
    "made may part over new sound take only little work know place year live me back give "
    "most very after thing our just name good sentence man think say great where help "
    "through much before line right too mean old any same tell boy follow came want show"
).split()

_RETRY_STATUS = frozenset({408, 409, 429})
_DRAIN_S = 0.5  # the longest wait for the end of a body after [DONE]

# asyncio's own loop waits for timers in whole milliseconds, rounded up (epoll), so a sleep
# ends 0-1 ms late; aiming half of that early centres sends on their due time.
_TIMER_AIM_S = 0.0005


def run_perf(
    endpoint: str,
    model: str,
    *,
    api_key: str | None = None,
    concurrency: list[int] | None = None,
    request_rate: float | None = None,
    burstiness: float = 1.0,
    requests: int = 64,
    input_len: int = 128,
    output_len: int = 128,
    chat: bool = True,
    timeout_s: float = 300.0,
    retries: int = 2,
    seed: int = 0,
    warmup: bool = True,
    extra_body: dict[str, Any] | None = None,
    on_level: Callable[[LevelResult], None] | None = None,
) -> PerfReport:
    """Measure ``endpoint`` at each concurrency level (blocking; see the module docstring).

    ``request_rate=None`` is the closed loop (``concurrency`` requests in flight, default
    1, 8, 32); a rate (req/s) the open loop, where ``concurrency`` caps the requests in flight
    (default ``[DEFAULT_RATE_CAP]``) and ``burstiness`` shapes the arrivals.
    Raises ``UserError`` for an invalid setting; failed requests are counted, not raised.
    ``on_level`` is called with each level's result as soon as it is done.
    """
    if concurrency is None:
        concurrency = [1, 8, 32] if request_rate is None else [DEFAULT_RATE_CAP]
    config = _config(
        endpoint,
        model,
        api_key=api_key,
        concurrency=concurrency,
        request_rate=request_rate,
        burstiness=burstiness,
        requests=requests,
        input_len=input_len,
        output_len=output_len,
        chat=chat,
        timeout_s=timeout_s,
        retries=retries,
        seed=seed,
        warmup=warmup,
        extra_body=extra_body or {},
    )
    return asyncio.run(arun_perf(config, on_level=on_level))


async def arun_perf(
    config: PerfConfig, *, on_level: Callable[[LevelResult], None] | None = None
) -> PerfReport:
    """``run_perf`` for callers already inside an event loop."""
    rng = random.Random(config.seed)
    headers = {"Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    url = config.url()
    warmup_error: str | None = None
    if config.warmup:
        async with _session(1, headers) as session:
            r = await _request(session, url, _payload(config, rng), config)
            warmup_error = None if r.success else r.error
    # Arrivals have a generator of their own, so the prompts are the same in both modes.
    arrivals = np.random.default_rng(config.seed)
    levels: list[LevelResult] = []
    for c in config.concurrency:
        payloads = [_payload(config, rng) for _ in range(config.requests)]
        if config.request_rate is None:
            level = await _run_level(config, c, url, headers, payloads)
        else:
            due = arrival_times(
                config.requests, config.request_rate, config.burstiness, seed=arrivals
            )
            level = await _run_open_level(config, c, url, headers, payloads, due)
        levels.append(level)
        if on_level is not None:
            on_level(level)
    return PerfReport(config=config, levels=levels, warmup_error=warmup_error)


async def _run_level(
    config: PerfConfig,
    concurrency: int,
    url: str,
    headers: dict[str, str],
    payloads: list[bytes],
) -> LevelResult:
    """All ``payloads`` at once, at most ``concurrency`` in flight, on one keep-alive session."""
    sem = asyncio.Semaphore(concurrency)
    async with _session(concurrency, headers) as session:

        async def limited(payload: bytes) -> RequestResult:
            async with sem:
                return await _request(session, url, payload, config)

        start = time.perf_counter()
        results = await asyncio.gather(*(limited(p) for p in payloads))
        duration = time.perf_counter() - start
    return LevelResult.summarize(concurrency, list(results), duration)


def arrival_times(
    n: int, rate: float, burstiness: float = 1.0, *, seed: int | np.random.Generator = 0
) -> list[float]:
    """When each of ``n`` requests is due, in seconds from the start of a level, ascending.

    The gaps are gamma(shape ``burstiness``, scale ``1 / (rate * burstiness)``): mean
    ``1 / rate``, squared coefficient of variation ``1 / burstiness`` (1: exponential gaps,
    Poisson arrivals). Request *i* is due at the sum of the first *i + 1* gaps, all scaled by
    one factor so that the last is due at exactly ``n / rate``. ``rate=inf``: all due at 0;
    ``burstiness=inf``: evenly spaced, request *i* at ``(i + 1) / rate``. ``seed``: an int,
    or a ``numpy`` Generator to draw from (advancing its state).
    """
    if not rate > 0:
        raise UserError(f"eval perf: request_rate: must be > 0 requests/s, got {rate}")
    if not burstiness > 0:
        raise UserError(f"eval perf: burstiness: must be > 0, got {burstiness}")
    if n < 1:
        return []
    if math.isinf(rate):
        return [0.0] * n
    if math.isinf(burstiness):
        return (np.arange(1, n + 1, dtype=np.float64) / rate).tolist()
    gaps = np.random.default_rng(seed).gamma(burstiness, 1.0 / (rate * burstiness), size=n)
    due = np.cumsum(gaps)
    if due[-1] > 0:
        due *= (n / rate) / due[-1]
    return [float(t) for t in due]


async def _run_open_level(
    config: PerfConfig,
    cap: int,
    url: str,
    headers: dict[str, str],
    payloads: list[bytes],
    due_s: list[float],
) -> LevelResult:
    """Each payload sent when due (seconds from the level's start), at most ``cap`` in flight."""
    sem = asyncio.Semaphore(cap)
    cap_waits = 0
    async with _session(cap, headers) as session:

        async def arrive(payload: bytes, due: float) -> RequestResult:
            nonlocal cap_waits
            if sem.locked():
                cap_waits += 1
            async with sem:
                lag = time.perf_counter() - due
                result = await _request(session, url, payload, config)
            result.send_lag_s = lag
            return result

        # uvloop rounds timers to the nearest millisecond already: no aiming there.
        aim = _TIMER_AIM_S if isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop) else 0
        tasks: list[asyncio.Task[RequestResult]] = []
        start = time.perf_counter()
        try:
            for payload, offset in zip(payloads, due_s, strict=True):
                due = start + offset
                # One dispatcher sleeps until each due time; requests already due (or due
                # within the aim) are started without yielding.
                if (wait := due - aim - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.create_task(arrive(payload, due)))
            results = await asyncio.gather(*tasks)
        except BaseException:  # cancelled: leave no request running
            for t in tasks:
                t.cancel()
            raise
        duration = time.perf_counter() - start
    last_send = max(t + (r.send_lag_s or 0.0) for t, r in zip(due_s, results, strict=True))
    return LevelResult.summarize(
        cap,
        list(results),
        duration,
        request_rate=config.request_rate,
        send_rate=len(results) / last_send if last_send > 0 else math.inf,
        cap_waits=cap_waits,
    )


def _session(connections: int, headers: dict[str, str]) -> aiohttp.ClientSession:
    # No aiohttp timeout: each attempt is bounded by ``asyncio.timeout(timeout_s)`` instead,
    # so a slow attempt fails with the one documented error text.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=None),
    )


def _payload(config: PerfConfig, rng: random.Random) -> bytes:
    """One request body, serialised once, before the level starts."""
    prompt = " ".join(rng.choice(_WORDS) for _ in range(config.input_len))
    body: dict[str, Any] = {"model": config.model}
    if config.chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    body.update(max_tokens=config.output_len, stream=True, stream_options={"include_usage": True})
    body.update(config.extra_body)  # the user's fields win, e.g. stream_options or ignore_eos
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def _request(
    session: aiohttp.ClientSession, url: str, payload: bytes, config: PerfConfig
) -> RequestResult:
    """Send one request, retrying retryable failures; the last attempt's result counts."""
    attempt = 0
    while True:
        attempt += 1
        result, retryable = await _attempt(session, url, payload, config)
        result.attempts = attempt
        if result.success or not retryable or attempt > config.retries:
            return result
        await asyncio.sleep(min(0.05 * 2 ** (attempt - 1), 1.0))


async def _attempt(
    session: aiohttp.ClientSession, url: str, payload: bytes, config: PerfConfig
) -> tuple[RequestResult, bool]:
    """One timed attempt; returns the result and whether a failure is worth retrying."""
    st = time.perf_counter()
    measure = _Measure(st)
    try:
        async with asyncio.timeout(config.timeout_s):
            async with session.post(url, data=payload) as resp:
                if resp.status != 200:
                    status = resp.status
                    retry = status in _RETRY_STATUS or status >= 500
                    return RequestResult(False, error=_http_error(status, await resp.read())), retry
                sse = SSEDecoder()
                content = resp.content
                while not measure.done:
                    chunk = await content.readany()  # b"" at the end of the body
                    for data in sse.feed(chunk) if chunk else sse.close():
                        if (failure := measure.event(data)) is not None:
                            return failure
                        if measure.done:
                            break
                    if not chunk:
                        break
                await _drain(content)
    except TimeoutError:
        return RequestResult(False, error=f"timed out after {config.timeout_s:g} s"), True
    except (aiohttp.ClientError, OSError) as e:
        return RequestResult(False, error=_transport_error(e)), True
    return measure.result(config.input_len)


async def _drain(content: aiohttp.StreamReader) -> None:
    """Read the rest of the body (after ``[DONE]``: its end), briefly.

    aiohttp closes a connection whose response was not read to its end, so without this
    every request would pay for a new connection. Servers end the response right after
    ``[DONE]``; one that holds it open costs at most ``_DRAIN_S`` and its connection.
    """
    # The request's figures are complete: nothing that happens here can fail it.
    with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
        async with asyncio.timeout(_DRAIN_S):
            while await content.readany():
                pass


class _Measure:
    """The timings and counts of one attempt, fed one SSE ``data`` payload at a time."""

    __slots__ = ("chunks", "done", "itl", "last", "start", "ttft", "usage_in", "usage_out")

    def __init__(self, start: float) -> None:
        self.start = start
        self.last = start
        self.ttft: float | None = None
        self.itl: list[float] = []
        self.chunks = 0
        self.usage_out: int | None = None
        self.usage_in: int | None = None
        self.done = False

    def event(self, data: bytes) -> tuple[RequestResult, bool] | None:
        """Account one event, timed now; a failed attempt's result, else None."""
        # The clock is read per event, as it is decoded (as vLLM's client does), so events
        # that came in one network read are a few microseconds apart, not all at one time.
        now = time.perf_counter()
        if data == b"[DONE]":
            self.done = True
            return None
        try:
            event = json.loads(data.decode())  # str: json.loads skips guessing the encoding
        except ValueError:  # bad JSON or bad UTF-8
            text = data.decode("utf-8", "replace")[:80]
            return RequestResult(False, error=f"bad SSE data: {text!r}"), False
        if not isinstance(event, dict):
            return None
        if event.get("error"):
            return RequestResult(False, error=_error_text(event)), True
        choices = event.get("choices")
        if choices and _has_text(choices[0]):
            if self.ttft is None:
                self.ttft = now - self.start
            else:
                self.itl.append(now - self.last)
            self.last = now
            self.chunks += 1
        usage = event.get("usage")
        if isinstance(usage, dict):
            if isinstance(out := usage.get("completion_tokens"), int):
                self.usage_out = out
            if isinstance(inp := usage.get("prompt_tokens"), int):
                self.usage_in = inp
        return None

    def result(self, prompt_words: int) -> tuple[RequestResult, bool]:
        """The attempt's result once its stream has ended."""
        if self.ttft is None:
            return RequestResult(False, error="the stream ended without a content chunk"), False
        return (
            RequestResult(
                True,
                ttft_s=self.ttft,
                itl_s=self.itl,
                e2el_s=self.last - self.start,
                output_tokens=self.chunks if self.usage_out is None else self.usage_out,
                input_tokens=prompt_words if self.usage_in is None else self.usage_in,
            ),
            False,
        )


def _has_text(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    if choice.get("text"):
        return True
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    return any(delta.get(k) for k in ("content", "reasoning_content", "reasoning", "tool_calls"))


def _error_text(body: Any) -> str:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])[:200]
    if isinstance(err, str):
        return err[:200]
    return json.dumps(body)[:200]


def _http_error(status: int, body: bytes) -> str:
    try:
        detail = _error_text(json.loads(body))
    except (json.JSONDecodeError, UnicodeDecodeError):
        detail = body.decode("utf-8", "replace").strip()[:200]
    return f"HTTP {status}: {detail}" if detail else f"HTTP {status}"


def _transport_error(e: BaseException) -> str:
    # A refused or failed connection reads "ConnectError: ...", the name reports have
    # always used for it, whichever client library raised it.
    name = "ConnectError" if isinstance(e, aiohttp.ClientConnectorError) else type(e).__name__
    return f"{name}: {e}".rstrip(": ")
