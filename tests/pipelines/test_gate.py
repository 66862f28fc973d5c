"""The gate sees the whole picture: several conditions (a metric up by a margin, others not worse
than a tolerance, absolute bounds), directions known per metric, and every condition's value,
baseline and verdict recorded and printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lmops.cli.pipelines import gate_lines
from lmops.core.errors import UserError
from lmops.pipelines import load_pipeline, run_pipeline
from lmops.pipelines.gate import Condition, higher_is_better, judge
from tests.pipelines.test_runner import write_pipeline

EM, PPL = "addition/exact_match", "perplexity:heldout/word_perplexity"
TRADE_OFF = [
    {"metric": EM, "improve_by": 0.05},
    {"metric": PPL, "not_worse_than": "10%"},
]


def _reports(tmp: Path, store: Any, scores: dict[str, tuple[float, float]]) -> None:
    """A model and an eval report per name, with exact match and word perplexity."""
    (tmp / "weights").mkdir(exist_ok=True)
    (tmp / "weights" / "w.bin").write_bytes(b"\0" * 8)
    for name, (em, ppl) in scores.items():
        store.assets.register("model", f"m-{name}", tmp / "weights")
        (tmp / name).mkdir(exist_ok=True)
        (tmp / name / "results.json").write_text("{}")
        results = {"addition": {"exact_match": em}, "perplexity:heldout": {"word_perplexity": ppl}}
        store.assets.register(
            "eval_report",
            f"rep-{name}",
            tmp / name,
            metadata={"model": {"ref": f"m-{name}:1"}, "results": results},
        )


def _gate(tmp: Path, store: Any, candidates: list[str], **params: Any) -> Any:
    steps = {
        "gate": {
            "type": "gate",
            "candidates": [f"rep-{c}:1" for c in candidates],
            "baseline": "rep-base:1",
            **params,
        }
    }
    res = run_pipeline(load_pipeline(write_pipeline(tmp, steps)), store, progress=False)
    assert res.ok, res.steps["gate"].error
    return res.steps["gate"]


def test_a_better_score_that_wrecks_perplexity_is_held(tmp_path: Path, store: Any) -> None:
    # the quickstart's numbers: exact match 0.01 -> 1.0, perplexity 67 -> 6,797
    _reports(tmp_path, store, {"base": (0.01, 67.2), "sft": (1.0, 6796.9)})
    gate = _gate(tmp_path, store, ["sft"], conditions=TRADE_OFF)
    d = gate.result
    assert d["decision"] == "hold" and "output" not in gate.outputs
    assert gate.outputs["selected"] == "m-base:1"  # what to serve: the baseline's model
    assert "production" not in store.assets.resolve("m-sft:1").aliases
    em, ppl = d["conditions"]
    assert (em["metric"], em["value"], em["baseline"], em["passed"]) == (EM, 1.0, 0.01, True)
    assert em["higher_is_better"] is True and em["rules"] == "improve_by 0.05"
    assert (ppl["value"], ppl["baseline"], ppl["passed"]) == (6796.9, 67.2, False)
    assert ppl["higher_is_better"] is False and ppl["rules"] == "not_worse_than 10%"
    # the printed decision names every condition, and the recorded run has them all
    assert gate.summary == (
        "held m-sft:1: addition/exact_match 1.000 vs baseline 0.010: better by 0.990, "
        "needs 0.050: pass; perplexity:heldout/word_perplexity 6,796.9 vs baseline 67.2: "
        "worse by 10,014.4 %, allows 10.0 %: FAIL"
    )
    assert d["reasons"] == [gate.summary.split("; ")[1]]
    assert store.runs.get(gate.run_id).params["conditions"] == d["conditions"]
    # what `lmops quickstart` prints: the decision, then each condition on its own line
    assert gate_lines(d, gate.outputs).splitlines() == [
        "gate: hold m-sft:1 (1 of 2 conditions fail); production does not move, m-base:1 "
        "(the baseline) is used",
        "  ✓ addition/exact_match 1.000 vs baseline 0.010: better by 0.990, needs 0.050",
        "  ✗ perplexity:heldout/word_perplexity 6,796.9 vs baseline 67.2: worse by "
        "10,014.4 %, allows 10.0 %",
    ]


def test_the_best_candidate_that_passes_every_condition_is_promoted(
    tmp_path: Path, store: Any
) -> None:
    scores = {"base": (0.01, 67.2), "sft": (1.0, 6796.9), "mixed": (0.9, 70.0)}
    _reports(tmp_path, store, scores)
    gate = _gate(tmp_path, store, ["sft", "mixed"], conditions=TRADE_OFF)
    # sft scores higher but fails perplexity; mixed is 4.2 % worse, within the 10 %
    assert gate.result["decision"] == "promote" and gate.outputs["output"] == "m-mixed:1"
    assert gate.result["passed"] == ["rep-mixed:1"]
    assert store.assets.resolve("m-mixed@production").ref == "m-mixed:1"
    assert "worse by 4.2 %, allows 10.0 %: pass" in gate.summary
    assert gate_lines(gate.result, gate.outputs).splitlines()[0] == (
        "gate: promote m-mixed:1 to production (all 2 conditions pass)"
    )


def test_absolute_bounds_and_explicit_direction(tmp_path: Path, store: Any) -> None:
    _reports(tmp_path, store, {"base": (0.5, 50.0), "cand": (0.6, 40.0)})
    conditions = [
        {"metric": EM, "min": 0.55, "max": 0.9},
        {"metric": PPL, "max": 30},  # an absolute ceiling, no baseline needed
    ]
    gate = _gate(tmp_path, store, ["cand"], conditions=conditions)
    assert gate.result["decision"] == "hold"
    assert [c["passed"] for c in gate.result["conditions"]] == [True, False]
    assert "perplexity:heldout/word_perplexity 40.0, max 30.0: FAIL" in gate.summary
    # lower perplexity is better, so "improve_by" wants it down ...
    down = [{"metric": PPL, "improve_by": 5}]
    assert _gate(tmp_path, store, ["cand"], conditions=down).result["decision"] == "promote"
    # ... unless the condition says otherwise
    up = [{"metric": PPL, "improve_by": 5, "higher_is_better": True}]
    assert _gate(tmp_path, store, ["cand"], conditions=up).result["decision"] == "hold"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"conditions": [{"metric": "task/zorbs", "improve_by": 1}]},
            "task/zorbs: which way is better is not known from its name; set higher_is_better",
        ),
        (
            {"conditions": [{"metric": EM, "improve_by": "10 percent"}]},
            "'10 percent': expected a number (in the metric's units) or 'N%'",
        ),
        ({"conditions": [{"metric": EM}]}, "no rule; give min, max, improve_by or not_worse_than"),
        (
            {"conditions": TRADE_OFF, "metric": EM},
            "give conditions: or the single metric:, not both",
        ),
        ({}, "give conditions: (a list of {metric, rules}) or metric:"),
        (
            {"conditions": [{"metric": EM, "improve_by": 0.1, "not_worse_than": 0.1}]},
            "improve_by and not_worse_than exclude each other",
        ),
    ],
)
def test_bad_conditions_fail_when_the_pipeline_loads(
    tmp_path: Path, params: dict[str, Any], message: str
) -> None:
    steps = {"gate": {"type": "gate", "candidates": ["r:1"], "baseline": "b:1", **params}}
    path = write_pipeline(tmp_path, steps)
    with pytest.raises(UserError) as e:
        load_pipeline(path)
    assert message in str(e.value) and str(e.value).startswith(f"{path}:")


def test_a_relative_rule_needs_a_baseline(tmp_path: Path) -> None:
    steps = {"gate": {"type": "gate", "candidates": ["r:1"], "conditions": TRADE_OFF}}
    with pytest.raises(UserError, match=r"conditions\[0\].improve_by compares with the baseline"):
        load_pipeline(write_pipeline(tmp_path, steps))


def test_directions_come_from_the_registry_and_the_name() -> None:
    assert higher_is_better("mmlu/acc") and higher_is_better("gsm8k/exact_match,strict-match")
    assert higher_is_better("safety/safe_response_rate")
    for lower in (
        "ppl:x/word_perplexity",
        "x/bits_per_byte",
        "x/eval_loss",
        "safety/compliance_rate",
    ):
        assert higher_is_better(lower) is False, lower
    assert higher_is_better("task/zorbs") is None
    assert higher_is_better("task/zorbs", True) is True


def test_judge_margins_in_units_and_in_percent() -> None:
    pct = Condition(metric="x/word_perplexity", not_worse_than="10%")
    assert judge(pct, 73.9, 67.2).passed and not judge(pct, 74.0, 67.2).passed
    unit = Condition(metric="x/acc", improve_by=0.05)
    assert judge(unit, 0.56, 0.5).passed and not judge(unit, 0.54, 0.5).passed
    assert not judge(Condition(metric="x/acc", improve_by=0), 0.5, 0.5).passed  # a tie is no gain


def test_a_safety_rate_with_no_prompt_of_its_kind_is_no_metric(tmp_path: Path, store: Any) -> None:
    # a safety report of harmful prompts only has no compliance rate (None): the gate
    # reads the rates it has, and still decides on them
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "w.bin").write_bytes(b"\0")
    for name, rate in (("base", 0.5), ("sft", 0.9)):
        store.assets.register("model", f"m-{name}", tmp_path / "w")
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text("{}")
        safety = {"safe_response_rate": rate, "compliance_rate": None, "n": 4}
        store.assets.register(
            "eval_report",
            f"rep-{name}",
            tmp_path / name,
            metadata={"model": {"ref": f"m-{name}:1"}, "results": {"safety": safety}},
        )
    rule = {"metric": "safety/safe_response_rate", "improve_by": 0.1}
    gate = _gate(tmp_path, store, ["sft"], conditions=[rule])
    assert gate.result["decision"] == "promote"
    assert gate.result["conditions"][0]["value"] == 0.9


def test_a_baseline_may_evaluate_a_local_folder_but_only_a_model_asset_is_promoted(
    tmp_path: Path, store: Any
) -> None:
    # the README's release.yaml: vars.base is a folder, evaluated as the baseline
    from tests.eval.test_resume import write_task
    from tests.train.tiny import make_model, make_tokenizer

    make_model(tmp_path / "base", make_tokenizer(tmp_path / "tok"), seed=1)
    write_task(tmp_path, "caps", 2)
    metric = {"metric": "caps/exact_match", "not_worse_than": 1.0}  # any score passes
    evals = {"task_files": ["caps.yaml"], "device": "cpu"}
    steps: dict[str, Any] = {
        "sft": {"type": "register", "path": "base", "name": "cand", "kind": "model"},
        "eval_base": {"type": "eval", "model": "base", **evals},
        "eval_sft": {"type": "eval", "model": "${steps.sft.output}", **evals},
        "gate": {
            "type": "gate",
            "conditions": [metric],
            "candidates": ["${steps.eval_sft.output}"],
            "baseline": "${steps.eval_base.output}",
        },
    }
    res = run_pipeline(load_pipeline(write_pipeline(tmp_path, steps)), store, progress=False)
    assert res.ok, res.steps["gate"].error
    assert res.steps["gate"].outputs["output"] == "cand:1"
    assert store.assets.resolve("cand@production").ref == "cand:1"
    # a folder's eval as a candidate that is not picked (the same scores: the first wins)
    steps["gate"]["candidates"] = ["${steps.eval_sft.output}", "${steps.eval_base.output}"]
    steps["gate"]["alias"] = "staging"
    res = run_pipeline(load_pipeline(write_pipeline(tmp_path, steps)), store, progress=False)
    assert res.ok, res.steps["gate"].error
    assert res.steps["gate"].outputs["output"] == "cand:1"
    assert res.executed() == ["gate"]  # the folder's eval is cached like any other step
    # ... and as the one it would promote: refused, naming the folder and what to do
    steps["gate"]["candidates"] = ["${steps.eval_base.output}"]
    steps["gate"]["alias"] = "canary"
    res = run_pipeline(load_pipeline(write_pipeline(tmp_path, steps)), store, progress=False)
    error = res.steps["gate"].error or ""
    assert not res.ok and "was made from 'base', not a model asset" in error, error
    assert "the gate cannot promote it" in error
    assert "canary" not in store.assets.resolve("cand:1").aliases
