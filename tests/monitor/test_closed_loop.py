"""The closed loop with a tiny model: planted drift -> flow-back -> the user's retraining
pipeline -> challenger vs champion -> promotion by moving the alias; the refusals (margin not
met, a failing pipeline, an empty window) are recorded with their reasons and promote nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmops.pipelines.retrain import WatchSpec, watch_once
from tests.monitor.traffic import cooking, log_chat, maths_zh
from tests.train.tiny import make_model, make_tokenizer


def _answer(i: int) -> str:
    return f"一共有{(i % 17 + 3) + (i % 13 + 2)}个苹果。"


@pytest.fixture
def served(store: Any, tmp_path: Path) -> Any:
    """``chat:1`` (a tiny random model) is ``chat@production``; two hours ago it got cooking
    questions, in the last half hour Chinese arithmetic (the planted drift)."""
    tok = make_tokenizer(tmp_path / "tok")
    v = store.assets.register("model", "chat", make_model(tmp_path / "base", tok))
    store.assets.alias(v.ref, "production")
    old = datetime.now(UTC) - timedelta(hours=2)
    new = datetime.now(UTC) - timedelta(minutes=30)
    for i in range(40):
        log_chat(
            store,
            "chat",
            cooking(i),
            "Use garlic.",
            at=old + timedelta(seconds=i),
            model_ref=v.ref,
            i=i,
        )
    for i in range(60):
        log_chat(
            store,
            "chat",
            maths_zh(i),
            _answer(i),
            at=new + timedelta(seconds=i),
            model_ref=v.ref,
            i=100 + i,
        )
    evals = tmp_path / "eval.jsonl"
    evals.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": maths_zh(i)},
                        {"role": "assistant", "content": _answer(i)},
                    ]
                },
                ensure_ascii=False,
            )
            + "\n"
            for i in range(200, 220)
        ),
        encoding="utf-8",
    )
    store.assets.register("dataset", "eval-chats", evals)
    return store


def _pipeline(tmp_path: Path, model: str = "${vars.champion}") -> str:
    spec = {
        "stage": "sft",
        "method": "full",
        "model": model,
        "dataset": "${vars.flowback}",
        "output": "chat",
        "device": "cpu",
        "train": {
            "max_steps": 25,
            "batch_size": 8,
            "max_seq_len": 192,
            "lr": 3e-3,
            "warmup_steps": 0,
            "save_steps": 1000,
        },
    }
    path = tmp_path / "retrain.yaml"
    path.write_text(
        yaml.safe_dump({"name": "retrain", "steps": {"sft": {"type": "train", "spec": spec}}})
    )
    return path.name


def _watch(tmp_path: Path, margin: float, deployment: str = "chat", **retrain: Any) -> WatchSpec:
    return WatchSpec.model_validate(
        {
            "check": {
                "deployment": deployment,
                "since": "1h",
                "reference_since": "3h",
                "monitor": {"embedder": "hashed", "plots": False, "permutations": 100},
            },
            "retrain": {
                "pipeline": _pipeline(tmp_path),
                "champion": "chat@production",
                "challenger_step": "sft",
                "eval_set": "eval-chats",
                "holdout": 10,
                "margin": margin,
                **retrain,
            },
        }
    )


def _parents(store: Any, ref: str) -> set[tuple[str, str]]:
    return {(e.parent, e.role) for e in store.assets.lineage(ref, 1).upstream}


def test_drift_retrains_and_promotes_only_a_clear_winner(served: Any, tmp_path: Path) -> None:
    store = served
    # a margin nobody can meet: retrained, evaluated, recorded, not promoted
    d = watch_once(store, _watch(tmp_path, margin=0.99), tmp_path)
    assert d.triggered and "language" in d.triggers[0] and not d.promoted
    assert d.challenger == "chat:2", d.reasons
    assert "below the margin 99.0%" in d.reasons[0]
    assert store.assets.resolve("chat@production").ref == "chat:1"
    assert d.decision is not None
    rec = store.assets.resolve(d.decision)
    assert rec.metadata["promoted"] is False and rec.metadata["reasons"] == d.reasons
    parents = _parents(store, d.decision)
    assert {
        (d.report, "trigger"),
        ("chat:1", "champion"),
        ("chat:2", "challenger"),
        ("eval-chats:1", "eval_set"),
    } <= parents
    assert (d.flowback, "flowback") in parents and (d.holdout, "holdout") in parents
    assert store.assets.resolve(d.flowback or "").metadata["rows"] == 50
    # the challenger really learned the new traffic: lower NLL on held-out logs and eval set
    champ, chall = d.scores["champion"], d.scores["challenger"]
    assert chall["holdout"] < champ["holdout"] and chall["eval_set"] < champ["eval_set"]

    # a reachable margin: promoted, the alias moves, and a running gateway deployment of
    # chat@production re-resolves it (serve checks every 5 s; the test skips the wait)
    from lmops.serve.deployments import Deployment, DeploymentSpec

    gateway = Deployment(DeploymentSpec(name="chat", model="chat@production"), store)
    assert gateway.pick().version == "chat:1"
    d2 = watch_once(store, _watch(tmp_path, margin=0.05, cooldown_s=0), tmp_path)
    assert d2.promoted, d2.reasons
    assert store.assets.resolve("chat@production").ref == d2.challenger == "chat:3"
    gateway._checked = float("-inf")
    assert gateway.pick().version == "chat:3"
    gateway.close()
    assert store.assets.resolve(d2.decision or "").metadata["promoted"] is True

    # the traffic stays moved: the next round drifts again but does not retrain at once
    d3 = watch_once(store, _watch(tmp_path, margin=0.05), tmp_path)
    assert d3.triggered and not d3.promoted and d3.decision is None
    assert d3.reasons[0].startswith("cooling down") and store.assets.resolve("chat").ref == "chat:3"


def test_failing_pipeline_and_empty_window_promote_nothing(
    served: Any, tmp_path: Path, cli: Any
) -> None:
    store = served
    spec = _watch(tmp_path, margin=0.0)
    (tmp_path / spec.retrain.pipeline).write_text(  # type: ignore[union-attr]
        (tmp_path / _pipeline(tmp_path, model="no-such-model")).read_text()
    )
    watch_file = tmp_path / "watch.yaml"
    watch_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    r = cli("monitor", "watch", str(watch_file), "--once", "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert d["triggered"] and not d["promoted"]
    assert "failed at step sft" in d["reasons"][0] and "no-such-model" in d["reasons"][0]
    assert store.assets.resolve(d["decision"]).metadata["promoted"] is False
    assert store.assets.resolve("chat@production").ref == "chat:1"

    # a window without requests (the last 10 minutes) is recorded as empty, never retrains
    quiet = _watch(tmp_path, margin=0.0)
    quiet.check.since = "10m"
    idle = watch_once(store, quiet, tmp_path)
    assert idle.status == "empty" and not idle.triggered and idle.decision is None
    assert "no rows" in idle.reasons[0]
    assert store.assets.resolve(idle.report).metadata["status"] == "empty"


def test_a_template_that_cannot_render_the_tool_chats_fails_the_evaluation(
    served: Any, tmp_path: Path
) -> None:
    """A champion whose template refuses the system role (Gemma's, old Mistral's) cannot
    render a tool chat, whose tools go to a system message: the round records "evaluation
    failed" with how many chats were left out and why, after the pipeline ran, instead of
    raising the template's error out of the loop."""
    import shutil

    from transformers import AutoTokenizer

    from lmops.models.loading import CHATML

    store = served
    folder = tmp_path / "refusing"
    shutil.copytree(store.assets.path("chat:1"), folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
        "supported') }}{% endif %}" + CHATML
    )
    tok.save_pretrained(str(folder))
    store.assets.alias(store.assets.register("model", "chat", folder).ref, "production")
    city = {"type": "object", "properties": {"city": {"type": "string"}}}
    call = {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": city}}],
    }
    (tmp_path / "tools.jsonl").write_text(json.dumps(row) + "\n")
    store.assets.register("dataset", "eval-tools", tmp_path / "tools.jsonl")
    d = watch_once(store, _watch(tmp_path, margin=0.0, eval_set="eval-tools"), tmp_path)
    assert d.triggered and d.challenger == "chat:3" and not d.promoted
    assert d.reasons[0].startswith(
        "evaluation failed: eval_set: none of its 1 chat can be scored by both models"
    ), d.reasons
    ((why, n),) = d.skipped["eval_set"].items()
    assert n == 1 and why.startswith("champion chat:2: its chat template cannot render it")
    assert "System role not supported" in why and "holdout" not in d.skipped
    assert d.decision is not None and store.assets.resolve("chat@production").ref == "chat:2"


