"""Eval output that can be trusted at a glance: a long table says what it leaves out and
how to see it (tasks outside groups always show), compare has the group rows and its plot
draws what the table shows, the leaderboard gives equal scores one rank and flags reports
over different numbers of documents, --limit counts per task as its help says, progress
counts documents and a piped run prints plain lines."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Any

import pytest

from lmops.eval.lm import FakeEvalModel
from lmops.eval.run import TaskResult, evaluate, register_report, report_dict
from lmops.eval.tasks import load_task_file
from tests.train.tiny import make_model, make_tokenizer

MC = """\
task: {name}
{group}dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "Question: {{{{q}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
"""

ROWS = [
    {"q": "Which planet is red", "choices": ["Mars", "Venus", "Earth"], "label": 0},
    {"q": "Water boils at", "choices": ["100 C", "50 C", "0 C"], "label": 0},
    {"q": "首都是", "choices": ["北京", "上海", "广州"], "label": 0},
]


def write_tasks(tmp: Path, n_sub: int = 21) -> list[Path]:
    """``n_sub`` two-document subtasks of group ``grp`` and one three-document task of
    no group (a user's own task): 2 * (n_sub + 1) task rows, more than a screen."""
    data2, data3 = tmp / "two.jsonl", tmp / "three.jsonl"
    data2.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS[:2]), "utf-8")
    data3.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS), "utf-8")
    files = []
    for i in range(n_sub):
        f = tmp / f"grp_{i:02d}.yaml"
        f.write_text(MC.format(name=f"grp_{i:02d}", group="group: grp\n", data=data2), "utf-8")
        files.append(f)
    f = tmp / "my_task.yaml"
    f.write_text(MC.format(name="my_task", group="", data=data3), "utf-8")
    return [*files, f]


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model", make_tokenizer(tmp_path / "tok"), seed=2)


def _args(files: list[Path]) -> list[str]:
    return [a for f in files for a in ("--task-file", str(f))]


def test_long_tables_say_what_they_hide_and_compare_has_group_rows(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, tiny_model: Path
) -> None:
    files = write_tasks(tmp_path)
    r = cli("eval", "run", "--model", str(tiny_model), *_args(files), "--output", "short")
    assert r.code == 0, r.err
    assert "my_task" in r.out  # a task outside any group is never hidden
    assert "[group] grp" in r.out and "grp_05" not in r.out
    hidden = "42 rows of 21 subtasks of grp not shown (their group rows are); --all shows"
    assert hidden in " ".join(r.out.split())
    # stderr is not a terminal here: plain progress lines, counted in documents
    assert "eval: 0/45 docs (0.0%)" in r.err and "eval: 45/45 docs (100.0%)" in r.err

    full = cli("eval", "run", "--model", str(tiny_model), *_args(files), "--all")
    assert full.code == 0, full.err
    assert "grp_05" in full.out and "not shown" not in full.out

    plot = tmp_path / "cmp.png"
    cmp = cli("eval", "compare", "short", f"eval-{tiny_model.name}", "--plot", str(plot))
    assert cmp.code == 0, cmp.err
    assert "[group] grp" in cmp.out and "my_task" in cmp.out and "grp_05" not in cmp.out
    assert "42 rows of 21 subtasks of grp not shown" in " ".join(cmp.out.split())
    # the plot draws the table's rows: acc and acc_norm of my_task and of the group
    assert "(4 rows, as the table)" in " ".join(cmp.out.split())
    assert plot.stat().st_size > 1000
    data = json.loads(cli("eval", "compare", "short", f"eval-{tiny_model.name}", "--json").out)
    group = [row for row in data["rows"] if row["is_group"]]
    assert {row["metric"] for row in group} == {"acc", "acc_norm"}
    assert all(row["task"] == "grp" and row["deltas"][1] == 0.0 for row in group)
    assert all(row["p_values"][1] is not None for row in group)  # the same 42 items, paired
    assert {row["group"] for row in data["rows"] if row["task"] == "grp_05"} == {"grp"}


def test_limit_counts_per_task_as_its_help_says(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, tiny_model: Path
) -> None:
    import typer

    from lmops.cli.eval import app

    run_cmd = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    (limit,) = [p for p in run_cmd.params if p.name == "limit"]
    assert "a group counts per subtask" in limit.help
    files = write_tasks(tmp_path, n_sub=3)
    r = cli("eval", "run", "--model", str(tiny_model), *_args(files), "--limit", "1")
    assert r.code == 0, r.err
    assert "scored 4 of 9 documents: --limit 1 per task, 4 tasks" in " ".join(r.out.split())
    js = cli("eval", "run", "--model", str(tiny_model), *_args(files), "--limit", "1", "--json")
    report = json.loads(js.out)
    assert {t: s["n"] for t, s in report["results"].items()} == {
        "grp_00": 1,
        "grp_01": 1,
        "grp_02": 1,
        "my_task": 1,
    }
    assert report["groups"]["grp"]["n"] == 3


