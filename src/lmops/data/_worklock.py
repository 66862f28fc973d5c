"""One ``lmops data run`` (or ``lmops data tokenize``) per work folder at a time.

Two runs of one recipe share its work folder: each would write the other's temp files
away (``FileNotFoundError`` on a rename) or read a shard file the other is still writing
(a "malformed JSON" blamed on the input). The first run holds an exclusive ``flock`` on
``<work>/run.lock`` for as long as it runs; a second one is refused at once, naming the
holder's pid. The kernel drops the lock when its holder exits, however it exits
(``kill -9`` included), so a lock file left behind never blocks the next run: only a live
process holds it. The run's forked workers hold it too (so none of its writers is left once
it is free), and outlive a killed run by a moment: a lock whose recorded holder is gone is
waited for (30 s at most), not refused. The holder writes its pid, host name and PID
namespace in the lock file: only a pid of this host and namespace can be looked up, so a
holder elsewhere (the work folder on NFS, or mounted into a container) is refused at once,
named with its host, however gone its pid looks here.

The holder removes the work folder, lock file included, when it finishes: first renamed
away in one step, still locked (``executor._retire``), then deleted, so a run starting
meanwhile never works in a folder being deleted. It may do so between another run
opening the file and locking it; that run then holds a lock on a file no longer named
``<work>/run.lock``, so after locking it checks that the path still names the file it
locked, and starts over when it does not.

What a run may delete is its own work folder and nothing else (:func:`clear_own`). A
folder below it with a lock file of its own anywhere inside is another run's work folder
(a recipe named ``team/nightly`` beside ``team``, from before recipe names were checked):
starting over and finishing both leave it where it is, and a finishing run that holds one
clears its own files in place rather than renaming the folder away.

The renamed folder, ``.<work>.done-<12 hex>`` beside the work folder, keeps its lock file,
still held, until everything else in it is deleted; the lock file goes last. So a
``.done-`` folder whose lock nobody holds, or that is empty but for a lock file gone, is the
leftover of a cleanup that was killed, and the next run beside it, or directly in
``$LMOPS_HOME/work/data``, deletes it (:func:`remove_retired`), as ``core.proc.owned_tempdir``
deletes the temp folders nobody holds. Beside an output the folder is the user's: there only
a work folder's own name (``.<output>.lmops-work.done-<hex>``) is one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from lmops.core.errors import ConflictError

__all__ = [
    "LOCK_NAME",
    "clear_own",
    "is_other_work",
    "refuse_other_work",
    "remove_retired",
    "retire",
    "work_lock",
]

LOCK_NAME = "run.lock"
# what a run writes in its work folder (and ``stage*``): a data run, then data tokenize
_WORK_FILES = ("fingerprint", "recipe.json", "shards.json", "progress.json", "shards")


def _still_named(fd: int, path: Path) -> bool:
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _pid_namespace() -> str:
    """This process's PID namespace (``pid:[4026531836]``), or "" where /proc does not
    say: pids are only comparable within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _holder_text() -> str:
    """What a holder writes in its lock file: its pid, host name and PID namespace, one a
    line (a file from an older lmops holds the pid alone)."""
    return f"{os.getpid()}\n{socket.gethostname()}\n{_pid_namespace()}\n"


def _elsewhere(lines: list[str]) -> str | None:
    """Where a lock file's holder runs when that is not this host and PID namespace
    (``on <host>``, ``in another PID namespace on <host>``), else None: its pid is then
    one this process can look up. A file holding a pid alone is from this host."""
    if len(lines) < 2:
        return None
    host, ns = lines[1], lines[2] if len(lines) > 2 else ""
    if host != socket.gethostname():
        return f"on {host}"
    if ns != _pid_namespace():
        return f"in another PID namespace on {host}"
    return None


def _gone(pid: str) -> bool:
    """Whether the process ``pid`` (a lock file's first line), of this host and PID
    namespace, is known to have exited."""
    if not pid.isdigit():
        return False  # empty while the holder is writing it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # another user's: it exists
    return False


# How long a run waits for the workers of a stopped run to let go of its lock: they
# inherited it (so no writer of the stopped run is left once it is free) and die with it.
_ORPHANS_WAIT_S = 30.0


@contextlib.contextmanager
def work_lock(work: Path, job: str = "lmops data run") -> Iterator[None]:
    """Hold ``work``'s lock (creating the folder) or raise :class:`ConflictError` at once,
    naming the holder as another ``job``. A holder whose process is gone is the worker
    processes of a run that was stopped (``kill -9``), still exiting: waited for, up to
    :data:`_ORPHANS_WAIT_S`."""
    path = work / LOCK_NAME
    deadline = time.monotonic() + _ORPHANS_WAIT_S
    while True:
        work.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lines = os.pread(fd, 512, 0).decode("utf-8", "replace").strip().split("\n")
            os.close(fd)
            holder, where = lines[0].strip(), _elsewhere(lines)
            # only a pid of this host and PID namespace can be known gone: with the work
            # folder on NFS or mounted into a container, another's live run looks gone here
            if where is not None or not _gone(holder):
                known = holder.isdigit()
                at = f" {where}" if where else ""
                raise ConflictError(
                    f"another {job}{f' (pid {holder}{at})' if known else ''} is using the "
                    f"work folder {work}; wait for it to finish or stop it"
                    f"{f' (kill {holder}{at})' if known else ''}"
                ) from None
            if time.monotonic() > deadline:
                raise ConflictError(
                    f"the work folder {work} is still locked by the worker processes of a "
                    f"stopped {job} (pid {holder}, gone) {_ORPHANS_WAIT_S:.0f} s later; stop "
                    f"them (fuser -v {path} lists them), then run again"
                ) from None
            time.sleep(0.05)
            continue
        if _still_named(fd, path):
            break
        os.close(fd)  # the holder finished and removed the folder meanwhile: start over
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_text().encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the file releases the lock


