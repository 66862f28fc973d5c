"""Pipeline runner: validation errors name step and field; steps are cached by config and
input versions; a failed run resumes at the failed step; the gate records its decision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmops.core.errors import UserError
from lmops.pipelines import load_pipeline, plan_pipeline, run_pipeline

DOCS = [
    "The quick brown fox jumps over the lazy dog near the river bank today.",
    "The quick brown fox jumps over the lazy dog near the river bank today.",  # duplicate
    "我们今天在河边看到了一只敏捷的棕色狐狸跳过了懒惰的狗，大家都很开心。",
    "Call me at 13812345678 or mail alice@example.com about the report.",
    "A second English sentence that is long enough to be kept by the filter.",
]

RECIPE = {
    "process": [
        {"op": "clean_whitespace"},
        {"op": "exact_dedup"},
        {"op": "pii_mask"},
    ]
}


def write_pipeline(tmp: Path, steps: dict[str, Any], name: str = "demo") -> Path:
    path = tmp / "pipeline.yaml"
    path.write_text(
        yaml.safe_dump({"name": name, "steps": steps}, sort_keys=False, allow_unicode=True)
    )
    return path


def write_raw(tmp: Path, docs: list[str] = DOCS) -> None:
    raw = tmp / "raw"
    raw.mkdir(exist_ok=True)
    (raw / "part-0.jsonl").write_text(
        "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8"
    )


BASIC = {
    "raw": {"type": "register", "path": "raw", "name": "demo-raw"},
    "clean": {
        "type": "data",
        "recipe": RECIPE,
        "inputs": ["${steps.raw.output}"],
        "output": "demo-clean",
    },
    "tok": {
        "type": "tokenizer",
        "sources": ["${steps.clean.output}"],
        "name": "demo-tok",
        "vocab_size": 300,
        "min_frequency": 1,
    },
    "tag": {"type": "alias", "ref": "${steps.tok.output}", "alias": "stable"},
}


def test_run_caches_every_step_and_tracks_lineage(tmp_path: Path, store: Any) -> None:
    write_raw(tmp_path)
    pipe = load_pipeline(write_pipeline(tmp_path, BASIC))
    assert pipe.order == ["raw", "clean", "tok", "tag"]
    assert pipe.deps["tok"] == ["clean"]

    first = run_pipeline(pipe, store, progress=False)
    assert first.ok, first.failed
    assert first.executed() == ["raw", "clean", "tok", "tag"]
    clean = first.steps["clean"]
    assert clean.outputs["output"] == "demo-clean:1"
    assert clean.result["docs_in"] == 5 and clean.result["docs_out"] == 4
    assert clean.result["pii"]  # the phone and the e-mail were masked
    assert store.assets.resolve("demo-tok@stable").ref == "demo-tok:1"
    # lineage: tokenizer <- clean <- raw
    assert {"demo-clean:1", "demo-raw:1"} <= set(store.assets.lineage("demo-tok:1").nodes)

    second = run_pipeline(load_pipeline(tmp_path / "pipeline.yaml"), store, progress=False)
    assert second.ok
    assert second.executed() == []
    assert [s.status for s in second.steps.values()] == ["cached"] * 4
    assert second.steps["tok"].outputs == first.steps["tok"].outputs
    assert store.assets.resolve("demo-clean").version == 1  # nothing re-registered

    # the pipeline runs are recorded with each step's outcome
    runs = store.runs.list(kind="pipeline")
    assert len(runs) == 2
    assert runs[0].params["steps"]["tok"]["status"] == "cached"


def test_changed_input_reruns_the_step_and_what_follows(tmp_path: Path, store: Any) -> None:
    write_raw(tmp_path)
    path = write_pipeline(tmp_path, BASIC)
    assert run_pipeline(load_pipeline(path), store, progress=False).ok
    write_raw(tmp_path, [*DOCS, "One more English document, long enough to keep around."])
    again = run_pipeline(load_pipeline(path), store, progress=False)
    assert again.executed() == ["raw", "clean", "tok", "tag"]
    assert again.steps["clean"].outputs["output"] == "demo-clean:2"
    # a parameter change re-runs only that step and its dependents
    third = run_pipeline(load_pipeline(path, ["steps.tok.vocab_size=320"]), store, progress=False)
    assert third.executed() == ["tok", "tag"]


def test_a_failed_step_skips_only_what_depends_on_it(tmp_path: Path, store: Any) -> None:
    (tmp_path / "here.txt").write_text("present\n")
    steps = {
        "bad": {"type": "register", "path": "missing.txt", "name": "demo-bad"},
        "after": {"type": "alias", "ref": "${steps.bad.output}", "alias": "stable"},
        "ok": {"type": "register", "path": "here.txt", "name": "demo-ok"},
    }
    res = run_pipeline(load_pipeline(write_pipeline(tmp_path, steps)), store, progress=False)
    status = {n: s.status for n, s in res.steps.items()}
    assert status == {"bad": "failed", "after": "not run", "ok": "done"}
    assert not res.ok and store.assets.resolve("demo-ok").version == 1


def test_failed_step_resumes_there(tmp_path: Path, store: Any, cli: Any) -> None:
    write_raw(tmp_path)
    steps = dict(BASIC)
    steps["extra"] = {"type": "register", "path": "later.txt", "name": "demo-extra"}
    steps["tag"] = {"type": "alias", "ref": "${steps.extra.output}", "alias": "stable"}
    path = write_pipeline(tmp_path, steps)

    r = cli("run", str(path))
    assert r.code != 0
    assert "step 'extra' (register) failed" in r.err and "later.txt" in r.err
    assert "✓" in r.out and "not run" in r.out

    (tmp_path / "later.txt").write_text("now it exists\n")
    r = cli("run", str(path), "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    status = {s["name"]: s["status"] for s in out["steps"]}
    assert status == {
        "raw": "cached",
        "clean": "cached",
        "tok": "cached",
        "extra": "done",
        "tag": "done",
    }
    failed = [x for x in store.runs.list(kind="pipeline") if x.status.value == "FAILED"]
    assert len(failed) == 1 and "extra" in (failed[0].error or "")


def test_dry_run_shows_the_plan(tmp_path: Path, store: Any) -> None:
    write_raw(tmp_path)
    pipe = load_pipeline(write_pipeline(tmp_path, BASIC))
    assert [p["plan"] for p in plan_pipeline(pipe, store)] == ["run"] * 4
    run_pipeline(pipe, store, progress=False)
    plan = plan_pipeline(pipe, store)
    assert [p["plan"] for p in plan] == ["cached"] * 4
    assert plan[1]["outputs"] == {"output": "demo-clean:1"}
    assert [p["plan"] for p in plan_pipeline(pipe, store, force={"clean"})] == [
        "cached",
        "run",
        "run",
        "run",
    ]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            {
                "a": {"type": "alias", "ref": "${steps.b.output}", "alias": "x"},
                "b": {"type": "alias", "ref": "${steps.a.output}", "alias": "x"},
            },
            "steps form a cycle: a -> b -> a",
        ),
        ({"a": {"type": "bake", "x": 1}}, "steps.a.type: unknown step type 'bake'"),
        (
            {"a": {"type": "alias", "ref": "${steps.nope.output}", "alias": "x"}},
            "steps.a.ref: ${steps.nope.output}: unknown step 'nope'",
        ),
        (
            {"a": {"type": "alias", "ref": "m:1", "alias": "x", "needs": ["ghost"]}},
            "steps.a.needs: unknown step 'ghost'",
        ),
        (
            {"a": {"type": "tokenizer", "sources": ["d"], "name": "t", "vocab_size": "big"}},
            "steps.a.vocab_size: Input should be a valid integer",
        ),
        (
            {"a": {"type": "alias", "ref": "m:1", "alias": "x", "colour": "red"}},
            "steps.a.colour: unknown field (check the spelling)",
        ),
        (
            {"a": {"type": "alias", "ref": "${vars.missing}", "alias": "x"}},
            "steps.a.ref: ${vars.missing}: vars.missing is not defined",
        ),
    ],
)
def test_bad_pipelines_name_step_field_and_line(
    tmp_path: Path, steps: dict[str, Any], message: str
) -> None:
    path = write_pipeline(tmp_path, steps)
    with pytest.raises(UserError) as e:
        load_pipeline(path)
    assert message in str(e.value)
    assert str(e.value).startswith(f"{path}:")  # file:line


def test_pipeline_file_errors_read_in_the_files_own_words(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    job = (
        "      stage: sft\n      method: lora\n      model: m\n      dataset: d\n      output: o\n"
    )
    head = "name: p\nsteps:\n  t:\n    type: train\n    spec:\n" + job
    for text, message in [
        # an inline job's error keeps its place in the job, with its own line
        (
            head + "      train:\n        max_step: 3\n",
            "p.yaml:12: steps.t.spec.train.max_step: unknown field (check the spelling)",
        ),
        (
            head + "      lora:\n        targets: q_proj\n",
            "p.yaml:12: steps.t.spec.lora.targets: 'q_proj': give a list of module names, "
            "e.g. [q_proj], or 'all-linear'",
        ),
        (
            head + "      lora:\n        targets: 3\n",
            "p.yaml:12: steps.t.spec.lora.targets: Input should be a valid list or 'all-linear'",
        ),
        (
            "name: p\nsteps:\n  t:\n    type: tokenizer\n    sources: [d]\n    name: t\n"
            "    vocab_sise: 300\n",
            "p.yaml:7: steps.t.vocab_sise: unknown field (did you mean 'vocab_size'?)",
        ),
        (
            "name: p\nsteps:\n  g:\n    type: gate\n    candidates: [r:1]\n",
            "p.yaml:4: steps.g: give conditions: (a list of {metric, rules}) or metric:",
        ),
        (
            "name: p\nstep:\n  a: {type: alias, ref: m:1, alias: x}\n",
            "p.yaml:2: step: unknown field (did you mean 'steps'?)",
        ),
    ]:
        path.write_text(text)
        with pytest.raises(UserError) as e:
            load_pipeline(path)
        assert str(e.value) == f"{tmp_path}/{message}"


def test_missing_output_reference_fails_at_run_time(tmp_path: Path, store: Any) -> None:
    _register_reports(tmp_path, store, base=0.5, cand=0.4)
    steps = {
        "gate": {
            "type": "gate",
            "metric": "task/exact_match",
            "candidates": ["rep-cand:1"],
            "baseline": "rep-base:1",
        },
        "tag": {"type": "alias", "ref": "${steps.gate.output}", "alias": "x"},
    }
    res = run_pipeline(load_pipeline(write_pipeline(tmp_path, steps)), store, progress=False)
    assert res.steps["gate"].status == "done"
    assert res.steps["tag"].status == "failed"
    assert "steps.tag.ref: ${steps.gate.output}: step 'gate' produced no main output" in str(
        res.steps["tag"].error
    )


def _register_reports(tmp: Path, store: Any, *, base: float, cand: float) -> None:
    (tmp / "weights").mkdir(exist_ok=True)
    (tmp / "weights" / "w.bin").write_bytes(b"\0" * 8)
    store.assets.register("model", "m-base", tmp / "weights")
    store.assets.register("model", "m-cand", tmp / "weights")
    store.assets.register("model", "m-other", tmp / "weights")
    for name, model, value in [
        ("rep-base", "m-base:1", base),
        ("rep-cand", "m-cand:1", cand),
        ("rep-other", "m-other:1", cand / 2),
    ]:
        (tmp / name).mkdir(exist_ok=True)
        (tmp / name / "results.json").write_text("{}")
        store.assets.register(
            "eval_report",
            name,
            tmp / name,
            metadata={"model": {"ref": model}, "results": {"task": {"exact_match": value}}},
            inputs=[(model, "model")],
        )


def test_gate_promotes_only_a_winner_and_records_why(tmp_path: Path, store: Any) -> None:
    _register_reports(tmp_path, store, base=0.1, cand=0.6)
    steps = {
        "gate": {
            "type": "gate",
            "metric": "task/exact_match",
            "candidates": ["rep-other:1", "rep-cand:1"],
            "baseline": "rep-base:1",
            "alias": "production",
        }
    }
    res = run_pipeline(load_pipeline(write_pipeline(tmp_path, steps)), store, progress=False)
    gate = res.steps["gate"]
    assert gate.result["decision"] == "promote" and gate.outputs["output"] == "m-cand:1"
    assert store.assets.resolve("m-cand@production").ref == "m-cand:1"
    rec = store.runs.get(gate.run_id)
    assert rec.kind == "gate" and rec.params["decision"] == "promote"
    assert rec.params["baseline_value"] == pytest.approx(0.1)


def test_gate_holds_when_the_candidate_does_not_beat_the_baseline(
    tmp_path: Path, store: Any
) -> None:
    _register_reports(tmp_path, store, base=0.7, cand=0.6)
    steps = {
        "gate": {
            "type": "gate",
            "metric": "task/exact_match",
            "candidates": ["rep-cand:1"],
            "baseline": "rep-base:1",
            "threshold": 0.9,
        }
    }
    path = write_pipeline(tmp_path, steps)
    res = run_pipeline(load_pipeline(path), store, progress=False)
    gate = res.steps["gate"]
    assert res.ok and gate.result["decision"] == "hold"
    # the single-metric form is one condition: beat the baseline and reach the threshold
    assert gate.result["reasons"] == [
        "task/exact_match 0.600 vs baseline 0.700: worse by 0.100, needs any improvement; "
        "min 0.900: FAIL"
    ]
    assert "production" not in store.assets.resolve("m-cand:1").aliases
    assert store.runs.get(gate.run_id).params["decision"] == "hold"
    # on_fail: fail turns a held gate into a failed step (and a non-zero exit)
    res = run_pipeline(load_pipeline(path, ["steps.gate.on_fail=fail"]), store, progress=False)
    assert res.steps["gate"].status == "failed" and "gate held m-cand:1" in str(
        res.steps["gate"].error
    )
    # an unknown metric names what the report has
    res = run_pipeline(load_pipeline(path, ["steps.gate.metric=task/acc"]), store, progress=False)
    assert "metric 'task/acc' is not in rep-cand:1 (it has: task/exact_match)" in str(
        res.steps["gate"].error
    )


def test_references_in_mapping_keys_are_resolved_and_ordered(tmp_path: Path, store: Any) -> None:
    # a mix step names its inputs as the keys of `ratios`
    write_raw(tmp_path)
    steps = {
        "mix": {"type": "mix", "ratios": {"${steps.clean.output}": 1.0}, "total": 2, "output": "m"},
        "raw": BASIC["raw"],
        "clean": BASIC["clean"],
    }
    pipe = load_pipeline(write_pipeline(tmp_path, steps))
    assert pipe.deps["mix"] == ["clean"] and pipe.order.index("clean") < pipe.order.index("mix")
    res = run_pipeline(pipe, store, progress=False)
    assert res.ok, res.failed and res.failed.error
    mixed = store.assets.lineage(res.steps["mix"].outputs["output"], depth=1).upstream
    assert [e.parent for e in mixed] == ["demo-clean:1"]


def test_cache_and_clear_refuse_an_unknown_pipeline_or_step(
    tmp_path: Path, store: Any, cli: Any
) -> None:
    r = cli("pipeline", "cache", "demo")
    assert r.code == 2 and "no pipeline 'demo'; no pipeline has run yet" in r.err
    write_raw(tmp_path)
    steps = {"raw": BASIC["raw"], "tag": {"type": "alias", "ref": "demo-raw:1", "alias": "x"}}
    assert run_pipeline(load_pipeline(write_pipeline(tmp_path, steps)), store, progress=False).ok

    for args, message in [
        (("cache", "dmeo"), "no pipeline 'dmeo'; did you mean 'demo'?"),
        (("cache", "nosuchpipe"), "no pipeline 'nosuchpipe'; known pipelines: demo"),
        (("clear", "dmeo"), "no pipeline 'dmeo'; did you mean 'demo'?"),
        (("clear", "demo", "--step", "rwa"), "pipeline 'demo' has no step 'rwa'; did you mean"),
        (("clear", "demo", "--step", "nosuch"), "has no step 'nosuch'; its steps: raw, tag"),
    ]:
        r = cli("pipeline", *args)
        assert r.code == 2, (args, r.out)
        assert message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert len(store.steps.list("demo")) == 2  # nothing was forgotten
    # --json of a cache with entries (a slotted CachedStep has no __dict__: an internal error)
    r = cli("pipeline", "cache", "demo", "--json")
    assert r.code == 0, r.err
    cached = json.loads(r.out)
    assert sorted(c["step"] for c in cached) == ["raw", "tag"]
    assert {c["pipeline"] for c in cached} == {"demo"} and all(c["created_at"] for c in cached)

    r = cli("pipeline", "clear", "demo", "--step", "raw")
    assert r.code == 0 and "forgot 1" in r.out
    # a known step or pipeline with nothing cached is not an error
    assert cli("pipeline", "clear", "demo", "--step", "raw").code == 0
    assert cli("pipeline", "clear", "demo").code == 0
    r = cli("pipeline", "cache", "demo", "--json")
    assert r.code == 0 and json.loads(r.out) == []


def test_an_override_of_a_step_the_file_lacks_names_it(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, BASIC)
    with pytest.raises(UserError, match=r"override 'steps\.tokk\.vocab_size=3'.* has no step "
                       r"'tokk'; did you mean 'tok'\?"):  # fmt: skip
        load_pipeline(path, ["steps.tokk.vocab_size=3"])


def test_a_dry_run_says_which_step_would_fail_on_a_missing_file(
    tmp_path: Path, store: Any, cli: Any
) -> None:
    (tmp_path / "here.txt").write_text("present\n")
    steps = {
        "ok": {"type": "register", "path": "here.txt", "name": "demo-ok"},
        "bad": {"type": "register", "path": "nope.txt", "name": "demo-bad"},
    }
    path = write_pipeline(tmp_path, steps)
    r = cli("run", str(path), "--dry-run")
    assert r.code == 1, r.err
    said = " ".join(r.out.split())
    assert "would fail: nope.txt: no such file or asset" in said
    plan = {
        p["step"]: p for p in json.loads(cli("run", str(path), "--dry-run", "--json").out)["plan"]
    }
    assert "problem" not in plan["ok"] and plan["bad"]["problem"].startswith("nope.txt")
    assert not store.assets.exists("demo-ok")  # a dry run runs nothing


def test_a_dry_run_checks_a_steps_own_files_when_other_inputs_come_from_upstream(
    tmp_path: Path, store: Any, cli: Any
) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"\0")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "here.yaml").write_text("task: here\n")
    steps = {
        "r": {"type": "register", "path": "m", "name": "mm", "kind": "model"},
        "e": {"type": "eval", "model": "${steps.r.output}", "task_files": ["tasks/nothere.yaml"]},
        "t": {"type": "train", "spec": "jobs/sft.yaml", "overrides": ["model=${steps.r.output}"]},
        "d": {"type": "data", "recipe": "recipes/clean.yaml", "inputs": ["${steps.r.output}"]},
    }
    path = write_pipeline(tmp_path, steps)
    r = cli("run", str(path), "--dry-run", "--json")
    assert r.code == 1, r.err
    plan = {p["step"]: p for p in json.loads(r.out)["plan"]}
    assert [plan[s]["plan"] for s in steps] == ["run"] * 4 and "problem" not in plan["r"]
    assert plan["e"]["problem"] == "tasks/nothere.yaml: no such file"
    assert plan["t"]["problem"] == "jobs/sft.yaml: no such file"
    assert plan["d"]["problem"] == "recipes/clean.yaml: no such file"
    said = " ".join(cli("run", str(path), "--dry-run").out.split())
    assert "would fail: tasks/nothere.yaml: no such file" in said
    # with its files there, and an asset an earlier step may make named by a bare name, the
    # plan is clean: the step reports what is wrong when it runs
    ok = {
        "r": steps["r"],
        "e": {"type": "eval", "model": "${steps.r.output}", "task_files": ["tasks/here.yaml"]},
        "e2": {"type": "eval", "model": "mm", "needs": ["r"], "task_files": ["tasks/here.yaml"]},
    }
    r = cli("run", str(write_pipeline(tmp_path, ok)), "--dry-run", "--json")
    assert r.code == 0, r.out
    assert not any("problem" in p for p in json.loads(r.out)["plan"])
    assert not store.assets.exists("mm")  # a dry run runs nothing
