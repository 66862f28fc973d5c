"""A watch YAML's mistakes are refused before any work, naming the file's line and the field
(with a did-you-mean), as every other lmops config does: a misspelt field must not run a
costly check (or retrain) on the defaults, nor record a junk report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitor.traffic import plant_traffic

CHECK = """\
check:
  deployment: chat
  reference_since: 3h
  since: 1h
"""
RETRAIN = """\
retrain:
  pipeline: retrain.yaml
  champion: chat@production
  challenger_step: sft
"""


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (RETRAIN + "  cooldown: 0\n", "watch.yaml:9: retrain.cooldown: unknown field (did you "
         "mean 'cooldown_s'?)"),
        ("  alerts: {fire_afer: 2}\n", "watch.yaml:5: check.alerts.fire_afer: unknown field "
         "(did you mean 'fire_after'?)"),
        ("  monitor: {psi_treshold: 0.3}\n", "watch.yaml:5: check.monitor.psi_treshold: "
         "unknown field (did you mean 'psi_threshold'?)"),
        ("  monitor:\n    monitors: [prompt_chars, languag]\n", "watch.yaml:6: "
         "check.monitor.monitors[1]: unknown monitor 'languag'; did you mean 'language'?"),
        ("  monitor:\n    monitors:\n      - prompt_chars\n      - sentiment\n",
         "watch.yaml:8: check.monitor.monitors[1]: unknown monitor 'sentiment'; the monitors "
         "are prompt_chars,"),
        ("interval: 60\n", "watch.yaml:5: interval: unknown field (did you mean 'interval_s'?)"),
    ],
)  # fmt: skip
def test_a_misspelt_watch_field_is_refused_with_its_line(
    cli: Any, store: Any, tmp_path: Path, extra: str, said: str
) -> None:
    plant_traffic(store, "chat", model_ref=None, drift=True, n=30)
    (tmp_path / "retrain.yaml").write_text("name: r\nsteps: {}\n")
    watch = tmp_path / "watch.yaml"
    watch.write_text(CHECK + extra)
    r = cli("monitor", "watch", str(watch), "--once")
    assert r.code == 2 and said in r.err, r.err
    assert store.assets.list("drift_report") == []  # nothing ran


def test_an_unknown_deployment_and_a_missing_pipeline_are_refused(
    cli: Any, store: Any, tmp_path: Path
) -> None:
    plant_traffic(store, "raw", model_ref=None, drift=False, n=30)
    (tmp_path / "retrain.yaml").write_text("name: r\nsteps: {}\n")
    watch = tmp_path / "watch.yaml"
    watch.write_text(CHECK.replace("chat", "rwa"))
    r = cli("monitor", "watch", str(watch), "--once")
    assert r.code == 2 and "'rwa' has no logged requests; did you mean 'raw'?" in r.err, r.err

    watch.write_text(CHECK.replace("chat", "raw") + RETRAIN.replace("retrain.y", "retrian.y"))
    r = cli("monitor", "watch", str(watch), "--once")
    assert r.code == 2, r.err
    assert "watch.yaml:6: retrain.pipeline: no such file 'retrian.yaml'" in r.err
    assert "did you mean 'retrain.yaml'?" in r.err
    assert store.assets.list("drift_report") == []


def test_watch_once_refuses_an_unknown_deployment_before_recording(
    store: Any, tmp_path: Path
) -> None:
    from lmops.core.errors import UserError
    from lmops.pipelines.retrain import WatchSpec, watch_once

    plant_traffic(store, "raw", model_ref=None, drift=False, n=30)
    spec = WatchSpec.model_validate(yaml.safe_load(CHECK.replace("chat", "rwa")))
    with pytest.raises(UserError, match="did you mean 'raw'"):
        watch_once(store, spec, tmp_path)
    assert store.assets.list("drift_report") == []


def test_the_drift_step_refuses_an_unknown_monitor(store: Any, tmp_path: Path) -> None:
    from lmops.core.errors import UserError
    from lmops.pipelines import load_pipeline

    path = tmp_path / "p.yaml"
    step = {"type": "drift", "reference": "a", "current": "b", "monitors": ["languag"]}
    path.write_text(yaml.safe_dump({"name": "guard", "steps": {"check": step}}))
    with pytest.raises(UserError, match="unknown monitor 'languag'; did you mean 'language'"):
        load_pipeline(path)


CANARIES = """\
prompts:
  - {id: capital, prompt: "What is the capital of France?", expect: {contains: [Paris]}}
  - {id: hello, prompt: Say hello., expect: {contains: [hello]}}
