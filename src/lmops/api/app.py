"""The FastAPI application behind ``lmops serve``.

``/api`` needs ``Authorization: Bearer <key>``; reads work with any active key, changes
need an ``admin`` key. Errors are ``{"error": {"message", "type", "code"}}`` with the
status of the error class (400 bad input, 401 no/invalid key, 403 role, 404 unknown,
409 conflict, 507 disk full, 503 store unavailable). An unexpected error is a 500 whose
message names only the exception's type; the traceback goes to the server log.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import platform
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmops import __version__
from lmops.api.deps import Admin, Reader, Unauthorized, admin, reader  # noqa: F401
from lmops.core.config import Settings, find_shared_datasets, mask_url
from lmops.core.errors import (
    ConflictError,
    DiskFullError,
    IntegrityError,
    LmopsError,
    NotFoundError,
    PermissionDenied,
    StoreError,
    UserError,
    api_message,
)
from lmops.store import ApiKey, Asset, AuditEvent, LineageGraph, Run, Store, Version
from lmops.store.refs import clip, name_views
from lmops.store.runlog import read_run_log
from lmops.store.trace import RequestTrace, trace_request
from lmops.store.types import RunComparison

__all__ = ["create_app"]

log = logging.getLogger("lmops.api")
# Longest upload file name part and whole path we accept (Linux: NAME_MAX and well under
# PATH_MAX once the server's temp folder is in front of it).
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024


_STATUS: list[tuple[type[LmopsError], int, str]] = [
    (Unauthorized, 401, "authentication_error"),
    (PermissionDenied, 403, "permission_error"),
    (NotFoundError, 404, "not_found_error"),
    (ConflictError, 409, "conflict_error"),
    (DiskFullError, 507, "insufficient_storage"),
    (UserError, 400, "invalid_request_error"),
    (IntegrityError, 500, "integrity_error"),
    (StoreError, 503, "store_unavailable"),
    (LmopsError, 500, "server_error"),
]


def error_response(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type_, "param": None, "code": code}},
    )


def _lmops_error(_req: Request, exc: Exception) -> JSONResponse:
    for cls, status, type_ in _STATUS:
        if isinstance(exc, cls):
            resp = error_response(status, name_views(api_message(exc)), type_)
            if status == 401:
                resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
    return error_response(500, str(exc), "server_error")


def _http_error(_req: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}.get(
        exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error"
    )
    return error_response(exc.status_code, str(exc.detail), type_)


def _unexpected_error(req: Request, exc: Exception) -> JSONResponse:
    # The exception's text may hold server paths or URLs: it goes to the log, not the client.
    log.error("internal error on %s %s", req.method, req.url.path, exc_info=exc)
    return error_response(
        500, f"internal error ({type(exc).__name__}); see the server log", "server_error"
    )


def _validation_error(_req: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
    return error_response(400, f"{loc or 'request'}: {err.get('msg')}", "invalid_request_error")


# -- request bodies -----------------------------------------------------------------------------
class AliasBody(BaseModel):
    alias: str


class KeyCreateBody(BaseModel):
    name: str
    role: str = "user"
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    expires_at: datetime | None = None
    scopes: list[str] | None = None


class KeyUpdateBody(BaseModel):
    """The fields to change; one left out stays, ``null`` removes that limit (no rpm/tpm
    limit, every deployment, no expiry). Checked by the store, with the CLI's messages."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 400, not a no-op

    role: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    expires_at: datetime | None = None
    scopes: list[str] | None = None


class KeyCreated(BaseModel):
    key: str
    record: ApiKey


class GcBody(BaseModel):
    grace_s: float = Field(default=3600.0, ge=0, allow_inf_nan=False)


