"""Canaries that got no answer (a hung deployment, a 5xx, a connection dropped after the
request was sent) are an availability alert, never a retraining trigger; canaries answered
wrong are the quality signal that starts a round. Driven through `lmops monitor watch
--once` against the fake OpenAI server, as cron would run it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmops.serve.fake import fake_server
from tests.monitor.traffic import banner_server, plant_traffic

CANARIES = """\
prompts:
  - {id: capital, prompt: "What is the capital of France?", expect: {contains: [Paris]}}
  - {id: hello, prompt: Say hello., expect: {contains: [hello]}}
"""


@contextmanager
def deployment(kind: str) -> Iterator[str]:
    if kind == "lost":  # a gateway that answers HTTP, whose model requests die unanswered
        with banner_server(b"", models=True) as url:
            yield url
        return
    options: dict[str, Any] = {
        "hung": {"reply": "Paris. hello", "ttft_s": 3.0},
        "slow": {"reply": "Paris. hello", "ttft_s": 0.3},
        "5xx": {"reply": "Paris. hello", "fail_first": 100, "fail_status": 503},
        "wrong": {"reply": "I would rather not say."},
    }[kind]
    with fake_server(model="chat", **options) as url:
        yield url


def _watch(cli: Any, store: Any, tmp_path: Path, url: str, canaries: str = CANARIES) -> Any:
    path = tmp_path / "canaries.yaml"
    path.write_text(canaries)
    assert cli("monitor", "canaries", "register", str(path), "--name", "cs").code == 0
    plant_traffic(store, "chat", model_ref=None, drift=False, n=30)
    (tmp_path / "retrain.yaml").write_text("name: r\nsteps: {}\n")
    watch = {
        "check": {
            "deployment": "chat",
            "since": "1h",
            "reference_since": "3h",
            "canaries": "cs",
            "base_url": f"{url}/v1",
            "canary_timeout_s": 0.5,
            "monitor": {"embedder": "hashed", "plots": False, "permutations": 100},
        },
        "retrain": {
            "pipeline": "retrain.yaml",
            "champion": "chat@production",
            "challenger_step": "sft",
            "triggers": ["canary"],
            "cooldown_s": 0,
        },
    }
    (tmp_path / "watch.yaml").write_text(yaml.safe_dump(watch))
    return cli("monitor", "watch", str(tmp_path / "watch.yaml"), "--once")


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("hung", "no answer in 0.5 s"),
        ("5xx", "no answer: InternalServerError: Error code: 503"),
        ("lost", "no answer: the connection was lost (RemoteProtocolError"),
    ],
)
def test_canaries_without_an_answer_alert_availability_and_do_not_retrain(
    cli: Any, store: Any, tmp_path: Path, kind: str, why: str
) -> None:
    with deployment(kind) as url:
        r = _watch(cli, store, tmp_path, url)
    assert r.code == 0, r.err
    out = " ".join(r.out.split())  # as read, whatever the terminal's width
    assert "triggered" not in out
    assert "retraining not started: canaries capital, hello failed for lack of an answer" in out
    assert "an availability failure of the deployment that retraining cannot fix" in out
    assert why in out
    assert "canaries unanswered (availability, not a retrain trigger): capital, hello" in out
    assert "alert firing: availability" in out and "alert firing: canary" not in out
    assert store.assets.list("retrain_decision") == []  # no retraining round ran
    # the drift report keeps what failed and why
    meta = store.assets.resolve("drift-chat").metadata
    c = meta["canaries"]
    assert (c["failed"], c["unanswered"], c["wrong"]) == (2, ["capital", "hello"], [])
    assert why in c["unanswered_why"]
    assert meta["alerts"]["availability"]["firing"] and not meta["alerts"]["canary"]["firing"]
    shown = " ".join(cli("monitor", "show", "drift-chat").out.split())
    # "failed" counts wrong answers only: the unanswered ones are not counted twice
    assert "0 passed, 0 failed 2 unanswered (capital, hello)" in shown, shown
    assert "not a retraining trigger" in shown
    metrics = cli("monitor", "metrics").out
    assert 'lmops_canary_results{outcome="unanswered",subject="deployment:chat"} 2.0' in metrics
    assert 'lmops_canary_results{outcome="wrong",subject="deployment:chat"} 0.0' in metrics


def test_canaries_answered_wrong_start_a_retraining_round(
    cli: Any, store: Any, tmp_path: Path
) -> None:
    with deployment("wrong") as url:
        r = _watch(cli, store, tmp_path, url)
    assert r.code == 0, r.err
    out = " ".join(r.out.split())
    assert "triggered by canaries answered wrong: capital, hello" in out
    assert "retraining not started" not in out
    assert len(store.assets.list("retrain_decision")) == 1  # the round ran and was recorded
    meta = store.assets.resolve("drift-chat").metadata
    assert meta["canaries"]["wrong"] == ["capital", "hello"]
    assert meta["canaries"]["unanswered"] == []
    assert meta["alerts"]["canary"]["firing"] and not meta["alerts"]["availability"]["firing"]
    rules = yaml.safe_load(cli("monitor", "rules").out)["groups"][0]["rules"]
    exprs = {rule["alert"]: rule["expr"] for rule in rules}
    assert exprs["LmopsCanaryFailed"] == 'lmops_canary_results{outcome="wrong"} > 0'
    assert exprs["LmopsCanaryUnanswered"] == 'lmops_canary_results{outcome="unanswered"} > 0'


def test_canaries_answered_right_but_too_late_do_not_retrain(
    cli: Any, store: Any, tmp_path: Path
) -> None:
    """A correct answer later than max_latency_ms was a wrong answer and started a round:
    retraining does not make a model faster (the operational monitors never retrain)."""
    slow = CANARIES.replace("expect: {", "expect: {max_latency_ms: 100, ")
    with deployment("slow") as url:
        r = _watch(cli, store, tmp_path, url, slow)
    assert r.code == 0, r.err
    out = " ".join(r.out.split())
    assert "triggered" not in out, out
    assert "retraining not started: canaries capital, hello were answered right but too late" in (
        out
    )
    assert "a latency failure of the deployment that retraining cannot fix" in out
    assert "canaries slow (latency, not a retrain trigger): capital, hello" in out
    assert store.assets.list("retrain_decision") == []
    meta = store.assets.resolve("drift-chat").metadata
    c = meta["canaries"]
    assert (c["wrong"], c["slow"], c["unanswered"]) == ([], ["capital", "hello"], [])
    assert c["slow_why"].startswith("took ") and c["slow_why"].endswith(" ms > 100 ms")
    assert meta["alerts"]["availability"]["firing"] and not meta["alerts"]["canary"]["firing"]
    shown = " ".join(cli("monitor", "show", "drift-chat").out.split())
    assert "0 passed, 0 failed 2 slow (capital, hello): took" in shown, shown
    metrics = cli("monitor", "metrics").out
    assert 'lmops_canary_results{outcome="slow",subject="deployment:chat"} 2.0' in metrics


def test_a_slow_wrong_answer_is_a_wrong_answer(tmp_path: Path) -> None:
    from lmops.monitor.canary import load_canaries, run_canaries

    path = tmp_path / "canaries.yaml"
    path.write_text(CANARIES.replace("expect: {", "expect: {max_latency_ms: 100, "))
    with fake_server(model="chat", reply="Paris.", ttft_s=0.3) as url:
        results = run_canaries(load_canaries(path), base_url=f"{url}/v1", model="chat")
    assert [r.cause for r in results] == ["slow", "wrong_answer"]
    assert results[1].failures[0] == "missing 'hello'" and len(results[1].failures) == 2