def is_other_work(folder: str | Path) -> bool:
    """Whether ``folder``, below a run's work folder, is another run's work folder: it holds
    a lock file of its own."""
    return os.path.lexists(os.path.join(folder, LOCK_NAME))


def _holds_other_work(entry: Path) -> bool:
    """Whether ``entry`` (a symlink is not followed) is or holds another run's work folder."""
    if entry.is_symlink() or not entry.is_dir():
        return False
    return any(is_other_work(folder) for folder, _, _ in os.walk(entry))


def refuse_other_work(work: Path, used: Callable[[str], bool]) -> None:
    """Raise :class:`ConflictError` if an entry of ``work`` whose name the run writes
    (``used(name)``) is or holds another run's work folder: the run would delete or
    overwrite its files there. The caller holds ``work``'s lock."""
    for entry in sorted(work.iterdir()):
        if used(entry.name) and _holds_other_work(entry):
            other = next(Path(f) for f, _, _ in os.walk(entry) if is_other_work(f))
            raise ConflictError(
                f"{other} is another run's work folder (it has a {LOCK_NAME} of its own, "
                f"from an lmops that let a recipe name hold '/'), where this run writes its "
                f"{entry.name!r}; move or remove that old work folder, then run again"
            )


def _delete(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def clear_own(work: Path) -> bool:
    """Delete what ``work`` holds except its lock file and other runs' work folders (kept
    whole). The caller holds ``work``'s lock. Returns whether any other run's was kept."""
    kept = False
    for entry in work.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if _holds_other_work(entry):
            kept = True
            continue
        _delete(entry)
    return kept


def retire(work: Path) -> None:
    """Delete a finished run's work folder while its lock is held: renamed away in one
    step first, so a run that starts meanwhile finds no folder (or a lock file no longer
    named) rather than one being deleted under it; the lock file is deleted last."""
    if any(_holds_other_work(e) for e in work.iterdir()):
        clear_own(work)  # another run's folder is inside: not ours to move or delete
        return
    dead = work.with_name(f".{work.name}.done-{uuid.uuid4().hex[:12]}")
    try:
        os.rename(work, dead)
    except OSError:
        dead = work
    clear_own(dead)
    (dead / LOCK_NAME).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        dead.rmdir()


def _looks_like_work(folder: Path) -> bool:
    """Whether ``folder`` holds what a run writes in its work folder (a lockless
    ``.done-`` folder that does not is no cleanup's leftover: never emptied)."""
    return any((folder / n).exists() for n in _WORK_FILES) or any(folder.glob("stage*"))


def remove_retired(folder: Path, work_suffix: str = "") -> int:
    """Delete the ``.<work>.done-<hex>`` folders in ``folder`` that no live cleanup holds
    (this user's; symlinks are not followed). Returns how many.

    ``work_suffix`` is how the names of the work folders in ``folder`` end: beside an output
    (``.lmops-work``), where every other folder is the user's own, only a name with it is
    a leftover; only folders lmops alone writes in (``$LMOPS_HOME/work/...``) may be given
    none. One without a lock file is deleted whole only if it holds a run's files (its
    cleanup was killed by an lmops that deleted the lock file earlier); otherwise only if
    empty (the cleanup was killed as the lock file, its last, had gone)."""
    pattern = re.compile(rf"\..+{re.escape(work_suffix)}\.done-[0-9a-f]{{12}}")
    removed = 0
    uid = os.getuid()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for dead in entries:
        if not pattern.fullmatch(dead.name):
            continue
        try:
            st = dead.lstat()
            if st.st_uid != uid or not dead.is_dir() or dead.is_symlink():
                continue
            fd: int | None = os.open(dead / LOCK_NAME, os.O_RDONLY)
        except FileNotFoundError:
            fd = None  # its cleanup was past the last file but the lock, or killed
        except OSError:
            continue
        try:
            if fd is None:
                if _looks_like_work(dead):
                    shutil.rmtree(dead, ignore_errors=True)
                else:
                    dead.rmdir()  # empty, or not a run's: left as it is
                removed += 1
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: its run is still deleting it
            # held by us while deleting, so a run beside this one leaves it alone
            shutil.rmtree(dead, ignore_errors=True)
            removed += 1
        except OSError:
            continue
        finally:
            if fd is not None:
                os.close(fd)
    return removed
