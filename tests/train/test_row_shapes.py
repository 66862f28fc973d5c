"""Rows written for other tools (ShareGPT, TRL, LLaMA-Factory, OpenAI) train as the lmops row
they stand for: the same token ids and the same labels (loss on the answers only), the
same rendered pairs; ``columns``/``tags`` map other names; a row in no shape, a bad mapping
and a bad row are one-line errors naming the file, the line and the row's own field."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmops.core.errors import UserError
from lmops.models.loading import load_tokenizer
from lmops.store import Store
from lmops.train.data import IGNORE, build_sft_examples, load_training_rows
from tests.train.tiny import make_model, make_tokenizer

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_tokenizer(make_tokenizer(tmp_path_factory.mktemp("tok")))


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def sft(tok: Any, path: Path, rows: list[Any], **mapping: Any) -> list[tuple[list[int], ...]]:
    """(input ids, labels) of each example SFT builds from ``rows``."""
    loaded = load_training_rows([write(path, rows)], "sft", **mapping)
    examples, _ = build_sft_examples(loaded.rows, tok, 256)
    return [(e.input_ids, e.labels) for e in examples]


def learned(tok: Any, example: tuple[list[int], ...]) -> str:
    ids, labels = example
    return tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "You add numbers."}

# (foreign row, the lmops row it stands for, columns/tags, what is learned)
SFT_CASES = {
    "sharegpt": (
        {
            "conversations": [
                {"from": "human", "value": "12+34="},
                {"from": "gpt", "value": "46"},
                {"from": "human", "value": "and 1+1?"},
                {"from": "gpt", "value": "2"},
            ],
            "system": "You add numbers.",
        },
        {"messages": [SYSTEM, user("12+34="), bot("46"), user("and 1+1?"), bot("2")]},
        {},
        "46<|im_end|>2<|im_end|>",
    ),
    "sharegpt_system_turn": (
        {
            "conversations": [
                {"from": "system", "value": "You add numbers."},
                {"from": "human", "value": "12+34="},
                {"from": "gpt", "value": "46"},
            ]
        },
        {"messages": [SYSTEM, user("12+34="), bot("46")]},
        {},
        "46<|im_end|>",
    ),
    "trl_prompt_completion": (
        {"prompt": "12+34=", "completion": "46"},
        {"instruction": "12+34=", "output": "46"},
        {},
        "46<|im_end|>",
    ),
    # TRL trains the completion only: the prompt's own assistant turn is context
    "trl_conversational": (
        {
            "prompt": [SYSTEM, user("1+1="), bot("2"), user("12+34=")],
            "completion": [bot("46")],
        },
        {"messages": [SYSTEM, user("1+1="), {**bot("2"), "weight": 0}, user("12+34="), bot("46")]},
        {},
        "46<|im_end|>",
    ),
    # the bilingual Alpaca set's English side
    "columns": (
        {
            "instruction": "三原色是什么？",
            "input": "不要解释",
            "output": "红色、蓝色和黄色。",
            "en_instruction": "What are the three primary colors?",
            "en_input": "No explanation",
            "en_output": "Red, blue and yellow.",
        },
        {
            "instruction": "What are the three primary colors?",
            "input": "No explanation",
            "output": "Red, blue and yellow.",
        },
        {"columns": {"instruction": "en_instruction", "input": "en_input", "output": "en_output"}},
        "Red, blue and yellow.<|im_end|>",
    ),
    "tags": (
        {"dialog": [{"speaker": "Q", "text": "12+34="}, {"speaker": "A", "text": "46"}]},
        {"messages": [user("12+34="), bot("46")]},
        {
            "columns": {"messages": "dialog"},
            "tags": {
                "role_tag": "speaker",
                "content_tag": "text",
                "user_tag": "Q",
                "assistant_tag": "A",
            },
        },
        "46<|im_end|>",
    ),
}


@pytest.mark.parametrize("case", list(SFT_CASES))
def test_each_sft_shape_trains_as_the_lmops_row_it_stands_for(
    tok: Any, tmp_path: Path, case: str
) -> None:
    foreign, native, mapping, answer = SFT_CASES[case]
    got = sft(tok, tmp_path / "foreign.jsonl", [foreign], **mapping)
    want = sft(tok, tmp_path / "native.jsonl", [native])
    assert got == want
    assert learned(tok, got[0]) == answer  # loss on the answers only


def test_an_openai_weight_of_0_leaves_that_turn_out_of_the_loss(tok: Any, tmp_path: Path) -> None:
    turns = [user("1+1="), bot("2"), user("12+34="), bot("46")]
    weighted = [user("1+1="), {**bot("2"), "weight": 0}, user("12+34="), {**bot("46"), "weight": 1}]
    (plain,) = sft(tok, tmp_path / "plain.jsonl", [{"messages": turns}])
    (got,) = sft(tok, tmp_path / "weighted.jsonl", [{"messages": weighted}])
    assert got[0] == plain[0]  # the same tokens
    assert learned(tok, plain) == "2<|im_end|>46<|im_end|>"
    assert learned(tok, got) == "46<|im_end|>"
    bad = [user("1+1="), {**bot("2"), "weight": 0.5}]
    with pytest.raises(
        UserError, match=r"w\.jsonl:1: field 'messages\[1\]\.weight': expected 0 or 1"
    ):
        load_training_rows([write(tmp_path / "w.jsonl", [{"messages": bad}])], "sft")


def pairs(tok: Any, path: Path, rows: list[Any], stage: str = "dpo", **mapping: Any) -> list[Any]:
    from lmops.train import preference

    loaded = load_training_rows([write(path, rows)], stage, **mapping)
    render = preference.render_rows if stage == "kto" else preference.render_pairs
    return render([r for _w, _n, r in loaded.rows], tok, 256)


PAIR_CASES = {
    "trl_implicit_prompt": (
        {
            "chosen": [user("Tell me about the sun."), bot("warm and good")],
            "rejected": [user("Tell me about the sun."), bot("warm and bad")],
        },
        {"prompt": "Tell me about the sun.", "chosen": "warm and good", "rejected": "warm and bad"},
        {},
    ),
    "trl_implicit_multi_turn": (
        {
            "chosen": [SYSTEM, user("1+1="), bot("2"), user("2+2="), bot("4")],
            "rejected": [SYSTEM, user("1+1="), bot("2"), user("2+2="), bot("5")],
        },
        {"prompt": [SYSTEM, user("1+1="), bot("2"), user("2+2=")], "chosen": "4", "rejected": "5"},
        {},
    ),
    "llama_factory_sharegpt": (
        {
            "conversations": [{"from": "human", "value": "2+2="}],
            "chosen": {"from": "gpt", "value": "4"},
            "rejected": {"from": "gpt", "value": "5"},
            "system": "You add numbers.",
        },
        {"prompt": [SYSTEM, user("2+2=")], "chosen": "4", "rejected": "5"},
        {},
    ),
    "llama_factory_alpaca": (
        {"instruction": "Add.", "input": "2+2", "chosen": "4", "rejected": "5"},
        {"prompt": "Add.\n\n2+2", "chosen": "4", "rejected": "5"},
        {},
    ),
    "columns": (
        {"question": "2+2=", "good": "4", "bad": "5"},
        {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
        {"columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}},
    ),
}


@pytest.mark.parametrize("case", list(PAIR_CASES))
def test_each_preference_shape_renders_the_pair_it_stands_for(
    tok: Any, tmp_path: Path, case: str
) -> None:
    foreign, native, mapping = PAIR_CASES[case]
    got = pairs(tok, tmp_path / "foreign.jsonl", [foreign], **mapping)
    want = pairs(tok, tmp_path / "native.jsonl", [native])
    assert got == want
    assert got[0].chosen != got[0].rejected and got[0].prompt.endswith("assistant\n")


def test_kto_reads_unpaired_rows_as_the_halves_of_a_pair(tok: Any, tmp_path: Path) -> None:
    from lmops.train.preference import Completion

    unpaired = [
        {"prompt": "2+2=", "completion": "4", "label": True},  # TRL
        {"messages": [user("2+2="), bot("5")], "label": False},  # LLaMA-Factory
    ]
    (pair,) = pairs(
        tok, tmp_path / "pair.jsonl", [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}]
    )
    assert pairs(tok, tmp_path / "kto.jsonl", unpaired, "kto") == [
        Completion(pair.prompt, pair.chosen, True),
        Completion(pair.prompt, pair.rejected, False),
    ]
    # a pair stage cannot train on them; KTO labels are booleans
    with pytest.raises(UserError, match=r"kto\.jsonl:1: an unpaired row .* trains stage kto"):
        load_training_rows([tmp_path / "kto.jsonl"], "dpo")
    write(tmp_path / "label.jsonl", [{"prompt": "2+2=", "completion": "4", "label": "yes"}])
    with pytest.raises(UserError, match=r"label\.jsonl:1: field 'label': expected true or false"):
        load_training_rows([tmp_path / "label.jsonl"], "kto")


def test_kto_trains_on_unpaired_rows(tiny_model_dir: Path, tmp_path: Path) -> None:
    from lmops.train.models import load_base
    from lmops.train.preference import train_kto
    from tests.train.conftest import make_spec, sentiment_pairs
    from tests.train.test_preference import FAST, MemoryTracker

    rows = []
    for p in sentiment_pairs(8):
        rows.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True})
        rows.append({"prompt": p["prompt"], "completion": p["rejected"], "label": False})
    loaded_rows = load_training_rows([write(tmp_path / "kto.jsonl", rows)], "kto")
    spec = make_spec(tiny_model_dir, "kto", "lora", train={**FAST, "max_steps": 2})
    tracker = MemoryTracker(tmp_path)
    train_kto(spec, load_base(spec, None), [r for _w, _n, r in loaded_rows.rows], tracker)
    assert len(tracker.history["loss"]) == 2 and "kl" in tracker.history


# -- errors ------------------------------------------------------------------------------------
def test_a_row_in_no_shape_names_its_keys_the_shapes_and_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path / "en.jsonl", [{"en_instruction": "2+2=", "en_output": "4", "id": 7}])
    with pytest.raises(UserError) as e:
        load_training_rows([path], "sft")
    msg = str(e.value)
    assert msg.startswith(
        f"{path}:1: not a row stage sft reads: it has ['en_instruction', 'en_output', 'id']"
    )
    assert "alpaca (instruction, output), chat (messages), ShareGPT (conversations)" in msg
    assert "did you mean columns: {instruction: en_instruction, output: en_output}?" in msg
    assert "\n" not in msg
    path = write(tmp_path / "qa.jsonl", [{"prompt": "2+2=", "answer": "4"}])
    with pytest.raises(
        UserError,
        match=r"qa\.jsonl:1: not a row stage dpo reads: it has \['answer', 'prompt'\]; expected prompt/chosen/rejected",
    ):
        load_training_rows([path], "dpo")
    path = write(tmp_path / "pref.jsonl", [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}])
    with pytest.raises(UserError, match=r"pref\.jsonl:1: a preference row .* not sft"):
        load_training_rows([path], "sft")


def test_problems_are_named_in_the_rows_own_fields(tmp_path: Path) -> None:
    GOOD = {"sft": {"text": "x"}, "dpo": {"prompt": "p", "chosen": "a", "rejected": "b"}}

    def error(row: dict[str, Any], stage: str = "sft", **mapping: Any) -> str:
        with pytest.raises(UserError) as e:
            load_training_rows(
                [write(tmp_path / "rows.jsonl", [GOOD[stage], row])], stage, **mapping
            )
        return str(e.value)

    turns = [{"from": "human", "value": "hi"}, {"from": "human", "value": "hi again"}]
    assert error({"conversations": turns}) == (
        f"{tmp_path / 'rows.jsonl'}:2: field 'conversations[1].from': expected 'gpt' after "
        "'human', got 'human' (expected sharegpt rows); fix the row or set on_error: skip"
    )
    tool = [{"from": "human", "value": "weather?"}, {"from": "function_call", "value": "{}"}]
    assert "field 'conversations[1].value': expected the JSON of a call" in error(
        {"conversations": tool}
    )
    assert "field 'completion': must not be empty" in error({"prompt": "2+2=", "completion": " "})
    implicit = {"chosen": [user("a"), bot("b")], "rejected": [user("c"), bot("d")]}
    assert "field 'chosen': no prompt: chosen and rejected must begin with the same turns" in error(
        implicit, "dpo"
    )
    path = write(tmp_path / "qa.jsonl", [{"q": "1+1=", "a": "2"}, {"q": "2+2=", "a": ""}])
    with pytest.raises(
        UserError, match=r"qa\.jsonl:2: field 'a': must not be empty \(expected sft_alpaca"
    ):
        load_training_rows([path], "sft", columns={"instruction": "q", "output": "a"})


def test_a_mapped_column_a_row_lacks_is_named_with_a_did_you_mean(tmp_path: Path) -> None:
    rows = [
        {"en_instruction": "2+2=", "en_output": "4"},
        {"en_instruction": "3+3=", "en_ouput": "6"},
    ]
    path = write(tmp_path / "en.jsonl", rows)
    columns = {"instruction": "en_instruction", "output": "en_output"}
    with pytest.raises(
        UserError,
        match=re.escape(
            f"{path}:2: field 'en_output': missing (columns.output reads it); did you mean 'en_ouput'?"
        ),
    ):
        load_training_rows([path], "sft", columns=columns)
    loaded = load_training_rows([path], "sft", "skip", columns=columns)
    assert loaded.summary()["skipped_by_reason"] == {"missing": 1}
    assert loaded.summary()["row_shapes"] == {"sft_alpaca": 1}
    # a column that no row has is the mapping's mistake: skipping would leave nothing
    with pytest.raises(
        UserError,
        match=re.escape(
            f"{path}:1: field 'en_outptu' (columns.output) is in no row (did you mean 'en_output'?); fix columns"
        ),
    ):
        load_training_rows([path], "sft", "skip", columns={**columns, "output": "en_outptu"})


def test_a_field_left_out_of_a_mapping_beside_mapped_ones_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    row = {"instruction": "总结", "input": "一段话", "output": "好", "en_instruction": "Sum up",
           "en_input": "A text", "en_output": "Fine"}  # fmt: skip
    path = write(tmp_path / "zh_en.jsonl", [row])
    with caplog.at_level(logging.WARNING, logger="lmops.train.data"):
        loaded = load_training_rows(
            [path], "sft", columns={"instruction": "en_instruction", "output": "en_output"}
        )
    assert loaded.rows[0][2]["messages"][0]["content"] == "Sum up\n\n一段话"
    assert (
        "columns maps instruction, output but not input: input is read from the rows' own 'input' column; map it to read another (e.g. columns.input: en_input)"
        in caplog.text
    )


def spec_error(tmp_path: Path, body: str) -> str:
    from lmops.train.spec import load_spec

    job = tmp_path / "job.yaml"
    job.write_text("stage: sft\nmodel: m\ndataset: d.jsonl\noutput: o\n" + body, "utf-8")
    with pytest.raises(UserError) as e:
        load_spec(job)
    return str(e.value).replace(str(job), "job.yaml")


def test_the_spec_names_an_unknown_mapping_key_on_its_line(tmp_path: Path) -> None:
    assert spec_error(tmp_path, "columns:\n  instrution: en_instruction\n") == (
        "job.yaml:6: columns.instrution: unknown field name (did you mean 'instruction'?)"
    )
    assert "LLaMA-Factory's 'query' is lmops's 'input'" in spec_error(
        tmp_path, "columns: {query: en_input}\n"
    )
    assert "stage sft reads no 'chosen'" in spec_error(tmp_path, "columns: {chosen: good}\n")
    assert spec_error(tmp_path, "tags:\n  role_tg: from\n") == (
        "job.yaml:6: tags.role_tg: unknown field (did you mean 'role_tag'?)"
    )
    # pretraining reads one column: columns.text, or text_key (not both)
    from lmops.train.spec import TrainSpec

    job = {"stage": "pretrain", "model": "m", "dataset": "d", "output": "o"}
    assert TrainSpec.model_validate({**job, "columns": {"text": "body"}}).text_column == "body"
    with pytest.raises(ValueError, match="text_key is 'content' already"):
        TrainSpec.model_validate({**job, "columns": {"text": "body"}, "text_key": "content"})
    with pytest.raises(ValueError, match="stage pretrain reads no chat rows; remove tags"):
        TrainSpec.model_validate({**job, "tags": {"role_tag": "from"}})


def test_the_bilingual_alpaca_set_trains_on_its_english_side_as_the_readme_maps_it(
    shared_datasets: Path,
) -> None:
    part = shared_datasets / "alpaca_zh_en" / "part_0.json"
    if not part.exists():
        pytest.skip(f"{part} not found")
    job = readme_job()
    # as the job says: the shared file has a row with an empty output, which "raise" (the
    # default) refuses, so the README's job failed as written
    loaded = load_training_rows([part], "sft", job.get("on_error", "raise"), columns=job["columns"])
    data = json.loads(part.read_text("utf-8"))
    assert loaded.summary()["row_shapes"] == {"sft_alpaca": len(loaded.rows)}
    assert len(loaded.rows) == sum(1 for r in data if r["en_output"].strip())
    first = loaded.rows[0][2]["messages"]
    assert first == [user(data[0]["en_instruction"]), bot(data[0]["en_output"])]


def readme_job() -> dict[str, Any]:
    """The job YAML the README shows for the bilingual Alpaca set."""
    text = README.read_text("utf-8")
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "# sft-en.yaml" in b)
    job: dict[str, Any] = yaml.safe_load(block)
    return job


# -- end to end ----------------------------------------------------------------------------------
@pytest.fixture
def tiny(store: Store, tmp_path: Path) -> Store:
    tok = make_tokenizer(tmp_path / "tok")
    store.assets.register("model", "tiny", make_model(tmp_path / "tiny", tok))
    return store


def test_sft_trains_on_sharegpt_rows_and_on_mapped_columns_from_the_cli(
    tiny: Store, tmp_path: Path, cli: Any
) -> None:
    sharegpt = [
        {
            "conversations": [
                {"from": "human", "value": f"{a}+{a}="},
                {"from": "gpt", "value": str(2 * a)},
            ]
        }
        for a in range(10, 14)
    ]
    bilingual = [
        {"instruction": f"{a}加{a}", "input": "", "output": str(2 * a),
         "en_instruction": f"{a} plus {a}", "en_input": "", "en_output": str(2 * a)}
        for a in range(10, 14)
    ]  # fmt: skip
    job = {
        "stage": "sft",
        "method": "lora",
        "model": "tiny",
        "device": "cpu",
        "train": {"max_steps": 2, "batch_size": 2, "max_seq_len": 64, "save_steps": 2},
        "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
    }
    runs = {
        "chat": {"dataset": str(write(tmp_path / "sharegpt.jsonl", sharegpt))},
        "en": {
            "dataset": str(write(tmp_path / "zh_en.jsonl", bilingual)),
            "columns": readme_job()["columns"],
        },
    }
    out = {}
    for name, over in runs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**job, **over, "output": name}), "utf-8")
        r = cli("train", str(path))
        assert r.code == 0, r.err
        assert f"registered {name}:1 (adapter) after 2 steps" in r.out
        out[name] = r.out
    assert "rows read as: sharegpt 4" in out["chat"]
    data = {r.name: r.params["data"] for r in tiny.runs.list() if r.kind == "train"}
    assert data["chat"]["row_shapes"] == {"sharegpt": 4}
    assert data["en"]["row_shapes"] == {"sft_alpaca": 4} and data["en"]["rows_used"] == 4


@pytest.mark.parametrize(
    ("row", "stage", "fields"),
    [
        ({"messages": [user("a"), bot("b")], "prompt": "p", "completion": "c"}, "sft",
         "messages and prompt/completion"),
        ({"instruction": "i", "output": "o", "conversations": [{"from": "human", "value": "a"}]},
         "sft", "conversations and instruction/output"),
        ({"instruction": "i", "output": "o", "prompt": "p"}, "sft", "instruction/output and prompt"),
        ({"prompt": "p", "completion": "c", "label": True, "messages": [user("a"), bot("b")]},
         "kto", "messages and prompt/completion"),
    ],
)  # fmt: skip
def test_a_row_with_the_fields_of_two_shapes_is_refused_not_guessed(
    tmp_path: Path, row: dict[str, Any], stage: str, fields: str
) -> None:
    """Read as one shape, the other's fields were silently ignored (for KTO, the declared
    completion: the one trained was the last turn of messages)."""
    path = write(tmp_path / "rows.jsonl", [row])
    with pytest.raises(UserError) as e:
        load_training_rows([path], stage)
    assert f"the row has the fields of two shapes ({fields})" in str(e.value)
    assert str(e.value).startswith(f"{path}:1: ")
