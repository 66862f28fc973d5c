"""``lmops prompts ...``: the registry commands, scaffolds, few-shot, and run/compare
against the in-package fake OpenAI server through the official client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmops.serve.fake import fake_server


def test_registry_commands(cli: Any, tmp_path: Path) -> None:
    r = cli("prompts", "create", "qa", "Q: {{question}}\nA:", "-m", "first", "-c", "temperature=0")
    assert r.code == 0 and "registered qa:1 (variables: question)" in r.out
    f = tmp_path / "qa.yaml"
    f.write_text('template: "Question: {{question}}\\nAnswer briefly:"\nconfig: {max_tokens: 32}\n')
    assert cli("prompts", "create", "qa", "--file", str(f), "-m", "brief").code == 0
    assert cli("prompts", "label", "qa:1", "production").out.strip() == "qa@production -> qa:1"
    shown = json.loads(cli("prompts", "show", "qa@production", "--json").out)
    assert shown["ref"] == "qa:1" and shown["labels"] == ["production"]
    assert shown["config"] == {"temperature": 0} and shown["message"] == "first"
    listed = json.loads(cli("prompts", "list", "--json").out)
    assert [(a["name"], a["latest"], a["aliases"]) for a in listed] == [
        ("qa", 2, {"production": 1})
    ]
    d = cli("prompts", "diff", "qa:1", "qa:2").out
    assert "-template: 'Q: {{question}}" in d and "+  max_tokens: 32" in d
    assert cli("prompts", "render", "qa", "--var", "question=2+2?").out == (
        "Question: 2+2?\nAnswer briefly:\n"
    )
    # bad input: one line, exit 2, nothing registered
    bad = cli("prompts", "render", "qa", "--var", "q=1")
    assert bad.code == 2 and bad.err.count("\n") == 1
    assert "missing variable(s) question; unknown variable(s) q" in bad.err
    f.write_text("template: |\n  line\n  say {{ name\n")
    bad = cli("prompts", "create", "qa", "--file", str(f))
    assert bad.code == 2 and "template:2:5: '{{' is never closed" in bad.err
    bad = cli("prompts", "label", "qa:9", "staging")
    assert bad.code == 2 and "qa:9: no such prompt version; nothing was labelled" in bad.err
    assert json.loads(cli("prompts", "show", "qa", "--json").out)["ref"] == "qa:2"


def test_new_scaffold_then_create(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "s.yaml"
    r = cli("prompts", "new", "support", "--framework", "crispe", "--out", str(out))
    assert r.code == 0 and out.exists()
    assert cli("prompts", "create", "support", "--file", str(out)).code == 0
    shown = json.loads(cli("prompts", "show", "support", "--json").out)
    assert shown["variables"] == [
        "role",
        "background",
        "instruction",
        "style",
        "experiment",
        "input",
    ]
    again = cli("prompts", "new", "support", "--framework", "crispe", "--out", str(out))
    assert again.code == 2 and "exists" in again.err


def test_fewshot_command(cli: Any, tmp_path: Path) -> None:
    f = tmp_path / "ex.jsonl"
    f.write_text(
        '{"input": "reset password", "output": "link"}\n{"input": "refund", "output": "no"}\n'
    )
    r = cli("prompts", "fewshot", str(f), "--query", "refund please", "-k", "1", "--json")
    assert json.loads(r.out) == [{"index": 1, "input": "refund", "output": "no"}]


def test_run_streams_and_compare_scores_side_by_side(cli: Any, tmp_path: Path) -> None:
    cli("prompts", "create", "echo", "Say {{input}}", "-c", "max_tokens=4")
    cli("prompts", "create", "echo", "Please say {{input}}")
    rows = tmp_path / "set.jsonl"
    rows.write_text('{"text": "a", "gold": "yes"}\n{"text": "b", "gold": "no"}\n')
    sent: list[dict[str, Any]] = []
    with fake_server(requests=sent, reply="yes", model="m") as up:
        r = cli(
            "prompts",
            "run",
            "echo:1",
            "--deployment",
            "m",
            "--endpoint",
            up + "/v1",
            "--input",
            "hi",
        )
        assert r.code == 0 and r.out == "yes\n"
        assert sent[-1]["messages"] == [{"role": "user", "content": "Say hi"}]
        assert sent[-1]["stream"] is True and sent[-1]["max_tokens"] == 4
        r = cli(
            "prompts",
            "compare",
            "echo:1",
            "echo:2",
            "--deployment",
            "m",
            "--endpoint",
            up + "/v1",
            "--set",
            str(rows),
            "--input-field",
            "text",
            "--target-field",
            "gold",
            "--json",
        )
    report = json.loads(r.out)
    assert report["a_accuracy"] == report["b_accuracy"] == 0.5
    assert [row["a"] for row in report["rows"]] == ["yes", "yes"]
    assert {m["messages"][0]["content"] for m in sent[-4:]} == {
        "Say a",
        "Please say a",
        "Say b",
        "Please say b",
    }


def test_compare_fills_input_from_the_field_named(cli: Any, tmp_path: Path) -> None:
    """``--input-field`` says which field is the input, also in rows that have a column
    called ``input`` besides (it read that column instead)."""
    cli("prompts", "create", "echo", "Say {{input}}")
    rows = tmp_path / "set.jsonl"
    rows.write_text('{"input": "raw html", "text": "a"}\n')
    sent: list[dict[str, Any]] = []
    with fake_server(requests=sent, reply="yes", model="m") as up:
        r = cli(
            "prompts", "compare", "echo:1", "echo:1", "--deployment", "m",
            "--endpoint", up + "/v1", "--set", str(rows), "--input-field", "text", "--json",
        )  # fmt: skip
    assert r.code == 0, r.err
    assert [m["messages"] for m in sent] == [[{"role": "user", "content": "Say a"}]] * 2
    assert json.loads(r.out)["rows"][0]["variables"] == {"input": "a"}


def test_compare_and_optimize_score_an_answer_alike() -> None:
    """Exact match ignores case, punctuation and surrounding space in both (compare counted
    "Positive." wrong against "positive", which the optimiser counted right)."""
    from lmops.prompts.optimize import score
    from lmops.prompts.playground import _matches

    for reply, target, same in [
        ("Positive.", "positive", True),
        ("  NEGATIVE!\n", "negative", True),
        ("positive", "negative", False),
    ]:
        assert _matches(reply, target) is same
        assert score(reply, target, None) is same
