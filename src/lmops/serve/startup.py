"""Running uvicorn so that "serving on" is said only once it is true.

``uvicorn.run`` gives no sign of when the app is ready: ``lmops serve`` used to print its
``serving on URL`` line before calling it, so a script that waited for the line met
``Connection refused`` for as long as the models took to load (22 s for an encrypted
SmolLM2), and a package that failed to load printed the line and then the error.
:func:`run` is ``uvicorn.run`` with an ``on_ready`` callback, called once:

- the socket is bound first, so a port in use fails at once (a ``UserError``), not after
  the models have loaded; nothing listens on it until the app is up, so a client is
  refused, never left waiting, while it loads;
- one worker: the app factory runs in this process (it loads every deployment), then the
  server listens, then ``on_ready``. A factory's error propagates as itself;
- ``workers > 1``: each worker process builds the app (and loads the models) itself;
  ``on_ready`` is called when every worker has started serving (uvicorn's own readiness
  ping). A worker whose app fails writes the error to a file this process named, exits
  ``STARTUP_FAILURE`` and is not restarted (uvicorn would restart it forever, loading the
  models each time); the others are stopped and the error is raised here, once.

``on_ready`` is never called when start-up fails or is interrupted.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uvicorn import Config, Server
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from lmops.core.errors import LmopsError, UserError

__all__ = ["run"]

_ERROR_FILE = "error.json"


def run(app: str, *, on_ready: Callable[[], None], **options: Any) -> None:
    """``uvicorn.run(app, factory=True, **options)`` (``host``, ``port``, ``workers``...),
    calling ``on_ready()`` once every worker has built the app and accepts connections."""
    config = _Config(app, factory=True, **options)
    sock = _bind(config.host, config.port)
    try:
        if config.workers > 1:
            with tempfile.TemporaryDirectory(prefix="lmops-serve-") as tmp:
                config.failures = tmp
                _Workers(config, [sock], on_ready).run()
        else:
            server = _Server(config, on_ready)
            server.run(sockets=[sock])
            if not server.started:  # as uvicorn.run: the lifespan's start-up failed
                sys.exit(STARTUP_FAILURE)
    finally:
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound but not listening (each server listens once its app is
    built), inheritable by the workers. As ``uvicorn.Config.bind_socket`` without its
    "Uvicorn running on" line, which would be said before the models load."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise _in_use(host, port, e.strerror or str(e)) from None
    sock.set_inheritable(True)
    return sock


def _in_use(host: str, port: int, why: str) -> UserError:
    return UserError(
        f"cannot listen on {host}:{port}: {why}; choose another --port or --host, or stop "
        "what uses it"
    )


def _listen(sock: socket.socket, backlog: int, host: str, port: int) -> None:
    """Listen on ``sock`` now. Two sockets bound with SO_REUSEADDR may share a port until
    one listens; the second's ``listen`` then fails, and uvloop's ``create_server`` would
    swallow that failure (a server that says it serves and never listens)."""
    try:
        sock.listen(backlog)
    except OSError as e:
        raise _in_use(host, port, e.strerror or str(e)) from None


def _listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


class _Config(Config):
    """uvicorn's config, whose app factory reports an lmops error of a worker process to
    the parent (``failures``: the folder it writes to) instead of a traceback."""

    failures: str | None = None

    def load(self) -> None:
        try:
            super().load()
        except LmopsError as e:
            if self.failures is None:  # the parent itself (one worker): raise it there
                raise
            record = {"message": str(e), "exit_code": e.exit_code}
            try:  # the first worker to fail says why; the others only exit
                fd = os.open(
                    Path(self.failures) / _ERROR_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                )
            except FileExistsError:
                sys.exit(STARTUP_FAILURE)
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
            sys.exit(STARTUP_FAILURE)


class _Server(Server):
    def __init__(self, config: Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        for sock in sockets or []:  # the app is built: listen, or say why not
            _listen(sock, self.config.backlog, self.config.host, self.config.port)
        await super().startup(sockets)
        if self.started and not self.should_exit:  # not when Ctrl-C came while it loaded
            self._on_ready()


class _Workers(Multiprocess):
    """uvicorn's worker supervisor, waiting for every worker to serve before ``on_ready``."""

    def __init__(
        self, config: _Config, sockets: list[socket.socket], on_ready: Callable[[], None]
    ) -> None:
        super().__init__(config, sockets)
        self._on_ready = on_ready
        self._failures = Path(config.failures or ".")

    def init_processes(self) -> None:
        super().init_processes()
        try:
            started = self._await_started()
        except BaseException:
            self._stop_unstarted(self.processes)
            self.terminate_all()  # those that had started
            self.join_all()
            raise
        if started and not all(_listening(s) for s in self.sockets):
            # a worker's listen failed inside uvloop, which does not say so: another
            # server took the port while these loaded
            self.terminate_all()
            self.join_all()
            raise _in_use(self.config.host, self.config.port, "another server listens there")
        if started:
            self._on_ready()

    def _await_started(self) -> bool:
        """True once every worker serves; False when a signal asks to stop first (the
        workers still loading are killed: they have served nothing). Raises the error a
        worker failed with."""
        waiting = list(self.processes)
        while waiting:
            self.handle_signals()
            if self.should_exit.is_set():
                self._stop_unstarted(waiting)
                return False
            for p in list(waiting):
                if not p.process.is_alive():
                    raise self._failure(p)
                if p.is_ready(timeout=1):
                    waiting.remove(p)
            if waiting:
                time.sleep(0.2)
        return True

    def _failure(self, p: Process) -> LmopsError:
        try:
            record = json.loads((self._failures / _ERROR_FILE).read_text())
        except (OSError, ValueError):
            return LmopsError(
                f"server worker {p.pid} exited with code {p.exitcode} before it started "
                "serving; its output above says why"
            )
        cls = UserError if record.get("exit_code") == UserError.exit_code else LmopsError
        return cls(str(record.get("message")))

    def _stop_unstarted(self, processes: list[Process]) -> None:
        for p in processes:
            if p.process.is_alive() and not p.is_ready(timeout=1):
                p.kill()  # SIGKILL: a loading worker defers SIGTERM until its models load
                p.process.join()
