"""A pipeline's train step and interrupted training: running the pipeline again resumes the
interrupted run of the same job from its checkpoint (``lmops train --resume``); a changed job or a
forced step starts over and deletes the old checkpoints (``--restart``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lmops.pipelines import load_pipeline, run_pipeline
from lmops.store import RunStatus
from lmops.train.tracking import StoreTracker
from tests.pipelines.test_runner import write_pipeline
from tests.train.tiny import make_model, make_tokenizer, write_alpaca

STEPS = {
    "sft": {
        "type": "train",
        "spec": {
            "stage": "sft",
            "method": "lora",
            "model": "tiny",
            "dataset": "adds",
            "output": "adder",
            "device": "cpu",
            "train": {"max_steps": 6, "batch_size": 4, "max_seq_len": 48, "save_steps": 2},
            "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
        },
    }
}


@pytest.fixture
def base(store: Any, tmp_path: Path) -> Any:
    tok = make_tokenizer(tmp_path / "tok")
    store.assets.register("model", "tiny", make_model(tmp_path / "tiny", tok))
    store.assets.register("dataset", "adds", write_alpaca(tmp_path / "adds.jsonl", 32))
    return store


def _ctrl_c_at(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    real_log = StoreTracker.log

    def log(self: StoreTracker, step: int, metrics: dict[str, float]) -> None:
        real_log(self, step, metrics)
        if step == at:
            raise KeyboardInterrupt

    monkeypatch.setattr(StoreTracker, "log", log)


def _interrupted(store: Any, path: Path, at: int, overrides: list[str] | None = None) -> str:
    with pytest.MonkeyPatch.context() as m:
        _ctrl_c_at(m, at)
        with pytest.raises(KeyboardInterrupt, match=f"interrupted after step {at} of 6"):
            run_pipeline(load_pipeline(path, overrides or []), store, progress=False)
    run = store.runs.list(kind="train")[0]
    assert run.status is RunStatus.CANCELLED
    return str(run.id)


def test_a_rerun_resumes_the_interrupted_step_from_its_checkpoint(
    tmp_path: Path, base: Any
) -> None:
    path = write_pipeline(tmp_path, STEPS)
    first = _interrupted(base, path, 3)
    res = run_pipeline(load_pipeline(path), base, progress=False)
    sft = res.steps["sft"]
    assert res.ok and sft.run_id == first and sft.result["resumed_from"] == 3
    assert "(resumed from step 3)" in sft.summary


def test_a_forced_step_or_a_changed_job_starts_over_and_clears_the_checkpoints(
    tmp_path: Path, base: Any
) -> None:
    path = write_pipeline(tmp_path, STEPS)
    first = _interrupted(base, path, 3)
    old = Path(base.runs.dir(first)) / "checkpoints"
    assert old.is_dir()
    res = run_pipeline(load_pipeline(path), base, force={"sft"}, progress=False)
    sft = res.steps["sft"]
    assert res.ok and sft.run_id != first and sft.result["resumed_from"] is None
    assert f"(started over; the interrupted run {first} was at step 3)" in sft.summary
    assert not old.exists()

    second = _interrupted(base, path, 5, ["steps.sft.spec.train.lr=0.001"])
    changed = load_pipeline(path, ["steps.sft.spec.train.lr=0.002"])
    res = run_pipeline(changed, base, progress=False)
    assert res.ok and res.steps["sft"].result["resumed_from"] is None
    assert "(started over; the interrupted run" in res.steps["sft"].summary
    assert not (Path(base.runs.dir(second)) / "checkpoints").exists()


def test_lmops_run_says_where_it_stopped_and_how_to_go_on(
    tmp_path: Path, base: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_pipeline(tmp_path, STEPS)
    _ctrl_c_at(monkeypatch, 3)
    r = cli("run", str(path))
    assert r.code == 130
    assert r.err.strip().splitlines()[-1] == (
        "interrupted after step 3 of 6; completed steps are cached and a training step "
        "resumes from its checkpoint: run the same command again to continue"
    )
