"""Structured access logs for the ``lmops serve`` app: one JSON line per HTTP request.

    {"ts": "2025-01-01T12:00:00.123Z", "request_id": "6f1c...", "method": "POST",
     "path": "/v1/chat/completions", "status": 200, "latency_ms": 812.4,
     "client": "127.0.0.1:53122", "user_agent": "OpenAI/Python 1.0", "key": "lmk-AbCdEfGh",
     "key_name": "app", "deployment": "chat", "model_version": "chat:3", "replica": null,
     "completion_id": "chatcmpl-...", "prompt_tokens": 12, "completion_tokens": 40,
     "ttft_ms": 95.1, "guardrails": [{"type": "pii_mask", ...}], "error_code": null}

Contract:

* ``request_id`` is the request's ``x-request-id`` header when it is a sane token (1-128
  visible ASCII characters), else a fresh one; either way it is echoed in the response's
  ``x-request-id`` header (an unhandled exception is logged with ``error_code:
  "internal_error"``; ``/v1`` answers it with an OpenAI-shaped 500 carrying the id,
  ``/api`` with its JSON 500, any other route with Starlette's bare one). The gateway's ``/v1``
  responses carry the same id with the access log off too, and the request log keeps it
  (``x_request_id``), so ``lmops trace`` finds a request by it, a refused one included.
* ``status`` is the status sent, except ``499`` when the client hung up before the reply
  was complete (``"disconnected": true``). ``error_code`` is the ``error.code`` (or, when
  that is null, ``error.type``) of an error reply.
* Lines of authenticated requests name the key by prefix and name (never the secret),
  read from ``request.state.lmops_key`` where ``/v1`` and ``/api`` leave it. ``/v1``
  lines add what the policy layer's :class:`~lmops.serve.policy.RequestContext`
  (``request.state.lmops_ctx``) knows: deployment, the model version that answered,
  ``replica`` (of a deployment over a list of replicas, the one whose reply or failure the
  request got, credentials masked, as the request log's ``replica``; null otherwise),
  ``completion_id`` (the reply's id, the request log's ``request_id``; a refused request's
  was never sent), tokens, time to first token
  and guardrail actions. Fields are absent when the request never got that far.
* A streamed reply's line is written when the stream ends (tokens and status final),
  also when the client disconnects.

``LMOPS_ACCESS_LOG`` = ``json`` (the default) or ``off``. Lines go to the ``lmops.access``
logger at INFO, which writes them to stderr, or to the file ``LMOPS_ACCESS_LOG_FILE``
(appended); they follow the server's log level as uvicorn's access log does
(``--log-level warning`` silences them), unless the logger was configured already.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

from lmops.core.config import mask_url
from lmops.core.errors import UserError

__all__ = [
    "ENV",
    "FILE_ENV",
    "LOGGER",
    "AccessLogMiddleware",
    "ensure_request_id",
    "install_access_log",
]

ENV = "LMOPS_ACCESS_LOG"
FILE_ENV = "LMOPS_ACCESS_LOG_FILE"
LOGGER = "lmops.access"

_REQUEST_ID = re.compile(r"[!-~]{1,128}")  # visible ASCII, no spaces: safe to log and echo
_ERROR_BODY_MAX = 64 * 1024  # error bodies read for their code; larger ones are not parsed

# a streamed reply has sent 200 before it fails; the gateway's final status says how
_STREAM_ERRORS = {500: "engine_error", 502: "upstream_error"}

Scope = dict[str, Any]
Message = dict[str, Any]


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _logger() -> logging.Logger:
    """The ``lmops.access`` logger, given a handler once unless it already has one."""
    log = logging.getLogger(LOGGER)
    if not log.handlers:
        path = os.environ.get(FILE_ENV)
        handler: logging.Handler = (
            logging.FileHandler(path, encoding="utf-8") if path else _Stderr()
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False  # the line is complete JSON; root handlers would decorate it
    if log.level == logging.NOTSET:
        # follow `--log-level` as uvicorn's own access log does (uvicorn sets its loggers'
        # levels before it builds the app); INFO outside uvicorn
        log.setLevel(logging.getLogger("uvicorn.error").level or logging.INFO)
    return log


def install_access_log(app: Any) -> bool:
    """Add :class:`AccessLogMiddleware` to ``app`` unless ``LMOPS_ACCESS_LOG=off``;
    returns whether it was added."""
    mode = os.environ.get(ENV, "json").strip().lower() or "json"
    if mode == "off":
        return False
    if mode != "json":
        raise UserError(f"{ENV}={mode!r}: use 'json' or 'off'")
    app.add_middleware(AccessLogMiddleware, logger=_logger())
    return True


class AccessLogMiddleware:
    """Pure ASGI middleware (a streamed body passes through untouched) that writes one
    JSON line per HTTP request; see the module docstring for the fields."""

    def __init__(self, app: Any, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.logger = logger or _logger()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        ts = datetime.now(UTC)
        request_id = ensure_request_id(scope)
        state = scope["state"]
        seen: dict[str, Any] = {"status": None, "complete": False, "error_body": None}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = int(message["status"])
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
                ctype = dict(headers).get(b"content-type", b"")
                if seen["status"] >= 400 and ctype.startswith(b"application/json"):
                    seen["error_body"] = bytearray()
            elif message["type"] == "http.response.body":
                body = seen["error_body"]
                if body is not None and len(body) < _ERROR_BODY_MAX:
                    body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    seen["complete"] = True
            await send(message)

        error_code: str | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as e:
            if seen["status"] is None:  # the server answers 500 after us
                seen["status"] = 500
                seen["complete"] = True
                error_code = "internal_error" if isinstance(e, Exception) else "cancelled"
            raise
        finally:
            if self.logger.isEnabledFor(logging.INFO):
                try:
                    line = _line(scope, state, seen, ts, started, request_id, error_code)
                    self.logger.info(json.dumps(line, ensure_ascii=False, default=str))
                except Exception:  # a log line never breaks a request
                    logging.getLogger(__name__).exception("access log line failed")


def ensure_request_id(scope: MutableMapping[str, Any]) -> str:
    """The request id of an HTTP request (see the module docstring), chosen once and kept in
    the scope's state (``request.state.request_id``): the access log and the gateway, which
    logs it and echoes it also when the access log is off, read the same one."""
    state = scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        rid = state["request_id"] = _request_id(scope)
    return str(rid)


def _request_id(scope: MutableMapping[str, Any]) -> str:
    for k, v in scope.get("headers", []):
        if k == b"x-request-id":
            value = v.decode("latin-1").strip()
            if _REQUEST_ID.fullmatch(value):
                return value
            break
    return uuid.uuid4().hex


def _line(
    scope: Scope,
    state: dict[str, Any],
    seen: dict[str, Any],
    ts: datetime,
    started: float,
    request_id: str,
    error_code: str | None,
) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in scope.get("headers", [])}
    client = scope.get("client")
    status = seen["status"] if seen["status"] is not None else 499
    disconnected = not seen["complete"]
    line: dict[str, Any] = {
        "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "request_id": request_id,
        "method": scope.get("method"),
        "path": scope.get("path"),
        "status": 499 if disconnected and status < 400 else status,
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        "client": f"{client[0]}:{client[1]}" if client else None,
        "user_agent": headers.get(b"user-agent", b"").decode("latin-1") or None,
    }
    if disconnected:
        line["disconnected"] = True
    if seen["error_body"]:
        error_code = _error_code(bytes(seen["error_body"])) or error_code
    key = state.get("lmops_key")
    if key is not None:
        line["key"] = getattr(key, "prefix", None)
        line["key_name"] = getattr(key, "name", None)
    ctx = state.get("lmops_ctx")
    if ctx is not None:
        ttft = getattr(ctx, "ttft_s", None)
        replica = getattr(ctx, "replica", None)
        line.update(
            deployment=getattr(ctx.dep, "name", None),
            model_version=ctx.model_ref,
            replica=mask_url(replica) if replica is not None else None,
            completion_id=ctx.request_id,
            prompt_tokens=getattr(ctx, "prompt_tokens", None),
            completion_tokens=getattr(ctx, "completion_tokens", None),
            ttft_ms=round(ttft * 1000, 3) if ttft is not None else None,
            guardrails=list(ctx.actions),
        )
        if getattr(ctx, "warnings", None):
            line["warnings"] = list(ctx.warnings)
        final = getattr(ctx, "status", None)
        if error_code is None and final in _STREAM_ERRORS:  # a stream that failed mid-way
            error_code = _STREAM_ERRORS[final]
    if disconnected and error_code is None:
        error_code = "client_disconnected"
    line["error_code"] = error_code
    return line


def _error_code(body: bytes) -> str | None:
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    if not isinstance(err, dict):
        return None
    code = err.get("code") or err.get("type")
    return str(code) if code is not None else None
