"""A data run deletes its own work folder and nothing else, and what a cleanup killed
mid-delete left behind (``.<work>.done-<hex>``) is deleted by the next run, unless a live
cleanup still holds it."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import signal
from pathlib import Path
from typing import Any

from lmops.data import _worklock
from lmops.data._worklock import LOCK_NAME, retire, work_lock
from lmops.data.executor import _reuse_or_reset, run_recipe
from lmops.data.recipe import load_recipe
from tests.data.test_executor import make_corpus, write_recipe

TEAM = """\
name: team
inputs: [raw/*.jsonl]
process:
  - op: clean_whitespace
output: {path: out/team}
executor: {type: local, workers: 1}
"""


def _other_runs_folders(work: Path) -> dict[str, str]:
    """Two work folders of recipes named from before names were checked ("team/nightly",
    "team/a/b") inside recipe "team"'s; returns what they hold."""
    files = {
        "nightly/run.lock": "4242\n",
        "nightly/stage0/00000.jsonl": '{"text": "nightly"}\n',
        "nightly/fingerprint": "NIGHTLY",
        "a/b/run.lock": "",
        "a/b/stage0/00000.jsonl": '{"text": "b"}\n',
    }
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    return files


def _contents(work: Path, names: dict[str, str]) -> dict[str, str]:
    return {n: (work / n).read_text() for n in names if (work / n).is_file()}


def test_starting_over_deletes_only_the_run_s_own_files(tmp_path: Path) -> None:
    """A changed recipe started over by deleting everything in its folder: "team" deleted
    the work (and the lock file) of the "team/nightly" run inside it."""
    work = tmp_path / "team"
    nested = _other_runs_folders(work)
    (work / "fingerprint").write_text("OLD")
    (work / "stage0").mkdir()
    (work / "stage0" / "00000.jsonl").write_text("mine\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the run's")
    (work / "linked").symlink_to(outside, target_is_directory=True)

    with work_lock(work):
        _reuse_or_reset(work, "NEW")
        left = sorted(p.name for p in work.iterdir())

    assert left == ["a", "fingerprint", "nightly", "run.lock"]
    assert (work / "fingerprint").read_text() == "NEW"
    assert _contents(work, nested) == nested
    assert (outside / "keep.txt").read_text() == "not the run's"  # a symlink is not followed


def test_a_finished_run_leaves_another_run_s_folder_inside_its_own(
    tmp_path: Path, lmops_home: Path
) -> None:
    """Finishing renamed the whole work folder away and deleted it, nested runs included."""
    make_corpus(tmp_path / "raw", files=2, per_file=10)
    work = tmp_path / "out" / "team.lmops-work"
    nested = _other_runs_folders(work)
    result = run_recipe(
        load_recipe(write_recipe(tmp_path / "r.yaml", TEAM)), base_dir=tmp_path, progress=False
    )
    assert result.report["docs_out"] == 20
    assert _contents(work, nested) == nested
    # the run's own files are gone (its lock file may stay: it blocks no one)
    assert sorted(p.name for p in work.iterdir()) in (["a", "nightly"], ["a", "nightly", LOCK_NAME])
    assert not [p for p in work.parent.iterdir() if ".done-" in p.name]


def _fill(work: Path) -> None:
    (work / "fingerprint").write_text("KEY")
    for stage in ("stage0", "stage1"):
        (work / stage).mkdir()
        for i in range(20):
            (work / stage / f"{i:05d}.jsonl").write_text("x\n")


def _retire_killed_mid_delete(work: str) -> None:
    """A finishing run that is killed (SIGKILL) after deleting the first of its folders."""
    real = _worklock.shutil.rmtree

    def rmtree_then_die(path: Any, *args: Any, **kwargs: Any) -> None:
        real(path, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    _worklock.shutil.rmtree = rmtree_then_die  # type: ignore[assignment]
    with work_lock(Path(work)):
        _fill(Path(work))
        retire(Path(work))


def _retire_blocked_mid_delete(work: str, deleting: Any, go_on: Any) -> None:
    """A finishing run still deleting its folder (waits for ``go_on`` after the first)."""
    real = _worklock.shutil.rmtree

    def rmtree_then_wait(path: Any, *args: Any, **kwargs: Any) -> None:
        real(path, *args, **kwargs)
        deleting.set()
        go_on.wait(60)

    _worklock.shutil.rmtree = rmtree_then_wait  # type: ignore[assignment]
    with work_lock(Path(work)):
        _fill(Path(work))
        retire(Path(work))


def _done_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".done-" in p.name) if folder.exists() else []


def test_the_leftover_of_a_killed_cleanup_is_deleted_by_the_next_run(
    tmp_path: Path, lmops_home: Path
) -> None:
    """A cleanup killed mid-delete left ``.<work>.done-<hex>`` for good: no run looked at it."""
    ctx = mp.get_context("fork")
    out = tmp_path / "out"
    home_work = lmops_home / "work" / "data"
    for work in (out / "old.lmops-work", home_work / "nightly"):
        killed = ctx.Process(target=_retire_killed_mid_delete, args=(str(work),))
        killed.start()
        killed.join(60)
        assert killed.exitcode == -signal.SIGKILL
    # what each killed cleanup left: renamed, partly deleted, its lock file still there
    (left_out,) = _done_folders(out)
    (left_home,) = _done_folders(home_work)
    assert left_out.startswith(".old.lmops-work.done-") and left_home.startswith(".nightly.done-")
    for left in (out / left_out, home_work / left_home):
        assert (left / LOCK_NAME).exists() and len(list(left.iterdir())) == 2
    # one killed as its lock file was going (and one from an lmops that deleted it earlier)
    no_lock = out / ".older.lmops-work.done-0123456789ab"
    (no_lock / "stage0").mkdir(parents=True)
    # names that are not a cleanup's leftover, and this run's own, are not touched
    mine = out / "keep.done-0123456789ab"
    notes = out / ".notes.done-draft"
    for f in (mine, notes):
        f.mkdir()

    make_corpus(tmp_path / "raw", files=1, per_file=5)
    run_recipe(
        load_recipe(write_recipe(tmp_path / "r.yaml", TEAM)), base_dir=tmp_path, progress=False
    )
    assert _done_folders(out) == [".notes.done-draft", "keep.done-0123456789ab"]
    assert _done_folders(home_work) == []


def test_only_a_work_folder_s_leftover_is_deleted_beside_an_output(
    tmp_path: Path, lmops_home: Path
) -> None:
    """Beside an output is the user's folder: a run with output ``out/team`` deleted every
    dot-folder there whose name ended in ``.done-<12 hex>``, photos included."""
    out = tmp_path / "out"
    photos = out / ".photos.done-0123456789ab" / "holiday.jpg"
    locked = out / ".backup.done-0123456789ab" / LOCK_NAME  # the user's, with a run.lock
    # in lmops's own folder: a lockless one that is no run's is left, an empty one goes
    home_work = lmops_home / "work" / "data"
    notes = home_work / ".notes.done-0123456789ab" / "todo.txt"
    empty = home_work / ".gone.done-0123456789ab"
    for f in (photos, locked, notes):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"mine")
    empty.mkdir()

    make_corpus(tmp_path / "raw", files=1, per_file=5)
    run_recipe(
        load_recipe(write_recipe(tmp_path / "r.yaml", TEAM)), base_dir=tmp_path, progress=False
    )
    assert photos.read_bytes() == b"mine" and locked.read_bytes() == b"mine"
    assert notes.read_bytes() == b"mine" and not empty.exists()
    assert (out / "team").is_dir()


def test_a_cleanup_still_running_is_left_to_finish(tmp_path: Path, lmops_home: Path) -> None:
    ctx = mp.get_context("fork")
    out = tmp_path / "out"
    deleting, go_on = ctx.Event(), ctx.Event()
    live = ctx.Process(
        target=_retire_blocked_mid_delete, args=(str(out / "old.lmops-work"), deleting, go_on)
    )
    live.start()
    try:
        assert deleting.wait(60)
        (left,) = _done_folders(out)
        make_corpus(tmp_path / "raw", files=1, per_file=5)
        run_recipe(
            load_recipe(write_recipe(tmp_path / "r.yaml", TEAM)), base_dir=tmp_path, progress=False
        )
        assert _done_folders(out) == [left]  # its lock is held: a live cleanup's
        fd = os.open(out / left / LOCK_NAME, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError("the live cleanup's lock was free")
            except BlockingIOError:
                pass
        finally:
            os.close(fd)
    finally:
        go_on.set()
        live.join(60)
    assert live.exitcode == 0 and _done_folders(out) == []


def test_a_nested_run_in_a_folder_the_run_writes_is_refused_not_deleted(
    cli, tmp_path: Path, lmops_home: Path
) -> None:  # type: ignore[no-untyped-def]
    """Recipe "team/stage0" (a name from before names were checked) works in the folder
    where recipe "team" writes its first stage: "team" kept it through starting over, then
    deleted its shard files as stale ones of its own and wrote its own among them."""
    make_corpus(tmp_path / "raw", files=1, per_file=5)
    recipe = write_recipe(
        tmp_path / "r.yaml", TEAM.replace("{path: out/team}", "{dataset: team-clean}")
    )
    work = lmops_home / "work" / "data" / "team"
    old = {"stage0/run.lock": "", "stage0/stage0/00000.jsonl": "old\n", "stage0/00000.x": "x"}
    for name, text in old.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)

    r = cli("data", "run", str(recipe))
    assert r.code == 2, r.err
    assert r.err.strip().splitlines()[-1] == (
        f"error: {work / 'stage0'} is another run's work folder (it has a run.lock of its "
        "own, from an lmops that let a recipe name hold '/'), where this run writes its "
        "'stage0'; move or remove that old work folder, then run again"
    )
    assert _contents(work, old) == old and sorted(p.name for p in work.iterdir()) == [
        LOCK_NAME,
        "stage0",
    ]

    # deeper down, in the folder the bad rows go to, too; once moved, the run goes on
    (work / "stage0").rename(tmp_path / "old-stage0")
    (work / "errors" / "x").mkdir(parents=True)
    (work / "errors" / "x" / LOCK_NAME).write_text("")
    r = cli("data", "run", str(recipe))
    assert r.code == 2 and f"error: {work / 'errors' / 'x'} is another run's" in r.err, r.err
    (work / "errors").rename(tmp_path / "old-errors")
    assert cli("data", "run", str(recipe)).code == 0
