"""``lmops data validate --stage`` (or ``--job``) reads a training file as ``lmops train``
does: the shape each row is read as (counts, and where each run of one shape lies), the
first bad row named by file and line in the very words ``lmops train`` refuses it with,
a job's ``columns`` and ``tags``; without ``--stage`` it checks lmops's own formats, as
before, and says how to read other tools' rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

WEATHER_FN = {"name": "get_weather", "parameters": {"type": "object"}}
CALL = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
SHAREGPT_TOOLS = {
    "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": CALL},
        {"from": "observation", "value": "21 C"},
        {"from": "gpt", "value": "It is 21 C."},
    ],
    "tools": json.dumps([WEATHER_FN]),
}
SHAREGPT = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
ALPACA = {"instruction": "Say hi", "output": "hi"}
TRL = {"prompt": "2+2=", "completion": "4"}
# calls a tool the row does not list
BAD = {
    "conversations": [
        {"from": "human", "value": "Weather?"},
        {"from": "function_call", "value": CALL.replace("get_weather", "get_wether")},
    ],
    "tools": json.dumps([WEATHER_FN]),
}


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def test_each_row_is_read_as_its_shape_and_the_first_bad_row_as_train_says(
    cli: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "sft.jsonl", [SHAREGPT_TOOLS, SHAREGPT, CHAT, ALPACA, TRL, BAD, CHAT])
    r = cli("data", "validate", str(path), "--stage", "sft", "--json")
    assert r.code == 1
    rep = json.loads(r.out)
    assert (rep["stage"], rep["total_rows"], rep["valid_rows"]) == ("sft", 7, 6)
    assert rep["shapes"] == {"sharegpt": 2, "sft_chat": 2, "sft_alpaca": 1, "prompt_completion": 1}
    assert [(x["shape"], x["rows"], x["first"], x["last"]) for x in rep["shape_runs"]] == [
        ("sharegpt", 2, f"{path}:1", f"{path}:2"),
        ("sft_chat", 1, f"{path}:3", f"{path}:3"),
        ("sft_alpaca", 1, f"{path}:4", f"{path}:4"),
        ("prompt_completion", 1, f"{path}:5", f"{path}:5"),
        ("sft_chat", 1, f"{path}:7", f"{path}:7"),
    ]
    (error,) = rep["errors"]
    assert (error["row"], error["field"], error["code"]) == (6, "conversations[1].value", "tool")
    # lmops train refuses the same row in the same words, before any model loads
    job = {"stage": "sft", "model": "no/such/model", "dataset": str(path), "output": "x"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job), "utf-8")
    train = cli("train", "job.yaml")
    assert train.code == 2
    assert train.err.strip() == f"error: {error['message']}; fix the row or set on_error: skip"
    assert error["message"].startswith(
        f"{path}:6: field 'conversations[1].value': calls 'get_wether', which the row's "
        "tools do not list (get_weather)"
    )
    # the text report: counts with the first row of each shape, then the problem
    text = cli("data", "validate", str(path), "--stage", "sft")
    assert text.code == 1
    lines = " ".join(text.out.split())
    assert lines.startswith("7 rows, 6 valid, 1 invalid (stage: sft) read as: sharegpt 2 (first")
    assert "prompt_completion 1 (first" in lines and "calls 'get_wether'" in lines
    good = write(tmp_path / "good.jsonl", [SHAREGPT_TOOLS, CHAT])
    assert cli("data", "validate", str(good), "--stage", "sft").code == 0


def test_a_job_gives_the_stage_the_mapping_and_the_dataset(
    cli: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    rows = [
        {"dialog": [{"speaker": "Q", "text": "Weather?"}, {"speaker": "CALL", "text": CALL},
                    {"speaker": "RESULT", "text": "21 C"}, {"speaker": "A", "text": "21 C."}],
         "functions": json.dumps([WEATHER_FN])},
        {"dialog": [{"speaker": "Q", "text": "Hi"}, {"speaker": "A", "text": "Hello"}]},
    ]  # fmt: skip
    write(tmp_path / "lf.jsonl", rows)
    job = {
        "stage": "sft",
        "model": "m",
        "dataset": "lf.jsonl",
        "output": "x",
        "columns": {"messages": "dialog", "tools": "functions"},
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "Q",
                 "assistant_tag": "A", "function_tag": "CALL", "observation_tag": "RESULT"},
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job), "utf-8")
    r = cli("data", "validate", "--job", "job.yaml", "--json")
    assert r.code == 0, r.out + r.err
    rep = json.loads(r.out)
    assert (rep["stage"], rep["shapes"]) == ("sft", {"sharegpt": 2})
    # the same as flags; without the tags, the messages' keys are unknown
    flags = ["--stage", "sft", "--column", "messages=dialog", "--column", "tools=functions"]
    tags = [f"--tag={k}={v}" for k, v in job["tags"].items()]  # type: ignore[attr-defined]
    assert cli("data", "validate", "lf.jsonl", *flags, *tags).code == 0
    untagged = cli("data", "validate", "lf.jsonl", *flags, "--json")
    assert untagged.code == 1
    assert json.loads(untagged.out)["errors"][0]["message"].endswith(
        "lf.jsonl:1: field 'dialog[0].role': required field is missing (expected sft_chat rows)"
    )
    # a mapped column that no row has is the mapping's mistake, named as train names it
    missing = cli(
        "data", "validate", "lf.jsonl", "--stage", "sft", "--column", "messages=dia", "--json"
    )
    assert missing.code == 1
    (error,) = json.loads(missing.out)["errors"]
    assert error["message"].endswith(
        "lf.jsonl:1: field 'dia' (columns.messages) is in no row (did you mean 'dialog'?); "
        "fix columns in the job"
    )


def test_preference_stages_count_their_shapes(cli: Any, tmp_path: Path) -> None:
    pairs = [
        {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
        {"chosen": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}],
         "rejected": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "5"}]},
        {"conversations": [{"from": "human", "value": "Weather?"}],
         "chosen": {"from": "function_call", "value": CALL},
         "rejected": {"from": "gpt", "value": "No idea."}, "tools": json.dumps([WEATHER_FN])},
        {"prompt": "2+2=", "completion": "4", "label": True},
    ]  # fmt: skip
    path = write(tmp_path / "pairs.jsonl", pairs)
    kto = json.loads(cli("data", "validate", str(path), "--stage", "kto", "--json").out)
    assert kto["shapes"] == {
        "preference": 1,
        "preference_implicit": 1,
        "sharegpt_preference": 1,
        "kto": 1,
    }
    dpo = cli("data", "validate", str(path), "--stage", "dpo", "--json")
    assert dpo.code == 1
    (error,) = json.loads(dpo.out)["errors"]
    assert error["message"] == (
        f"{path}:4: an unpaired row (prompt/completion/label) trains stage kto, not dpo: "
        "dpo needs chosen and rejected answers"
    )


def test_without_a_stage_the_formats_are_checked_as_before_with_a_hint(
    cli: Any, tmp_path: Path
) -> None:
    path = write(tmp_path / "sharegpt.jsonl", [SHAREGPT])
    r = cli("data", "validate", str(path), "--json")
    assert r.code == 1
    rep = json.loads(r.out)
    assert rep["format"] is None and "stage" not in rep
    assert rep["errors"][0]["message"].startswith(f"{path}:1: cannot detect the format")
    assert "add --stage sft" in r.err


def test_what_validate_refuses_to_guess(cli: Any, tmp_path: Path) -> None:
    path = str(write(tmp_path / "rows.jsonl", [CHAT]))
    cases = {
        ("--stage", "pretrain"): "--stage pretrain: validate reads the rows of stages sft, "
        "reward, dpo, kto, orpo (its rows are text: use --format pretrain)",
        ("--stage", "sft", "--format", "sft_chat"): "give --format or --stage, not both",
        ("--column", "messages=dialog"): "columns and tags map a training stage's fields: "
        "give --stage too",
        ("--stage", "sft", "--column", "query=q"): "columns.query: LLaMA-Factory's 'query' is "
        "lmops's 'input': write input: <column>",
        ("--stage", "sft", "--tag", "speaker_tag=x"): "tags.speaker_tag: unknown tag",
        ("--stage", "sft", "--column", "messages"): "--column 'messages': expected NAME=VALUE",
    }
    for args, message in cases.items():
        r = cli("data", "validate", path, *args)
        assert r.code == 2 and r.err.startswith(f"error: {message}"), (args, r.err)


@pytest.mark.parametrize(
    "row",
    [
        # tools as LLaMA-Factory's JSON text of bare functions
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
         "tools": json.dumps([{"name": "get_weather"}])},
        # tools as bare functions
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
         "tools": [{"name": "get_weather"}]},
        # a call written flat
        {"messages": [{"role": "user", "content": "x"},
                      {"role": "assistant", "content": None,
                       "tool_calls": [{"name": "get_weather", "arguments": {}}]},
                      {"role": "tool", "content": "21 C"},
                      {"role": "assistant", "content": "y"}],
         "tools": [{"type": "function", "function": {"name": "get_weather"}}]},
    ],
)  # fmt: skip
def test_tool_rows_training_reads_get_the_stage_hint_without_a_stage(
    cli: Any, tmp_path: Path, row: dict[str, Any]
) -> None:
    path = write(tmp_path / "tools.jsonl", [row])
    r = cli("data", "validate", str(path), "--json")
    assert r.code == 1
    assert "add --stage sft" in r.err
    staged = cli("data", "validate", str(path), "--stage", "sft", "--json")
    assert staged.code == 0, staged.out
