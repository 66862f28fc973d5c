"""The OpenAI-compatible routes under ``/v1``, mounted on the ``lmops serve`` app: a few
lines each, over :class:`~lmops.serve.handlers.Handlers` (the request paths, the same for
every backend) and :class:`Gateway` (API keys and deployment lookup). Request models and
the error shape are in :mod:`lmops.serve.protocol`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from lmops.monitor.accesslog import ensure_request_id
from lmops.security.auth import Unauthorized, authenticate
from lmops.serve.deployments import Registry
from lmops.serve.handlers import Handlers
from lmops.serve.protocol import (
    DEFAULT_MAX_BODY_BYTES,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIError,
    openapi_body,
)
from lmops.serve.replies import internal_error
from lmops.serve.stored_responses import ResponsesEndpoint

__all__ = ["Gateway", "OpenAIError", "mount_openai"]


# -- the gateway ------------------------------------------------------------------------------------
# A key that authenticated is trusted again for this long without reading the database (a
# read per request costs more than the rest of admission): revoking a key takes effect in
# every worker within this time; an expiry date is checked on every request.
KEY_CACHE_S = 1.0
_KEY_CACHE_MAX = 10_000


class Gateway:
    def __init__(self, registry: Registry, store: Any, *, hooks: Any = None) -> None:
        self.registry = registry
        self.store = store
        self.hooks = (
            hooks  # policy layer (limits, guardrails, metering, metrics); see lmops.serve.policy
        )
        self._keys: dict[str, tuple[float, Any]] = {}  # sha256(secret) -> (until, ApiKey)

    def _key(self, token: str) -> Any:
        """The key for ``token``, from the cache while it is fresh (see ``KEY_CACHE_S``)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._keys.get(digest)
        if hit is not None and hit[0] > now:
            key = hit[1]
            if key.expires_at is None or key.expires_at > datetime.now(UTC):
                return key
        key = self.store.keys.authenticate(token)  # PermissionDenied: never cached
        if len(self._keys) >= _KEY_CACHE_MAX:
            self._keys.clear()
        self._keys[digest] = (now + KEY_CACHE_S, key)
        return key

    # auth --------------------------------------------------------------------------------------------
    def authenticate(self, request: Request) -> Any:
        try:
            key = authenticate(
                request.headers.get("authorization"),
                self._key,
                missing="You didn't provide an API key. Send 'Authorization: Bearer <key>'.",
            )
        except Unauthorized as e:
            raise OpenAIError(401, str(e), code="invalid_api_key") from None
        request.state.lmops_key = key  # for the access log (prefix and name only)
        return key

    def deployment(self, key: Any, name: str) -> Any:
        from lmops.core.errors import NotFoundError

        if key.scopes is not None and name not in key.scopes:
            raise OpenAIError(
                403,
                f"key {key.name!r} may not call model {name!r}",
                type_="permission_error",
                param="model",
                code="model_not_allowed",
            )
        try:
            return self.registry.get(name)
        except NotFoundError:
            raise OpenAIError(
                404, f"The model '{name}' does not exist", param="model", code="model_not_found"
            ) from None


class _RequestIdRoute(APIRoute):
    """A ``/v1`` route whose response carries the request id in ``x-request-id``, as every
    response of OpenAI's API does, also with the access log (which echoes it too) off; an
    error gets it from the ``OpenAIError`` handler. The handlers log the same id
    (``ensure_request_id`` keeps one per request). An exception nothing expected is an
    OpenAI-shaped 500 with the id too (:func:`~lmops.serve.replies.internal_error`; the
    handlers end the request's policy context first, where they had begun one)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_id(request: Request) -> Response:
            rid = ensure_request_id(request.scope)
            try:
                response = await handler(request)
            except (OpenAIError, HTTPException):
                raise
            except Exception as e:
                response = internal_error(e, rid).response()
            response.headers["x-request-id"] = rid
            return response

        return with_id


def _model_card(name: str, dep: Any) -> dict[str, Any]:
    """OpenAI's model object, plus what lmops knows of it under ``lmops``."""
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "lmops",
        "lmops": dep.describe(),
    }


def mount_openai(
    app: FastAPI,
    registry: Registry,
    store: Any,
    *,
    hooks: Any = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Gateway:
    """Add ``/v1`` routes to ``app``; returns the gateway (for tests and shutdown).
    ``hooks`` is the policy layer (:class:`~lmops.serve.policy.Policy`); without one, a
    :class:`~lmops.serve.policy.NullPolicy` limits, checks and logs nothing."""
    from lmops.serve.policy import NullPolicy

    policy = hooks if hooks is not None else NullPolicy()
    gw = Gateway(registry, store, hooks=policy)
    handlers = Handlers(gw, policy, max_body_bytes=max_body_bytes)
    stored = ResponsesEndpoint(handlers, gw, policy)  # /v1/responses and what it keeps
    router = APIRouter(prefix="/v1", route_class=_RequestIdRoute)

    @app.exception_handler(OpenAIError)
    def _openai_error(req: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OpenAIError)
        response = exc.response()
        response.headers["x-request-id"] = ensure_request_id(req.scope)
        return response

    @router.get("/models")
    def models(request: Request) -> dict[str, Any]:
        key = gw.authenticate(request)
        data = [
            _model_card(name, registry.deployments[name])
            for name in sorted(registry.deployments)
            if key.scopes is None or name in key.scopes
        ]
        return {"object": "list", "data": data}

    # ``path``: a deployment may be named as Hugging Face names models (``org/m``), asked
    # with the slash as it is or as %2F (the openai client's way); nothing else lives
    # under /v1/models/. ``/v1/models/`` is the list, as its redirect used to give.
    @router.get("/models/{name:path}")
    def model(request: Request, name: str) -> dict[str, Any]:
        if not name:
            return models(request)
        key = gw.authenticate(request)
        return _model_card(name, gw.deployment(key, name))

    @router.post("/chat/completions", openapi_extra=openapi_body(ChatRequest))
    async def chat(request: Request) -> Response:
        return await handlers.generate(request, "chat")

    @router.post("/completions", openapi_extra=openapi_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        return await handlers.generate(request, "completion")

    @router.post("/responses")
    async def responses(request: Request) -> Response:
        return await stored.create(request)

    @router.get("/responses/{rid}")
    async def retrieve_response(request: Request, rid: str) -> Response:
        return await stored.retrieve(request, rid)

    @router.delete("/responses/{rid}")
    async def delete_response(request: Request, rid: str) -> Response:
        return await stored.delete(request, rid)

    @router.get("/responses/{rid}/input_items")
    async def response_input_items(request: Request, rid: str) -> Response:
        return await stored.input_items(request, rid)

    @router.post("/embeddings", openapi_extra=openapi_body(EmbeddingRequest))
    async def embeddings(request: Request) -> Response:
        return await handlers.embeddings(request)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        if policy.metrics is None:
            return Response("", media_type="text/plain")
        return Response(policy.metrics.render(), media_type="text/plain; version=0.0.4")

    app.include_router(router)
    from lmops.serve.tokenize import tokenizer_router

    for prefix in ("", "/v1"):  # vLLM's place, and beside the OpenAI routes
        app.include_router(tokenizer_router(gw, max_body_bytes=max_body_bytes, prefix=prefix))
    app.state.gateway = gw
    return gw
