"""Stopping a long job cleanly on SIGINT / SIGTERM.

:class:`StopSignals` turns the first signal into a request the job checks between its
units of work (a training or distillation step), so it can finish the unit, save what it
has and say how to go on; a second signal stops at once. The trainer (``train/loop.py``) and
distillation (``deploy/distill.py``) both use it, which is why it lives below the stages.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["SignalInterrupt", "StopSignals"]


class SignalInterrupt(KeyboardInterrupt):
    """The stop at once of :class:`StopSignals`: ``signum`` is the signal that asked to stop
    first (SIGINT or SIGTERM), so whoever catches it far from the handler (a stage's own
    loop has its own :class:`StopSignals`) reports the right one (exit ``128 + signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM while a trainer runs (a context manager).

    ``graceful=True``: the first signal only sets :attr:`signum`; the trainer checks
    :attr:`requested` between steps and stops cleanly. A second signal, or any signal with
    ``graceful=False``, raises :class:`SignalInterrupt` (a ``KeyboardInterrupt``) where the
    program is (SIGTERM too, so cleanup runs instead of the process vanishing). Handlers can only be installed in the
    main thread; elsewhere this does nothing and Python's defaults apply. A signal that is
    ignored (``nohup``, a background job of a script) stays ignored. The previous handlers
    come back on exit.

    Once a job is stopping, what follows (removing its temporary files, recording its run,
    printing the line) must run whole: a further signal that ended the process there left the
    files, the run RUNNING and no line. :meth:`hold` makes later signals no-ops until exit;
    ``once=True`` holds as the stop at once is raised, so the cleanup in the job's own
    ``finally`` blocks is covered too. Put that cleanup and the report inside the block."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, *, graceful: bool = True, once: bool = False) -> None:
        self.graceful, self.once = graceful, once
        self.signum: int | None = None
        self.held = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def hold(self) -> None:
        """From now until exit, SIGINT and SIGTERM do nothing (the stop has begun)."""
        self.held = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.held:
            return
        first = self.signum is None
        self.signum = self.signum or signum
        if not (self.graceful and first):
            self.held = self.once
            raise SignalInterrupt(self.signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is signal.SIG_IGN:
                    continue  # ignored on purpose (nohup, a background job): leave it so
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
