"""Typed records the store hands out. Stages use these, never the ORM rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "ApiKey",
    "Asset",
    "AssetKind",
    "AuditEvent",
    "LineageEdge",
    "LineageGraph",
    "Metric",
    "MetricStats",
    "RequestRecord",
    "Run",
    "RunComparison",
    "RunStatus",
    "StoredResponse",
    "Version",
    "VersionStatus",
]


class AssetKind(StrEnum):
    """Built-in kinds. The set is extensible: ``register_kind("my_kind")``."""

    DATASET = "dataset"
    TOKENIZER = "tokenizer"
    MODEL = "model"
    ADAPTER = "adapter"
    PROMPT = "prompt"
    EVAL_SUITE = "eval_suite"
    EVAL_REPORT = "eval_report"
    PACKAGE = "package"
    # a local file or folder a job read, recorded by path and content (no bytes copied)
    EXTERNAL = "external"


class VersionStatus(StrEnum):
    PENDING = "PENDING"
    READY = "READY"
    FAILED = "FAILED"
    DELETED = "DELETED"


class RunStatus(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Version(BaseModel):
    """One immutable version of an asset."""

    asset: str
    kind: str
    version: int
    status: VersionStatus
    digest: str | None = None
    layout: str | None = None
    size: int = 0
    files: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    description: str = ""
    aliases: list[str] = Field(default_factory=list)
    run_id: str | None = None
    created_at: datetime
    created_by: str = ""
    error: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.asset}:{self.version}"


class Asset(BaseModel):
    name: str
    kind: str
    description: str = ""
    created_at: datetime
    latest: int | None = None  # newest READY version
    aliases: dict[str, int] = Field(default_factory=dict)
    versions: list[Version] = Field(default_factory=list)


class LineageEdge(BaseModel):
    child: str  # "name:version"
    parent: str
    role: str


class LineageGraph(BaseModel):
    """Versions reachable from ``root`` upstream (inputs) and downstream (consumers)."""

    root: str
    nodes: dict[str, Version]
    upstream: list[LineageEdge]
    downstream: list[LineageEdge]
    runs: dict[str, str | None]  # version ref -> producing run id


class Metric(BaseModel):
    step: int
    name: str
    value: float
    time: datetime


class Run(BaseModel):
    id: str
    kind: str
    name: str = ""
    status: RunStatus
    config: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime
    ended_at: datetime | None = None
    host: str = ""
    pid: int | None = None
    lmops_version: str = ""
    log_path: str | None = None
    error: str | None = None
    created_by: str = ""
    metrics: dict[str, list[Metric]] = Field(default_factory=dict)
    summary: dict[str, float] = Field(default_factory=dict)  # last value of each metric
    outputs: list[str] = Field(default_factory=list)  # version refs this run produced

    def last(self, name: str) -> float | None:
        series = self.metrics.get(name)
        return series[-1].value if series else None


class MetricStats(BaseModel):
    """One metric of one run, for comparisons: its last value (at the highest step), the
    lowest and the highest, and how many points were logged."""

    last: float
    step: int
    min: float
    max: float
    points: int


class RunComparison(BaseModel):
    """Runs side by side (``store.runs.compare``): every metric any of them logged, per
    run (``None`` where a run has no such metric), and their config and params as dotted
    keys, split into those that differ and those all runs share."""

    runs: list[Run]
    metrics: dict[str, list[MetricStats | None]]
    differing: dict[str, list[Any]]
    same: dict[str, Any]


class AuditEvent(BaseModel):
    id: int
    time: datetime
    actor: str
    action: str
    target: str
    origin: str
    details: dict[str, Any] = Field(default_factory=dict)


class ApiKey(BaseModel):
    name: str
    prefix: str
    role: str
    rpm: int | None = None
    tpm: int | None = None
    scopes: list[str] | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    created_at: datetime
    created_by: str = ""

    @property
    def active(self) -> bool:
        from lmops.store._time import utcnow

        now = utcnow()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(slots=True)  # one per served request: cheaper to build than a pydantic model
class RequestRecord:
    """One served request as the request log keeps it (``store.requests``). ``request_id``
    is the answer's ``id`` (``chatcmpl-…``; a refused request's was never sent) and
    ``x_request_id`` the response's ``x-request-id``. ``model_ref`` is the concrete version
    that answered, or would have (``name:N``), so exports link to it; bodies are kept only
    when the deployment logs them, and must be masked before they get here."""

    request_id: str
    endpoint: str
    status: int
    key_name: str | None = None
    deployment: str | None = None
    model_ref: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    error: str | None = None
    guardrails: dict[str, Any] | None = None
    request_body: dict[str, Any] | None = None
    response_body: dict[str, Any] | None = None
    time: datetime | None = None  # now, when written without one
    prompt_ref: str | None = None  # the registered prompt version that wrapped it (name:N)
    # the gateway's request id (the response's x-request-id header): unlike request_id, the
    # answer's id, a client holds it for every reply, a refusal included
    x_request_id: str | None = None
    # a deployment over a list of replicas (model_ref names them all): the replica whose
    # reply, or failure, the request got, its URL with credentials masked
    replica: str | None = None


class StoredResponse(BaseModel):
    """A response of the gateway's Responses API as ``store.responses`` keeps it: the input
    items its request sent (``input``; not those carried over from ``previous_id``) and the
    response object it answered (``response``), both as its deployment keeps them
    (``responses_mask``). ``key_name`` is the key that created it, the only one (with admin
    keys) that may read, continue or delete it. ``deleted``: a link of a conversation whose
    content was deleted (empty ``input`` and ``response``), see
    :mod:`lmops.store.responses`."""

    id: str
    key_name: str | None = None
    deployment: str | None = None
    previous_id: str | None = None
    created_at: datetime
    expires_at: datetime
    input: list[Any] = Field(default_factory=list)
    response: dict[str, Any] = Field(default_factory=dict)
    deleted: bool = False