"""


def test_a_canary_setup_error_is_one_line_and_never_a_failure(
    cli: Any, store: Any, tmp_path: Path
) -> None:
    """A wrong key (401), a misspelt model (404) or a dead URL is the setup's fault: a
    one-line error saying what to fix, the canaries recorded as errors, no retrain."""
    from lmops.serve.fake import fake_server
    from tests.conftest import free_port

    path = tmp_path / "canaries.yaml"
    path.write_text(CANARIES)
    assert cli("monitor", "canaries", "register", str(path), "--name", "cs").code == 0
    (tmp_path / "retrain.yaml").write_text("name: r\nsteps: {}\n")
    plant_traffic(store, "chat", model_ref=None, drift=False, n=30)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with fake_server(model="chat", reply="Paris. hello", api_key="right") as url:
        run = ["monitor", "canaries", "run", "cs", "--base-url", f"{url}/v1"]
        ok = cli(*run, "--model", "chat", "--api-key", "right")
        assert ok.code == 0 and "FAIL" not in ok.out, ok.out
        for args, said in [
            (["--model", "chat", "--api-key", "wrong"], "refused the API key (401"),
            (["--model", "caht", "--api-key", "right"], "no model 'caht' (404"),
        ]:
            r = cli(*run, *args)
            assert r.code == 2 and said in r.err and "FAIL" not in r.out, (r.out, r.err)
            assert len(r.err.strip().splitlines()) == 1
        assert "did you mean 'chat'?" in r.err
        r = cli("monitor", "canaries", "run", "cs", "--base-url", dead, "--model", "chat")
        assert r.code == 2 and "cannot connect to" in r.err and "check base_url" in r.err

        check = CHECK + f"  canaries: cs\n  base_url: {url}/v1\n  api_key: wrong\n"
        retrain = RETRAIN + "  triggers: [canary]\n  cooldown_s: 0\n"
        watch = tmp_path / "watch.yaml"
        watch.write_text(check + retrain)
        r = cli("monitor", "watch", str(watch), "--once")
    assert r.code == 1 and "refused the API key" in r.err and "triggered" not in r.out, r.out
    assert store.assets.list("retrain_decision") == []  # no retraining round
    report = store.assets.resolve("drift-chat").metadata
    assert report["canaries"]["errors"] == 2 and report["canaries"]["failed"] == 0
    assert "canary" not in report["alerts"]


def test_a_model_that_takes_the_request_and_never_answers_fails_its_canaries(
    tmp_path: Path,
) -> None:
    """A read timeout is not the setup's fault: the gateway took the request and the model
    did not answer. It used to be an ``error`` (no alert), so a hung deployment was never
    caught; now each such canary fails, and after two in a row the rest fail unsent."""
    from lmops.monitor.canary import load_canaries, run_canaries, setup_error
    from lmops.serve.fake import fake_server

    path = tmp_path / "canaries.yaml"
    path.write_text(CANARIES + '  - {id: third, prompt: "Hi", expect: {contains: [hi]}}\n')
    with fake_server(model="chat", reply="Paris. hello", ttft_s=3.0) as url:
        results = run_canaries(
            load_canaries(path), base_url=f"{url}/v1", model="chat", timeout_s=0.5
        )
    assert [(r.outcome, r.passed, r.cause) for r in results] == [("fail", False, "unanswered")] * 3
    assert results[0].failures == ["no answer in 0.5 s"]
    assert results[2].failures == [
        "not sent: the model answered none of the last 2 canaries in 0.5 s"
    ]
    assert setup_error(results) is None