def _api_router() -> APIRouter:
    r = APIRouter(prefix="/api")

    @r.get("/info")
    def info(store: Reader) -> dict[str, Any]:
        return info_dict(store.settings)

    # assets
    @r.get("/assets", response_model=list[Asset])
    def list_assets(store: Reader, kind: str | None = None) -> list[Asset]:
        return store.assets.list(kind)

    @r.get("/assets/{ref}", response_model=Asset | Version)
    def show_asset(store: Reader, ref: str) -> Asset | Version:
        return show(store, ref)

    @r.post("/assets", response_model=Version, status_code=201)
    def register_asset(
        store: Admin,
        kind: Annotated[str, Form()],
        name: Annotated[str, Form()],
        files: Annotated[
            list[UploadFile], File(description="one file, or a tree (filename = relative path)")
        ],
        metadata: Annotated[str, Form(description="JSON object")] = "{}",
        inputs: Annotated[str, Form(description="comma-separated refs")] = "",
        description: Annotated[str, Form()] = "",
    ) -> Version:
        try:
            meta = json.loads(metadata)
            assert isinstance(meta, dict)
        except (ValueError, AssertionError):
            raise UserError("metadata: must be a JSON object") from None
        names = [_upload_name(f.filename) for f in files]
        for rel, f in zip(names, files, strict=True):
            if (
                any(other != rel and rel in other.parents for other in names)
                or names.count(rel) > 1
            ):
                raise UserError(
                    f"files: {clip(f.filename or '')!r} is both a file and a folder, or given twice"
                )
        with tempfile.TemporaryDirectory(prefix="lmops-upload-") as tmp:
            root = Path(tmp) / "upload"
            root.mkdir()
            for rel, f in zip(names, files, strict=True):
                dest = root / rel
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with open(dest, "wb") as out:
                        shutil.copyfileobj(f.file, out)
                except OSError as e:  # never the server's temp path in the answer
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise DiskFullError(
                            "disk full: the server has no space left for the upload; "
                            "ask its operator to free space"
                        ) from None
                    raise UserError(
                        f"files: cannot store {clip(str(rel))!r}: {e.strerror}"
                    ) from None
            single = len(files) == 1 and "/" not in (files[0].filename or "file")
            src = root / (files[0].filename or "file") if single else root
            return store.assets.register(
                kind,
                name,
                src,
                metadata=meta,
                inputs=[i for i in inputs.split(",") if i.strip()],
                description=description,
            )

    @r.post("/assets/{ref}/alias", response_model=Version)
    def alias_asset(store: Admin, ref: str, body: AliasBody) -> Version:
        return store.assets.alias(ref, body.alias)

    @r.get("/assets/{ref}/lineage", response_model=LineageGraph)
    def lineage(
        store: Reader, ref: str, depth: int | None = Query(default=None, ge=1)
    ) -> LineageGraph:
        return store.assets.lineage(ref, depth)

    @r.get("/trace", response_model=RequestTrace)
    def trace(
        request: Request,
        store: Reader,
        request_id: str | None = None,
        deployment: str | None = None,
        key: str | None = None,
    ) -> RequestTrace:
        """A logged request by either id its client holds (``request_id``: the answer's
        ``id`` or the response's ``x-request-id``, which a refused request has too), or the
        newest logged request of a deployment or key: the version that answered (or would
        have) and everything upstream of it (``lmops trace``). A key that is not an admin
        traces its own requests only."""
        if request_id is not None and (deployment or key):
            raise UserError("request_id names one request; deployment and key pick the newest")
        caller = request.state.lmops_key
        only = None if caller.role == "admin" else caller.name
        return trace_request(store, request_id, only_key=only, deployment=deployment, key=key)

    @r.get("/assets/{ref}/verify")
    def verify(store: Reader, ref: str) -> dict[str, Any]:
        report = store.assets.verify(ref)
        # an external reference whose local path changed is not damage to the store
        changed = {
            k: v for k, v in report.items() if v and store.assets.get(k).layout == "external"
        }
        bad = [k for k, v in report.items() if v and k not in changed]
        return {"ok": not bad, "versions": report, "changed": changed}

    @r.delete("/assets/{ref}")
    def delete(store: Admin, ref: str, force: bool = False) -> dict[str, list[str]]:
        """409 when an alias points at the version, unless ``force`` (or the ref is it)."""
        return {"deleted": store.assets.delete(ref, force=force)}

    # runs
    @r.get("/runs", response_model=list[Run])
    def list_runs(
        store: Reader, kind: str | None = None, limit: int = Query(50, ge=1, le=1000)
    ) -> list[Run]:
        return store.runs.list(kind=kind, limit=limit)

    @r.get("/runs/compare", response_model=RunComparison)
    def compare_runs(store: Reader, ids: list[str] = Query(...)) -> RunComparison:
        """Runs side by side (``?ids=A&ids=B``): metrics per run, params that differ."""
        return store.runs.compare(ids)

    @r.get("/runs/{run_id}", response_model=Run)
    def show_run(store: Reader, run_id: str) -> Run:
        return store.runs.get(run_id)

    @r.get("/runs/{run_id}/log", response_class=PlainTextResponse)
    def run_log(
        store: Reader, run_id: str, tail: int | None = Query(None, ge=0)
    ) -> PlainTextResponse:
        """The run's log file (``tail``: only its last lines); 404 when it has none."""
        return PlainTextResponse(read_run_log(store.runs.get(run_id), tail))

    # keys
    @r.get("/keys", response_model=list[ApiKey])
    def list_keys(store: Admin) -> list[ApiKey]:
        return store.keys.list()

    @r.post("/keys", response_model=KeyCreated, status_code=201)
    def create_key(store: Admin, body: KeyCreateBody, response: Response) -> KeyCreated:
        response.headers["Cache-Control"] = "no-store"  # the secret is in this answer only
        record, secret = store.keys.create(
            body.name,
            role=body.role,
            rpm=body.rpm,
            tpm=body.tpm,
            expires_at=body.expires_at,
            scopes=body.scopes,
        )
        return KeyCreated(key=secret, record=record)

    @r.delete("/keys/{name}", response_model=ApiKey)
    def revoke_key(store: Admin, name: str) -> ApiKey:
        return store.keys.revoke(name, keep_an_admin=True)

    @r.patch("/keys/{name}", response_model=ApiKey)
    def update_key(store: Admin, name: str, body: KeyUpdateBody) -> ApiKey:
        return store.keys.update(name, **body.model_dump(exclude_unset=True), keep_an_admin=True)

    @r.post("/keys/{name}/rotate", response_model=KeyCreated)
    def rotate_key(store: Admin, name: str, response: Response) -> KeyCreated:
        record, secret = store.keys.rotate(name)
        response.headers["Cache-Control"] = "no-store"  # the new secret is in this answer only
        return KeyCreated(key=secret, record=record)

    # store maintenance and audit
    @r.post("/gc")
    def gc(store: Admin, body: GcBody | None = None) -> dict[str, int]:
        rep = store.gc(grace_s=(body or GcBody()).grace_s)
        return {
            "blobs_removed": rep.blobs_removed,
            "bytes_freed": rep.bytes_freed,
            "abandoned_marked_failed": rep.abandoned_marked_failed,
            "responses_expired": rep.responses_expired,
        }

    @r.get("/audit", response_model=list[AuditEvent])
    def audit(
        store: Admin, action: str | None = None, limit: int = Query(100, ge=1, le=10000)
    ) -> list[AuditEvent]:
        return store.audit.list(action=action, limit=limit)

    return r


