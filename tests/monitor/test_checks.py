"""Monitors over the request log, recorded as drift_report assets with lineage, alerts with
hysteresis, the webhook (a local receiver; a slow one times out and is recorded), bad windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lmops.monitor.checks import CheckSpec, check_deployment
from lmops.monitor.report import load_report
from tests.monitor.traffic import Receiver, plant_traffic


def _model(store: Any, tmp_path: Path, name: str = "chat") -> str:
    f = tmp_path / f"{name}.bin"
    f.write_bytes(b"weights")
    return str(store.assets.register("model", name, f).ref)


def _spec(plots: bool = False, **kw: Any) -> CheckSpec:
    base: dict[str, Any] = {
        "deployment": "chat",
        "since": "1h",
        "reference_since": "3h",
        "monitor": {"embedder": "hashed", "permutations": 100, "plots": plots},
    }
    return CheckSpec.model_validate({**base, **kw})


def test_planted_drift_is_found_recorded_and_alerted(
    store: Any, tmp_path: Path, receiver: Receiver
) -> None:
    model = _model(store, tmp_path)
    plant_traffic(store, "chat", model_ref=model, drift=True)
    spec = _spec(plots=True, alerts={"webhook": receiver.url, "fire_after": 1})
    report, version = check_deployment(store, spec)

    assert report.status == "drift"
    for name in ("embedding_mmd", "embedding_classifier", "language", "refusal_rate", "error_rate"):
        assert name in report.drifted, name
    lang = report.monitor("language")
    assert lang.cur_summary["zh"] > 0.4 and "zh" not in lang.ref_summary
    assert report.monitor("refusal_rate").cur_summary["rate"] > 0.15
    # every monitor that ran says its statistic, p-value/threshold and has a plot
    for m in report.monitors:
        if m.skipped is None:
            assert m.statistic is not None and m.threshold is not None
            assert m.plot and (store.assets.path(version.ref) / m.plot).stat().st_size > 1000

    # the asset: lineage to the serving model, the headline in its metadata
    assert version.kind == "drift_report" and version.metadata["drift"] is True
    parents = {(e.parent, e.role) for e in store.assets.lineage(version.ref).upstream}
    assert (model, "served_by") in parents
    assert load_report(store, version.ref).drifted == report.drifted

    # alerts fired once each, and the receiver got them
    firing = {k for k, s in report.alerts.items() if s["firing"]}
    assert set(report.drifted) <= firing
    assert {b["alert"] for b in receiver.bodies} == firing
    assert all(n["ok"] for n in report.notifications)

    # hysteresis: the same drift again sends nothing new
    report2, _ = check_deployment(store, _spec(alerts={"webhook": receiver.url}))
    assert len(receiver.bodies) == len(firing) and report2.notifications == []
    prom = (store.settings.home / "monitor" / "drift-chat.prom").read_text()
    assert 'lmops_monitor_alert_firing{monitor="language",subject="deployment:chat"} 1.0' in prom


def test_stationary_traffic_is_quiet(store: Any, tmp_path: Path) -> None:
    plant_traffic(store, "chat", model_ref=_model(store, tmp_path), drift=False)
    report, version = check_deployment(store, _spec())
    assert report.status == "ok", report.drifted
    assert version.metadata["alerts"]["embedding_mmd"]["firing"] is False


def test_alert_resolves_after_clear_after_clean_checks(store: Any, tmp_path: Path) -> None:
    from lmops.monitor.alerts import AlertConfig, update_alerts

    cfg = AlertConfig(fire_after=2, clear_after=2)
    states: dict[str, Any] = {}
    seen = []
    for drifted in (True, False, True, True, False, True, False, False):
        states, events = update_alerts(states, {"m": drifted}, cfg)
        seen.append((states["m"]["firing"], events))
    assert [f for f, _ in seen] == [False, False, False, True, True, True, True, False]
    assert seen[3][1] == [("m", "firing")] and seen[7][1] == [("m", "resolved")]


def test_slow_webhook_is_recorded_and_the_report_kept(store: Any, tmp_path: Path) -> None:
    plant_traffic(store, "chat", model_ref=_model(store, tmp_path), drift=True)
    with Receiver(delay_s=2.0) as slow:
        spec = _spec(alerts={"webhook": slow.url, "webhook_timeout_s": 0.3})
        report, version = check_deployment(store, spec)
    assert report.notifications and not report.notifications[0]["ok"]
    assert "timed out" in report.notifications[0]["error"]
    assert store.assets.resolve(version.ref).metadata["status"] == "drift"
    # a receiver that is not there at all: refused, recorded, no crash
    spec = _spec(alerts={"webhook": "http://127.0.0.1:9/hook", "fire_after": 1})
    store2_report, _ = check_deployment(store, spec)
    # nothing changed state: only the timed-out ones are owed, and tried again
    assert store2_report.notifications and all(
        not n["ok"] and n["attempt"] == 2 and "ConnectError" in n["error"]
        for n in store2_report.notifications
    )
    assert len(store2_report.undelivered) == len(report.notifications)


def test_empty_window_and_no_overlap_are_recorded(store: Any, tmp_path: Path) -> None:
    report, version = check_deployment(store, _spec(deployment="idle"))
    assert report.status == "empty" and "no rows" in report.message
    assert version.metadata["status"] == "empty"

    # a dataset reference against a log without bodies: nothing in common
    from lmops.monitor.metering import log_request

    for i in range(30):
        log_request(
            store,
            request_id=f"r{i}",
            endpoint="/v1/chat/completions",
            status=200,
            deployment="nobody",
            prompt_tokens=5,
            completion_tokens=3,
            latency_ms=10.0,
        )
    data = tmp_path / "ref.jsonl"
    data.write_text("".join(f'{{"prompt": "question {i}"}}\n' for i in range(30)))
    ref = store.assets.register("dataset", "ref", data).ref
    report, version = check_deployment(
        store,
        CheckSpec(
            deployment="nobody", reference=ref, monitor={"embedder": "hashed", "plots": False}
        ),
    )
    assert report.status == "no_overlap" and version.metadata["status"] == "no_overlap"
    assert all(m.skipped for m in report.monitors)
    parents = {(e.parent, e.role) for e in store.assets.lineage(version.ref).upstream}
    assert (ref, "reference") in parents


def test_check_spec_needs_one_reference() -> None:
    with pytest.raises(ValueError, match="give a reference"):
        CheckSpec(deployment="chat")
    with pytest.raises(ValueError, match="not both"):
        CheckSpec(deployment="chat", reference="x", reference_last=5)


def test_an_undelivered_alert_is_sent_again_by_the_next_check(
    store: Any, tmp_path: Path, receiver: Receiver
) -> None:
    """The webhook is down when the alerts fire: the next check delivers them (oldest
    first, with their attempt), and the report's metadata says what is still owed."""
    plant_traffic(store, "chat", model_ref=_model(store, tmp_path), drift=True)
    down = "http://127.0.0.1:9/hook"
    report, version = check_deployment(store, _spec(alerts={"webhook": down, "fire_after": 1}))
    fired = sorted(k for k, s in report.alerts.items() if s["firing"])
    assert fired and not any(n["ok"] for n in report.notifications)
    owed = version.metadata["undelivered"]
    assert sorted(u["payload"]["alert"] for u in owed) == fired
    assert all(u["attempts"] == 1 for u in owed)

    # nothing changes state now; what was owed goes out, once, on its second attempt
    report2, version2 = check_deployment(store, _spec(alerts={"webhook": receiver.url}))
    assert sorted(b["alert"] for b in receiver.bodies) == fired
    assert all(b["event"] == "firing" for b in receiver.bodies)
    assert all(n["ok"] and n["attempt"] == 2 for n in report2.notifications)
    assert version2.metadata["undelivered"] == [] and report2.undelivered == []
    check_deployment(store, _spec(alerts={"webhook": receiver.url}))
    assert len(receiver.bodies) == len(fired)  # delivered ones are not sent again


