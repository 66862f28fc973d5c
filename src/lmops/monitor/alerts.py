"""Alerts over monitor results: thresholds with hysteresis, Prometheus gauges, a generated
Prometheus alert-rules file, and a webhook notifier.

Hysteresis: a monitor's alert fires after ``fire_after`` evaluations in a row that drifted and
resolves after ``clear_after`` in a row that did not, so one noisy window neither pages nor
clears a page. The state travels in each ``drift_report`` version's metadata (``alerts``), so
the next evaluation reads it from the newest report and no table is needed. Canaries answered
wrong are the alert ``canary``; canaries that got no answer (a hung or failing deployment), or a
right one too late, the alert ``availability``.

Webhook: one POST of JSON per state change (``{"event": "firing"|"resolved", "alert",
"subject", "report", ...}``); a timeout, a refused connection or a non-2xx answer is recorded
in the report (``notifications``) and never raised, so a dead receiver never stops a monitor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lmops.monitor.drift import DriftReport

__all__ = [
    "AlertConfig",
    "alert_rules",
    "deliver",
    "metrics_text",
    "post_webhook",
    "update_alerts",
]


class AlertConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt fire_after must not go unnoticed

    fire_after: int = Field(1, ge=1, description="drifting evaluations in a row to fire")
    clear_after: int = Field(2, ge=1, description="clean evaluations in a row to resolve")
    webhook: str | None = Field(None, description="URL to POST state changes to")
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_retries: int = Field(
        5, ge=0, description="later evaluations that re-send an undelivered notification"
    )


def update_alerts(
    previous: Mapping[str, Any], results: Mapping[str, bool], cfg: AlertConfig
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """New alert states from the ``previous`` ones and this evaluation's ``results``
    (alert name -> drifted); returns ``(states, events)`` with events ``(name, "firing" |
    "resolved")``. Alerts not evaluated this time keep their state."""
    states: dict[str, Any] = {k: dict(v) for k, v in previous.items()}
    events: list[tuple[str, str]] = []
    for name, drifted in results.items():
        st = states.setdefault(name, {"firing": False, "drift_streak": 0, "ok_streak": 0})
        if drifted:
            st["drift_streak"], st["ok_streak"] = st["drift_streak"] + 1, 0
            if not st["firing"] and st["drift_streak"] >= cfg.fire_after:
                st["firing"] = True
                events.append((name, "firing"))
        else:
            st["ok_streak"], st["drift_streak"] = st["ok_streak"] + 1, 0
            if st["firing"] and st["ok_streak"] >= cfg.clear_after:
                st["firing"] = False
                events.append((name, "resolved"))
    return states, events


def post_webhook(url: str, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """POST ``payload``; returns what happened (``ok``, ``status``, ``error``), never raises."""
    import httpx

    rec: dict[str, Any] = {"url": url, "event": payload.get("event"), "alert": payload.get("alert")}
    try:
        resp = httpx.post(url, json=payload, timeout=timeout_s)
        rec["status"] = resp.status_code
        rec["ok"] = resp.is_success
        if not resp.is_success:
            rec["error"] = f"HTTP {resp.status_code}"
    except httpx.TimeoutException:
        rec["ok"], rec["error"] = False, f"timed out after {timeout_s:g} s"
    except (httpx.HTTPError, OSError, ValueError) as e:
        rec["ok"], rec["error"] = False, f"{type(e).__name__}: {e}"
    return rec


def deliver(
    cfg: AlertConfig, undelivered: list[dict[str, Any]], payloads: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Send what earlier evaluations could not deliver (oldest first), then ``payloads``,
    to ``cfg.webhook``; returns ``(notifications, still_undelivered)``. A notification that
    fails is kept, ``{"payload", "attempts"}``, and sent again by the next evaluation, up to
    ``webhook_retries`` more times; then it is given up, and the record says so. Without a
    webhook nothing is sent and nothing is dropped."""
    if not cfg.webhook:
        return [], list(undelivered)
    queue = [(dict(u["payload"]), int(u["attempts"])) for u in undelivered]
    queue += [(p, 0) for p in payloads]
    sent: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    for payload, attempts in queue:
        rec = post_webhook(cfg.webhook, payload, cfg.webhook_timeout_s)
        attempts += 1
        if attempts > 1:
            rec["attempt"] = attempts
        if not rec["ok"]:
            if attempts <= cfg.webhook_retries:
                kept.append({"payload": payload, "attempts": attempts})
            else:
                rec["gave_up"] = True
        sent.append(rec)
    return sent, kept


