"""lmops eval run --contamination, eval compare, eval leaderboard on tiny real models."""

from __future__ import annotations

import json
from pathlib import Path

from lmops.store import Store
from tests.train.tiny import make_model, make_tokenizer

QUESTIONS = [
    (
        "Which planet is known as the red planet in our solar system today",
        ["Mars", "Venus", "Earth"],
        0,
    ),
    ("What is the boiling point of water at sea level in degrees celsius", ["100", "50", "0"], 0),
    ("哪一座城市是中华人民共和国的首都并且也是政治文化中心", ["北京", "上海", "广州"], 0),
    (
        "Which gas do plants absorb from the air to perform photosynthesis",
        ["carbon dioxide", "oxygen", "helium"],
        0,
    ),
    ("How many days are there in a leap year according to the calendar", ["366", "365", "364"], 0),
    (
        "What is the largest ocean on the planet earth by surface area",
        ["Pacific", "Atlantic", "Indian"],
        0,
    ),
]

TASK = """\
task: facts
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "Question: {{{{q}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
"""


def test_contamination_compare_and_leaderboard(cli, tmp_path: Path, store: Store) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "facts.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"q": q, "choices": c, "label": g}, ensure_ascii=False)
            for q, c, g in QUESTIONS
        ),
        encoding="utf-8",
    )
    task = tmp_path / "facts.yaml"
    task.write_text(TASK.format(data=data), encoding="utf-8")
    # training data that leaks questions 0 and 2 (inside longer text, different case/punctuation)
    leak = tmp_path / "train.jsonl"
    leak.write_text(
        "\n".join(
            json.dumps({"text": t}, ensure_ascii=False)
            for t in [
                "Quiz time! WHICH planet is known as the red planet in our solar system today? Mars, of course.",
                "今天的题目：哪一座城市是中华人民共和国的首都并且也是政治文化中心？答案是北京。",
                "Completely unrelated training text about cooking pasta with tomatoes and basil.",
            ]
        ),
        encoding="utf-8",
    )
    store.assets.register("dataset", "train-text", leak)
    tok = make_tokenizer(tmp_path / "tok")
    store.assets.register(
        "model", "a", make_model(tmp_path / "a", tok, seed=0), inputs=[("train-text", "dataset")]
    )
    store.assets.register("model", "b", make_model(tmp_path / "b", tok, seed=1))

    ra = cli(
        "eval",
        "run",
        "--model",
        "a",
        "--task-file",
        str(task),
        "--contamination",
        "--contamination-n",
        "8",
        "--json",
    )
    assert ra.code == 0, ra.err
    rep_a = json.loads(ra.out)
    res = rep_a["results"]["facts"]
    assert res["contaminated_fraction"] == 2 / 6
    assert "acc_clean" in res and rep_a["config"]["contamination"]["datasets"] == ["train-text:1"]
    items = Store().assets.path(rep_a["report"]) / "items.jsonl"
    flags = [json.loads(line)["contaminated"] for line in items.read_text().strip().split("\n")]
    assert flags == [True, False, True, False, False, False]

    # the human summary says what was checked; a model whose lineage names no data is
    # refused before anything is scored (it would report every item clean)
    shown = cli("eval", "run", "--model", "a", "--task-file", str(task), "--contamination",
                "--contamination-n", "8", "--no-resume")  # fmt: skip
    assert shown.code == 0, shown.err
    said = " ".join(shown.out.split())
    assert "contamination: 2 of 6 items share a 8-gram with train-text:1" in said
    # the table's n of a *_clean metric is the clean items it was scored on
    clean_row = next(line for line in shown.out.splitlines() if "acc_clean" in line)
    assert clean_row.split("│")[-3].strip() == "4", clean_row
    none = cli("eval", "run", "--model", "b", "--task-file", str(task), "--contamination")
    assert none.code == 2 and "lineage of b:1 names no dataset" in none.err
    assert "--contamination-datasets" in none.err

    rb = cli("eval", "run", "--model", "b", "--task-file", str(task), "--json")
    assert rb.code == 0, rb.err
    rep_b = json.loads(rb.out)
    plot = tmp_path / "cmp.png"
    rc = cli("eval", "compare", rep_a["report"], rep_b["report"], "--plot", str(plot), "--json")
    assert rc.code == 0, rc.err
    cmp = json.loads(rc.out)
    acc = next(r for r in cmp["rows"] if r["task"] == "facts" and r["metric"] == "acc")
    assert acc["values"] == [res["acc"], rep_b["results"]["facts"]["acc"]]
    assert acc["deltas"][1] == rep_b["results"]["facts"]["acc"] - res["acc"]
    assert acc["p_values"][1] is not None and 0 <= acc["p_values"][1] <= 1
    assert plot.exists() and plot.stat().st_size > 1000
    human = cli("eval", "compare", rep_a["report"], rep_b["report"])
    assert human.code == 0 and "facts" in human.out

    lb = json.loads(cli("eval", "leaderboard", "--task", "facts", "--metric", "acc", "--json").out)
    assert {r["model"] for r in lb} == {"a:1", "b:1"}
    assert lb[0]["value"] >= lb[1]["value"]
    bad = cli("eval", "compare", rep_a["report"])
    assert bad.code == 2 and "at least two" in bad.err
    # a report of other tasks: refused, not a column of "-" (a bare name is the newest
    # version, which a later run of other tasks took)
    ppl = tmp_path / "ppl.jsonl"
    ppl.write_text('{"text": "some held-out text"}\n')
    rp = cli("eval", "run", "--model", "b", "--tasks", f"perplexity:{ppl}", "--json")
    assert rp.code == 0, rp.err
    assert json.loads(rp.out)["report"] == rep_b["report"].split(":")[0] + ":2"
    name = rep_b["report"].split(":")[0]
    off = cli("eval", "compare", rep_a["report"], name)
    assert off.code == 2 and off.err.count("\n") == 1, off.err
    assert f"{name}:2 shares no task with {rep_a['report']}: it has perplexity:{ppl}" in off.err
    assert f"names its newest version (:2): give the one to compare, e.g. {name}:1" in off.err
