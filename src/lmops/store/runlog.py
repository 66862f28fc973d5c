"""A run's log file (``runs/<id>/run.log``): what a job leaves to read later.

``store.runs.start`` (and ``reopen``, for a resumed job) opens it in the process that runs
the job, and ``store.runs.finish`` closes it: a header (kind, name, host, pid, lmops
version, config), every WARNING-or-worse record any logger emits meanwhile (lmops',
transformers', torch's: what scrolled past on the terminal), and how the run ended, with
the full traceback of the error that failed it. The terminal shows errors in one line;
the traceback is kept here, not only under ``--debug``. Writing the log never fails the
run: a log that cannot be written (disk full, read-only folder) is given up silently.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import traceback
from pathlib import Path
from typing import IO, TYPE_CHECKING

from lmops.store._time import utcnow

if TYPE_CHECKING:
    from lmops.store.types import Run

__all__ = ["close_log", "note_error", "open_log", "read_run_log", "tail"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# The root logger, and libraries whose own root logger does not pass records on to it
# (transformers and datasets set ``propagate = False`` on theirs when first imported, which
# is often inside the job): the handler sits on each, and ``_Once`` keeps a record that
# reaches it twice (while such a logger still propagates) from being written twice.
_LOGGERS = ("", "transformers", "datasets")


class _Once(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._last: logging.LogRecord | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record is self._last:
            return False
        self._last = record
        return True


class _RunLog:
    def __init__(self, path: Path) -> None:
        self._fh: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the job
        handler = logging.StreamHandler(self._fh)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter(FORMAT))
        # only the records of the thread that runs the job: two runs tracked at once in one
        # process (the API's worker threads) must not read each other's warnings
        thread = threading.get_ident()
        handler.addFilter(lambda record: record.thread == thread)
        handler.addFilter(_Once())
        self._handler: logging.Handler | None = handler
        for name in _LOGGERS:
            logging.getLogger(name).addHandler(handler)

    def write(self, text: str) -> None:
        if self._fh is None:
            return
        try:
            self._fh.write(text)
            self._fh.flush()
        except (OSError, ValueError):
            self.close()

    def close(self) -> None:
        if self._handler is not None:
            for name in _LOGGERS:
                logging.getLogger(name).removeHandler(self._handler)
            self._handler = None
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


_OPEN: dict[str, _RunLog] = {}  # run id -> its log, in this process
_LOCK = threading.Lock()


def _now() -> str:
    return utcnow().isoformat(timespec="seconds")


def open_log(run: Run, *, resumed: bool = False) -> None:
    """Start writing ``run``'s log in this process (appending: a resumed run continues it)."""
    if not run.log_path:
        return
    try:
        Path(run.log_path).parent.mkdir(parents=True, exist_ok=True)
        log = _RunLog(Path(run.log_path))
    except OSError:
        return
    with _LOCK:
        old = _OPEN.pop(run.id, None)
        _OPEN[run.id] = log
    if old is not None:
        old.close()
    what = "resumed" if resumed else "started"
    name = f" {run.name}" if run.name else ""
    log.write(
        f"{_now()} run {run.id} ({run.kind}{name}) {what} on {run.host} pid {run.pid}, "
        f"lmops {run.lmops_version}\n"
    )
    if run.config and not resumed:
        log.write("config: " + json.dumps(run.config, ensure_ascii=False, default=str) + "\n")


def note_error(run_id: str, what: str, error: BaseException) -> None:
    """Write ``what`` failed, with the traceback of ``error``, into the open log of
    ``run_id`` (a pipeline's log, for a step that failed while the pipeline goes on)."""
    with _LOCK:
        log = _OPEN.get(run_id)
    if log is not None:
        log.write(f"{_now()} {what} failed:\n" + "".join(traceback.format_exception(error)))


def close_log(
    run_id: str, status: str, error: BaseException | None = None, message: str | None = None
) -> None:
    """Write how the run ended (with the traceback of ``error``, else its ``message``) and
    stop writing its log. A run whose log this process did not open: nothing happens."""
    with _LOCK:
        log = _OPEN.pop(run_id, None)
    if log is None:
        return
    traced = error is not None and not isinstance(error, KeyboardInterrupt)
    if traced:
        assert error is not None
        log.write("".join(traceback.format_exception(error)))
    why = f" ({message})" if message and not traced else ""  # a traceback ends with it
    log.write(f"{_now()} run ended: {status}{why}\n")
    log.close()


def tail(path: str | Path, lines: int | None = None) -> str:
    """The last ``lines`` lines of a log (all of it with ``None``); ``FileNotFoundError``
    when there is none."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if lines is None:
        return text
    return "".join(text.splitlines(keepends=True)[-lines:] if lines > 0 else [])


def read_run_log(run: Run, lines: int | None = None) -> str:
    """``run``'s log (its last ``lines`` lines), or a one-line ``NotFoundError`` saying why
    there is none."""
    import socket

    from lmops.core.errors import NotFoundError

    if not run.log_path:
        raise NotFoundError(f"run {run.id} has no log")
    try:
        return tail(run.log_path, lines)
    except FileNotFoundError:
        elsewhere = run.host and run.host != socket.gethostname()
        why = (
            f"it ran on {run.host}, and a log stays on the machine that ran the job"
            if elsewhere
            else "runs recorded before lmops kept run logs have none"
        )
        raise NotFoundError(f"run {run.id} has no log at {run.log_path}: {why}") from None
