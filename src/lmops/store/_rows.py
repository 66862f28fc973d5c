"""Conversions from ORM rows to the typed records of ``lmops.store.types``."""

from __future__ import annotations

from lmops.store._time import aware
from lmops.store.models import ApiKeyRow, AssetRow, AuditRow, RunRow, VersionRow
from lmops.store.types import ApiKey, AuditEvent, Run, RunStatus, Version, VersionStatus


def version(row: VersionRow, asset: AssetRow, aliases: list[str] | None = None) -> Version:
    return Version(
        asset=asset.name,
        kind=asset.kind,
        version=row.version,
        status=VersionStatus(row.status),
        digest=row.digest,
        layout=row.layout,
        size=row.size,
        files=len(row.manifest or []),
        metadata=row.meta or {},
        tags=list(row.tags or []),
        description=row.description,
        aliases=sorted(aliases or []),
        run_id=row.run_id,
        created_at=aware(row.created_at),
        created_by=row.created_by,
        error=row.error,
    )


def run(row: RunRow) -> Run:
    return Run(
        id=row.id,
        kind=row.kind,
        name=row.name,
        status=RunStatus(row.status),
        config=row.config or {},
        params=row.params or {},
        started_at=aware(row.started_at),
        ended_at=aware(row.ended_at),
        host=row.host,
        pid=row.pid,
        lmops_version=row.lmops_version,
        log_path=row.log_path,
        error=row.error,
        created_by=row.created_by,
    )


def audit(row: AuditRow) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        time=aware(row.time),
        actor=row.actor,
        action=row.action,
        target=row.target,
        origin=row.origin,
        details=row.details or {},
    )


def api_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        name=row.name,
        prefix=row.prefix,
        role=row.role,
        rpm=row.rpm,
        tpm=row.tpm,
        scopes=row.scopes,
        expires_at=aware(row.expires_at),
        revoked_at=aware(row.revoked_at),
        created_at=aware(row.created_at),
        created_by=row.created_by,
    )
