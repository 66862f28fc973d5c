"""One evaluation of the monitors, recorded: :func:`check_deployment` (a deployment's traffic
window against a reference dataset or an earlier window, plus its canaries) and
:func:`compare_datasets` (two dataset assets).

Each runs inside a ``monitor`` run and registers a ``drift_report`` asset (named
``drift-<deployment>`` or ``drift-<a>-vs-<b>``) linked to the model versions that served the
window (role ``served_by``), the reference dataset (``reference``), the compared dataset
(``current``) and the canary set (``canaries``). A window that is empty or has nothing in
common with the reference is still recorded, with a status that says so; alerts keep their
state through it.

Alert state is scoped by :func:`alert_scope` (the reference and the canary set): a watch
against the SFT data and an ad-hoc check against last week's traffic are different
questions, so one's streaks never fire or clear the other's alerts, and a check lists only
the alerts of its own scope. The newest report of a deployment carries every scope's
states (metadata ``alert_scopes``, the :data:`_MAX_SCOPES` most recently used).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmops.core.errors import UserError, name_hint
from lmops.monitor.alerts import AlertConfig, deliver, update_alerts, write_textfile
from lmops.monitor.canary import (
    CanarySetupError,
    key_name,
    load_canaries,
    run_canaries,
    summarize,
)
from lmops.monitor.drift import DriftReport, MonitorConfig, compare_samples
from lmops.monitor.embed import Embedder
from lmops.monitor.features import dataset_sample, read_traffic, traffic_sample
from lmops.monitor.report import DRIFT_REPORT, record_report

if TYPE_CHECKING:
    from lmops.store import Store, Version

__all__ = [
    "CheckSpec",
    "alert_scope",
    "check_deployment",
    "compare_datasets",
    "parse_since",
    "report_name",
    "require_traffic",
]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """``30m``/``2h``/``7d`` before now, or an ISO time (naive = UTC)."""
    if value is None:
        return None
    m = _DURATION.match(value.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return (now or datetime.now(UTC)) - timedelta(**{unit: float(m.group(1))})
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(
            f"time {value!r}: use a duration (30m, 2h, 7d) or an ISO time (2026-01-31T12:00)"
        ) from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


class CheckSpec(BaseModel):
    """What one check of a deployment compares (also the ``watch`` YAML's ``check:``)."""

    model_config = ConfigDict(extra="forbid")

    deployment: str
    reference: str | None = Field(None, description="dataset ref (e.g. the SFT data)")
    reference_since: str | None = Field(None, description="reference window start (or 7d)")
    reference_until: str | None = None
    reference_last: int | None = Field(None, ge=1)
    since: str | None = Field(None, description="current window start (duration or ISO)")
    until: str | None = None
    last: int | None = Field(500, ge=1, description="at most the last N requests")
    canaries: str | None = Field(None, description="canary_set ref run against the deployment")
    base_url: str | None = Field(None, description="the gateway's /v1 URL, for canaries")
    api_key: str | None = Field(None, description="gateway key (default: $LMOPS_API_KEY)")
    canary_timeout_s: float = Field(
        60.0, gt=0, description="seconds a canary waits for its answer (then: unanswered)"
    )
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    alerts: AlertConfig = Field(default_factory=AlertConfig)

    @model_validator(mode="after")
    def _one_reference(self) -> CheckSpec:
        window = any(
            v is not None for v in (self.reference_since, self.reference_until, self.reference_last)
        )
        if self.reference is None and not window:
            raise ValueError(
                "give a reference: a dataset (reference) or an earlier traffic window "
                "(reference_since/reference_until/reference_last)"
            )
        if self.reference is not None and window:
            raise ValueError("give either a reference dataset or a reference window, not both")
        if self.canaries is not None and self.base_url is None:
            raise ValueError("canaries need base_url (the gateway's /v1 URL)")
        return self


def require_traffic(store: Store, spec: CheckSpec) -> None:
    """A one-line error for a check of a deployment the request log has never seen (most
    often a misspelt name), rather than a report that says the window is empty. A check
    with canaries runs them whatever the log holds."""
    dep = spec.deployment
    if spec.canaries is not None:
        return
    names = store.requests.deployments()
    if dep in names:
        return
    hint = name_hint(dep, names, "the log has requests of") or (
        "the request log is empty (lmops serve writes it as it answers)"
    )
    raise UserError(f"deployment {dep!r} has no logged requests; {hint}")


def report_name(subject: str) -> str:
    """The ``drift_report`` asset name of a deployment or a dataset pair."""
    return "drift-" + re.sub(r"[^A-Za-z0-9._-]+", "-", subject).strip("-")


_MAX_SCOPES = 20  # alert scopes a report carries (ad-hoc checks each make one)


def alert_scope(spec: CheckSpec) -> str:
    """What a check's alerts are about: its reference and its canary set."""
    if spec.reference is not None:
        scope = f"reference {spec.reference}"
    else:
        scope = (
            f"traffic [{spec.reference_since or ''}, {spec.reference_until or spec.since or ''}]"
        )
        scope += f" last {spec.reference_last}" if spec.reference_last else ""
    return scope + (f"; canaries {spec.canaries}" if spec.canaries else "")


def _previous(
    store: Store, name: str, scope: str
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The last report's alert states per scope and its undelivered webhook notifications.
    A report from before the scopes had one state for all: it becomes ``scope``'s."""
    try:
        meta = store.assets.resolve(name).metadata
    except UserError:  # the first report of this name
        return {}, []
    scopes = meta.get("alert_scopes")
    if scopes is None:
        scopes = {scope: meta["alerts"]} if meta.get("alerts") else {}
    return dict(scopes), list(meta.get("undelivered") or [])


def _served_by(store: Store, refs: list[str]) -> list[tuple[str, str]]:
    out = []
    for ref in sorted(set(refs)):
        try:
            out.append((store.assets.resolve(ref).ref, "served_by"))
        except UserError:  # an upstream model, or a version deleted since
            continue
    return out


def check_deployment(
    store: Store, spec: CheckSpec, *, embedder: Embedder | None = None, progress: bool = False
) -> tuple[DriftReport, Version]:
    """Evaluate the monitors (and canaries) of ``spec.deployment`` once; record the report,
    update the alerts (webhook on every change) and the Prometheus textfile
    ``$LMOPS_HOME/monitor/<report>.prom``. Failures of the webhook or of canary requests are
    recorded in the report, never raised, except canaries that could not reach the model
    (a wrong key, model name or URL): the report is recorded with them as ``error`` (the
    ``canary`` alert untouched), then :class:`CanarySetupError` says what to fix."""
    dep = spec.deployment
    name = report_name(dep)
    with store.runs.track(
        "monitor", name=f"check {dep}", config=spec.model_dump(mode="json", exclude={"api_key"})
    ) as run:
        now = datetime.now(UTC)
        since, until = parse_since(spec.since, now), parse_since(spec.until, now)
        cur = traffic_sample(
            read_traffic(store, dep, since=since, until=until, last=spec.last), f"deployment:{dep}"
        )
        inputs = _served_by(store, cur.model_refs)
        if spec.reference is not None:
            ref = dataset_sample(store, spec.reference)
            reference = ref.source
            inputs.append((ref.source, "reference"))
        else:
            r_since = parse_since(spec.reference_since, now)
            r_until = parse_since(spec.reference_until, now) or since
            ref = traffic_sample(
                read_traffic(store, dep, since=r_since, until=r_until, last=spec.reference_last),
                f"deployment:{dep}",
            )
            reference = f"traffic of {dep} " + (
                f"[{ref.first.isoformat()}, {ref.last.isoformat()}]"
                if ref.first and ref.last
                else "(empty window)"
            )
        comp = compare_samples(
            ref,
            cur,
            spec.monitor,
            subject=f"deployment:{dep}",
            reference=reference,
            embedder=embedder,
            progress=progress,
        )
        report = comp.report
        report.window = {
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "last": spec.last,
            "first": cur.first.isoformat() if cur.first else None,
            "last_time": cur.last.isoformat() if cur.last else None,
        }
        results = {m.name: m.drift for m in report.monitors if m.skipped is None}
        if spec.canaries is not None:
            cs_version = store.assets.resolve(spec.canaries)
            cs = load_canaries(store.assets.path(cs_version.ref))
            key = spec.api_key or os.environ.get("LMOPS_API_KEY")  # keep keys out of YAML
            res = run_canaries(
                cs,
                base_url=spec.base_url or "",
                model=dep,
                api_key=key,
                timeout_s=spec.canary_timeout_s,
                key=key_name(store, key),  # a 429 of another key is not the canaries'
            )
            report.canaries = summarize(res, cs_version.ref)
            if report.canaries["error"] is None:  # a setup error says nothing of the model
                # wrong answers are the model's quality; no answer, or a late one, the
                # deployment's serving (monitor/canary.py): two alerts, as they need other
                # fixes
                results["canary"] = bool(report.canaries["wrong"])
                results["availability"] = bool(
                    report.canaries["unanswered"] or report.canaries["slow"]
                )
            inputs.append((cs_version.ref, "canaries"))
        scope = alert_scope(spec)
        scopes, undelivered = _previous(store, name, scope)
        states, events = update_alerts(scopes.pop(scope, {}), results, spec.alerts)
        scopes[scope] = states  # last: the most recently used
        scopes = dict(list(scopes.items())[-_MAX_SCOPES:])
        report.alerts, report.alert_scope = states, scope
        report.firing_elsewhere = sorted(
            {
                a
                for sc, st in scopes.items()
                if sc != scope
                for a, x in st.items()
                if x.get("firing")
            }
        )
        payloads = [
            {
                "event": event,
                "alert": alert,
                "scope": scope,
                "subject": report.subject,
                "status": report.status,
                "message": report.message,
                "run_id": run.id,
            }
            for alert, event in events
        ]
        report.notifications, report.undelivered = deliver(spec.alerts, undelivered, payloads)
        store.runs.log_metrics(
            run.id,
            {
                f"{m.name}.statistic": m.statistic
                for m in report.monitors
                if m.statistic is not None
            },
            0,
        )
        version = record_report(
            store,
            comp,
            name,
            inputs=inputs,
            run_id=run.id,
            plots=spec.monitor.plots,
            metadata={"alert_scope": scope, "alert_scopes": scopes},
        )
    write_textfile(store.settings.home / "monitor" / f"{name}.prom", [report])
    if report.canaries is not None and report.canaries["error"] is not None:
        raise CanarySetupError(
            f"canaries: {report.canaries['error']} (recorded as {version.ref}, the canaries "
            "as errors)"
        )
    return report, version


def compare_datasets(
    store: Store,
    reference: str,
    current: str,
    cfg: MonitorConfig | None = None,
    *,
    limit: int | None = None,
    embedder: Embedder | None = None,
    progress: bool = False,
) -> tuple[DriftReport, Version]:
    """Compare two dataset assets with the text monitors and record the report."""
    cfg = cfg or MonitorConfig()
    a, b = store.assets.resolve(reference), store.assets.resolve(current)
    with store.runs.track(
        "monitor", name=f"compare {a.ref} {b.ref}", config=cfg.model_dump(mode="json")
    ) as run:
        comp = compare_samples(
            dataset_sample(store, a.ref, limit=limit),
            dataset_sample(store, b.ref, limit=limit),
            cfg,
            subject=f"dataset:{b.ref}",
            reference=a.ref,
            embedder=embedder,
            progress=progress,
        )
        version = record_report(
            store,
            comp,
            report_name(f"{a.asset}-vs-{b.asset}"),
            inputs=[(a.ref, "reference"), (b.ref, "current")],
            run_id=run.id,
            plots=cfg.plots,
        )
    return comp.report, version


def latest_reports(store: Store) -> list[tuple[Version, DriftReport]]:
    """The newest version of every ``drift_report`` asset, with its report."""
    from lmops.monitor.report import load_report

    out = []
    for asset in store.assets.list(DRIFT_REPORT):
        try:
            v = store.assets.resolve(asset.name)
        except UserError:
            continue
        out.append((v, load_report(store, v.ref)))
    return out
