"""One ``lmops data run`` per work folder at a time.

Two runs of one recipe share its work folder: each would write the other's temp files
away (``FileNotFoundError`` on a rename) or read a shard file the other is still writing
(a "malformed JSON" blamed on the input). The first run holds an exclusive ``flock`` on
``<work>/run.lock`` for as long as it runs; a second one is refused at once, naming the
holder's pid. The kernel drops the lock when its holder exits, however it exits
(``kill -9`` included), so a lock file left behind never blocks the next run: only a live
process holds it.

The holder removes the work folder, lock file included, when it finishes: first renamed
away in one step, still locked (``executor._retire``), then deleted, so a run starting
meanwhile never works in a folder being deleted. It may do so between another run
opening the file and locking it; that run then holds a lock on a file no longer named
``<work>/run.lock``, so after locking it checks that the path still names the file it
locked, and starts over when it does not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from lmops.core.errors import ConflictError

__all__ = ["LOCK_NAME", "work_lock"]

LOCK_NAME = "run.lock"


def _still_named(fd: int, path: Path) -> bool:
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


@contextlib.contextmanager
def work_lock(work: Path) -> Iterator[None]:
    """Hold ``work``'s lock (creating the folder) or raise :class:`ConflictError` at once."""
    path = work / LOCK_NAME
    while True:
        work.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            known = holder.isdigit()  # empty while the holder is writing it
            raise ConflictError(
                f"another lmops data run{f' (pid {holder})' if known else ''} is using the "
                f"work folder {work}; wait for it to finish or stop it"
                f"{f' (kill {holder})' if known else ''}"
            ) from None
        if _still_named(fd, path):
            break
        os.close(fd)  # the holder finished and removed the folder meanwhile: start over
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the file releases the lock
