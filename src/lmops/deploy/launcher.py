"""Launching and supervising the vLLM servers of ``engine: vllm`` deployments.

``lmops serve`` calls ``launch_all`` in its parent process, before uvicorn starts its
workers, so that every worker proxies to the same vLLM server::

    with launch_all(specs, store=store) as served:
        os.environ[ENV] = json.dumps([s.model_dump(mode="json") for s in served])
        uvicorn.run("lmops.api.app:create_app", factory=True, workers=4, ...)

Each ``engine: vllm`` spec becomes an upstream spec (``upstream:
http://127.0.0.1:PORT/v1``, ``upstream_model:`` the deployment name) with its limits,
guardrails and the rest unchanged; other specs pass through. One ``Supervisor`` per launched
server:

* runs the launch line (see ``VllmOptions``) in its own process group, stdout and stderr
  appended to ``$LMOPS_HOME/run/vllm-<name>.log``; the server gets a random API key through
  ``VLLM_API_KEY`` (out of ``ps``), so only the gateway can call its ``/v1``;
* is ready when ``GET /health`` answers 200 and ``GET /v1/models`` lists the served name;
  if the process exits first, or ``startup_timeout_s`` passes, the launch fails with a
  one-line ``UserError`` naming the deployment and the last lines of its log;
* probes ``GET /health`` every ``health_interval_s`` while the server runs; a server that
  fails ``health_failures`` probes in a row (hung: alive but not answering, or answering
  errors) is stopped and counts as died;
* restarts the server on the same port when it dies, after 1, 2, 4 ... 60 s; after
  ``max_restarts`` restarts in a row (a server that served ``stable_s`` before it died
  resets the count) it gives up and the deployment answers 502 until lmops restarts;
* stops it with SIGTERM to the whole group, then SIGKILL after ``stop_grace_s``.

No orphans: ``launch_all`` stops its servers on exit, SIGTERM to lmops becomes
``SystemExit`` while it runs (uvicorn re-raises the SIGTERM it caught once it has shut down),
an ``atexit`` hook stops any supervisor still running, and the server is started with
Linux's parent-death signal set, so even a SIGKILLed lmops sends it SIGTERM.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from lmops.core.errors import UserError
from lmops.core.net import free_port
from lmops.core.proc import EXEC_SHIM
from lmops.monitor.metrics import ENGINE_HANGS as HANGS
from lmops.monitor.metrics import ENGINE_REGISTRY as REGISTRY
from lmops.monitor.metrics import ENGINE_RESTARTS as RESTARTS
from lmops.serve.deployments import DeploymentSpec, VllmOptions

if TYPE_CHECKING:
    from lmops.store import Store

__all__ = [
    "REGISTRY",
    "Supervisor",
    "launch_all",
    "live_supervisors",
    "supervisor_for",
    "upstream_spec",
    "vllm_argv",
]

log = logging.getLogger(__name__)

VLLM_HINT = (
    "engine: vllm needs the vllm extra (pip install 'lmops[vllm]') and a GPU; or set vllm.command"
)
HOST = "127.0.0.1"

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_argv(opts: VllmOptions, *, model: Path | str, name: str, port: int) -> list[str]:
    """The launch line: ``opts.command`` (placeholders filled) or vLLM's OpenAI server,
    then a flag per typed option that is set, then ``opts.args``."""
    if opts.command is not None:
        values = {"{model}": str(model), "{port}": str(port), "{name}": name}
        values["{python}"] = sys.executable

        def fill(part: str) -> str:
            for key, value in values.items():
                part = part.replace(key, value)
            return part

        head = [fill(p) for p in opts.command]
    else:
        head = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            name,
            "--host",
            HOST,
            "--port",
            str(port),
        ]
    typed = [
        ("--gpu-memory-utilization", opts.gpu_memory_utilization),
        ("--max-model-len", opts.max_model_len),
        ("--tensor-parallel-size", opts.tensor_parallel_size),
    ]
    flags = [x for flag, value in typed if value is not None for x in (flag, str(value))]
    return [*head, *flags, *opts.args]


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


class _NotReady(Exception):
    """The server exited or timed out before it was ready (the message says which)."""


_LIVE: set[Supervisor] = set()
_LIVE_LOCK = threading.Lock()


def live_supervisors() -> dict[str, Supervisor]:
    """The supervisors started and not yet closed, by deployment name (for status lines)."""
    with _LIVE_LOCK:
        return {s.name: s for s in _LIVE}


@atexit.register
def _close_live() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for sup in live:
        sup.close()


class Supervisor:
    """One server process for one deployment: started, watched, restarted, stopped.

    ``start()`` returns once the server is ready or raises ``UserError``; then a watcher
    thread (which also spawned the process, so the parent-death signal follows it) restarts
    the server whenever it exits; ``close()`` stops it. See the module docstring for the
    timings. ``state`` is one of ``starting``, ``ready``, ``backoff``, ``failed``,
    ``closed``; ``restarts`` counts restarts done.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        port: int,
        log_path: Path,
        served_name: str | None = None,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 600.0,
        max_restarts: int = 5,
        stable_s: float = 60.0,
        stop_grace_s: float = 15.0,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        health_interval_s: float = 10.0,
        health_failures: int = 3,
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.served_name = served_name or name
        self.env = env or {}
        self.startup_timeout_s = startup_timeout_s
        self.max_restarts = max_restarts
        self.stable_s = stable_s
        self.stop_grace_s = stop_grace_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.health_interval_s = health_interval_s
        self.health_failures = health_failures
        self.api_key = secrets.token_urlsafe(24)
        self.base_url = f"http://{HOST}:{port}"
        self.state = "starting"
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._started = threading.Event()
        self._error: UserError | None = None
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The server's pid (also its process group id), or None when none runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # -- public -----------------------------------------------------------------------------
    def start(self) -> None:
        """Launch the server and wait until it is ready; raise ``UserError`` if it is not."""
        if self._thread is not None:
            raise RuntimeError("a Supervisor starts once")
        if shutil.which(self.argv[0]) is None:
            raise UserError(
                f"deployment {self.name!r}: command {self.argv[0]!r} not found; "
                "fix vllm.command or install it"
            )
        if _port_in_use(self.port):
            raise UserError(
                f"deployment {self.name!r}: port {self.port} on {HOST} is in use; "
                "set another vllm.port or leave it empty for a free one"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._thread = threading.Thread(
            target=self._run, name=f"lmops-supervise-{self.name}", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self.close()
            raise self._error

    def close(self) -> None:
        """Stop the server (SIGTERM to its group, SIGKILL after the grace period) and the
        watcher; idempotent."""
        with self._lock:
            self._closing.set()
            proc = self._proc
        if proc is not None:
            self._stop(proc)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.state = "closed"
        with _LIVE_LOCK:
            _LIVE.discard(self)

    # -- the watcher thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._watch()
        except Exception as e:  # a bug or an OS failure must not leave start() waiting
            log.exception("deployment %r: supervisor failed", self.name)
            if not self._started.is_set():
                self._error = UserError(f"deployment {self.name!r}: cannot launch: {e}")
            self.state = "failed"
        finally:
            self._started.set()

    def _watch(self) -> None:
        in_a_row = 0
        first = True
        while not self._closing.is_set():
            stayed_up = False
            try:
                proc = self._spawn()
                self._wait_ready(proc)
            except _NotReady as e:
                self._stop_current()
                if first:
                    self._error = UserError(f"deployment {self.name!r}: {e}: {self._tail()}")
                    self._started.set()
                    return
                log.error("deployment %r: restart failed: %s (log %s)", self.name, e, self.log_path)
            else:
                # the uptime counts from readiness, before the state change and the log line:
                # in a loaded CI run a server whose log showed it back 1.5 s before it died was
                # still counted as one that never stayed up (stable_s 0.3)
                ready_at = time.monotonic()
                self.state = "ready"
                if first:
                    first = False
                    self._started.set()
                else:
                    log.warning("deployment %r: server is back on port %d", self.name, self.port)
                rc = self._wait_exit_or_hang(proc)
                stayed_up = time.monotonic() - ready_at >= self.stable_s
                if self._closing.is_set():
                    return
                if rc != "hung":
                    log.warning(
                        "deployment %r: server exited with code %s (log %s)",
                        self.name,
                        rc,
                        self.log_path,
                    )
                # its children (vLLM's engine core) may linger and hold the GPU
                self._stop_current()
            if stayed_up:
                in_a_row = 0
            if in_a_row >= self.max_restarts:
                self.state = "failed"
                log.error(
                    "deployment %r: gave up after %d restarts in a row; it answers 502 "
                    "until lmops restarts (log %s)",
                    self.name,
                    in_a_row,
                    self.log_path,
                )
                return
            delay = min(self.backoff_s * 2**in_a_row, self.backoff_max_s)
            in_a_row += 1
            self.state = "backoff"
            log.warning("deployment %r: restarting in %.3g s", self.name, delay)
            if self._closing.wait(delay):
                return
            self.restarts += 1
            RESTARTS.labels(self.name).inc()

    def _wait_exit_or_hang(self, proc: subprocess.Popen[bytes]) -> int | str:
        """Wait until the server exits (its return code) or stops answering ``/health``
        ``health_failures`` times in a row (then stop it; ``"hung"``), or lmops closes."""
        failures = 0
        timeout = max(0.5, min(self.health_interval_s, 10.0))
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers) as client:
            while True:
                try:
                    return proc.wait(timeout=self.health_interval_s)
                except subprocess.TimeoutExpired:
                    pass
                if self._closing.is_set():
                    return proc.wait()
                try:
                    healthy = client.get("/health").status_code == 200
                except httpx.HTTPError:
                    healthy = False
                failures = 0 if healthy else failures + 1
                if failures >= self.health_failures and not self._closing.is_set():
                    log.error(
                        "deployment %r: server did not answer /health %d times in a row; "
                        "stopping it (log %s)",
                        self.name,
                        failures,
                        self.log_path,
                    )
                    HANGS.labels(self.name).inc()
                    self._stop(proc)
                    return "hung"

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env, "VLLM_API_KEY": self.api_key}
        # the gateway's own settings: a shared metrics dir would mix vLLM's metrics into
        # ours, and the deployments JSON holds upstream keys
        for var in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
            env.pop(var, None)
        env.pop("LMOPS_SERVE_DEPLOYMENTS", None)
        with self._lock:
            if self._closing.is_set():
                raise _NotReady("closed while starting")
            with open(self.log_path, "ab") as fh:
                self._log_offset = fh.tell()
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                fh.write(f"--- lmops {stamp}: {' '.join(self.argv)}\n".encode())
                fh.flush()
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", EXEC_SHIM, str(os.getpid()), *self.argv],
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # its own process group, out of the terminal's
                )
            return self._proc

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        headers = {"Authorization": f"Bearer {self.api_key}"}
        # vLLM binds its port before loading the model, so early requests wait rather
        # than fail: a short timeout per probe keeps the exit and deadline checks going.
        with httpx.Client(base_url=self.base_url, timeout=2.0, headers=headers) as client:
            while True:
                if self._closing.is_set():
                    raise _NotReady("closed while starting")
                rc = proc.poll()
                if rc is not None:
                    raise _NotReady(f"server exited with code {rc} before it was ready")
                if time.monotonic() > deadline:
                    raise _NotReady(
                        f"server not ready after {self.startup_timeout_s:g} s "
                        "(raise vllm.startup_timeout_s if it is still loading)"
                    )
                try:
                    if client.get("/health").status_code == 200:
                        r = client.get("/v1/models")
                        if r.status_code == 200:
                            ids = [m.get("id") for m in r.json().get("data", [])]
                            if self.served_name in ids:
                                return
                except (httpx.HTTPError, ValueError, AttributeError):
                    pass
                time.sleep(0.25)

    def _stop_current(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None:
            self._stop(proc)

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process group, SIGKILL what is left after the grace period."""
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.stop_grace_s)
        # the leader is gone (or hung); whatever else is in its group goes now
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait()

    def _tail(self, lines: int = 5, limit: int = 600) -> str:
        """The last lines this start wrote to the log, on one line."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(self._log_offset, fh.seek(0, os.SEEK_END) - 16384))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return f"(no log at {self.log_path})"
        kept = [
            _ANSI.sub("", ln).strip()
            for ln in text.splitlines()
            if ln.strip() and not ln.startswith("--- lmops ")
        ]
        tail = " | ".join(kept[-lines:]) or "(the log is empty)"
        if len(tail) > limit:
            tail = "..." + tail[-limit:]
        return f"{tail} (log {self.log_path})"


def _local_model(spec: DeploymentSpec, store: Store) -> Path:
    from lmops.core.modelfiles import refuse_reward_model
    from lmops.models.loading import merged_view, resolve_local

    assert spec.model is not None
    path, version = resolve_local(spec.model, store, kind="model", check=False)
    # vLLM would start it as a classifier and answer every chat request with an error
    refuse_reward_model(path, "served", what=version or spec.model)
    if (path / "adapter_config.json").exists():
        path = merged_view(path, store)  # vLLM serves the merged weights, as our engine does
    return path


def supervisor_for(spec: DeploymentSpec, *, store: Store, run_dir: Path) -> Supervisor:
    """The (not yet started) supervisor of an ``engine: vllm`` spec."""
    opts = spec.vllm or VllmOptions()
    if opts.command is None and not _vllm_installed():
        raise UserError(f"deployment {spec.name!r}: {VLLM_HINT}")
    port = opts.port or free_port(HOST)
    model = _local_model(spec, store)
    safe = re.sub(r"[^\w.-]", "_", spec.name)
    return Supervisor(
        spec.name,
        vllm_argv(opts, model=model, name=spec.name, port=port),
        port=port,
        log_path=run_dir / f"vllm-{safe}.log",
        env=opts.env,
        startup_timeout_s=opts.startup_timeout_s,
        max_restarts=opts.max_restarts,
        stable_s=opts.stable_s,
        stop_grace_s=opts.stop_grace_s,
        health_interval_s=opts.health_interval_s,
        health_failures=opts.health_failures,
    )


def upstream_spec(spec: DeploymentSpec, sup: Supervisor) -> DeploymentSpec:
    """``spec`` pointed at its launched server; everything else kept."""
    data = spec.model_dump()
    data.update(
        model=None,
        engine="builtin",
        vllm=None,
        upstream=f"{sup.base_url}/v1",
        upstream_model=sup.served_name,
        upstream_api_key=sup.api_key,
    )
    return DeploymentSpec.model_validate(data)


def _exit_on_sigterm() -> Callable[[], None]:
    """Turn SIGTERM into ``SystemExit`` (so ``finally`` blocks stop the servers) while no
    one else handles it; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)

    def undo() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return undo


def _close_all(sups: list[Supervisor]) -> None:
    """Stop servers side by side: each may take its grace period."""
    threads = [threading.Thread(target=s.close, daemon=True) for s in sups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@contextmanager
def launch_all(
    specs: list[DeploymentSpec], *, store: Store | None = None, run_dir: Path | None = None
) -> Iterator[list[DeploymentSpec]]:
    """Launch a server for every ``engine: vllm`` spec (one after another: vLLM sizes its
    KV cache from the GPU memory it finds free) and yield the specs with those rewritten
    as upstreams, in the same order; the servers are stopped on exit.

    ``store`` resolves asset refs (one is opened if needed); logs go to ``run_dir``
    (default ``$LMOPS_HOME/run``).
    """
    todo = [s for s in specs if s.engine == "vllm"]
    if not todo:
        yield list(specs)
        return
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"deployment {dup[0]!r} is defined twice")
    if run_dir is None:
        from lmops.core.config import Settings

        run_dir = Settings.from_env().home / "run"
    own_store = None
    if store is None:
        from lmops.store import Store

        store = own_store = Store(origin="cli")
    undo = _exit_on_sigterm()
    sups: dict[str, Supervisor] = {}
    try:
        try:
            for spec in todo:
                sup = supervisor_for(spec, store=store, run_dir=run_dir)
                sups[spec.name] = sup
                sup.start()
        finally:
            if own_store is not None:
                own_store.close()
        yield [upstream_spec(s, sups[s.name]) if s.name in sups else s for s in specs]
    finally:
        _close_all(list(sups.values()))
        undo()
