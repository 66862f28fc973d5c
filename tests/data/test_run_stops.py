"""A data run that cannot go on stops at once and leaves its work folder clean: a bad row
under ``on_error: raise`` cancels the queued shards (and kills the running ones) instead of
surfacing after the whole stage, a worker that dies takes no half-written file with it, and
a run removes the temp files a killed run left in its work folder, and no one else's."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import ConflictError, LmopsError, UserError
from lmops.data import _pool, _worklock, executor
from lmops.data._pool import run_in_pool
from lmops.data._resume import remove_temp_files
from lmops.data._worklock import LOCK_NAME, work_lock
from lmops.data.executor import run_recipe
from lmops.data.recipe import load_recipe
from tests.data.test_executor import (
    SLOW_OPS,
    _env,
    _slow_recipe,
    _wait_for_shards,
    make_corpus,
    write_recipe,
)

CMD = [sys.executable, "-m", "lmops.cli.main", "data", "run"]

STOPS = """\
name: stops
imports: [slow_ops]
inputs: [raw/*.jsonl]
process:
  - op: slow_copy
    seconds: 0.02
output: {path: out/stops}
executor: {type: local, workers: 2}
"""
BAD_LINE = '{"id": "bad", "text": '


def _temp_files(work: Path) -> list[str]:
    return sorted(str(p.relative_to(work)) for p in work.rglob("*.tmp"))


def test_a_bad_row_stops_the_run_at_once_and_the_rerun_resumes(
    tmp_path: Path, lmops_home: Path
) -> None:
    """It used to surface only after every queued shard had run: 11 of these 12 shards
    were finished before the error was printed."""
    make_corpus(tmp_path / "raw", files=12, per_file=20)
    bad = sorted((tmp_path / "raw").glob("*.jsonl"))[6]  # the 7th shard of 12 (sorted paths)
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join([*lines[:2], BAD_LINE, *lines[2:]]) + "\n")
    (tmp_path / "slow_ops.py").write_text(SLOW_OPS)
    write_recipe(tmp_path / "r.yaml", STOPS)
    env = _env(tmp_path, lmops_home)

    run = subprocess.run([*CMD, "r.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: {bad}:3: malformed JSON (Expecting value at column 23); "
        "fix the input or set on_error: skip"
    )
    work = tmp_path / "out" / "stops.lmops-work"
    done = sorted(p.name for p in (work / "stage0").glob("*.stats.json"))
    # the shards before the bad one may be done, the one running beside it was killed,
    # and none after those two started
    assert 1 <= len(done) <= 7, done
    assert _temp_files(work) == []  # the killed worker's half-written file is gone

    rerun = subprocess.run(
        [*CMD, "r.yaml", "--set", "on_error=skip", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["resumed_shards"] == len(done)
    assert result["report"]["docs_out"] == 12 * 20 and result["report"]["errors"]["count"] == 1


KILLER_OPS = '''
import os, signal, time
from lmops.data.ops import Mapper, register

@register("kill_on_marker")
class KillOnMarker(Mapper):
    """Copies documents; its worker is killed (SIGKILL, as the out-of-memory killer does)
    on the document with "KILL" in it while $KILL is set (test helper)."""
    def apply(self, doc):
        time.sleep(0.005)
        if "KILL" in doc.text and os.environ.get("KILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        return doc
'''


def test_a_killed_worker_leaves_no_temp_file_and_says_what_happened(
    tmp_path: Path, lmops_home: Path
) -> None:
    """A worker killed mid-write used to end the run with 'internal error: BrokenProcessPool'
    and leave its own and its pool mates' ``.tmp`` files in the work folder."""
    make_corpus(tmp_path / "raw", files=6, per_file=40)
    victim = tmp_path / "raw" / "part3.jsonl"
    rows = victim.read_text().splitlines()
    rows[20] = json.dumps({"id": "k", "text": "KILL this worker half way through"})
    victim.write_text("\n".join(rows) + "\n")
    (tmp_path / "killer_ops.py").write_text(KILLER_OPS)
    write_recipe(
        tmp_path / "r.yaml",
        STOPS.replace("slow_ops", "killer_ops")
        .replace("op: slow_copy\n    seconds: 0.02", "op: kill_on_marker")
        .replace("workers: 2", "workers: 2, shard_bytes: 100000"),
    )
    env = _env(tmp_path, lmops_home)

    run = subprocess.run(
        [*CMD, "r.yaml"], cwd=tmp_path, env={**env, "KILL": "1"}, capture_output=True, text=True
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "error: a worker process died while running its shard (killed by SIGKILL; by the "
        "out-of-memory killer if memory ran out); the finished shards are kept: run the recipe "
        "again to resume (with fewer executor.workers if memory ran out)"
    )
    work = tmp_path / "out" / "stops.lmops-work"
    assert _temp_files(work) == []
    done = len(list((work / "stage0").glob("*.stats.json")))

    rerun = subprocess.run([*CMD, "r.yaml", "--json"], cwd=tmp_path, env=env, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["resumed_shards"] == done and result["report"]["docs_out"] == 6 * 40


def test_a_run_removes_the_temp_files_a_killed_run_left_and_no_one_elses(
    tmp_path: Path, lmops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kill -9`` of a run leaves the files its workers were writing; the next run removes
    them before it works (they used to stay until their shard was redone, or for good when
    that run stopped first), and never touches another work folder's."""
    body, env = _slow_recipe(tmp_path, lmops_home, workers=2)
    write_recipe(tmp_path / "r.yaml", body)
    proc = subprocess.Popen(
        [*CMD, "r.yaml"], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    work = tmp_path / "out" / "demo.lmops-work"
    _wait_for_shards(proc, work / "stage2", 1)
    deadline = time.monotonic() + 60  # a liveness bound, not a timing
    while True:  # frozen, the run's files are what a kill leaves; kill it while it writes
        os.killpg(proc.pid, signal.SIGSTOP)
        left = _temp_files(work)
        if left or time.monotonic() > deadline:
            break
        os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()  # its workers may hold the lock a moment longer: the next run waits for them
    assert left, "the killed run left no temp file to remove"
    # another recipe's work folder beside it, maybe a live run's: not this run's to clean
    other = tmp_path / "out" / "other.lmops-work" / "stage0" / "00000.jsonl.tmp"
    other.parent.mkdir(parents=True)
    other.write_text("a live run's half-written shard\n")

    seen: list[list[str]] = []
    real = executor.run_local_shard

    def first_sees(job: Any) -> Any:
        if not seen:
            seen.append(_temp_files(work))
        return real(job)

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(executor, "run_local_shard", first_sees)
    monkeypatch.setenv("LMOPS_HOME", str(lmops_home))
    res = run_recipe(load_recipe(tmp_path / "r.yaml"), base_dir=tmp_path, workers=1, progress=False)
    assert seen == [[]], left  # gone before the first shard was worked on
    assert res.resumed_shards >= 1
    assert other.read_text() == "a live run's half-written shard\n"


def _killed_run_with_a_worker(work: Path) -> tuple[int, int]:
    """A run that took ``work``'s lock and forked a worker (which inherits it), then was
    killed: gone (reaped), no unlock, its worker holding the lock until a byte is written to
    the returned pipe, or it is closed. Returns (the run's pid, the pipe)."""
    release, let_go = os.pipe()
    pid = os.fork()
    if pid == 0:  # the run (a plain fork: a multiprocessing child's join waits for the worker)
        try:
            os.close(let_go)  # the test's alone: closing it ends the worker too
            with work_lock(work):
                if os.fork() == 0:  # its worker
                    os.read(release, 1)
        finally:
            os._exit(0)
    os.close(release)
    os.waitpid(pid, 0)
    return pid, let_go


def test_a_run_waits_for_a_killed_run_s_workers_to_let_go_of_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started at once after ``kill -9`` of another was refused, "another lmops data
    run (pid N) ... (kill N)" with N already gone: its workers still held the lock."""
    work = tmp_path / "team.lmops-work"
    _, let_go = _killed_run_with_a_worker(work)
    waited: list[float] = []
    real_sleep = time.sleep

    def sleep(s: float) -> None:  # the worker ends when the new run first waits
        if not waited:
            os.write(let_go, b"x")
        waited.append(s)
        real_sleep(s)

    monkeypatch.setattr(time, "sleep", sleep)
    try:
        with work_lock(work):
            assert (work / LOCK_NAME).read_text() == (
                f"{os.getpid()}\n{socket.gethostname()}\n{_worklock._pid_namespace()}\n"
            )
    finally:
        os.close(let_go)  # ends the worker, whatever happened
    assert waited  # held, by the worker of a run that was gone
    monkeypatch.undo()

    # still held after the wait: the workers are named as the holder, not the run
    monkeypatch.setattr(_worklock, "_ORPHANS_WAIT_S", 0.0)
    pid, let_go = _killed_run_with_a_worker(work)
    try:
        with pytest.raises(ConflictError) as e, work_lock(work):
            pass
    finally:
        os.close(let_go)
    assert str(e.value) == (
        f"the work folder {work} is still locked by the worker processes of a stopped "
        f"lmops data run (pid {pid}, gone) 0 s later; stop them (fuser -v "
        f"{work / LOCK_NAME} lists them), then run again"
    )


@pytest.mark.parametrize("elsewhere", ["host", "namespace", "neither"])
def test_a_lock_held_from_another_host_or_pid_namespace_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, elsewhere: str
) -> None:
    """With the work folder on NFS or mounted into a container, the holder's pid means
    nothing here: looked up, another host's live run seemed gone, was waited for (30 s) and
    then named as a stopped run's workers. A lock file of this host and PID namespace, or an
    older one holding a pid alone, still has its gone holder waited for."""
    work = tmp_path / "team.lmops-work"
    pid, let_go = _killed_run_with_a_worker(work)  # held; pid is gone from this host
    host, ns = socket.gethostname(), _worklock._pid_namespace()
    (work / LOCK_NAME).write_text(
        {
            "host": f"{pid}\nbuild-02\n{ns}\n",
            "namespace": f"{pid}\n{host}\npid:[1]\n",
            "neither": f"{pid}\n",  # an older lmops's lock file
        }[elsewhere]
    )
    waits: list[float] = []

    def sleep(s: float) -> None:  # no wall clock: count the waits, end the holder at once
        if not waits:
            os.write(let_go, b"x")
        waits.append(s)

    monkeypatch.setattr(_worklock, "_ORPHANS_WAIT_S", 3600.0)
    monkeypatch.setattr(time, "sleep", sleep)
    try:
        if elsewhere == "neither":
            with work_lock(work):
                pass
            assert waits  # waited for the gone holder's workers
            return
        with pytest.raises(ConflictError) as e, work_lock(work):
            pass
    finally:
        os.close(let_go)
    assert waits == []  # refused without waiting
    where = "on build-02" if elsewhere == "host" else f"in another PID namespace on {host}"
    assert str(e.value) == (
        f"another lmops data run (pid {pid} {where}) is using the work folder {work}; wait "
        f"for it to finish or stop it (kill {pid} {where})"
    )


def test_ray_a_bad_row_cancels_the_stage_s_other_tasks(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Ray ran the stage's other tasks on after the driver raised (and let go of the work
    folder's lock): they went on writing shards into it."""
    ray = pytest.importorskip("ray", reason="Ray not installed; pip install 'lmops[ray]' to run")
    ops = tmp_path_factory.mktemp("ops")
    (ops / "slow_ops.py").write_text(SLOW_OPS)
    tmp_path = tmp_path_factory.mktemp("run")
    make_corpus(tmp_path / "raw", files=8, per_file=20)
    first = sorted((tmp_path / "raw").glob("*.jsonl"))[0]
    first.write_text(BAD_LINE + "\n" + first.read_text())
    write_recipe(tmp_path / "r.yaml", STOPS.replace("seconds: 0.02", "seconds: 0.05"))
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ops), *sys.path])}},
    )  # fmt: skip
    sys.path.insert(0, str(ops))
    try:
        with pytest.raises(UserError) as e:
            run_recipe(
                load_recipe(tmp_path / "r.yaml"), base_dir=tmp_path, executor="ray", progress=False
            )
        # the task's own one-line error, not Ray's wrapper with the task's traceback
        assert str(e.value) == (
            f"{first}:1: malformed JSON (Expecting value at column 23); "
            "fix the input or set on_error: skip"
        )
        # Until the cluster is idle: at once when the tasks were cancelled, after the whole
        # stage (7 more shards of 1 s on 2 CPUs) when they ran on.
        deadline = time.monotonic() + 120  # a liveness bound, not a timing
        while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        work = tmp_path / "out" / "stops.lmops-work"
        done = list((work / "stage0").glob("*.stats.json"))
        assert len(done) <= 1, done  # the shard running beside the bad one, if it finished
        assert _temp_files(work) == []
    finally:
        sys.path.remove(str(ops))
        ray.shutdown()


def test_a_run_never_cleans_a_nested_work_folder_with_its_own_lock(tmp_path: Path) -> None:
    """Recipe "team/nightly" (a name from before names were checked) works inside recipe
    "team"'s folder; "team"'s run removed the live nightly run's half-written files."""
    work = tmp_path / "team"
    mine = work / "stage0" / "00000.jsonl.tmp"
    nested = work / "nightly" / "stage0" / "00000.jsonl.tmp"
    for f in (mine, nested):
        f.parent.mkdir(parents=True)
        f.write_text("half\n")
    (work / "nightly" / "run.lock").write_text("4242")
    assert remove_temp_files(work) == 1
    assert not mine.exists() and nested.read_text() == "half\n"


# ---------------------------------------------------------------- the pool itself
def _no_init() -> None:
    pass


class DocError(Exception):
    """An operator's own error whose ``__init__`` takes other arguments than its ``args``:
    pickle cannot rebuild it in the driver."""

    def __init__(self, doc: str, msg: str) -> None:
        super().__init__(f"document {doc}: {msg}")


def _raises_doc_error(job: int) -> None:
    raise DocError(f"d{job}", "no title")


class _Unreadable:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_Unreadable, (1,))  # takes no argument: rebuilding it fails


def _returns_unreadable(job: int) -> Any:
    return _Unreadable()


def _sleeps_then_marks(path: str) -> None:
    time.sleep(3)
    Path(path).write_text("ran to the end")


def _job_0_dies(how: str, job: int) -> None:
    """Job 0's worker dies (SIGKILL, as the out-of-memory killer does, or exit status 3);
    the others are still running then, to be stopped by the pool with SIGTERM."""
    if job == 0:
        if how == "SIGKILL":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    time.sleep(30)


@pytest.mark.parametrize(
    ("how", "said"), [("SIGKILL", "killed by SIGKILL"), ("exit", "exited with status 3")]
)
def test_a_dead_worker_is_named_by_how_it_died_not_by_the_pool_s_sigterm(
    how: str, said: str
) -> None:
    """The pool noticed the death before the exit status could be read and SIGTERMed the
    other workers: the run said "killed by a signal" or "killed by SIGTERM" (11 runs of 40
    said "killed by SIGKILL"). Several runs, as it went wrong only some of the time."""
    for _ in range(6):
        with pytest.raises(LmopsError) as e:
            run_in_pool(
                functools.partial(_job_0_dies, how), range(4), 3, _no_init, (), lambda n: None
            )
        assert f"died while running its shard ({said}; " in str(e.value), str(e.value)


def test_an_error_pickle_cannot_rebuild_is_named_not_a_worker_s_death() -> None:
    """It broke the pool, which read as 'a worker process died ... out-of-memory killer',
    the real error hidden."""
    with pytest.raises(RuntimeError) as e:
        run_in_pool(_raises_doc_error, [1, 2], 2, _no_init, (), lambda n: None)
    assert str(e.value) in ("DocError: document d1: no title", "DocError: document d2: no title")


def test_a_result_the_driver_cannot_read_is_named_and_chained() -> None:
    with pytest.raises(LmopsError) as e:
        run_in_pool(_returns_unreadable, [1, 2], 2, _no_init, (), lambda n: None)
    assert str(e.value).startswith(
        "a worker's shard failed and its error could not be read here (TypeError: "
    ), str(e.value)
    assert "died" not in str(e.value) and e.value.__cause__ is not None


def test_a_pool_broken_while_queueing_names_what_broke_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job done (and its result unreadable) before the rest were queued broke the pool
    under the queueing; that error says nothing of why, and the run read as a worker's
    death (6 runs of 60 under load)."""
    real = _pool.ProcessPoolExecutor.submit
    submitted: list[int] = []

    def submit(self: Any, fn: Any, *args: Any) -> Any:
        deadline = time.monotonic() + 60  # a liveness bound, not a timing
        while len(submitted) == 2 and not self._broken and time.monotonic() < deadline:
            time.sleep(0.01)  # queueing is slow this time: the pool breaks meanwhile
        submitted.append(1)
        return real(self, fn, *args)

    monkeypatch.setattr(_pool.ProcessPoolExecutor, "submit", submit)
    with pytest.raises(LmopsError) as e:
        run_in_pool(_returns_unreadable, [1, 2, 3, 4], 2, _no_init, (), lambda n: None)
    assert str(e.value).startswith(
        "a worker's shard failed and its error could not be read here (TypeError: "
    ), str(e.value)


def test_ctrl_c_while_queueing_stops_the_pool_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the jobs were being submitted waited for every job submitted so far."""
    real = _pool.ProcessPoolExecutor.submit
    submitted: list[int] = []

    def submit(self: Any, fn: Any, *args: Any) -> Any:
        if len(submitted) == 4:
            raise KeyboardInterrupt
        submitted.append(1)
        return real(self, fn, *args)

    monkeypatch.setattr(_pool.ProcessPoolExecutor, "submit", submit)
    jobs = [str(tmp_path / f"job{i}") for i in range(8)]
    with pytest.raises(KeyboardInterrupt):
        run_in_pool(_sleeps_then_marks, jobs, 2, _no_init, (), lambda n: None)
    # the running jobs were killed and the queued ones never started
    assert sorted(p.name for p in tmp_path.iterdir()) == []
