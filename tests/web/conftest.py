"""One console server (real uvicorn on 127.0.0.1, the real app with two fake deployments)
and one headless Chromium per test module, over a store seeded with every kind of thing
the pages show. Tests skip with a reason when Debian's chromium or playwright is missing."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("LMOPS_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Console:
    url: str  # http://127.0.0.1:PORT
    store: Any
    admin: str  # secrets
    reader: str
    seed: dict[str, Any]
    requests: list[str] = field(default_factory=list)  # every URL the logged-in pages asked for


def _seed(store: Any, tmp: Path) -> dict[str, Any]:
    """Raw data -> cleaned dataset (preview rows, report, plot) -> model (served), runs
    with metric curves, an eval report with items, prompt versions with a label, a drift
    report, request-log rows (a 429, guardrail actions), a pipeline run and its cache."""
    from lmops.monitor.metering import log_request
    from lmops.prompts import create as create_prompt
    from lmops.store import register_kind

    register_kind("drift_report")
    raw_file = tmp / "corpus.txt"
    raw_file.write_text("The tide comes in.\nThe tide goes out.\n", encoding="utf-8")
    raw = store.assets.register("dataset", "raw-corpus", raw_file, description="scraped text")
    clean_dir = tmp / "clean"
    (clean_dir / "_report").mkdir(parents=True)
    rows = [{"text": f"document {i} about tides", "id": i} for i in range(30)]
    (clean_dir / "part-00000.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    # the documents the run dropped, kept apart (keep_dropped), linked from its report
    dropped_dir = tmp / "clean-dropped"
    dropped_dir.mkdir()
    (dropped_dir / "part-00000.jsonl").write_text(
        json.dumps({"text": "document 7 about tides", "_lmops": {"dropped": {"step": 1}}}) + "\n"
    )
    dropped = store.assets.register(
        "dataset", "clean-corpus-dropped", dropped_dir, inputs=[(raw.ref, "input")]
    )
    report = {
        "docs_in": 40,
        "docs_out": 30,
        "ops": [
            {
                "step": 1,
                "name": "dedup",
                "docs_in": 40,
                "docs_out": 30,
                "dropped": {"duplicate": 10},
                "examples": {"duplicate": [{"id": "raw:7", "text": "document 7 <b>about</b>"}]},
            }
        ],
        "dropped": {"docs": 10, "path": None, "dataset": dropped.ref},
    }
    (clean_dir / "_report" / "report.json").write_text(json.dumps(report), encoding="utf-8")
    (clean_dir / "_report" / "report.png").write_bytes(_png(160, 90))
    with store.runs.track("data", config={"recipe": "clean"}) as drun:
        clean = store.assets.register(
            "dataset",
            "clean-corpus",
            clean_dir,
            metadata={"docs": 30, "recipe": "clean"},
            inputs=[(raw.ref, "input")],
            run_id=drun.id,
        )
    runs = []
    for lr, slope in ((3e-4, 0.25), (1e-3, 0.4)):
        with store.runs.track("train", config={"lr": lr, "model": {"layers": 2}}) as run:
            for step in range(20):
                store.runs.log_metrics(run.id, {"loss": 4.0 / (1 + slope * step), "lr": lr}, step)
            runs.append(run.id)
    model_dir = tmp / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"layers": 2}', encoding="utf-8")
    model = store.assets.register(
        "model", "tiny-lm", model_dir, inputs=[(clean.ref, "dataset")], run_id=runs[1]
    )
    store.assets.alias(model.ref, "production")
    ev_dir = tmp / "eval"
    ev_dir.mkdir()
    results = {"addition": {"exact_match": 0.5, "n": 2}}
    better = {"addition": {"exact_match": 1.0, "n": 2}}
    (ev_dir / "results.json").write_text(
        json.dumps({"model": {"name": "tiny-lm", "ref": model.ref}, "results": results}),
        encoding="utf-8",
    )
    items = [
        {
            "task": "addition",
            "doc": 0,
            "context": "1+1=",
            "output": "2",
            "target": "2",
            "scores": {"exact_match": 1.0},
        },
        {
            "task": "addition",
            "doc": 1,
            "context": "2+2=",
            "output": "5",
            "target": "4",
            "scores": {"exact_match": 0.0},
        },
    ]
    (ev_dir / "items.jsonl").write_text(
        "".join(json.dumps(i) + "\n" for i in items), encoding="utf-8"
    )
    store.assets.register(
        "eval_report",
        "tiny-lm-eval",
        ev_dir,
        metadata={"model": {"name": "tiny-lm", "ref": model.ref}, "results": results, "groups": {}},
        inputs=[(model.ref, "model")],
    )
    # a second report of the same task, all items right: the compare page shows the delta
    (ev_dir / "results.json").write_text(
        json.dumps({"model": {"name": "tiny-lm", "ref": model.ref}, "results": better}),
        encoding="utf-8",
    )
    (ev_dir / "items.jsonl").write_text(
        "".join(json.dumps({**i, "scores": {"exact_match": 1.0}}) + "\n" for i in items),
        encoding="utf-8",
    )
    store.assets.register(
        "eval_report",
        "tiny-lm-eval",
        ev_dir,
        metadata={"model": {"name": "tiny-lm", "ref": model.ref}, "results": better, "groups": {}},
        inputs=[(model.ref, "model")],
    )
    create_prompt(store, "tide-poem", "Write one line about {{topic}}.", message="first cut")
    prompt = create_prompt(
        store,
        "tide-poem",
        [
            {"role": "system", "content": "You write short poems."},
            {"role": "user", "content": "Write two short lines about {{topic}}."},
        ],
        config={"temperature": 0.2},
        message="chat, two lines",
    )
    store.assets.alias(prompt.ref, "production")
    # a drift report as the monitor stage registers one (report.json + plot, the headline
    # and alert states in the metadata), written here so the test needs only the store
    drift = tmp / "drift"
    (drift / "plots").mkdir(parents=True)
    (drift / "plots" / "prompt_chars.png").write_bytes(_png(120, 80))
    monitor = {
        "name": "prompt_chars",
        "family": "scalar",
        "drift": True,
        "statistic": 0.31,
        "p_value": 0.001,
        "threshold": 0.2,
        "n_ref": 500,
        "n_cur": 400,
        "plot": "plots/prompt_chars.png",
    }
    alerts = {"prompt_chars": {"firing": True, "drift_streak": 2, "ok_streak": 0}}
    head = {
        "subject": "deployment:tides",
        "reference": clean.ref,
        "status": "drift",
        "drift": True,
        "drifted": ["prompt_chars"],
        "message": "prompt_chars moved",
        "alerts": alerts,
        "n_ref": 500,
        "n_cur": 400,
        # a canary run whose key the gateway refused: two never sent (monitor/canary.py)
        "canaries": {
            "set": "tides-canaries:1",
            "passed": 1,
            "failed": 1,
            "errors": 2,
            "error": "the gateway refused the key (401); give a valid --api-key",
            "failing": ["c2"],
        },
    }
    (drift / "report.json").write_text(json.dumps({**head, "monitors": [monitor]}))
    store.assets.register("drift_report", "tides-drift", drift, metadata=head)
    now = datetime.now(UTC) - timedelta(minutes=5)
    log_request(
        store,
        at=now,
        request_id="r1",
        endpoint="chat",
        status=200,
        key_name="boss",
        deployment="tides",
        prompt_tokens=12,
        completion_tokens=8,
        latency_ms=40.0,
    )
    log_request(
        store,
        at=now,
        request_id="r2",
        endpoint="chat",
        status=429,
        key_name="boss",
        deployment="tides",
    )
    log_request(
        store,
        at=now,
        request_id="r3",
        endpoint="chat",
        status=200,
        key_name="boss",
        deployment="tides",
        guardrails={"actions": [{"action": "pii_mask", "direction": "input", "entities": 1}]},
    )
    log_request(  # an answer of the served model, for the trace page
        store,
        at=now,
        request_id="chatcmpl-seeded",
        endpoint="chat",
        status=200,
        key_name="viewer",
        deployment="tides",
        model_ref=model.ref,
        prompt_ref=prompt.ref,
        prompt_tokens=9,
        completion_tokens=4,
    )
    log_request(  # a refusal: no answer id reached the client, only its x-request-id
        store,
        at=now,
        request_id="chatcmpl-never-sent",
        x_request_id="req-refused-1",
        endpoint="chat",
        status=400,
        key_name="viewer",
        deployment="tides",
        model_ref=model.ref,
        error="Sorry, I can't help with that request.",
        guardrails={
            "actions": [{"type": "moderation_block", "category": "violence", "direction": "input"}]
        },
    )
    with store.runs.track("pipeline", config={"pipeline": "quick"}) as prun:
        store.runs.update(
            prun.id,
            params={
                "steps": {
                    "data": {"status": "done", "outputs": {"dataset": clean.ref}, "seconds": 1.5},
                    "train": {"status": "cached", "outputs": {"model": model.ref}, "seconds": 0.0},
                }
            },
        )
    store.steps.put(
        "k1",
        pipeline="quick",
        step="train",
        step_type="train",
        outputs={"model": model.ref},
        run_id=prun.id,
    )
    return {
        "runs": runs,
        "model": model.ref,
        "clean": clean.ref,
        "raw": raw.ref,
        "prompt": prompt.ref,
    }


def _png(width: int, height: int) -> bytes:
    """A small valid PNG (a blue bar on white), so pages have a plot to show."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00"
        + b"".join(
            b"\x1f\x77\xb4" if 20 <= x < width - 20 and y > height // 3 else b"\xff\xff\xff"
            for x in range(width)
        )
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    import uvicorn

    from lmops.api.app import create_app
    from lmops.core.config import Settings
    from lmops.core.net import free_port
    from lmops.serve.deployments import DeploymentSpec, FakeOptions
    from lmops.serve.server import mount_gateway
    from lmops.store import Store

    home = tmp_path_factory.mktemp("console-home")
    settings = Settings(
        home=home,
        database_url=f"sqlite:///{home / 'lmops.db'}",
        artifacts=str(home / "artifacts"),
        shared_datasets=None,
    )
    store = Store(settings, origin="api")
    _, admin = store.keys.create("boss", role="admin")
    _, reader = store.keys.create("viewer", role="user")
    seed = _seed(store, tmp_path_factory.mktemp("seed"))
    specs = [
        # slow enough per token that a test can see the reply grow before it ends
        DeploymentSpec(name="tides", fake=FakeOptions(tokens=12, itl_s=0.05)),
        DeploymentSpec(name="tides-b", fake=FakeOptions(reply="calm water under moon")),
    ]
    access_log = os.environ.get("LMOPS_ACCESS_LOG")
    os.environ["LMOPS_ACCESS_LOG"] = "off"  # read once, when the app is built
    app = create_app(store, mounts=[lambda a: mount_gateway(a, specs, store)])
    if access_log is None:
        os.environ.pop("LMOPS_ACCESS_LOG", None)
    else:
        os.environ["LMOPS_ACCESS_LOG"] = access_log
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("console server did not start")
        time.sleep(0.02)
    try:
        yield Console(f"http://127.0.0.1:{port}", store, admin, reader, seed)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')"
    )
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def login(browser: Any, console: Console, secret: str) -> Any:
    """A fresh browser context logged in with ``secret``; returns its page."""
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    ctx.on("request", lambda req: console.requests.append(req.url))
    page = ctx.new_page()
    page.goto(f"{console.url}/ui/login")
    page.fill("input[name=key]", secret)
    page.click("button[type=submit]")
    page.wait_for_url(f"{console.url}/ui")
    return page


def settled(page: Any) -> None:
    """Wait until the fragments a page loads with htmx have arrived."""
    page.wait_for_function("() => !document.querySelector('.htmx-request')")


def shot(page: Any, name: str) -> Path:
    settled(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
