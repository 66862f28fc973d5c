"""The prompt playground: run a prompt version (the prompt stage's ``lmops.prompts``)
against a deployment through the gateway's ``/v1/chat/completions`` as the session's key
(the version picked by ref, so the gateway renders it in place of the deployment's bound
prompt), and relay the stream.

The console calls its own server's ``/v1`` over loopback (the address the request came in
on), so a playground call is an ordinary gateway request: the key's scopes and rate limits,
guardrails, the request log and metrics all apply, and usage is billed to that key. The
browser reads the relayed server-sent events with a small inline script (two panes can run
side by side: two prompt versions, or two deployments).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from lmops.core.errors import UserError
from lmops.store import Store
from lmops.web.app import Page, render
from lmops.web.pages_store import deployments
from lmops.web.session import check_csrf

__all__ = ["add_routes", "parse_variables", "prompt_request"]

RELAY_TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=30.0, pool=5.0)


def parse_variables(text: str) -> dict[str, Any]:
    """A JSON object, or ``name=value`` lines."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as e:
            raise UserError(f"variables: not a JSON object ({e})") from None
        if not isinstance(value, dict):
            raise UserError("variables: give a JSON object or name=value lines")
        return value
    out: dict[str, Any] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, eq, value = line.partition("=")
        if not eq or not name.strip():
            raise UserError(f"variables line {n}: write name=value")
        out[name.strip()] = value.strip()
    return out


def prompt_request(
    store: Store, ref: str, variables: dict[str, Any], user_input: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rendered messages of a playground run and the rest of its request body: for the
    prompt version ``ref``, the version's ``name:N`` and ``variables`` (``input`` is the
    input box), so that the gateway renders it once, in place of the prompt the deployment
    binds, and logs that version (lmops.prompts.binding), and its config (temperature,
    max_tokens... but not ``model``: the pane picks the deployment), and the input as the
    user's message when the version has no ``{{input}}``; with no prompt chosen,
    the input alone as one user message, which the deployment's bound prompt wraps as any
    request. Rendered here too, so a missing variable is named before anything is sent."""
    if not ref:
        if not user_input.strip():
            raise UserError("write an input or pick a prompt version")
        messages = [{"role": "user", "content": user_input}]
        return messages, {"messages": messages}
    from lmops.prompts import load
    from lmops.prompts.playground import render_run

    prompt = load(store, ref)
    scope = {"input": user_input, **variables}
    # only the template's own variables: extra ones are not errors; an input the template
    # has no {{input}} for is the user's message after the prompt (not dropped)
    values = {k: scope[k] for k in prompt.variables if k in scope}
    if "input" not in prompt.variables and str(scope["input"]).strip():
        values["input"] = scope["input"]
    values, turns, messages = render_run(prompt, values)
    params = {k: v for k, v in prompt.config.items() if k != "model"}
    return messages, {**params, "messages": turns, "prompt": prompt.ref, "variables": values}


def _loopback(request: Request) -> str:
    host, port = request.scope.get("server") or ("127.0.0.1", 80)
    if ":" in str(host):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _client(request: Request) -> httpx.AsyncClient:
    """One client per app (its worker's event loop), kept open: building a client costs
    about as much as a whole fake completion (its TLS context), and keeping it reuses the
    loopback connection. Closed when the app shuts down."""
    app = request.app
    client: httpx.AsyncClient | None = getattr(app.state, "console_http", None)
    if client is None:
        client = httpx.AsyncClient(timeout=RELAY_TIMEOUT, trust_env=False)
        app.state.console_http = client
        app.router.on_shutdown.append(client.aclose)
    return client


def add_routes(r: APIRouter) -> None:
    @r.get("/playground", response_class=HTMLResponse)
    def playground(request: Request, viewer: Page, prompt: str = "") -> HTMLResponse:
        store = viewer.store
        refs: list[str] = []
        for a in store.assets.list(kind="prompt"):
            refs += [f"{a.name}@{label}" for label in sorted(a.aliases)]
            refs += [
                v.ref
                for v in reversed(store.assets.show(a.name).versions)
                if v.status.value == "READY"
            ]
        return render(
            request,
            viewer,
            "playground.html",
            section="prompts",
            refs=refs,
            chosen=prompt,
            deployments=deployments(request),
        )

    @r.post("/playground/stream")
    async def stream(request: Request, viewer: Page) -> Response:
        # Running a prompt changes nothing in the store: any key may, as itself (the
        # gateway checks its scopes and limits); the CSRF token keeps other sites out.
        await check_csrf(request, viewer)
        try:
            body = await request.json()
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            raise UserError("send a JSON object") from None
        deployment = str(body.get("deployment") or "")
        if not deployment:
            raise UserError("pick a deployment")
        messages, fields = prompt_request(
            viewer.store,
            str(body.get("prompt") or ""),
            parse_variables(str(body.get("variables") or "")),
            str(body.get("input") or ""),
        )
        payload: dict[str, Any] = {**fields, "model": deployment, "stream": True}
        for field, cast in (("max_tokens", int), ("temperature", float)):
            raw = body.get(field)
            if raw not in (None, ""):
                try:
                    payload[field] = cast(raw)
                except (TypeError, ValueError):
                    raise UserError(f"{field}: not a number: {raw!r}") from None
        client = _client(request)
        upstream = await client.send(
            client.build_request(
                "POST",
                _loopback(request) + "/v1/chat/completions",
                json=payload,
                headers={"Authorization": f"Bearer {viewer.secret}"},
            ),
            stream=True,
        )
        if upstream.status_code != 200:  # the gateway's own error, status and message
            content = await upstream.aread()
            await upstream.aclose()
            try:
                err = json.loads(content)
            except ValueError:
                err = {"error": {"message": content.decode(errors="replace")}}
            return JSONResponse(err, status_code=upstream.status_code)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(
            relay(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Messages": str(len(messages))},
        )
