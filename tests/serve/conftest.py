"""Starting `lmops serve` (a real uvicorn) and the CLI as subprocesses for gateway tests."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


def lmops_env(home: Path) -> dict[str, str]:
    return {**os.environ, "LMOPS_HOME": str(home), "OMP_NUM_THREADS": "1"}


def make_key(home: Path, name: str = "t", **kw: object) -> str:
    """A key in the store at ``home``, made in-process (one interpreter start less than the
    CLI on busy cores); its secret."""
    from lmops.core.config import Settings
    from lmops.store import Store

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMOPS_HOME", str(home))
        store = Store(Settings.from_env())
        try:
            return store.keys.create(name, **kw)[1]  # type: ignore[arg-type]
        finally:
            store.close()


def lmops_cli(env: dict[str, str]) -> Callable[..., str]:
    """``lmops(*args) -> stdout``; a failure shows the command's stderr."""

    def lmops(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "lmops.cli.main", *args], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    return lmops


def readyz(base: str) -> bool:
    """The gateway answers ``/readyz``: every deployment loaded."""
    return httpx.get(base + "/readyz", timeout=1).status_code == 200


def start_server(
    env: dict[str, str], *args: str, ready: Callable[[str], bool] = readyz, timeout: float = 120
) -> tuple[subprocess.Popen[str], str]:
    """``lmops serve --port N ARGS...`` on 127.0.0.1; returns once ``ready(base)`` is true
    (by default once ``/readyz`` answers 200)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmops.cli.main",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *args,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            if ready(base):
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.2)


@contextmanager
def serving(app: object) -> Iterator[str]:
    """``app`` on a real uvicorn at 127.0.0.1 in a thread of this process (one interpreter
    start less than ``lmops serve``); yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=30)


SERVING = re.compile(r"serving on (http://\S+)")


def popen_serve(
    env: dict[str, str], *args: str, stderr: int = subprocess.PIPE
) -> subprocess.Popen[str]:
    """``lmops serve --port N ARGS...`` with its stdout a pipe, to be read as a script
    waiting for ``serving on`` reads it (:func:`lines_until_serving`)."""
    cmd = [sys.executable, "-m", "lmops.cli.main", "serve", "--port", str(free_port())]
    return subprocess.Popen(
        [*cmd, "--log-level", "warning", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def lines_until_serving(proc: subprocess.Popen[str], timeout: float = 180) -> list[str]:
    """stdout lines up to the first ``serving on`` one (the last), or all of them when the
    process exits first."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=deadline - time.monotonic()):
            break
        line = proc.stdout.readline()
        if not line:  # exited
            return lines
        lines.append(line.rstrip("\n"))
        if SERVING.search(line):
            return lines
    proc.kill()
    pytest.fail(f"no 'serving on' line and no exit in {timeout:.0f} s: {lines}")