def metrics_text(reports: Iterable[DriftReport]) -> bytes:
    """Prometheus exposition of the newest report per subject: per monitor its statistic,
    p-value, drift flag and alert state; per subject the time of the evaluation, and the
    canary counts by outcome when canaries ran (``failed``: all failures; ``wrong``: wrong
    answers; ``slow``: right but later than ``max_latency_ms``; ``unanswered``: no
    answer)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    reg = CollectorRegistry()
    lbl = ["subject", "monitor"]
    stat = Gauge("lmops_monitor_statistic", "Monitor test statistic", lbl, registry=reg)
    pval = Gauge("lmops_monitor_p_value", "Monitor test p-value", lbl, registry=reg)
    drift = Gauge("lmops_monitor_drift", "1 when the last evaluation drifted", lbl, registry=reg)
    firing = Gauge("lmops_monitor_alert_firing", "1 while the alert fires", lbl, registry=reg)
    rows = Gauge("lmops_monitor_rows", "Rows in the current window", ["subject"], registry=reg)
    canary = Gauge(
        "lmops_canary_results", "Canary prompts by outcome", ["subject", "outcome"], registry=reg
    )
    for r in reports:
        s = r.subject
        rows.labels(s).set(r.n_cur)
        for m in r.monitors:
            if m.skipped is not None:
                continue
            if m.statistic is not None:
                stat.labels(s, m.name).set(m.statistic)
            if m.p_value is not None:
                pval.labels(s, m.name).set(m.p_value)
            drift.labels(s, m.name).set(1.0 if m.drift else 0.0)
        for name in {*r.alerts, *r.firing_elsewhere}:  # any scope's firing alert holds
            on = r.alerts.get(name, {}).get("firing") or name in r.firing_elsewhere
            firing.labels(s, name).set(1.0 if on else 0.0)
        if r.canaries is not None:
            canary.labels(s, "passed").set(r.canaries.get("passed", 0))
            canary.labels(s, "failed").set(r.canaries.get("failed", 0))
            # a report from before the split counted every failure as a wrong answer
            wrong = r.canaries.get("wrong")
            canary.labels(s, "wrong").set(
                len(wrong) if wrong is not None else r.canaries.get("failed", 0)
            )
            canary.labels(s, "slow").set(len(r.canaries.get("slow") or []))
            canary.labels(s, "unanswered").set(len(r.canaries.get("unanswered") or []))
            canary.labels(s, "error").set(r.canaries.get("errors", 0))
    return bytes(generate_latest(reg))


def alert_rules(*, group: str = "lmops-monitor", drift_for: str = "15m") -> str:
    """A Prometheus alert-rules file over :func:`metrics_text`'s gauges: lmops's own
    hysteresis (``lmops_monitor_alert_firing``), raw drift held for ``drift_for`` (for a
    Prometheus that scrapes the gauges without lmops's alert states), canaries answered
    wrong, canaries the deployment did not answer, and canaries answered too late."""
    import yaml

    rules = [
        {
            "alert": "LmopsMonitorAlert",
            "expr": "lmops_monitor_alert_firing == 1",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "lmops monitor {{ $labels.monitor }} fires for {{ $labels.subject }}",
                "description": "see `lmops monitor reports` for the drift report and its plots",
            },
        },
        {
            "alert": "LmopsDriftSustained",
            "expr": "lmops_monitor_drift == 1",
            "for": drift_for,
            "labels": {"severity": "info"},
            "annotations": {
                "summary": "{{ $labels.monitor }} of {{ $labels.subject }} drifted for "
                f"{drift_for}",
            },
        },
        {
            "alert": "LmopsCanaryFailed",
            "expr": 'lmops_canary_results{outcome="wrong"} > 0',
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "{{ $value }} canary prompts are answered wrong on "
                "{{ $labels.subject }}",
            },
        },
        {
            "alert": "LmopsCanaryUnanswered",
            "expr": 'lmops_canary_results{outcome="unanswered"} > 0',
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "{{ $labels.subject }} did not answer {{ $value }} canary prompts "
                "(timeout, lost connection or error status)",
                "description": "an availability failure: look at the server, not the model; "
                "it does not start retraining",
            },
        },
        {
            "alert": "LmopsCanarySlow",
            "expr": 'lmops_canary_results{outcome="slow"} > 0',
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $labels.subject }} answered {{ $value }} canary prompts right "
                "but later than their max_latency_ms",
                "description": "a latency failure: look at the server, not the model; it "
                "does not start retraining",
            },
        },
        {
            "alert": "LmopsCanarySetupError",
            "expr": 'lmops_canary_results{outcome="error"} > 0',
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "canaries of {{ $labels.subject }} cannot reach the model (key, "
                "model name or URL); see the drift report",
            },
        },
    ]
    return str(yaml.safe_dump({"groups": [{"name": group, "rules": rules}]}, sort_keys=False))


def write_textfile(path: Path, reports: Iterable[DriftReport]) -> None:
    """Write :func:`metrics_text` for node_exporter's textfile collector (temp + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(metrics_text(reports))
    tmp.replace(path)
