"""A step's cache key is over its parameters as the step will see them: a default written out,
an override equal to the default, a preset spelled out or a path written absolute is the same
step (cached), while any real change is a new key (the step runs again)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmops.pipelines import load_pipeline, plan_pipeline, run_pipeline
from tests.pipelines.test_runner import BASIC, write_pipeline, write_raw


def run(path: Path, store: Any, overrides: list[str] | None = None) -> Any:
    result = run_pipeline(load_pipeline(path, overrides), store, progress=False)
    assert result.ok, result.failed
    return result


def keys(path: Path, store: Any, overrides: list[str] | None = None) -> dict[str, str]:
    """Each step's cache key, as a dry run computes it."""
    return {p["step"]: p["key"] for p in plan_pipeline(load_pipeline(path, overrides), store)}


def test_an_override_equal_to_the_default_hits_the_cache(tmp_path: Path, store: Any) -> None:
    write_raw(tmp_path)
    path = write_pipeline(tmp_path, BASIC)
    assert run(path, store).executed() == ["raw", "clean", "tok", "tag"]
    # `--set` of a value the step type has by default: the same step
    same = ["steps.tok.kind=bpe", "steps.tok.text_key=text", "steps.raw.kind=dataset"]
    assert run(path, store, same).executed() == []
    # the same defaults written into the file, and an operator's defaults spelled out
    steps = json.loads(json.dumps(BASIC))
    steps["tok"] |= {"kind": "bpe", "text_key": "text"}
    steps["clean"]["recipe"]["process"][0] |= {"max_blank_lines": 1, "keep_indentation": False}
    assert run(write_pipeline(tmp_path, steps), store).executed() == []
    # a real change misses: the step and what follows it run again
    again = run(path, store, ["steps.tok.min_frequency=2"])
    assert again.executed() == ["tok", "tag"]
    assert again.steps["tok"].outputs["output"] == "demo-tok:2"


def test_a_real_change_misses_whichever_way_it_is_written(tmp_path: Path, store: Any) -> None:
    write_raw(tmp_path, ["one   two\n\n\n\nthree", "four five"])
    steps = {
        "raw": BASIC["raw"],
        "clean": {
            "type": "data",
            "recipe": {"process": [{"op": "clean_whitespace"}]},
            "inputs": ["${steps.raw.output}"],
            "output": "k-clean",
        },
    }
    path = write_pipeline(tmp_path, steps)
    run(path, store)
    # the operator's default, given through the step's recipe overrides: cached
    same = ["steps.clean.overrides=[process.0.max_blank_lines=1]"]
    assert run(path, store, same).executed() == []
    # a different value, in the file or through the overrides: runs again
    other = ["steps.clean.overrides=[process.0.max_blank_lines=0]"]
    assert run(path, store, other).executed() == ["clean"]
    steps["clean"]["recipe"]["process"][0]["max_blank_lines"] = 0
    assert run(write_pipeline(tmp_path, steps), store).executed() == []  # that key is known
    steps["clean"]["recipe"]["process"][0]["max_blank_lines"] = 2
    assert run(write_pipeline(tmp_path, steps), store).executed() == ["clean"]


def test_a_path_written_absolute_is_the_same_input(tmp_path: Path, store: Any) -> None:
    write_raw(tmp_path)
    steps = {"raw": {"type": "register", "path": "raw", "name": "p-raw"}}
    run(write_pipeline(tmp_path, steps), store)
    steps["raw"]["path"] = str(tmp_path / "raw")
    assert run(write_pipeline(tmp_path, steps), store).executed() == []
    steps["raw"]["path"] = "./raw/"
    assert run(write_pipeline(tmp_path, steps), store).executed() == []
    # what the path holds is still what counts
    write_raw(tmp_path, ["a different document, long enough to be kept around"])
    assert run(write_pipeline(tmp_path, steps), store).executed() == ["raw"]


def _task(tmp: Path) -> None:
    (tmp / "qa.jsonl").write_text(json.dumps({"q": "2+2", "a": "4"}) + "\n")
    task = {
        "task": "qa",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": "qa.jsonl"}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{q}}=",
        "doc_to_target": "a",
        "metric_list": [{"metric": "exact_match"}],
    }
    (tmp / "qa.yaml").write_text(yaml.safe_dump(task))


def test_eval_and_train_jobs_are_keyed_as_they_run(tmp_path: Path, store: Any) -> None:
    _task(tmp_path)
    job = {"stage": "sft", "method": "lora", "model": "m", "dataset": "d", "output": "o"}
    steps = {
        "ev": {"type": "eval", "model": "m", "task_files": ["qa.yaml"], "preset": "smoke"},
        "sft": {"type": "train", "spec": {**job, "preset": "sft-lora"}},
    }
    path = write_pipeline(tmp_path, steps)
    before = keys(path, store)
    # a preset spelled out, defaults given, a task file by its absolute path, few-shot
    # as turns left to follow the chat template: the same jobs
    steps["ev"] = {
        "type": "eval",
        "model": "m",
        "task_files": [str(tmp_path / "qa.yaml")],
        "limit": 20,
        "batch_size": "auto",
        "contamination": False,
        "fewshot_as_multiturn": False,
    }
    preset = {
        "stage": "sft",
        "method": "lora",
        "train": {"lr": 2e-4, "lr_scheduler": "cosine", "warmup_steps": 10},
        "lora": {"r": 16, "alpha": 32, "targets": "all-linear"},
    }
    steps["sft"] = {"type": "train", "spec": {**job, **preset, "text_key": "text"}}
    path = write_pipeline(tmp_path, steps)
    assert keys(path, store) == before
    assert keys(path, store, ["steps.sft.overrides=[train.lr=0.0002]"]) == before
    # and a real change is a new key for that step only
    changed = keys(path, store, ["steps.ev.limit=21", "steps.sft.spec.train.lr=1e-4"])
    assert changed["ev"] != before["ev"] and changed["sft"] != before["sft"]
    assert keys(path, store, ["steps.ev.apply_chat_template=true"])["ev"] != before["ev"]
    # endpoint requests in flight change how fast the report comes, not what it holds
    assert keys(path, store, ["steps.ev.concurrency=32"]) == before


def test_an_eval_step_cached_before_lmops_scored_it_differently_runs_again(
    tmp_path: Path, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change to how lmops scores the same job (replies no longer stripped without a
    filter_list, say) raises eval's SCORING_VERSION, and a cached eval step's key with it."""
    _task(tmp_path)
    steps = {"ev": {"type": "eval", "model": "m", "task_files": ["qa.yaml"]}}
    path = write_pipeline(tmp_path, steps)
    before = keys(path, store)
    monkeypatch.setattr("lmops.pipelines.steps.SCORING_VERSION", "next")
    assert keys(path, store)["ev"] != before["ev"]
