"""Serving performance of an OpenAI-compatible endpoint (``lmops eval perf``).

For each concurrency level *C*, ``requests`` streaming requests are created at once and at
most *C* are in flight (a semaphore; request rate unbounded), over one HTTP/1.1 keep-alive
client with *C* connections. Each prompt is about ``input_len`` tokens of random common
English words; each asks for ``max_tokens=output_len`` with
``stream_options.include_usage``. One untimed warm-up request precedes the first level.

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
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lmops.core.errors import UserError

__all__ = [
    "LevelResult",
    "PerfConfig",
    "PerfReport",
    "RequestResult",
    "Stats",
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


class PerfConfig(BaseModel):
    """What ``run_perf`` measures; see the module docstring for the method."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str
    model: str
    api_key: str | None = Field(default=None, repr=False)
    concurrency: list[int] = Field(default_factory=lambda: [1, 8, 32], min_length=1)
    requests: int = Field(default=64, ge=1, description="requests per concurrency level")
    input_len: int = Field(default=128, ge=1, description="prompt length, ~tokens (words)")
    output_len: int = Field(default=128, ge=1, description="max_tokens of each request")
    chat: bool = True
    timeout_s: float = Field(default=300.0, gt=0, description="per attempt, send to end")
    retries: int = Field(default=2, ge=0, description="extra attempts after a failure")
    seed: int = 0
    warmup: bool = True
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError("every concurrency level must be >= 1")
        return v

    @field_validator("endpoint")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    def url(self) -> str:
        """The completions URL requests go to."""
        path = "/chat/completions" if self.chat else "/completions"
        if self.endpoint.endswith(("/chat/completions", "/completions")):
            return self.endpoint
        if self.endpoint.endswith("/v1"):
            return self.endpoint + path
        return self.endpoint + "/v1" + path


@dataclass
class RequestResult:
    """One request: times in seconds; ``itl_s`` has one gap per content chunk after the first."""

    success: bool
    ttft_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    e2el_s: float = 0.0
    output_tokens: int = 0
    input_tokens: int = 0
    attempts: int = 1
    error: str = ""

    @property
    def tpot_s(self) -> float | None:
        """(E2EL - TTFT) / (output_tokens - 1); None for one output token or fewer."""
        if not self.success or self.output_tokens <= 1:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass
class Stats:
    """Summary of one metric over a level, in milliseconds."""

    mean: float
    median: float
    std: float
    p90: float
    p99: float
    count: int

    @classmethod
    def of(cls, seconds: list[float]) -> Stats | None:
        if not seconds:
            return None
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        p90, p99 = np.percentile(ms, [90, 99])
        return cls(
            mean=float(ms.mean()),
            median=float(np.median(ms)),
            std=float(ms.std()),
            p90=float(p90),
            p99=float(p99),
            count=len(seconds),
        )


@dataclass
class LevelResult:
    """All requests of one concurrency level and their summary."""

    concurrency: int
    requests: int
    completed: int
    failed: int
    retried: int  # extra attempts made, over all requests
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # successful req/s
    output_throughput: float  # output tok/s
    total_token_throughput: float  # (input + output) tok/s
    ttft_ms: Stats | None
    tpot_ms: Stats | None
    itl_ms: Stats | None
    e2el_ms: Stats | None
    errors: dict[str, int]  # error message -> number of failed requests
    results: list[RequestResult] = field(default_factory=list, repr=False)

    @classmethod
    def summarize(
        cls, concurrency: int, results: list[RequestResult], duration_s: float
    ) -> LevelResult:
        ok = [r for r in results if r.success]
        errors: dict[str, int] = {}
        for r in results:
            if not r.success:
                errors[r.error] = errors.get(r.error, 0) + 1
        total_in = sum(r.input_tokens for r in ok)
        total_out = sum(r.output_tokens for r in ok)
        dur = max(duration_s, 1e-9)
        return cls(
            concurrency=concurrency,
            requests=len(results),
            completed=len(ok),
            failed=len(results) - len(ok),
            retried=sum(r.attempts - 1 for r in results),
            duration_s=duration_s,
            total_input_tokens=total_in,
            total_output_tokens=total_out,
            request_throughput=len(ok) / dur,
            output_throughput=total_out / dur,
            total_token_throughput=(total_in + total_out) / dur,
            ttft_ms=Stats.of([r.ttft_s for r in ok]),
            tpot_ms=Stats.of([t for r in ok if (t := r.tpot_s) is not None]),
            itl_ms=Stats.of([gap for r in ok for gap in r.itl_s]),
            e2el_ms=Stats.of([r.e2el_s for r in ok]),
            errors=errors,
            results=results,
        )

    def to_dict(self, *, per_request: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if per_request:
            for row, r in zip(d["results"], self.results, strict=True):
                row["tpot_s"] = r.tpot_s
        else:
            del d["results"]
        return d


@dataclass
class PerfReport:
    """The result of ``run_perf``: the config (without the key) and one entry per level."""

    config: PerfConfig
    levels: list[LevelResult]
    warmup_error: str | None = None

    def to_dict(self, *, per_request: bool = False) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(exclude={"api_key"}),
            "url": self.config.url(),
            "warmup_error": self.warmup_error,
            "levels": [lv.to_dict(per_request=per_request) for lv in self.levels],
        }


