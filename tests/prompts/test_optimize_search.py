"""The search spends its budget where ranking is possible: a candidate whose advantage
only shows on more than a handful of dev rows still wins, and demo sets hold examples
of every label, bootstrapped ones first."""

from __future__ import annotations

import json
import random
from itertools import pairwise
from pathlib import Path

from lmops.prompts import create, load
from lmops.prompts.lm import ScriptedChat
from lmops.prompts.optimize import OptimizeSettings, OptimizeTask, optimize
from lmops.store import Store
from tests.prompts.test_optimize import rows, shape

TRAIN, DEV, TEST = 40, 40, 80


def split_items(seed: int) -> list[int]:
    """Row indexes in the order the optimiser splits them (a seeded shuffle, train first)."""
    order = list(range(TRAIN + DEV + TEST))
    random.Random(seed).shuffle(order)
    return order


def test_a_candidate_separable_only_on_many_rows_wins(store: Store, tmp_path: Path) -> None:
    data = tmp_path / "sentiment.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(TRAIN + DEV + TEST)))
    task = OptimizeTask(
        dataset=str(data), input_field="text", target_field="label",
        labels=["positive", "negative"], train=TRAIN, dev=DEV, test=TEST, max_tokens=4,
    )  # fmt: skip
    # the first 3 dev rows mislead: the best shape misses them, every other shape gets
    # them right; beyond them the best shape is always right and the others right on 1 in 3
    hard = set(split_items(task.seed)[TRAIN : TRAIN + 3])
    seen_demos: list[list[str]] = []

    def model(messages: list[dict[str, str]]) -> str:
        if messages[-1]["content"].startswith("Write one clear instruction"):
            return "Reply in a friendly tone."
        instructed, demos, n, right = shape(messages)
        wrong = "negative" if right == "positive" else "positive"
        if instructed and demos:
            seen_demos.append(demos)
            return wrong if n in hard else right
        if not (instructed or demos or "friendly" in messages[0]["content"]):
            return "positive"  # the starting prompt: always one label
        return right if n in hard or n % 3 == 0 else wrong

    create(store, "senti", "Text: {{input}}\nSentiment:", message="start")
    settings = OptimizeSettings(budget=150, instructions=2, demo_sets=2, k=4, concurrency=2)
    r = optimize(store, load(store, "senti:1"), task, ScriptedChat(model), settings)
    assert "exactly one of" in r.best.instruction and r.best.demos
    assert r.test_best == 1.0 and r.diff_ci[0] > 0
    assert r.calls_search <= settings.budget
    # every candidate the search kept was ranked on at least 10 dev rows
    assert min(r.dev_counts[k] for k in r.dev_counts if r.dev_counts[k]) >= 10
    # demo sets of a classification task show both labels
    assert seen_demos and all({"positive", "negative"} <= set(d) for d in seen_demos)


def test_the_plan_fits_the_budget_and_gives_each_candidate_enough_rows() -> None:
    from lmops.prompts.optimize import _cost, _plan, _schedule

    s = OptimizeSettings(budget=1, min_rows=10)
    for n_cands in (2, 5, 12, 40):
        for left in range(0, 400, 7):
            n, n0 = _plan(n_cands, left, 40, s)
            rungs = _schedule(n, n0, 40, s.eta) if n0 else []
            assert _cost(rungs) <= left
            if left >= 2 * 10:  # two candidates on min_rows fit: no rung is shorter
                assert 2 <= n <= n_cands and n0 >= 10
            # each rung keeps 1/eta on eta x the rows, and a lone survivor answers nothing
            for (c1, r1), (c2, r2) in pairwise(rungs):
                assert c2 == -(-c1 // 2) > 1 and r2 == min(40, 2 * r1)
