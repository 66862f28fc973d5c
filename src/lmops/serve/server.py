"""Mounting the serving gateway on the ``lmops serve`` app.

The CLI puts the deployment specs (JSON) in ``LMOPS_SERVE_DEPLOYMENTS`` so that every
uvicorn worker process builds the same deployments."""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import FastAPI

from lmops.serve.deployments import DeploymentSpec, Registry

ENV = "LMOPS_SERVE_DEPLOYMENTS"

__all__ = ["ENV", "mount_from_env", "mount_gateway"]


def mount_gateway(app: FastAPI, specs: list[DeploymentSpec], store: Any) -> Any:
    from lmops.serve.openai_api import mount_openai

    registry = Registry(specs, store)
    hooks = None
    try:
        from lmops.serve.policy import Policy

        hooks = Policy(store, registry)
    except ImportError:  # the policy layer is optional at import time
        hooks = None
    gw = mount_openai(app, registry, store, hooks=hooks)

    @app.on_event("shutdown")
    async def _close() -> None:
        await registry.aclose()
        if hooks is not None:
            hooks.close()  # writes the request-log rows still pending

    return gw


def mount_from_env(app: FastAPI) -> None:
    raw = os.environ.get(ENV)
    if not raw:
        return
    specs = [DeploymentSpec.model_validate(d) for d in json.loads(raw)]
    mount_gateway(app, specs, app.state.store)