def _config(endpoint: str, model: str, **kw: Any) -> PerfConfig:
    try:
        return PerfConfig(endpoint=endpoint, model=model, **kw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise UserError(f"eval perf: {where}: {err['msg']}") from None


def run_perf(
    endpoint: str,
    model: str,
    *,
    api_key: str | None = None,
    concurrency: list[int] | None = None,
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

    Raises ``UserError`` for an invalid setting; failed requests are counted, not raised.
    ``on_level`` is called with each level's result as soon as it is done.
    """
    config = _config(
        endpoint,
        model,
        api_key=api_key,
        concurrency=[1, 8, 32] if concurrency is None else concurrency,
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
        async with _client(1, config.timeout_s) as client:
            r = await _request(client, url, headers, _payload(config, rng), config)
            warmup_error = None if r.success else r.error
    levels: list[LevelResult] = []
    for c in config.concurrency:
        payloads = [_payload(config, rng) for _ in range(config.requests)]
        level = await _run_level(config, c, url, headers, payloads)
        levels.append(level)
        if on_level is not None:
            on_level(level)
    return PerfReport(config=config, levels=levels, warmup_error=warmup_error)


async def _run_level(
    config: PerfConfig,
    concurrency: int,
    url: str,
    headers: dict[str, str],
    payloads: list[dict[str, Any]],
) -> LevelResult:
    """All ``payloads`` at once, at most ``concurrency`` in flight, on one keep-alive client."""
    sem = asyncio.Semaphore(concurrency)
    async with _client(concurrency, config.timeout_s) as client:

        async def limited(payload: dict[str, Any]) -> RequestResult:
            async with sem:
                return await _request(client, url, headers, payload, config)

        start = time.perf_counter()
        results = await asyncio.gather(*(limited(p) for p in payloads))
        duration = time.perf_counter() - start
    return LevelResult.summarize(concurrency, list(results), duration)


def _client(connections: int, timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(http1=True, http2=False, limits=limits, timeout=timeout_s)


def _payload(config: PerfConfig, rng: random.Random) -> dict[str, Any]:
    prompt = " ".join(rng.choice(_WORDS) for _ in range(config.input_len))
    body: dict[str, Any] = {"model": config.model}
    if config.chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    body.update(max_tokens=config.output_len, stream=True, stream_options={"include_usage": True})
    body.update(config.extra_body)  # the user's fields win, e.g. stream_options or ignore_eos
    return body


async def _request(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    payload: dict[str, Any],
    config: PerfConfig,
) -> RequestResult:
    """Send one request, retrying retryable failures; the last attempt's result counts."""
    attempt = 0
    while True:
        attempt += 1
        result, retryable = await _attempt(client, url, headers, payload, config)
        result.attempts = attempt
        if result.success or not retryable or attempt > config.retries:
            return result
        await asyncio.sleep(min(0.05 * 2 ** (attempt - 1), 1.0))


async def _attempt(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    payload: dict[str, Any],
    config: PerfConfig,
) -> tuple[RequestResult, bool]:
    """One timed attempt; returns the result and whether a failure is worth retrying."""
    prompt_words = config.input_len
    st = time.perf_counter()
    last = st
    ttft: float | None = None
    itl: list[float] = []
    chunks = 0
    usage_out: int | None = None
    usage_in: int | None = None
    try:
        async with asyncio.timeout(config.timeout_s):
            async with client.stream("POST", url, json=payload, headers=headers) as resp:
                if resp.status_code != 200:
                    body = await resp.aread()
                    status = resp.status_code
                    retry = status in _RETRY_STATUS or status >= 500
                    return RequestResult(False, error=_http_error(status, body)), retry
                async for data in _sse_data(resp):
                    if data == "[DONE]":
                        break
                    now = time.perf_counter()
                    try:
                        event = json.loads(data)
                    except json.JSONDecodeError:
                        return RequestResult(False, error=f"bad SSE data: {data[:80]!r}"), False
                    if not isinstance(event, dict):
                        continue
                    if event.get("error"):
                        return RequestResult(False, error=_error_text(event)), True
                    choices = event.get("choices")
                    if choices and _has_text(choices[0]):
                        if ttft is None:
                            ttft = now - st
                        else:
                            itl.append(now - last)
                        last = now
                        chunks += 1
                    usage = event.get("usage")
                    if isinstance(usage, dict):
                        if isinstance(usage.get("completion_tokens"), int):
                            usage_out = usage["completion_tokens"]
                        if isinstance(usage.get("prompt_tokens"), int):
                            usage_in = usage["prompt_tokens"]
    except TimeoutError:
        return RequestResult(False, error=f"timed out after {config.timeout_s:g} s"), True
    except httpx.HTTPError as e:
        return RequestResult(False, error=f"{type(e).__name__}: {e}".rstrip(": ")), True
    if ttft is None:
        return RequestResult(False, error="the stream ended without a content chunk"), False
    return (
        RequestResult(
            True,
            ttft_s=ttft,
            itl_s=itl,
            e2el_s=last - st,
            output_tokens=chunks if usage_out is None else usage_out,
            input_tokens=prompt_words if usage_in is None else usage_in,
        ),
        False,
    )


async def _sse_data(resp: httpx.Response) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined by newlines)."""
    lines: list[str] = []
    async for line in resp.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith(":"):  # a comment, e.g. a keep-alive ping
            continue
        name, _, value = line.partition(":")
        if name == "data":
            lines.append(value[1:] if value.startswith(" ") else value)
    if lines:
        yield "\n".join(lines)


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


# -- the CLI's table -------------------------------------------------------------------------------
def _num(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def format_table(report: PerfReport) -> str:
    """A fixed-width table, one column per concurrency level, for ``lmops eval perf``."""
    cfg = report.config
    levels = report.levels
    rows: list[tuple[str, list[str]]] = [
        ("successful requests", [str(lv.completed) for lv in levels]),
        ("failed requests", [str(lv.failed) for lv in levels]),
        ("retried attempts", [str(lv.retried) for lv in levels]),
        ("duration (s)", [_num(lv.duration_s) for lv in levels]),
        ("total input tokens", [str(lv.total_input_tokens) for lv in levels]),
        ("total output tokens", [str(lv.total_output_tokens) for lv in levels]),
        ("request throughput (req/s)", [_num(lv.request_throughput) for lv in levels]),
        ("output throughput (tok/s)", [_num(lv.output_throughput) for lv in levels]),
        ("total throughput (tok/s)", [_num(lv.total_token_throughput) for lv in levels]),
    ]
    metrics = (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2EL", "e2el_ms"))
    for label, attr in metrics:
        for stat in ("mean", "median", "p90", "p99"):
            cells = []
            for lv in levels:
                s: Stats | None = getattr(lv, attr)
                cells.append(_num(None if s is None else getattr(s, stat)))
            rows.append((f"{label} {stat} (ms)", cells))
    head = [f"c={lv.concurrency}" for lv in levels]
    width = max(10, *(len(c) for _, cells in rows for c in cells), *(len(h) for h in head))
    label_w = max(len(label) for label, _ in rows)
    kind = "chat" if cfg.chat else "completions"
    lines = [
        f"{cfg.url()}  model={cfg.model}  {kind}  input≈{cfg.input_len}  "
        f"output={cfg.output_len}  {cfg.requests} requests per level",
        " " * label_w + "".join(h.rjust(width + 2) for h in head),
    ]
    lines += [
        label.ljust(label_w) + "".join(c.rjust(width + 2) for c in cells) for label, cells in rows
    ]
    if report.warmup_error:
        lines.append(f"warm-up request failed: {report.warmup_error}")
    for lv in levels:
        for msg, n in sorted(lv.errors.items(), key=lambda kv: -kv[1]):
            lines.append(f"c={lv.concurrency}: {n} failed: {msg}")
    return "\n".join(lines)
