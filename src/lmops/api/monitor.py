"""``/api/monitor``: the monitoring stage over HTTP, calling the functions the CLI calls.

GET  /api/monitor/reports          newest drift report of every subject
GET  /api/monitor/reports/{ref}    one drift report
POST /api/monitor/check            one check of a deployment (admin; body: CheckSpec)
POST /api/monitor/compare          dataset drift (admin)
GET  /api/monitor/metrics          Prometheus exposition of the newest reports
GET  /api/monitor/rules            the Prometheus alert-rules file
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from lmops.api.deps import Admin, Reader
from lmops.core.errors import UserError
from lmops.monitor.alerts import alert_rules, metrics_text
from lmops.monitor.checks import (
    CheckSpec,
    check_deployment,
    compare_datasets,
    latest_reports,
    require_traffic,
)
from lmops.monitor.drift import MonitorConfig
from lmops.monitor.report import DRIFT_REPORT, load_report

__all__ = ["router"]

router = APIRouter(prefix="/api/monitor")


class CompareBody(BaseModel):
    reference: str
    current: str
    limit: int | None = Field(None, ge=1)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)


def _answer(ref: str, report: Any) -> dict[str, Any]:
    return {"report": ref, **report.model_dump(mode="json")}


@router.get("/reports")
def reports(store: Reader) -> list[dict[str, Any]]:
    return [_answer(v.ref, r) for v, r in latest_reports(store)]


@router.get("/reports/{ref}")
def report(store: Reader, ref: str) -> dict[str, Any]:
    v = store.assets.resolve(ref)
    if v.kind != DRIFT_REPORT:
        raise UserError(f"{v.ref} is a {v.kind}, not a drift_report")
    return _answer(v.ref, load_report(store, v.ref))


@router.post("/check")
def check(store: Admin, body: CheckSpec) -> dict[str, Any]:
    require_traffic(store, body)
    rep, v = check_deployment(store, body)
    return _answer(v.ref, rep)


@router.post("/compare")
def compare(store: Admin, body: CompareBody) -> dict[str, Any]:
    rep, v = compare_datasets(store, body.reference, body.current, body.monitor, limit=body.limit)
    return _answer(v.ref, rep)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(store: Reader) -> PlainTextResponse:
    return PlainTextResponse(
        metrics_text(r for _, r in latest_reports(store)),
        media_type="text/plain; version=0.0.4",
    )


@router.get("/rules", response_class=PlainTextResponse)
def rules(store: Reader) -> PlainTextResponse:
    return PlainTextResponse(alert_rules(), media_type="application/yaml")
