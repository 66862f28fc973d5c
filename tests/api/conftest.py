"""A real ``lmops serve`` on 127.0.0.1 for the module, with its own LMOPS_HOME.

The autouse ``lmops_home`` fixture is function-scoped, so the module's server gets a home
of its own (``tmp_path_factory``) and every object that must see the same state (the
in-process ``Store`` used to seed keys and runs) is pointed at it explicitly.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

LMOPS = Path(sys.executable).with_name("lmops")
START_TIMEOUT_S = 30.0


@dataclass
class Server:
    url: str
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path
    store: object  # lmops.store.Store bound to ``home``
    admin_key: str

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def blob(self, digest: str) -> Path:
        return self.home / "artifacts" / "blobs" / digest[:2] / digest


def home_settings(home: Path):  # type: ignore[no-untyped-def]
    from lmops.core.config import Settings

    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'lmops.db'}",
        artifacts=str(home / "artifacts"),
        shared_datasets=None,
    )


def _server_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMOPS_")}
    env["LMOPS_HOME"] = str(home)
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """The server for the test module; a module's ``SERVER_ENV`` dict adds variables to the
    server's environment (not to the in-process ``store``, which keeps the home's SQLite
    database and local artifacts)."""
    from lmops.store import Store

    if importlib.util.find_spec("python_multipart") is None:
        pytest.skip(
            "python-multipart is not installed, so `lmops serve` cannot start (FastAPI needs it "
            "for the multipart upload route): pip install python-multipart"
        )
    home = tmp_path_factory.mktemp("api") / "lmops-home"
    home.mkdir()
    store = Store(home_settings(home), actor="test-setup")
    _, admin_key = store.keys.create("root-admin", role="admin")

    port = free_port()
    log = home / "server.log"
    with open(log, "wb") as fh:
        # Output goes to a file, not a pipe: uvicorn logs every request and a pipe nobody
        # reads would fill up and block the server.
        proc = subprocess.Popen(
            [str(LMOPS), "serve", "--port", str(port)],
            env=_server_env(home, getattr(request.module, "SERVER_ENV", None)),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"lmops serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(
                f"lmops serve did not answer /healthz in {START_TIMEOUT_S}s:\n{log.read_text()}"
            )
        time.sleep(0.05)

    yield Server(url, home, proc, log, store, admin_key)

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    store.close()