def _upload_name(filename: str | None) -> PurePosixPath:
    """An upload's file name as a safe relative path, or a ``UserError`` naming it."""
    rel = PurePosixPath(filename or "file")
    shown = clip(filename or "")
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.name in ("", "."):
        raise UserError(f"files: unsafe file name {shown!r}")
    if "\x00" in str(rel):
        raise UserError(f"files: file name {shown!r} holds a NUL character")
    longest = max(len(p.encode()) for p in rel.parts)
    if longest > MAX_NAME_BYTES or len(str(rel).encode()) > MAX_PATH_BYTES:
        raise UserError(
            f"files: file name {shown!r} is too long ({longest} bytes in one part); at most "
            f"{MAX_NAME_BYTES} bytes per part and {MAX_PATH_BYTES} in all"
        )
    return rel


def show(store: Store, ref: str) -> Asset | Version:
    """A bare name shows the asset with all versions; ``name:N``/``name@a`` one version."""
    if ":" in ref or "@" in ref:
        return store.assets.get(ref)
    return store.assets.show(ref)


def info_dict(settings: Settings) -> dict[str, Any]:
    import importlib.util

    extras = {
        name: importlib.util.find_spec(mod) is not None
        for name, mod in [
            ("torch", "torch"),
            ("transformers", "transformers"),
            ("postgres", "psycopg"),
            ("s3", "s3fs"),
            ("ray", "ray"),
            ("vllm", "vllm"),
            ("gpu", "bitsandbytes"),
        ]
    }
    return {
        "version": __version__,
        "python": platform.python_version(),
        "home": str(settings.home),
        "database_url": mask_url(settings.database_url),
        "artifacts": mask_url(settings.artifacts),
        # where eval and the quickstart find them (the variable, else beside the checkout)
        "shared_datasets": str(shared)
        if (shared := find_shared_datasets(settings.shared_datasets))
        else None,
        "extras": extras,
        "device": torch_device(),
    }


@functools.cache
def torch_device() -> str | None:
    """``cuda``/``mps``/``cpu`` when torch is importable, else None. Cached: importing torch
    takes seconds on a busy machine, and the answer cannot change within a process."""
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def create_app(
    store: Store | None = None, *, mounts: list[Callable[[FastAPI], None]] | None = None
) -> FastAPI:
    """Build the app. ``mounts`` let later stages add their routers (``/v1``, console)."""
    store = store or Store(origin="api")
    app = FastAPI(
        title="lmops",
        version=__version__,
        description="lmops platform API: assets, runs, lineage and keys.",
    )
    app.state.store = store
    app.add_exception_handler(LmopsError, _lmops_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with store.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as e:
            checks["database"] = f"error: {type(e).__name__}"  # /readyz needs no key
        try:
            store.artifacts.staging.mkdir(parents=True, exist_ok=True)
            checks["artifacts"] = "ok"
        except OSError as e:
            checks["artifacts"] = f"error: {e.strerror}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok, "checks": checks})

    app.include_router(_api_router())
    for router in stage_routers():
        app.include_router(router)
    from lmops.web import mount_console

    mount_console(app)  # the web console under /ui (log in with an API key)
    from lmops.serve.server import mount_from_env

    mount_from_env(app)
    for mount in mounts or []:
        mount(app)
    from lmops.monitor.accesslog import install_access_log

    install_access_log(app)  # one JSON line per request unless LMOPS_ACCESS_LOG=off
    return app


# Stage modules that serve routes under /api/<stage>: each ``lmops.api.<name>`` exposes a
# ``router`` (an ``APIRouter``) built on the dependencies of :mod:`lmops.api.deps`.
STAGE_ROUTERS = ("deploy", "prompts", "monitor")


def stage_routers() -> list[APIRouter]:
    import importlib

    routers = []
    for name in STAGE_ROUTERS:
        try:
            module = importlib.import_module(f"lmops.api.{name}")
        except ModuleNotFoundError as exc:  # a stage without routes yet
            if exc.name != f"lmops.api.{name}":
                raise
            continue
        routers.append(module.router)
    return routers
