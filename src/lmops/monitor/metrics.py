"""Prometheus metrics of the gateway, served at ``/metrics``: requests, tokens, TTFT and
end-to-end latency histograms, queue depth and running sequences per deployment,
rate-limit rejections, guardrail actions, retries and fallbacks."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ENGINE_HANGS", "ENGINE_REGISTRY", "ENGINE_RESTARTS", "Metrics"]

# The engine servers lmops launches (lmops.deploy.launcher) are supervised by the launching
# process, not a gateway worker, so their counters live in a registry of their own (with
# several workers, file-backed in the multiprocess directory like every other counter).
ENGINE_REGISTRY = CollectorRegistry()
ENGINE_RESTARTS = Counter(
    "lmops_engine_restarts",
    "Times a launched engine server was restarted after it died",
    ["deployment"],
    registry=ENGINE_REGISTRY,
)
ENGINE_HANGS = Counter(
    "lmops_engine_hangs",
    "Times a launched engine server stopped answering /health and was stopped",
    ["deployment"],
    registry=ENGINE_REGISTRY,
)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _sum_of(dep: Any, attr: str) -> Any:
    """A gauge callback reading the deployment's current engines (they change on reload);
    an embeddings model's encoder has no queue (0)."""

    def read() -> float:
        return float(sum(getattr(t.engine, attr, 0) for t, _ in dep.targets))

    return read


class Metrics:
    def __init__(self, registry: Any) -> None:
        self.reg = CollectorRegistry()
        self.requests = Counter(
            "lmops_requests", "Requests served", ["deployment", "status"], registry=self.reg
        )
        self.tokens = Counter(
            "lmops_tokens", "Tokens processed", ["deployment", "kind"], registry=self.reg
        )
        self.ttft = Histogram(
            "lmops_ttft_seconds",
            "Time to first token",
            ["deployment"],
            buckets=_LATENCY,
            registry=self.reg,
        )
        self.e2e = Histogram(
            "lmops_e2e_seconds",
            "End-to-end request latency",
            ["deployment"],
            buckets=_LATENCY,
            registry=self.reg,
        )
        self.tpot = Histogram(
            "lmops_tpot_seconds",
            "Time per output token after the first",
            ["deployment"],
            buckets=_LATENCY,
            registry=self.reg,
        )
        self.limited = Counter(
            "lmops_rate_limited",
            "Requests refused by flow control",
            ["deployment", "limit"],
            registry=self.reg,
        )
        self.guard = Counter(
            "lmops_guardrail_actions",
            "Guardrail actions",
            ["deployment", "direction", "action"],
            registry=self.reg,
        )
        # lmops.serve.fallbacks: a deployment tried again after a failure, and a request
        # moving on from a deployment to its fallback, by why the last try failed
        self.retries = Counter(
            "lmops_retries",
            "Deployments tried again after a failure before the reply began",
            ["deployment", "reason"],
            registry=self.reg,
        )
        self.fallbacks = Counter(
            "lmops_fallbacks",
            "Requests moved on from a deployment to its fallback",
            ["deployment", "fallback", "reason"],
            registry=self.reg,
        )
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        mode: dict[str, Any] = {"multiprocess_mode": "livesum"} if self.multiprocess else {}
        self.queue = Gauge(
            "lmops_queue_depth",
            "Requests waiting for an engine slot",
            ["deployment"],
            registry=self.reg,
            **mode,
        )
        self.running = Gauge(
            "lmops_running_sequences",
            "Sequences being decoded",
            ["deployment"],
            registry=self.reg,
            **mode,
        )
        self.deployments = registry.deployments
        if not self.multiprocess:  # read live at scrape time
            for name, dep in registry.deployments.items():
                self.queue.labels(name).set_function(_sum_of(dep, "queued"))
                self.running.labels(name).set_function(_sum_of(dep, "running"))

    def request(
        self,
        dep: str,
        status: int,
        prompt: int,
        completion: int,
        latency: float,
        ttft: float | None,
    ) -> None:
        if (
            self.multiprocess and dep in self.deployments
        ):  # no scrape-time callbacks across processes
            d = self.deployments[dep]
            self.queue.labels(dep).set(_sum_of(d, "queued")())
            self.running.labels(dep).set(_sum_of(d, "running")())
        self.requests.labels(dep, str(status)).inc()
        self.tokens.labels(dep, "prompt").inc(prompt)
        self.tokens.labels(dep, "completion").inc(completion)
        self.e2e.labels(dep).observe(latency)
        if ttft is not None:
            self.ttft.labels(dep).observe(ttft)
            if completion > 1:
                self.tpot.labels(dep).observe(max(0.0, latency - ttft) / (completion - 1))

    def rate_limited(self, dep: str, limit: str) -> None:
        self.limited.labels(dep, limit).inc()

    def guardrail(self, direction: str, action: str, dep: str) -> None:
        self.guard.labels(dep, direction, action).inc()

    def retry(self, dep: str, reason: str) -> None:
        self.retries.labels(dep, reason).inc()

    def fallback(self, dep: str, fallback: str, reason: str) -> None:
        self.fallbacks.labels(dep, fallback, reason).inc()

    def render(self) -> bytes:
        if self.multiprocess:
            # every worker's files, and those of the launching parent (restarts and hangs
            # of the engine servers it supervises: its counters were created with the
            # directory already set, so they are file-backed too)
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return bytes(generate_latest(reg))
        # one worker: the launcher runs in this process
        return bytes(generate_latest(self.reg)) + bytes(generate_latest(ENGINE_REGISTRY))
