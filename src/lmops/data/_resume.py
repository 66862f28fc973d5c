"""Which finished work of an interrupted or failed run a re-run keeps.

The work folder as a whole is kept while the recipe's steps are unchanged (the
``fingerprint`` file, ``executor._reuse_or_reset``). Within it, each shard's finished files
are kept only while the shard still reads the same bytes: ``shards.json`` records, per
shard, the file it reads (path, size, mtime, inode, ctime) and its byte range. So the two ways out of a
bad row that the error names both keep every other shard's work:

- fixing the file redoes the shards of that file (and the global stages, which see every
  shard), not the hundred files that were fine;
- ``on_error: skip`` (which is not part of the fingerprint) reuses every finished shard:
  under ``raise`` a shard only finishes when it has no bad row, and skipping then changes
  nothing. The other way round, a shard finished under ``skip`` *with* skipped rows is
  redone under ``raise``, so the bad row is refused as the recipe now asks.

Stale files are removed before the new keys are written, so a crash in between only makes
the next run remove them again.

Temp files (``*.tmp``: a shard's data, dropped-documents or stats file being written, the
next ``shards.json``) of a writer that was killed are removed by the next run as it starts
(:func:`remove_temp_files`), and by a run whose own workers it killed, once they are gone: a
run only starts working in its folder while it holds the folder's lock (``_worklock``), so
no live writer is left to own one. Nothing outside the folder is touched: other recipes,
and other runs, have work folders of their own; a folder below with a lock file of its own
is one of those (a recipe named ``team/nightly`` beside ``team``, from before recipe names
were checked) and is never entered; one with a name the run writes itself (``team/stage0``,
:func:`run_writes`) would have its files deleted, so the run refuses to start instead
(``_worklock.refuse_other_work``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from lmops.data._worklock import is_other_work
from lmops.data.io import Shard

__all__ = ["SHARDS_FILE", "drop_stale_work", "remove_temp_files", "run_writes"]

SHARDS_FILE = "shards.json"
# what a run writes in its work folder besides ``stage<N>``: the bad rows, the output and the
# dropped documents being built, a failed run's report, what it resumes by
_WRITES = {"errors", "output", "dropped", "_report", "fingerprint", "recipe.json", SHARDS_FILE}


def run_writes(name: str) -> bool:
    """Whether a run writes (and so deletes) ``name`` in its work folder."""
    return name in _WRITES or (name.startswith("stage") and name[5:].isdigit())


def _key(shard: Shard) -> str:
    # ctime too: an edit that keeps the size and puts the mtime back (cp -p, rsync -a,
    # an archive unpacked again) changes it, and no user can set it
    st = shard.file.path.stat()
    return (
        f"{shard.file.path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}|"
        f"{shard.start}|{shard.end}|{shard.first_line}"
    )


def _old_keys(work: Path) -> list[str] | None:
    try:
        keys = json.loads((work / SHARDS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return keys if isinstance(keys, list) else None


def _skipped_rows(stats: Path) -> bool:
    """Whether the finished stage-0 work in ``stats`` skipped unreadable rows."""
    try:
        return bool(json.loads(stats.read_text())["errors"]["count"])
    except (OSError, ValueError, KeyError, TypeError):
        return True  # unreadable stats: redo the shard


def _shard_index(name: str) -> int | None:
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def drop_stale_work(
    work: Path, shards: list[Shard], global_from: int | None, on_error: str
) -> None:
    """Remove the finished files of ``work`` that this run must redo, then record the
    shards' keys. ``global_from``: the index of the first global stage (None: none), whose
    output, and everything after it, depends on every shard."""
    keys = [_key(s) for s in shards]
    old = _old_keys(work)
    stale = {i for i, k in enumerate(keys) if old is None or i >= len(old) or old[i] != k}
    # shards gone from the plan (an input removed) were read by the global stages too
    shrunk = old is not None and len(old) > len(keys)
    if on_error == "raise":
        stage0 = work / "stage0"
        if global_from == 0:
            if (stage0 / "global.stats.json").exists() and _skipped_rows(
                stage0 / "global.stats.json"
            ):
                stale = set(range(len(shards)))
        else:
            stale |= {
                s.index
                for s in shards
                if (stage0 / f"{s.index:05d}.stats.json").exists()
                and _skipped_rows(stage0 / f"{s.index:05d}.stats.json")
            }
    for folder in sorted(work.glob("stage*")):
        n = folder.name.removeprefix("stage")
        if not n.isdigit() or not folder.is_dir():
            continue
        if (stale or shrunk) and global_from is not None and int(n) >= global_from:
            shutil.rmtree(folder)  # a global stage saw the stale shards: redo it and after
            continue
        _remove_shards(folder, stale, len(shards))
    if (work / "errors").is_dir():
        _remove_shards(work / "errors", stale, len(shards))
        if (stale or shrunk) and global_from == 0:
            (work / "errors" / "global.jsonl").unlink(missing_ok=True)
    tmp = work / (SHARDS_FILE + ".tmp")
    tmp.write_text(json.dumps(keys))
    os.replace(tmp, work / SHARDS_FILE)


def remove_temp_files(work: Path) -> int:
    """Remove the ``*.tmp`` files under ``work`` (symlinked folders not followed, nor a
    folder holding a lock file of its own: another run's work folder); the caller holds
    ``work``'s lock and has no writer running. Returns how many."""
    removed = 0
    for folder, subfolders, files in os.walk(work):
        subfolders[:] = [d for d in subfolders if not is_other_work(Path(folder, d))]
        for name in files:
            if name.endswith(".tmp"):
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed


def _remove_shards(folder: Path, stale: set[int], n_shards: int) -> None:
    """The files of the stale shards (and of shards the plan no longer has) in ``folder``."""
    for f in folder.iterdir():
        i = _shard_index(f.name)
        if i is not None and (i in stale or i >= n_shards):
            f.unlink()
