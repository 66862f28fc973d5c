"""The operational monitors (latency, TTFT, error rate) watch the serving, not the model's
inputs and outputs: a faster server alerts but retrains nothing unless the watch opts in,
and a timing needs a move users would notice (the median by 20 %), not just a tiny p."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from lmops.pipelines.retrain import WatchSpec, watch_once
from tests.monitor.traffic import cooking, log_chat


def _plant(store: Any, factor: float, n: int = 80) -> None:
    """The same prompts and answers twice, the second time ``factor`` times as slow."""
    rng = np.random.default_rng(0)
    for k, (start, scale) in enumerate(((150, 1.0), (30, factor))):
        at = datetime.now(UTC) - timedelta(minutes=start)
        for i in range(n):
            log_chat(
                store,
                "chat",
                cooking(i),
                "Use garlic.",
                at=at + timedelta(seconds=i),
                latency_ms=float(5410 * scale * rng.uniform(0.97, 1.03)),
                i=k * n + i,
            )


def _spec(tmp_path: Path, **retrain: Any) -> WatchSpec:
    (tmp_path / "retrain.yaml").write_text("name: r\nsteps: {}\n")
    return WatchSpec.model_validate(
        {
            "check": {
                "deployment": "chat",
                "since": "1h",
                "reference_since": "3h",
                "monitor": {"embedder": "hashed", "plots": False, "permutations": 100},
            },
            "retrain": {
                "pipeline": "retrain.yaml",
                "champion": "no-such-model@production",
                "challenger_step": "sft",
                **retrain,
            },
        }
    )


def test_a_small_slowdown_is_not_drift(store: Any, tmp_path: Path) -> None:
    from lmops.monitor.checks import check_deployment

    _plant(store, 1.07)
    report, _ = check_deployment(store, _spec(tmp_path).check)
    lat = report.monitor("latency_ms")
    assert lat.p_value is not None and lat.p_value < 1e-6  # KS alone would call it drift
    assert not lat.drift and report.status == "ok", report.drifted
    change = next(t for t in lat.tests if t.test == "median_change")
    assert 0.05 < change.statistic < 0.09 and change.threshold == 0.2


def test_a_faster_server_alerts_but_does_not_retrain(cli: Any, store: Any, tmp_path: Path) -> None:
    _plant(store, 2517 / 5410)
    d = watch_once(store, _spec(tmp_path), tmp_path)
    assert d.status == "drift" and d.operational_drift == ["latency_ms"]
    assert not d.triggered and d.decision is None and "latency_ms" in d.alerts_firing
    assert store.assets.list("retrain_decision") == []

    # opted in: latency drift is a trigger (the round then fails on the missing champion)
    d = watch_once(store, _spec(tmp_path, triggers=["operational"], cooldown_s=0), tmp_path)
    assert d.triggered and d.triggers == ["operational drift: latency_ms"]

    watch = tmp_path / "watch.yaml"
    import yaml

    watch.write_text(yaml.safe_dump(_spec(tmp_path).model_dump(mode="json", exclude_unset=True)))
    r = cli("monitor", "watch", str(watch), "--once")
    assert r.code == 0 and "triggered" not in r.out, r.out
    assert "operational drift, not a retrain trigger: latency_ms" in r.out


def test_the_tokenizer_routes_429s_are_not_the_models_traffic(store: Any) -> None:
    """The gateway logs a tokenizer route's 429 (the key's rpm; no text) under the
    deployment the key reaches: read as traffic, a client counting tokens with a tight key
    (lm-eval) made half the window errors and token-less prompts, though the model answered
    every request it got. `lmops usage` still counts them."""
    from lmops.monitor.features import read_traffic, traffic_sample
    from lmops.monitor.metering import log_request, usage

    at = datetime.now(UTC) - timedelta(minutes=5)
    for i in range(10):
        log_chat(store, "chat", cooking(i), "Use garlic.", at=at + timedelta(seconds=i), i=i)
        for endpoint in ("tokenize", "detokenize"):
            log_request(store, at=at + timedelta(seconds=i, milliseconds=500), status=429,
                        request_id=f"{endpoint}-{i}", endpoint=endpoint, deployment="chat",
                        key_name="lm-eval", error="rate limit reached")  # fmt: skip
    sample = traffic_sample(read_traffic(store, "chat", last=10), "chat")
    assert len(sample) == 10 and not any(sample.error)
    assert sample.prompt_tokens == [float(len(cooking(i).split())) for i in range(10)]
    used = usage(store, key="lm-eval")
    assert used.total.requests == used.total.errors == 20
