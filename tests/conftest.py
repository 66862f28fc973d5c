"""Shared fixtures. Every test gets its own LMOPS_HOME in a temp dir; nothing touches ~."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmops.core.net import free_port

# The test environment the project promises: 1 thread, offline, no telemetry.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def lmops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "lmops-home"
    monkeypatch.setenv("LMOPS_HOME", str(home))
    for var in ("LMOPS_DATABASE_URL", "LMOPS_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def store(lmops_home: Path) -> Iterator[object]:
    from lmops.store import Store

    s = Store()
    yield s
    s.close()


@pytest.fixture
def shared_datasets() -> Path:
    path = Path(os.environ.get("LMOPS_SHARED_DATASETS") or SHARED)
    if not path.is_dir():
        pytest.skip(f"shared datasets not found at {path}; set LMOPS_SHARED_DATASETS")
    return path


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run ``lmops ARGS...`` in-process through the real entry point (error handling
    included); returns exit code, stdout and stderr."""
    import sys

    from lmops.cli.main import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["lmops", *args])
        code = 0
        environ = dict(os.environ)  # a command may set variables for its workers (serve)
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            os.environ.clear()
            os.environ.update(environ)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


# -- PostgreSQL ------------------------------------------------------------------------------------
def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A throw-away PostgreSQL server on 127.0.0.1; yields a base URL without a database.

    Uses Debian's ``postgresql`` binaries (``.ci/run`` installs them); skipped when they
    are absent. As root, the server runs as the ``postgres`` user, since initdb refuses root.
    """
    import shutil
    import subprocess
    import time

    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found; apt-get install postgresql to run")
    import tempfile

    # Not under pytest's tmp dir: that is private to root and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="lmops-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser; cannot start PostgreSQL")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [
            *as_user,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "lmops",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    log = root / "server.log"
    proc = subprocess.Popen(
        [
            *as_user,
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={root}",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),  # noqa: SIM115
    )
    url = f"postgresql://lmops:secret@127.0.0.1:{port}"
    import psycopg

    deadline = time.time() + 30
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=lmops dbname=postgres").close()
            break
        except psycopg.OperationalError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"PostgreSQL did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the test server for this test."""
    import re

    import psycopg

    name = "t_" + re.sub(r"\W", "_", request.node.name)[:50].lower()
    port = pg_server.rsplit(":", 1)[1]
    with psycopg.connect(
        f"host=127.0.0.1 port={port} user=lmops dbname=postgres", autocommit=True
    ) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    return f"{pg_server}/{name}"
