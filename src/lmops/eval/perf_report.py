"""The records of a serving benchmark (``lmops eval perf``, :mod:`lmops.eval.perf`): its
configuration, each request's timings, the statistics per level and the report, and the
table the CLI prints. The method and the metrics' definitions are in ``eval.perf``'s
docstring."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lmops.core.errors import UserError

__all__ = [
    "DEFAULT_RATE_CAP",
    "SEND_LAG_LIMIT_MS",
    "LevelResult",
    "PerfConfig",
    "PerfReport",
    "RequestResult",
    "Stats",
    "format_table",
]

# The cap on requests in flight in open-loop mode when no concurrency is given: far above
# rate x latency for the rates one client process can drive (a few thousand req/s).
DEFAULT_RATE_CAP = 1000
# A send lag p50 at or above this means the load generator fell behind its schedule.
SEND_LAG_LIMIT_MS = 1.0


class PerfConfig(BaseModel):
    """What ``run_perf`` measures; see the module docstring for the method."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str
    model: str
    api_key: str | None = Field(default=None, repr=False)
    concurrency: list[int] = Field(
        default_factory=lambda: [1, 8, 32],
        min_length=1,
        description="levels: requests in flight (closed loop), or the cap on them (open loop)",
    )
    request_rate: float | None = Field(
        default=None, description="open loop: arrivals per second (inf: all at once)"
    )
    burstiness: float = Field(default=1.0, description="gamma shape of the gaps; 1 = Poisson")
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

    @field_validator("request_rate")
    @classmethod
    def _rate(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:  # also NaN
            raise ValueError("must be > 0 requests/s (inf: all at once), or unset for closed loop")
        return v

    @field_validator("burstiness")
    @classmethod
    def _burst(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be > 0 (1: Poisson arrivals; < 1 burstier, > 1 more even)")
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
    send_lag_s: float | None = None  # open loop: first send - due time; None in closed loop

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
    # Open loop only (None in closed loop): the offered rate (req/s; the achieved one is
    # request_throughput), the rate requests were actually sent at, each send's lag behind
    # its due time, and how many requests found the cap full.
    request_rate: float | None = None
    send_rate: float | None = None
    send_lag_ms: Stats | None = None
    cap_waits: int | None = None
    results: list[RequestResult] = field(default_factory=list, repr=False)

    @classmethod
    def summarize(
        cls,
        concurrency: int,
        results: list[RequestResult],
        duration_s: float,
        *,
        request_rate: float | None = None,
        send_rate: float | None = None,
        cap_waits: int | None = None,
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
            request_rate=request_rate,
            send_rate=send_rate,
            send_lag_ms=Stats.of([r.send_lag_s for r in results if r.send_lag_s is not None]),
            cap_waits=cap_waits,
            results=results,
        )

    @property
    def lagged(self) -> bool:
        """Open loop: the sends' p50 lag reached ``SEND_LAG_LIMIT_MS`` (the level is invalid)."""
        return self.send_lag_ms is not None and self.send_lag_ms.median >= SEND_LAG_LIMIT_MS

    def to_dict(self, *, per_request: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if per_request:
            for row, r in zip(d["results"], self.results, strict=True):
                row["tpot_s"] = r.tpot_s
        else:
            del d["results"]
        d["request_rate"] = _json_float(self.request_rate)
        d["send_rate"] = _json_float(self.send_rate)
        return d


@dataclass
class PerfReport:
    """The result of ``run_perf``: the config (without the key) and one entry per level."""

    config: PerfConfig
    levels: list[LevelResult]
    warmup_error: str | None = None

    def to_dict(self, *, per_request: bool = False) -> dict[str, Any]:
        config = self.config.model_dump(exclude={"api_key"})
        for k in ("request_rate", "burstiness"):
            config[k] = _json_float(config[k])
        return {
            "config": config,
            "url": self.config.url(),
            "warmup_error": self.warmup_error,
            "levels": [lv.to_dict(per_request=per_request) for lv in self.levels],
        }


def _json_float(v: float | None) -> float | str | None:
    """JSON has no infinity: ``inf`` is written as the string "inf"."""
    return "inf" if v is not None and math.isinf(v) else v


def _config(endpoint: str, model: str, **kw: Any) -> PerfConfig:
    try:
        return PerfConfig(endpoint=endpoint, model=model, **kw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for our validators
        raise UserError(f"eval perf: {where}: {msg}") from None


# -- the CLI's table -------------------------------------------------------------------------------
def _num(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _stat(s: Stats | None, name: str) -> float | None:
    return None if s is None else float(getattr(s, name))


def _rate_text(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:g}"


def format_table(report: PerfReport) -> str:
    """A fixed-width table, one column per concurrency level (or cap), for ``lmops eval perf``."""
    cfg = report.config
    levels = report.levels
    open_loop = cfg.request_rate is not None
    rows: list[tuple[str, list[str]]] = [
        ("successful requests", [str(lv.completed) for lv in levels]),
        ("failed requests", [str(lv.failed) for lv in levels]),
        ("retried attempts", [str(lv.retried) for lv in levels]),
        ("duration (s)", [_num(lv.duration_s) for lv in levels]),
        ("total input tokens", [str(lv.total_input_tokens) for lv in levels]),
        ("total output tokens", [str(lv.total_output_tokens) for lv in levels]),
    ]
    if cfg.request_rate is not None:
        offered = _rate_text(cfg.request_rate)
        rows += [
            ("offered rate (req/s)", [offered for _ in levels]),
            ("sent rate (req/s)", [_num(lv.send_rate) for lv in levels]),
            (
                "send lag median (ms)",
                [_num(_stat(lv.send_lag_ms, "median")) for lv in levels],
            ),
            ("send lag p99 (ms)", [_num(_stat(lv.send_lag_ms, "p99")) for lv in levels]),
            ("cap waits", [str(lv.cap_waits) for lv in levels]),
        ]
    rows += [
        ("request throughput (req/s)", [_num(lv.request_throughput) for lv in levels]),
        ("output throughput (tok/s)", [_num(lv.output_throughput) for lv in levels]),
        ("total throughput (tok/s)", [_num(lv.total_token_throughput) for lv in levels]),
    ]
    metrics = (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2EL", "e2el_ms"))
    for label, attr in metrics:
        for stat in ("mean", "median", "p90", "p99"):
            cells = []
            for lv in levels:
                cells.append(_num(_stat(getattr(lv, attr), stat)))
            rows.append((f"{label} {stat} (ms)", cells))
    name = "cap" if open_loop else "c"
    head = [f"{name}={lv.concurrency}" for lv in levels]
    width = max(10, *(len(c) for _, cells in rows for c in cells), *(len(h) for h in head))
    label_w = max(len(label) for label, _ in rows)
    kind = "chat" if cfg.chat else "completions"
    lines = [
        f"{cfg.url()}  model={cfg.model}  {kind}  input≈{cfg.input_len}  "
        f"output={cfg.output_len}  {cfg.requests} requests per level",
    ]
    if cfg.request_rate is not None:
        shape = "Poisson" if cfg.burstiness == 1 else f"gamma, burstiness {cfg.burstiness:g}"
        lines.append(
            f"open loop: {_rate_text(cfg.request_rate)} req/s ({shape} arrivals, seed "
            f"{cfg.seed}); cap = the most requests in flight"
        )
    lines.append(" " * label_w + "".join(h.rjust(width + 2) for h in head))
    lines += [
        label.ljust(label_w) + "".join(c.rjust(width + 2) for c in cells) for label, cells in rows
    ]
    if report.warmup_error:
        lines.append(f"warm-up request failed: {report.warmup_error}")
    for lv in levels:
        for msg, n in sorted(lv.errors.items(), key=lambda kv: -kv[1]):
            lines.append(f"{name}={lv.concurrency}: {n} failed: {msg}")
        if lv.lagged:
            lines.append(
                f"{name}={lv.concurrency}: sends lagged {_num(_stat(lv.send_lag_ms, 'median'))}"
                f" ms (p50) behind schedule: the load generator (or the cap) could not keep "
                f"{_rate_text(lv.request_rate or 0)} req/s; the level is not valid"
            )
    return "\n".join(lines)
