"""ORM tables of the metadata database.

These classes never leave the ``store`` package: callers get the typed records in
``lmops.store.types``. Every schema change is a new Alembic migration under
``migrations/versions`` (append-only); ``tests/store/test_migrations.py`` checks that the
migrations and these models agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class AssetRow(Base):
    __tablename__ = "assets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("asset_id", "version", name="uq_versions_asset_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    # PENDING -> READY | FAILED; READY -> DELETED (numbers are never reused).
    status: Mapped[str] = mapped_column(String(16), index=True)
    # sha256 of the file, or of the canonical manifest JSON for a directory.
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # "file" | "dir" | "external" (a local path recorded by content, no bytes stored)
    layout: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # [{"path": rel, "digest": sha256, "size": bytes}, ...] sorted by path.
    manifest: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    run_id: Mapped[str | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128), default="")
    # Who is writing a PENDING version, so a crashed writer can be detected.
    writer: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class BlobClaimRow(Base):
    """A blob a PENDING version is writing: recorded before its bytes are put in place and
    dropped when the version turns READY (its manifest then names the blob) or FAILED, so
    ``gc`` never frees bytes a registration is about to reference (see ``Store.gc``)."""

    __tablename__ = "blob_claims"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), index=True
    )
    digest: Mapped[str] = mapped_column(String(64))


class FileHashRow(Base):
    """The sha256 of a local file a job read (an external reference), with the stat it had
    when hashed: while the stat is the same, the bytes are taken to be the same and the
    file is not read again (``store.external.HashCache``). ``key`` is the sha256 of
    ``host`` and ``path``, since one path names different files on different hosts."""

    __tablename__ = "file_hashes"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    ctime_ns: Mapped[int] = mapped_column(BigInteger)
    inode: Mapped[str] = mapped_column(String(24))  # st_ino may exceed a signed 64-bit int
    sha256: Mapped[str] = mapped_column(String(64))
    hashed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("asset_id", "alias", name="uq_aliases_asset_alias"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LineageRow(Base):
    __tablename__ = "lineage"
    __table_args__ = (
        UniqueConstraint("child_id", "parent_id", "role", name="uq_lineage_edge"),
        Index("ix_lineage_parent", "parent_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    parent_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(32), default="input")


class RunRow(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[str] = mapped_column(String(16), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lmops_version: Mapped[str] = mapped_column(String(32), default="")
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")


class MetricRow(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_name_step", "run_id", "name", "step"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(255))
    origin: Mapped[str] = mapped_column(String(16))  # cli | api | console | lib
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    # sha256 of the secret; the secret itself is shown once and never stored.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Deployments this key may call; null = all.
    scopes: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128), default="")


class RequestLogRow(Base):
    """One served request (metering, usage reports, data flow-back)."""

    __tablename__ = "request_log"
    __table_args__ = (
        Index("ix_request_log_key_time", "key_name", "time"),
        Index("ix_request_log_dep_time", "deployment", "time"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)  # the answer's id
    # the response's x-request-id header, the id a refused request has too (migration 0010);
    # the client may choose it, so it need not be unique
    x_request_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    key_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    deployment: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # of a list of replicas, the one that answered, credentials masked (migration 0011)
    replica: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # the prompt version that wrapped the request (migration 0009)
    prompt_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    guardrails: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Bodies are stored only when the deployment logs them, after PII masking.
    request_body: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ResponseRow(Base):
    """One response of the gateway's Responses API kept for ``previous_response_id``,
    retrieve and delete (migration 0012). Bodies are kept as the deployment says
    (``responses_mask``: as the model saw them, or with every PII type masked); a row past
    ``expires_at`` is gone for readers and is deleted by ``lmops gc``."""

    __tablename__ = "responses"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # resp_<hex>
    key_name: Mapped[str | None] = mapped_column(String(128), nullable=True)  # the owner
    deployment: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # the response this one continued; not a foreign key: deleting one keeps the later ones
    previous_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # the input items this request sent (not the ones it carried over), and the response
    # object as it was answered
    input: Mapped[list[Any]] = mapped_column(JSON)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)


class RateWindowRow(Base):
    """A counter per (scope, window): RPM/TPM minutes, daily and monthly token quotas.
    Shared by every server worker process through the database."""

    __tablename__ = "rate_windows"
    scope: Mapped[str] = mapped_column(String(255), primary_key=True)  # e.g. "tpm:key:ci"
    window: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # minute/day/month number
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class InflightRow(Base):
    """Requests in flight per scope, for concurrency caps across worker processes."""

    __tablename__ = "inflight"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(255), index=True)
    request_id: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    pid: Mapped[int] = mapped_column(Integer)
    # where ``pid`` runs (None: rows written before migration 0006)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)


class StepCacheRow(Base):
    """A pipeline step that completed: its cache key (config + input versions + lmops
    version) and the asset versions it produced, so an unchanged step is not run again."""

    __tablename__ = "step_cache"
    __table_args__ = (Index("ix_step_cache_pipeline_step", "pipeline", "step"),)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(128))
    step: Mapped[str] = mapped_column(String(128))
    step_type: Mapped[str] = mapped_column(String(32))
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
