"""A run's log file: opened by ``runs.start``/``reopen`` in the process that runs the job,
closed by ``runs.finish``; read by ``lmops runs log``, ``/api/runs/{id}/log`` and the
console's run page."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.store import RunStatus, Store


def _log(store: Store, run_id: str) -> str:
    path = store.runs.get(run_id).log_path
    assert path is not None
    return Path(path).read_text()


def test_a_failed_job_leaves_its_warnings_and_traceback(store: Store) -> None:
    handlers = list(logging.getLogger().handlers)
    with (
        pytest.raises(UserError),
        store.runs.track("train", name="sft", config={"lr": 3e-4}) as run,
    ):
        logging.getLogger("transformers.modeling_utils").warning("some weights were not used")
        logging.getLogger("lmops.train").info("not kept: below WARNING")
        raise UserError("train.max_steps: must be positive")
    text = _log(store, run.id)
    assert f"run {run.id} (train sft) started on" in text
    assert 'config: {"lr": 0.0003}' in text
    assert "WARNING transformers.modeling_utils: some weights were not used" in text
    assert "not kept" not in text
    assert "Traceback (most recent call last)" in text
    assert "UserError: train.max_steps: must be positive" in text
    assert text.rstrip().endswith("run ended: FAILED")
    assert logging.getLogger().handlers == handlers  # the log's handler is gone
    logging.getLogger("late").warning("after the run")
    assert "after the run" not in _log(store, run.id)


def test_succeeded_cancelled_and_resumed_runs(store: Store) -> None:
    with store.runs.track("eval") as ok:
        pass
    assert _log(store, ok.id).rstrip().endswith("run ended: SUCCEEDED")
    assert "Traceback" not in _log(store, ok.id)

    with pytest.raises(KeyboardInterrupt), store.runs.track("eval") as stopped:
        raise KeyboardInterrupt
    assert _log(store, stopped.id).rstrip().endswith("run ended: CANCELLED (interrupted)")
    assert "Traceback" not in _log(store, stopped.id)

    # start/finish by hand, as training does; then resumed and finished in the same log
    run = store.runs.start("train", name="long")
    try:
        raise RuntimeError("CUDA out of memory")
    except RuntimeError:
        store.runs.finish(run.id, RunStatus.FAILED, "RuntimeError: CUDA out of memory")
    store.runs.reopen(run.id)
    store.runs.finish(run.id)
    text = _log(store, run.id)
    assert "RuntimeError: CUDA out of memory" in text
    assert text.index("run ended: FAILED") < text.index("resumed on")
    assert text.rstrip().endswith("run ended: SUCCEEDED")


def test_an_unwritable_log_never_fails_the_run(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmops.store.runlog as runlog

    def refuse(self: object, path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runlog._RunLog, "__init__", refuse)
    with store.runs.track("data") as run:
        logging.getLogger("x").warning("nowhere to go")
    assert store.runs.get(run.id).status is RunStatus.SUCCEEDED


def test_cli_api_and_console_read_it(cli, store: Store) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from lmops.api.app import create_app

    with store.runs.track("train", name="sft") as run:
        for i in range(5):
            logging.getLogger("lmops.train").warning("warning %d", i)
    r = cli("runs", "log", run.id)
    assert r.code == 0 and "warning 4" in r.out and "run ended: SUCCEEDED" in r.out
    r = cli("runs", "log", run.id, "--tail", "2")
    assert r.out.splitlines()[0].endswith("warning 4") and len(r.out.splitlines()) == 2
    r = cli("runs", "show", run.id)
    assert f"lmops runs log {run.id}" in r.out

    # a run recorded without a log (before lmops kept them, or by another machine)
    old = store.runs.start("eval")
    Path(str(old.log_path)).unlink()
    r = cli("runs", "log", old.id)
    assert r.code != 0 and "runs recorded before lmops kept run logs have none" in r.err

    _, secret = store.keys.create("reader", role="user")
    client = TestClient(create_app(store))
    auth = {"Authorization": f"Bearer {secret}"}
    got = client.get(f"/api/runs/{run.id}/log", params={"tail": 1}, headers=auth)
    assert got.status_code == 200 and got.text.strip().endswith("run ended: SUCCEEDED")
    assert got.headers["content-type"].startswith("text/plain")
    assert client.get(f"/api/runs/{old.id}/log", headers=auth).status_code == 404


def test_two_runs_tracked_at_once_in_two_threads_keep_their_own_warnings(store: Store) -> None:
    import threading

    barrier = threading.Barrier(2)
    ids: dict[str, str] = {}

    def job(name: str) -> None:
        with store.runs.track("eval", name=name) as run:
            ids[name] = run.id
            barrier.wait()  # both logs open
            logging.getLogger("lmops.eval").warning("warning from %s", name)
            barrier.wait()  # both written before either closes

    threads = [threading.Thread(target=job, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a, b = _log(store, ids["a"]), _log(store, ids["b"])
    assert "warning from a" in a and "warning from b" not in a
    assert "warning from b" in b and "warning from a" not in b


def test_a_failed_pipeline_step_leaves_its_traceback_in_the_pipelines_log(
    store: Store, tmp_path: Path
) -> None:
    from lmops.pipelines.runner import run_pipeline
    from lmops.pipelines.spec import load_pipeline

    (tmp_path / "p.yaml").write_text(
        "name: p\nsteps:\n  reg: {type: register, path: nothere.txt, name: x, kind: dataset}\n"
    )
    result = run_pipeline(load_pipeline(tmp_path / "p.yaml"), store, progress=False)
    text = _log(store, result.run_id)
    assert "step reg (register) failed:" in text and "Traceback" in text
    assert "run ended: FAILED (reg: " in text


def test_warnings_of_libraries_that_do_not_propagate_are_kept_once(store: Store) -> None:
    """transformers' own root logger stops records going up to the root once transformers
    is imported (``propagate = False``): its warnings are still in the run's log, once,
    whether it propagates or not."""
    lib = logging.getLogger("transformers")
    before = lib.propagate
    try:
        for propagate in (False, True):
            lib.propagate = propagate
            with store.runs.track("train") as run:
                logging.getLogger("transformers.modeling_utils").warning("weights not used")
            assert _log(store, run.id).count("weights not used") == 1, propagate
    finally:
        lib.propagate = before
