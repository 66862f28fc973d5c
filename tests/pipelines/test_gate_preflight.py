"""A gate on a metric that the eval steps it reads will not report is refused before any step
runs (and by a dry run): the eval's task files and built-in tasks say which metrics its report
will hold. Where they cannot say before running, the gate checks when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lmops.core.errors import UserError
from lmops.pipelines import load_pipeline, plan_pipeline, run_pipeline
from tests.pipelines.test_runner import write_pipeline

GEN = {
    "task": "support",
    "dataset_path": "json",
    "dataset_kwargs": {"data_files": {"test": "support.jsonl"}},
    "test_split": "test",
    "output_type": "generate_until",
    "doc_to_text": "{{q}}",
    "doc_to_target": "a",
    "metric_list": [{"metric": "exact_match"}],
}
MC = {
    "task": "support_mc",
    "dataset_path": "json",
    "dataset_kwargs": {"data_files": {"test": "support.jsonl"}},
    "test_split": "test",
    "doc_to_text": "{{q}}",
    "doc_to_choice": ["yes", "no"],
    "doc_to_target": 0,
}


def _pipeline(tmp: Path, gate: dict[str, Any], gen: dict[str, Any] = GEN, **eval_: Any) -> Path:
    """raw -> eval_base and eval_sft (a generation and a multiple-choice task) -> gate."""
    (tmp / "support.jsonl").write_text('{"q": "Is it on?", "a": "yes"}\n')
    (tmp / "support.yaml").write_text(yaml.safe_dump(gen))
    (tmp / "support_mc.yaml").write_text(yaml.safe_dump(MC))
    (tmp / "raw.txt").write_text("raw text\n")
    tasks = {"task_files": ["support.yaml", "support_mc.yaml"], **eval_}
    steps = {
        "raw": {"type": "register", "path": "raw.txt", "name": "demo-raw"},
        "eval_base": {"type": "eval", "model": "m-base", "needs": ["raw"], **tasks},
        # the model stands for a trained one
        "eval_sft": {"type": "eval", "model": "${steps.raw.output}", **tasks},
        "gate": {
            "type": "gate",
            "candidates": ["${steps.eval_sft.output}"],
            "baseline": "${steps.eval_base.output}",
            **gate,
        },
    }
    return write_pipeline(tmp, steps)


def _line(path: Path, text: str) -> int:
    return next(i for i, s in enumerate(path.read_text().splitlines(), 1) if text in s)


def test_a_gate_on_an_unknown_metric_fails_before_any_step_runs(tmp_path: Path, store: Any) -> None:
    path = _pipeline(tmp_path, {"metric": "support/exact_matc"})
    with pytest.raises(UserError) as e:
        run_pipeline(load_pipeline(path), store, progress=False)
    line = _line(path, "metric: support/exact_matc")
    assert str(e.value) == (
        f"{path}:{line}: steps.gate.metric: steps.eval_sft (eval) will not report "
        "'support/exact_matc'; did you mean 'support/exact_match'? it will report: "
        "support/exact_match,none, support_mc/acc, support_mc/acc_norm"
    )
    # nothing ran: no step, no run recorded, nothing registered
    assert store.runs.list() == [] and not store.assets.exists("demo-raw")
    assert store.steps.list() == []


def test_lmops_run_and_its_dry_run_refuse_it_in_one_line(
    tmp_path: Path, store: Any, cli: Any
) -> None:
    conditions = [
        {"metric": "support/exact_match", "min": 0.5},
        {"metric": "support_mc/accuracy", "not_worse_than": 0.1},
    ]
    gate = {"conditions": conditions}
    path = _pipeline(tmp_path, gate)
    line = _line(path, "metric: support_mc/accuracy")
    for args in ([], ["--dry-run"], ["--dry-run", "--json"]):
        r = cli("run", str(path), *args)
        assert r.code != 0, (args, r.out)
        assert len(r.err.strip().splitlines()) == 1, r.err
        said = " ".join(r.err.split())
        assert f"{path}:{line}: steps.gate.conditions[1].metric: steps.eval_sft (eval) " in said
        assert "did you mean 'support_mc/acc'?" in said
    assert store.runs.list() == [] and not store.assets.exists("demo-raw")


def test_metrics_the_eval_will_report_pass_and_a_filter_is_named_when_it_must_be(
    tmp_path: Path, store: Any
) -> None:
    # the one filter of a metric may be left out of its name, as the gate reads it
    for metric in ("support/exact_match", "support/exact_match,none", "support_mc/acc_norm"):
        path = _pipeline(tmp_path, {"metric": metric, "threshold": 0.5})
        assert [p["step"] for p in plan_pipeline(load_pipeline(path), store)][-1] == "gate"
    # with two filters it must be named
    filters = [
        {"name": "first", "filter": [{"function": "take_first"}]},
        {"name": "lower", "filter": [{"function": "lowercase"}]},
    ]
    path = _pipeline(tmp_path, {"metric": "support/exact_match"}, {**GEN, "filter_list": filters})
    with pytest.raises(UserError, match=r"'support/exact_match' is 2 metrics of "
                       r"steps\.eval_sft's report \(support/exact_match,first, "
                       r"support/exact_match,lower\); name one"):  # fmt: skip
        plan_pipeline(load_pipeline(path), store)
    # the metrics on clean items exist where contamination is checked
    path = _pipeline(tmp_path, {"metric": "support_mc/acc_clean"}, contamination=True)
    plan_pipeline(load_pipeline(path), store)
    path = _pipeline(tmp_path, {"metric": "support_mc/acc_clean"})
    with pytest.raises(UserError, match="will not report 'support_mc/acc_clean'"):
        plan_pipeline(load_pipeline(path), store)


def test_a_perplexity_metric_named_by_a_step_output(tmp_path: Path, store: Any) -> None:
    # the quickstart's form: the held-out set is an earlier step's output, and the gate's
    # metric names it the same way
    ppl = "perplexity:${steps.raw.output}"
    ok = {"conditions": [{"metric": f"{ppl}/word_perplexity", "not_worse_than": "10%"}]}
    path = _pipeline(tmp_path, ok, tasks=[ppl])
    plan_pipeline(load_pipeline(path), store)
    typo = {"conditions": [{"metric": f"{ppl}/words_perplexity", "not_worse_than": "10%"}]}
    path = _pipeline(tmp_path, typo, tasks=[ppl])
    with pytest.raises(UserError, match=r"did you mean 'perplexity:\$\{steps\.raw\.output\}/"
                       r"word_perplexity'\?"):  # fmt: skip
        plan_pipeline(load_pipeline(path), store)
    # another step's output may turn out to be the same dataset: checked when the gate runs
    other = {"conditions": [{"metric": "perplexity:${steps.eval_base.outputs.model}/x", "max": 1}]}
    plan_pipeline(load_pipeline(_pipeline(tmp_path, other, tasks=[ppl])), store)


def test_where_the_metrics_are_not_known_the_gate_checks_when_it_runs(
    tmp_path: Path, store: Any
) -> None:
    # a built-in that cannot be read now, and a task file another step names
    for eval_ in (
        {"tasks": ["mmlu_redux_zorbology"]},
        {"task_files": ["${steps.raw.output}"]},
    ):
        path = _pipeline(tmp_path, {"metric": "support/zorbs", "threshold": 1}, **eval_)
        plan = plan_pipeline(load_pipeline(path), store)
        assert [p["plan"] for p in plan] == ["run"] * 4
    # and a report that is not an eval step's output
    steps = {
        "gate": {"type": "gate", "candidates": ["rep:1"], "metric": "support/zorbs"},
    }
    plan_pipeline(load_pipeline(write_pipeline(tmp_path, steps)), store)
