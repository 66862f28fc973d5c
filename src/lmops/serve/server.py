"""Mounting the serving gateway on the ``lmops serve`` app.

The CLI puts the deployment specs (JSON) in ``LMOPS_SERVE_DEPLOYMENTS`` (and the request
body cap in ``LMOPS_SERVE_MAX_BODY_BYTES``) so that every uvicorn worker process builds
the same gateway."""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import FastAPI

from lmops.serve.deployments import DeploymentSpec, Registry
from lmops.serve.protocol import DEFAULT_MAX_BODY_BYTES

ENV = "LMOPS_SERVE_DEPLOYMENTS"
MAX_BODY_ENV = "LMOPS_SERVE_MAX_BODY_BYTES"

__all__ = ["ENV", "MAX_BODY_ENV", "gateway_app", "mount_from_env", "mount_gateway"]


def mount_gateway(
    app: FastAPI,
    specs: list[DeploymentSpec],
    store: Any,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Any:
    from lmops.serve.openai_api import mount_openai
    from lmops.serve.policy import Policy

    registry = Registry(specs, store)
    policy = Policy(store, registry)
    gw = mount_openai(app, registry, store, hooks=policy, max_body_bytes=max_body_bytes)

    @app.on_event("shutdown")
    async def _close() -> None:
        await registry.aclose()
        policy.close()  # writes the request-log rows still pending

    return gw


def gateway_app(
    specs: list[DeploymentSpec],
    store: Any,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """An app serving only the gateway: ``/v1`` for ``specs`` and ``/healthz``, with the
    access log. For callers below the skins (the pipeline's ``serve`` step), which may not
    build the platform app of :mod:`lmops.api.app`; ``lmops serve`` mounts the same gateway
    on that app instead."""
    from lmops.monitor.accesslog import install_access_log

    app = FastAPI(title="lmops gateway")
    app.state.store = store

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    mount_gateway(app, specs, store, max_body_bytes=max_body_bytes)
    install_access_log(app)  # one JSON line per request unless LMOPS_ACCESS_LOG=off
    return app


def mount_from_env(app: FastAPI) -> None:
    raw = os.environ.get(ENV)
    if not raw:
        return
    specs = [DeploymentSpec.model_validate(d) for d in json.loads(raw)]
    cap = os.environ.get(MAX_BODY_ENV)
    mount_gateway(
        app,
        specs,
        app.state.store,
        max_body_bytes=int(cap) if cap and cap.isdigit() else DEFAULT_MAX_BODY_BYTES,
    )
