"""Child processes that die with their parent, and temp folders that do not outlive theirs.

A child left behind by a ``kill -9``-ed parent holds its work, its memory and its ports
forever: a data worker blocks on a task queue nobody will fill, an engine server keeps its
GPU. :func:`die_with_parent` is the one way lmops ties a child's life to its parent's: call it
first thing in the child (a pool initializer), or start the child through :data:`EXEC_SHIM`
when it is another program.

A temp folder (a merged model, a quantized model before registration) is removed by its
maker's ``finally`` or exit handler, which a ``kill -9`` or the OOM killer never runs, and
each is a whole model. :func:`owned_tempdir` holds a lock in the folder for the life of its
process, and the next one made with the same prefix removes those nobody holds.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["EXEC_SHIM", "die_with_parent", "owned_tempdir", "temporary_owned_dir"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _set_pdeathsig(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when the thread that forked it exits
    (for a pool or ``Popen`` started from the main thread: when the parent process dies,
    by ``kill -9`` too). False where there is no ``prctl`` (macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig) == 0
    except (AttributeError, OSError):
        return False


def _watch_parent(parent_pid: int, sig: int, every_s: float) -> None:
    while os.getppid() == parent_pid:
        threading.Event().wait(every_s)
    os.kill(os.getpid(), sig)


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM, *, poll_s: float = 1.0) -> None:
    """Make this process receive ``sig`` when its parent ``parent_pid`` dies.

    Linux: ``prctl(PR_SET_PDEATHSIG)``, then exit at once if the parent died before that
    call (this process has been re-parented already). Elsewhere: a daemon thread that sends
    ``sig`` once ``os.getppid()`` changes, checked every ``poll_s`` seconds.
    """
    armed = _set_pdeathsig(sig)
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent is gone already; nothing is ours to clean up
    if not armed:
        threading.Thread(
            target=_watch_parent, args=(parent_pid, sig, poll_s), daemon=True, name="parent-watch"
        ).start()


# ``python -c EXEC_SHIM PARENT_PID PROGRAM ARGS...`` runs PROGRAM so that it gets SIGTERM
# when PARENT_PID dies. The death signal survives exec; an exec'd shim rather than
# ``preexec_fn``, which is not safe while other threads run.
EXEC_SHIM = """\
import os, sys
from lmops.core.proc import die_with_parent
die_with_parent(int(sys.argv[1]))
os.execvp(sys.argv[2], sys.argv[2:])
"""


def owned_tempdir(prefix: str) -> Path:
    """A new private (0700) temp folder ``<prefix><pid>-<random>``, after removing this
    user's folders of the same prefix that no process holds (killed before its cleanup).

    A folder is held through an exclusive ``flock`` on its ``.owner`` file, taken as it is
    made and kept for the life of the process (its forks share it): a lock, unlike a pid,
    is seen alike from another PID namespace (a container sharing ``/tmp``) and is never
    reused. A folder without ``.owner`` (being made, or from an older lmops) and another
    user's are left alone."""
    tmp = Path(tempfile.gettempdir())
    uid = os.getuid()
    for folder in tmp.glob(f"{prefix}*-*"):
        if not folder.name.removeprefix(prefix).partition("-")[0].isdigit():
            continue  # another kind's prefix that starts with this one
        try:
            if folder.lstat().st_uid != uid or not folder.is_dir():
                continue
            fd = os.open(folder / ".owner", os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: its process runs
        finally:
            os.close(fd)  # a lock taken is released with it, after the folder is gone
        shutil.rmtree(folder, ignore_errors=True)
    for gone in [f for f in _HELD if not f.exists()]:  # removed by their makers
        os.close(_HELD.pop(gone))
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    fd = os.open(folder / ".owner", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _HELD[folder] = fd  # held until the folder is gone or the process exits
    return folder


_HELD: dict[Path, int] = {}  # this process's folders and their .owner locks


@contextmanager
def temporary_owned_dir(prefix: str) -> Iterator[str]:
    """``tempfile.TemporaryDirectory`` (yields the path as a string, removes it on exit)
    made by :func:`owned_tempdir`, so a killed process's folder is removed later."""
    folder = owned_tempdir(prefix)
    try:
        yield str(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
