"""The pipeline's ``serve`` step: the gateway in this process on a real port, a fresh API
key scoped to the deployment, one chat request through the official ``openai`` client."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from lmops.core.errors import UserError
from lmops.core.net import free_port
from lmops.pipelines.steps import ServeParams, StepContext, StepOutput

__all__ = ["serve_and_probe", "snippets"]


def snippets(base_url: str, deployment: str, secret: str, prompt: str) -> tuple[str, str]:
    """A ready-to-paste ``curl`` command and Python snippet for the served deployment."""
    body = (
        '{"model": "'
        + deployment
        + '", "messages": [{"role": "user", "content": "'
        + prompt.replace('"', '\\"')
        + '"}]}'
    )
    curl = (
        f"curl {base_url}/v1/chat/completions \\\n"
        f'  -H "Authorization: Bearer {secret}" \\\n'
        f'  -H "Content-Type: application/json" \\\n'
        f"  -d '{body}'"
    )
    python = (
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{base_url}/v1", api_key="{secret}")\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{deployment}", messages=[{{"role": "user", "content": {prompt!r}}}]\n'
        ")\n"
        "print(reply.choices[0].message.content)"
    )
    return curl, python


class _Server:
    """uvicorn in a thread (signals stay with the main thread, so Ctrl-C reaches us)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="lmops-serve", daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise UserError("the server did not start (is the port free?)")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve_and_probe(ctx: StepContext, p: ServeParams) -> StepOutput:
    from openai import OpenAI

    from lmops.serve.deployments import DeploymentSpec
    from lmops.serve.server import gateway_app
    from lmops.store._time import utcnow

    store = ctx.store
    version = store.assets.resolve(p.model)
    if version.kind not in ("model", "adapter"):
        raise UserError(f"model: {p.model} is a {version.kind}, not a model")
    spec = DeploymentSpec(name=p.name, model=p.model)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ttl = p.key_ttl()
    key, secret = store.keys.create(
        f"{ctx.pipeline}-{ctx.step}-{stamp}"[:120],
        scopes=[p.name],
        expires_at=utcnow() + ttl if ttl is not None else None,
    )
    expires = (
        f"expires {key.expires_at:%Y-%m-%d %H:%M} UTC"
        if key.expires_at is not None
        else "never expires (lmops keys revoke to end it)"
    )
    from lmops.monitor.accesslog import ENV as ACCESS_LOG_ENV

    # The one smoke request would print a JSON access-log line into the pipeline's output;
    # a server kept running logs as `lmops serve` does (LMOPS_ACCESS_LOG, default json).
    before = os.environ.get(ACCESS_LOG_ENV)
    if not p.keep:
        os.environ[ACCESS_LOG_ENV] = "off"
    try:
        app = gateway_app([spec], store)
    finally:
        if before is None:
            os.environ.pop(ACCESS_LOG_ENV, None)
        else:
            os.environ[ACCESS_LOG_ENV] = before
    port = p.port or free_port(p.host)
    server = _Server(app, p.host, port)
    base = f"http://{p.host}:{port}"
    server.start()
    try:
        client = OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=120)
        t0 = time.perf_counter()
        reply = client.chat.completions.create(
            model=p.name,
            messages=[{"role": "user", "content": p.prompt}],
            max_tokens=p.max_tokens,
            temperature=0,
        )
        latency = time.perf_counter() - t0
        answer = reply.choices[0].message.content or ""
        curl, python = snippets(base, p.name, secret, p.prompt)
        out = ctx.console
        if out is not None:
            out.print(f"served {version.ref} as {p.name!r} at {base}/v1", markup=False)
            out.print(f"  key {key.name} ({expires}; shown once): {secret}", markup=False)
            out.print(f"  Q: {p.prompt}", markup=False)
            out.print(f"  A: {answer}", markup=False)
            out.print(
                "\ncurl:\n" + curl + "\n\nPython:\n" + python + "\n", markup=False, soft_wrap=True
            )
        if p.keep:
            if out is not None:
                out.print(f"serving on {base} — press Ctrl-C to stop", markup=False)
            try:
                while server.thread.is_alive():
                    server.thread.join(timeout=0.5)
            except KeyboardInterrupt:
                pass
    finally:
        server.stop()
    usage = reply.usage
    result = {
        "url": f"{base}/v1",
        "deployment": p.name,
        "model": version.ref,
        "key": key.name,
        "key_prefix": key.prefix,
        "key_expires_at": key.expires_at.isoformat() if key.expires_at is not None else None,
        "prompt": p.prompt,
        "answer": answer,
        "latency_s": round(latency, 3),
        "completion_tokens": usage.completion_tokens if usage else None,
    }
    return StepOutput(
        {"output": version.ref}, result, f"{p.name} -> {version.ref}: {answer[:60]!r}"
    )
