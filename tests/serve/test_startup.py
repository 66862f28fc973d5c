"""``lmops serve`` says ``serving on URL`` only once URL answers: every deployment loaded,
in every worker, and the socket accepting connections. It used to print the line before
uvicorn started (22 s before an encrypted SmolLM2 answered), and print it too when the
start-up then failed. A real ``lmops serve`` subprocess, read line by line as a script
waiting for the line would read it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from lmops.core.sealed import generate_keys, load_kek, load_signing_key, write_package
from tests.serve.conftest import (
    SERVING,
    lines_until_serving,
    lmops_env,
    make_key,
    popen_serve,
    stop_server,
)
from tests.train.tiny import make_model, make_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("startup")
    return make_model(base / "m", make_tokenizer(base / "tok"))


@pytest.mark.parametrize("workers", [1, 2])
def test_serving_on_is_said_once_the_url_answers(
    lmops_home: Path, model_dir: Path, workers: int
) -> None:
    key = make_key(lmops_home)
    env = lmops_env(lmops_home)
    proc = popen_serve(env, "--model", f"chat={model_dir}", "--workers", str(workers))
    try:
        lines = lines_until_serving(proc)
        assert lines, proc.stderr.read() if proc.stderr else ""
        found = SERVING.search(lines[-1])
        assert found, (lines, proc.stderr.read() if proc.stderr else "")
        url = found.group(1)
        # at once, no retry: what a script (or the openai client) does after the line
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["chat"]
        # while it loaded, it said what it was doing
        assert lines[0].startswith("loading 1 deployment(s) (chat)"), lines
    finally:
        stop_server(proc)


def _flipped_package(model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(a signed, encrypted package of ``model_dir`` with one body byte flipped, its key)."""
    keys = generate_keys(tmp_path / "k.key").path
    pkg = tmp_path / "chat.lmpkg"
    write_package(model_dir, pkg, signing_key=load_signing_key(keys), kek=load_kek(keys))
    with pkg.open("r+b") as fh:  # just after the 8-byte magic: the first chunk's bytes
        fh.seek(20)
        byte = fh.read(1)
        fh.seek(20)
        fh.write(bytes([byte[0] ^ 0x01]))
    return pkg, keys


@pytest.mark.parametrize(
    ("case", "workers"),
    [("flipped-byte", 1), ("flipped-byte", 2), ("no-such-path", 2)],
)
def test_a_failed_start_never_says_it_serves(
    lmops_home: Path, model_dir: Path, tmp_path: Path, case: str, workers: int
) -> None:
    """A package that fails authentication as it loads: one error naming the deployment,
    exit 2, no ``serving on``; with two workers too (uvicorn restarted them forever, each
    printing a traceback, while ``serving on`` had already been said)."""
    if case == "flipped-byte":
        pkg, keys = _flipped_package(model_dir, tmp_path)
        args = ["--model", f"chat={pkg}", "--key-file", str(keys), "--pubkey", f"{keys}.pub"]
        said = "fails authentication"
    else:
        args = ["--model", f"chat={tmp_path / 'nowhere'}"]
        said = "is neither an existing path nor a READY asset"
    proc = popen_serve(lmops_env(lmops_home), *args, "--workers", str(workers))
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running after 180 s: {out} {err[-2000:]}")
    assert proc.returncode == 2, (out, err)
    assert "serving on" not in out, out
    assert err.count(said) == 1 and "deployment 'chat'" in err, err
    assert "Traceback" not in err, err


SLOW_APP = """
import time
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

def make():
    time.sleep(3)  # models loading
    return Starlette(routes=[Route("/healthz", lambda r: PlainTextResponse("ok"))])
"""

RUNNER = """
import sys
from lmops.core.errors import UserError
from lmops.serve.startup import run
try:
    run("slowapp:make", host="127.0.0.1", port=int(sys.argv[1]), workers=int(sys.argv[2]),
        log_level="warning", on_ready=lambda: print("serving on", flush=True))
except UserError as e:
    print("error:", e, flush=True)
    sys.exit(2)
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_server_on_a_port_taken_while_loading_says_so(
    tmp_path: Path, workers: int
) -> None:
    """Two servers bound (SO_REUSEADDR, not yet listening) while their apps load: the one
    that listens second must fail with a one-line error, not say 'serving on' and serve
    nothing (uvloop swallows the failed listen)."""
    import os
    import socket
    import sys
    import time

    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-c", RUNNER, str(port), str(workers)]
    # its own process group: with workers=2 its worker processes are killed with it
    # (killing the parent alone left them running after the test run)
    first = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        time.sleep(0.8)  # bound, still loading
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "serving on" not in second.stdout
        assert f"error: cannot listen on 127.0.0.1:{port}" in second.stdout
        assert first.stdout is not None and first.stdout.readline().strip() == "serving on"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).text == "ok"
    finally:
        import signal

        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