def test_mmlu_redux_limit_and_excluded_rows_are_reported_apart(  # type: ignore[no-untyped-def]
    cli, shared_datasets: Path, tiny_model: Path
) -> None:
    from lmops.eval.builtin import load_builtin

    tasks = load_builtin("mmlu_redux", root=shared_datasets)
    kept, excluded = sum(len(t.eval_docs) for t in tasks), sum(t.excluded for t in tasks)
    r = cli(
        "eval",
        "run",
        "--model",
        str(tiny_model),
        "--tasks",
        "mmlu_redux",
        "--data-dir",
        str(shared_datasets),
        "--limit",
        "1",
    )
    assert r.code == 0, r.err
    out = " ".join(r.out.split())
    assert f"scored 57 of {kept:,} documents: --limit 1 per task, 57 tasks" in out
    assert (
        f"left out {excluded:,} of {kept + excluded:,} rows annotated as wrong (MMLU-Redux; "
        f"--include-errors keeps them); --limit applied to the {kept:,} kept"
    ) in out
    assert "114 rows of 57 subtasks of mmlu_redux not shown" in out
    # beside another benchmark, the line counts MMLU-Redux's rows only (not CMMLU's)
    (one,) = load_builtin("mmlu_redux_abstract_algebra", root=shared_datasets)
    r = cli(
        "eval", "run", "--model", str(tiny_model), "--tasks",
        "mmlu_redux_abstract_algebra,cmmlu_agronomy", "--data-dir", str(shared_datasets),
        "--limit", "1",
    )  # fmt: skip
    assert r.code == 0, r.err
    total = len(one.eval_docs) + one.excluded
    assert f"left out {one.excluded:,} of {total:,} rows annotated" in " ".join(r.out.split())


def _report(store: Any, name: str, model: str, acc: float, n: int) -> None:
    res = [TaskResult("t", n, {"acc": acc, "acc_stderr": 0.01}, "loglikelihood", "h", 0)]
    register_report(store, name, report_dict(model, model, res, {}), res, inputs=[], run_id=None)


def test_leaderboard_ties_share_a_rank_and_different_n_is_flagged(  # type: ignore[no-untyped-def]
    cli, store: Any
) -> None:
    from lmops.eval.compare import leaderboard

    for name, acc, n in (("r1", 0.5, 114), ("r2", 0.7, 114), ("r3", 0.5, 114), ("r4", 0.5, 114)):
        _report(store, name, name.replace("r", "m"), acc, n)
    rows = leaderboard(store, task="t", metric="acc")
    assert [(r["model"], r["rank"]) for r in rows] == [("m2", 1), ("m1", 2), ("m3", 2), ("m4", 2)]
    assert not any(r["n_differs"] for r in rows)
    out = cli("eval", "leaderboard", "--task", "t").out
    assert "!" not in out

    _report(store, "r5", "m5", 0.9, 285)  # the same task over other documents
    rows = leaderboard(store, task="t", metric="acc")
    assert [r["rank"] for r in rows] == [1, 2, 3, 3, 3] and all(r["n_differs"] for r in rows)
    out = " ".join(cli("eval", "leaderboard", "--task", "t").out.split())
    assert "285 !" in out and "114 !" in out
    assert "mix reports over different numbers of documents (114, 285)" in out


def test_progress_moves_per_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Model calls go per chunk of documents, and progress moves with each."""
    import lmops.eval.run as run
    from lmops.core.progress import Progress

    data = tmp_path / "many.jsonl"
    data.write_text("\n".join(json.dumps(ROWS[i % 3], ensure_ascii=False) for i in range(70)))
    task = tmp_path / "many.yaml"
    task.write_text(MC.format(name="many", group="", data=data), "utf-8")
    out = io.StringIO()
    monkeypatch.setattr(run, "Progress", functools.partial(Progress, stream=out, every_s=0))
    calls: list[int] = []

    class Counting(FakeEvalModel):
        def loglikelihood(self, requests: Any) -> list[tuple[float, bool]]:
            calls.append(len(requests))
            return super().loglikelihood(requests)

    evaluate(Counting(), [load_task_file(task)])
    assert calls == [64 * 3, 6 * 3]  # documents per call, three choices each
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == [
        "eval: 0/70 docs",
        "eval: 64/70 docs",
        "eval: 70/70 docs",
    ]