def test_the_watcher_outlives_a_failing_round(store: Any, tmp_path: Path) -> None:
    from lmops.pipelines.retrain import watch

    log_chat(store, "chat", cooking(0), "Use garlic.", at=datetime.now(UTC))
    spec = WatchSpec.model_validate(
        {"check": {"deployment": "chat", "reference": "no-such-data"}, "interval_s": 0.01}
    )
    seen: list[tuple[Any, str | None]] = []
    watch(store, spec, tmp_path, rounds=2, on_round=lambda d, err: seen.append((d, err)))
    assert len(seen) == 2 and all(d is None and "no-such-data" in (err or "") for d, err in seen)


def test_the_documented_watch_and_canary_files_load(tmp_path: Path) -> None:
    """docs/MONITOR.md's YAML examples are what the code reads."""
    import re

    from lmops.monitor.canary import load_canaries
    from lmops.pipelines.retrain import load_watch

    doc = (Path(__file__).resolve().parents[2] / "docs" / "MONITOR.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    canaries, watch_yaml = tmp_path / "canaries.yaml", tmp_path / "watch.yaml"
    canaries.write_text(blocks[0])
    watch_yaml.write_text(blocks[1])
    (tmp_path / "retrain.yaml").write_text("name: retrain\nsteps: {}\n")
    assert [c.id for c in load_canaries(canaries).prompts] == ["capital", "bomb", "json"]
    spec, _ = load_watch(watch_yaml)
    assert spec.retrain is not None and spec.retrain.champion == "chat@production"
    assert spec.check.alerts.fire_after == 2
    # the example shows what a user tunes: triggers, max_eval and the monitor thresholds
    assert {"triggers", "max_eval", "holdout", "margin"} <= spec.retrain.model_fields_set
    assert {"alpha", "psi_threshold", "timing_min_change"} <= spec.check.monitor.model_fields_set
    # every monitor a watch may name is listed, and only those
    from lmops.monitor.drift import MONITORS

    listed = re.search(r"The monitors are (.*?)\.", doc, re.S)
    assert listed is not None
    assert re.findall(r"`(\w+)`", listed.group(1)) == list(MONITORS)
