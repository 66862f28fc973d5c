"""Runs: lifecycle, metric series, summaries, outputs, dead-process detection."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmops.core.errors import NotFoundError, UserError
from lmops.store import RunStatus, Store


def test_tracked_run_records_config_metrics_and_status(store: Store) -> None:
    with store.runs.track("train", name="sft", config={"lr": 2e-4}, params={"seed": 0}) as run:
        for step in range(3):
            store.runs.log_metrics(run.id, {"loss": 3.0 - step, "lr": 2e-4}, step=step)
        store.runs.update(run.id, params={"tokens": 1234})
    got = store.runs.get(run.id)
    assert got.status is RunStatus.SUCCEEDED and got.ended_at is not None
    assert got.config == {"lr": 2e-4} and got.params == {"seed": 0, "tokens": 1234}
    assert [m.value for m in got.metrics["loss"]] == [3.0, 2.0, 1.0]
    assert [m.step for m in got.metrics["loss"]] == [0, 1, 2]
    assert got.last("loss") == 1.0
    assert got.lmops_version and got.host and got.log_path and got.log_path.endswith("run.log")
    listed = store.runs.list()
    assert listed[0].id == run.id and listed[0].summary == {"loss": 1.0, "lr": 2e-4}


def test_failing_run_is_failed_with_error(store: Store) -> None:
    with pytest.raises(RuntimeError), store.runs.track("eval") as run:
        raise RuntimeError("model could not load")
    got = store.runs.get(run.id)
    assert got.status is RunStatus.FAILED
    assert got.error == "RuntimeError: model could not load"


def test_non_finite_metrics_are_rejected(store: Store) -> None:
    run = store.runs.start("train")
    with pytest.raises(UserError, match="'loss' at step 4 is not finite"):
        store.runs.log_metric(run.id, "loss", float("nan"), step=4)


def test_unknown_run(store: Store) -> None:
    with pytest.raises(NotFoundError, match="run 'nope' not found"):
        store.runs.get("nope")


def test_run_of_dead_process_is_marked_failed(store: Store) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from lmops.store import Store; print(Store().runs.start('data').id)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    run_id = proc.stdout.strip()
    assert store.runs.get(run_id).status is RunStatus.RUNNING
    store.runs.list()  # listing notices the writer is gone
    got = store.runs.get(run_id)
    assert got.status is RunStatus.FAILED and "process died" in (got.error or "")


def test_reopened_run_continues_its_record(store: Store) -> None:
    run = store.runs.start("train", name="m")
    store.runs.log_metric(run.id, "loss", 2.0, step=1)
    store.runs.finish(run.id, RunStatus.FAILED, "killed")
    again = store.runs.reopen(run.id)
    assert again.status is RunStatus.RUNNING and again.error is None
    store.runs.log_metric(run.id, "loss", 1.0, step=2)
    store.runs.finish(run.id)
    got = store.runs.get(run.id)
    assert [m.step for m in got.metrics["loss"]] == [1, 2] and got.status is RunStatus.SUCCEEDED
    assert store.audit.list(action="run.resume")[0].target == run.id
