"""`lmops quickstart --tiny` end to end: every asset it reports exists, the served model's
lineage reaches the raw corpus, the gate's decision is recorded, a second run runs nothing."""

from __future__ import annotations

import json
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED


def _upstream(store: Any, ref: str) -> set[str]:
    return set(store.assets.lineage(ref).nodes)


@pytest.mark.timeout(240)
def test_quickstart_tiny_end_to_end_then_fully_cached(tmp_path: Path, store: Any, cli: Any) -> None:
    args = ["quickstart", "--tiny", "--workdir", str(tmp_path / "qs"), "--json"]
    if Path(SHARED).is_dir():
        args += ["--shared", str(SHARED)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)
        r = cli(*args)
    assert r.code == 0, r.err
    # no library announces its deprecations in the quickstart's output
    future = [
        f"{w.filename}:{w.lineno}: {w.message}" for w in caught if w.category is FutureWarning
    ]
    assert not future, future
    out = json.loads(r.out)
    assert out["ok"]
    steps = {s["name"]: s for s in out["steps"]}
    assert all(s["status"] == "done" for s in steps.values())

    # every asset a step reports exists and is READY
    reported = {ref for s in steps.values() for ref in s["outputs"].values()}
    for ref in reported:
        assert store.assets.resolve(ref).ref == ref

    # the served model traces back to the raw corpus, through cleaning and the tokenizer
    served = out["serve"]["model"]
    assert steps["serve"]["outputs"]["output"] == served
    up = _upstream(store, served)
    for step in ("corpus", "clean", "tokenizer", "pretrain"):
        assert steps[step]["outputs"]["output"] in up, step
    assert out["serve"]["answer"] is not None and out["serve"]["key_prefix"].startswith("lmk-")
    # the serving key is not left active forever: it expires a day after it was made
    key = next(k for k in store.keys.list() if k.name == out["serve"]["key"])
    assert key.expires_at is not None and key.created_at is not None
    assert key.expires_at - key.created_at == pytest.approx(
        timedelta(hours=24), abs=timedelta(minutes=1)
    )
    assert out["serve"]["key_expires_at"] == key.expires_at.isoformat()

    # the data step cleaned what was planted: duplicates dropped and PII masked
    clean = steps["clean"]["result"]
    assert clean["docs_out"] < clean["docs_in"]
    assert any("duplicate" in reason for reason in clean["dropped"])
    assert clean["pii"]

    # base vs SFT vs DPO: one row each, with the task score, perplexity and safety
    rows = {row["model"]: row for row in out["eval"]}
    assert set(rows) == {"base", "sft", "dpo"}
    for row in rows.values():
        assert 0.0 <= row["exact_match"] <= 1.0
        assert row["word_perplexity"] > 1.0
        assert 0.0 <= row["safe_response_rate"] <= 1.0

    # the gate weighs the skill against held-out perplexity and records both, whichever
    # way it went; SFT trained on replayed pretraining text as well as on the skill
    gate = out["gate"]
    assert gate["decision"] in ("promote", "hold")
    assert [c["metric"] for c in gate["conditions"]] == [
        "quickstart_addition/exact_match",
        f"perplexity:{steps['heldout']['outputs']['output']}/word_perplexity",
    ]
    assert gate["decision"] == ("promote" if gate["passed"] else "hold")
    rec = store.runs.get(steps["gate"]["run_id"])
    assert rec.kind == "gate" and rec.params["decision"] == gate["decision"]
    assert rec.params["conditions"] == gate["conditions"]
    assert steps["replay"]["outputs"]["output"] in _upstream(
        store, steps["sft"]["outputs"]["output"]
    )
    if gate["decision"] == "promote":
        assert served == gate["model"]
        assert "production" in store.assets.resolve(served).aliases
    else:
        assert served == steps["pretrain"]["outputs"]["output"]  # the baseline stays

    # the pipeline file it wrote is an ordinary pipeline: `lmops run` finds it all cached
    again = cli("run", str(tmp_path / "qs" / "quickstart.yaml"), "--json")
    assert again.code == 0, again.err
    assert all(s["status"] == "cached" for s in json.loads(again.out)["steps"])
    # and so does the quickstart itself, re-preparing identical files
    third = cli(*args)
    assert third.code == 0, third.err
    assert [s["status"] for s in json.loads(third.out)["steps"]] == ["cached"] * len(steps)
