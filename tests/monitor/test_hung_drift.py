"""A hung or failing deployment is an availability problem, not a change in what users ask
or what the model answers: through a real gateway on 127.0.0.1, a window of requests that
time out or get a 5xx from the model's server (logged as the gateway logs them: no answer,
no tokens, or a prompt count where a stream broke after its 200) moves the error rate, an operational monitor, and no content monitor; the
closed loop alerts and starts no retraining round."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lmops.monitor.drift import OPERATIONAL
from lmops.pipelines.retrain import WatchSpec, watch_once
from lmops.serve.deployments import DeploymentSpec
from lmops.serve.fake import fake_server, serve_app
from lmops.serve.server import gateway_app
from tests.monitor.traffic import cooking

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")

N = 30  # requests per window (the monitors need 20 values a side)


def _serve(store: Any, secret: str, upstream: dict[str, Any], prompts: list[str]) -> list[int]:
    """``prompts`` sent through a gateway whose deployment ``chat`` calls a fake model
    server started with ``upstream``; every third one streamed. Returns the statuses (0: a
    stream that began and broke)."""
    spec = DeploymentSpec(
        name="chat",
        upstream="http://127.0.0.1:1/v1",  # replaced below, once the server has a port
        upstream_model="chat",
        log_bodies=True,
        upstream_timeout_s=0.3,
        # moderation is not what this test is about (and costs CPU per request)
        guardrails={"moderation_input": "off", "moderation_output": "off"},
    )
    statuses = []
    with ExitStack() as stack:
        url = stack.enter_context(fake_server(model="chat", **upstream))
        spec = spec.model_copy(update={"upstream": f"{url}/v1"})
        gw = stack.enter_context(serve_app(gateway_app([spec], store), "gateway"))
        client = openai.OpenAI(base_url=gw + "/v1", api_key=secret, max_retries=0, timeout=30)
        for i, prompt in enumerate(prompts):
            ask = [{"role": "user", "content": prompt}]
            try:
                if i % 3 == 2:
                    for _ in client.chat.completions.create(
                        model="chat", messages=ask, stream=True
                    ):
                        pass
                else:
                    client.chat.completions.create(model="chat", messages=ask)
                statuses.append(200)
            except openai.APIStatusError as e:
                statuses.append(e.status_code)
            except openai.APIError:  # a stream whose 200 was sent, broken in-band
                statuses.append(0)
    return statuses  # leaving the gateway wrote the request log


def _iso(t: datetime) -> str:
    return t.isoformat()


def test_a_hung_deployment_moves_the_error_rate_only_and_retrains_nothing(
    store: Any, tmp_path: Path
) -> None:
    secret = store.keys.create("app")[1]
    start = datetime.now(UTC)
    healthy = _serve(store, secret, {"tokens": 12}, [cooking(i) for i in range(N)])
    assert healthy == [200] * N
    time.sleep(0.05)
    broken = datetime.now(UTC)
    # the same kind of traffic, while the model's server hangs (no first byte within the
    # gateway's upstream timeout), then answers 503, then recovers for a few requests
    prompts = [cooking(i + 3) for i in range(N + 10)]
    hung = _serve(store, secret, {"tokens": 12, "ttft_s": 2.0}, prompts[:15])
    failing = _serve(
        store, secret, {"tokens": 12, "fail_first": 1000, "fail_status": 503}, prompts[15:30]
    )
    recovered = _serve(store, secret, {"tokens": 12}, prompts[30:])
    assert all(s == 0 or s >= 500 for s in hung + failing), hung + failing
    assert recovered == [200] * 10

    (tmp_path / "retrain.yaml").write_text("name: r\nsteps: {}\n")
    spec = WatchSpec.model_validate(
        {
            "check": {
                "deployment": "chat",
                "since": _iso(broken),
                "reference_since": _iso(start),
                "reference_until": _iso(broken),
                "monitor": {"embedder": "hashed", "plots": False, "permutations": 100},
            },
            "retrain": {
                "pipeline": "retrain.yaml",
                "champion": "no-such-model@production",
                "challenger_step": "sft",
                "cooldown_s": 0,
            },
        }
    )
    d = watch_once(store, spec, tmp_path)
    assert d.operational_drift == ["error_rate"] and d.status == "drift", d
    assert not d.triggered and d.triggers == [] and d.decision is None, d
    assert "error_rate" in d.alerts_firing
    assert store.assets.list("retrain_decision") == []
    # no content monitor moved: failed requests' missing answers and token counts (0, not
    # counted) are not read as shorter answers or prompts
    report = json.loads((store.assets.path(d.report) / "report.json").read_text("utf-8"))
    drifted = {m["name"]: m for m in report["monitors"]}
    assert [n for n in report["drifted"] if n not in OPERATIONAL] == [], report["drifted"]
    # the answers monitored are the 10 that came back (plus the reference's 30), the
    # prompts all 40 asked
    assert drifted["response_chars"]["n_cur"] == 10 and drifted["response_chars"]["skipped"]
    assert drifted["language"]["n_cur"] == N + 10
    # prompt tokens: the 10 answered and the failures whose prompt the gateway counted (a
    # stream broken after its 200); a timeout's or a 5xx's logged 0 is no prompt length
    from lmops.monitor.features import read_traffic

    rows = list(read_traffic(store, "chat", since=broken))
    failed = [r for r in rows if r.status >= 400]
    counted = [r for r in failed if r.prompt_tokens > 0]
    assert len(failed) == 30 and 0 < len(counted) < 30, [
        (r.status, r.prompt_tokens) for r in failed
    ]
    assert drifted["prompt_tokens"]["n_cur"] == 10 + len(counted)