def test_an_alert_is_given_up_after_its_retries(store: Any, tmp_path: Path) -> None:
    plant_traffic(store, "chat", model_ref=_model(store, tmp_path), drift=True)
    alerts = {"webhook": "http://127.0.0.1:9/hook", "fire_after": 1, "webhook_retries": 1}
    first, _ = check_deployment(store, _spec(alerts=alerts))
    n = len(first.notifications)
    second, v2 = check_deployment(store, _spec(alerts=alerts))  # the one retry, failing
    assert len(second.notifications) == n
    assert all(r["attempt"] == 2 and r["gave_up"] and not r["ok"] for r in second.notifications)
    assert v2.metadata["undelivered"] == []
    third, _ = check_deployment(store, _spec(alerts=alerts))
    assert third.notifications == []  # given up: not sent again


def test_alerts_are_scoped_by_what_a_check_compares_against(store: Any, tmp_path: Path) -> None:
    """An ad-hoc check against another reference neither sees nor moves the alerts of the
    watch's checks: its own window is clean, so nothing of it fires."""
    plant_traffic(store, "chat", model_ref=None, drift=True)
    watch_spec = _spec(alerts={"fire_after": 1})
    first, _ = check_deployment(store, watch_spec)
    assert first.alerts["language"]["firing"] and first.alert_scope == "traffic [3h, 1h]"

    # the old window against itself (a wider reference): nothing moved, nothing fires
    adhoc = _spec(since="3h", until="1h", reference_since="4h", reference_until="1h")
    report, version = check_deployment(store, adhoc)
    assert report.status == "ok", report.drifted
    assert not any(s["firing"] for s in report.alerts.values()), report.alerts
    assert version.metadata["alert_scope"] == "traffic [4h, 1h]"
    # the exported gauge still says the watch's alert fires (Alertmanager would see it
    # resolve and fire again with every ad-hoc check)
    from lmops.monitor.alerts import metrics_text
    from lmops.monitor.checks import latest_reports

    text = metrics_text(r for _, r in latest_reports(store)).decode()
    assert 'lmops_monitor_alert_firing{monitor="language",subject="deployment:chat"} 1.0' in text

    # the watch's alerts kept their streaks through it: no second page, none cleared
    again, version = check_deployment(store, watch_spec)
    assert again.alerts["language"] == {"firing": True, "drift_streak": 2, "ok_streak": 0}
    assert set(version.metadata["alert_scopes"]) == {"traffic [3h, 1h]", "traffic [4h, 1h]"}
