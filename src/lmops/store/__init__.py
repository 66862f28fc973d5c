"""The store: metadata database, content-addressed artifacts, assets, versions, aliases,
lineage, runs, audit log and API keys. Every stage meets every other stage here."""

from __future__ import annotations

from lmops.store.assets import register_kind
from lmops.store.refs import Ref, parse_ref
from lmops.store.store import GcReport, Store
from lmops.store.types import (
    ApiKey,
    Asset,
    AssetKind,
    AuditEvent,
    LineageEdge,
    LineageGraph,
    Metric,
    RequestRecord,
    Run,
    RunStatus,
    Version,
    VersionStatus,
)

__all__ = [
    "ApiKey",
    "Asset",
    "AssetKind",
    "AuditEvent",
    "GcReport",
    "LineageEdge",
    "LineageGraph",
    "Metric",
    "Ref",
    "RequestRecord",
    "Run",
    "RunStatus",
    "Store",
    "Version",
    "VersionStatus",
    "parse_ref",
    "register_kind",
]
