"""The data stage as users meet it: their fields come out unchanged, lmops's own annotations
live under ``_lmops``, dropped examples in the report are masked like the data, and a recipe
can clean several fields of a record (instruction data, chat messages)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.data.executor import run_recipe
from lmops.data.recipe import load_recipe
from lmops.store import Store

PHONE, EMAIL = "13812345678", "li.lei@example.com"
SECRET_TEXT = f"Call {PHONE} or write to {EMAIL} today, please, about the garden plan."

# Written by hand, not by json.dumps: unicode escapes, floats as the user wrote them
# (1.10, 1e5, -0.0, 1E-7), odd spacing inside values, keys in no sorted order, and fields
# named like lmops's own annotations (pii, scores, duplicate_of, drop_reason, lmops, meta).
USER_LINES = [
    '{"text": "' + SECRET_TEXT + '", "pii": ["phone", "email"], '
    '"scores": {"q": 1.10, "big": 1e5, "neg": -0.0, "tiny": 1E-7}, "duplicate_of": null, '
    '"meta": {"z":1,  "a" : [1,2,{"\\u00e9": "caf\\u00e9 \\u2615 ☕"}]}, "lmops": {"run": 3}, '
    '"drop_reason": "mine", "id": "u1"}',
    '{"id": "u2", "text": "A second, entirely different document about planting tulips in '
    'spring.", "pii": "none", "scores": [0.5, 2.50], "intra_doc_dedup": true, "lang": "xx"}',
    '{"id": "u3", "text": "' + SECRET_TEXT + '", "pii": {"x": 1}, "source": "dup"}',
    '{"zzz": 0.1000, "text": "Third document: the weather was mild and the tulips opened early.", '
    '"aaa": "\\ud83d\\ude00"}',
]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def out_lines(folder: Path) -> list[str]:
    return [
        line
        for p in sorted(folder.glob("part-*.jsonl"))
        for line in p.read_text(encoding="utf-8").splitlines()
    ]


RECIPE = """\
name: users
inputs: [raw.jsonl]
process:
  - op: clean_whitespace
  - op: pii_mask
  - op: exact_dedup
  - op: length_filter
  - op: minhash_dedup
  - op: intra_doc_dedup
output: {path: out}
"""


def test_user_fields_come_out_byte_for_byte_and_annotations_live_under_lmops(
    tmp_path: Path,
) -> None:
    (tmp_path / "raw.jsonl").write_text("\n".join(USER_LINES) + "\n", encoding="utf-8")
    recipe = load_recipe(write(tmp_path / "r.yaml", RECIPE))
    res = run_recipe(recipe, base_dir=tmp_path, progress=False)
    lines = out_lines(tmp_path / "out")
    assert len(lines) == 3  # u3 is an exact duplicate of u1 once masked
    masked = SECRET_TEXT.replace(PHONE, "<PHONE>").replace(EMAIL, "<EMAIL>")
    expected = [
        USER_LINES[0].replace(SECRET_TEXT, masked),
        USER_LINES[1],
        USER_LINES[3],
    ]
    for got, want in zip(lines, expected, strict=True):
        # every user field keeps its JSON text and its place; lmops adds one key at the end
        assert got.startswith(want[:-1] + ', "_lmops": '), got
        assert got.endswith("}") and json.loads(got)["_lmops"] == json.loads(
            got[len(want[:-1]) + len(', "_lmops": ') : -1]
        )
    ann = [json.loads(line)["_lmops"] for line in lines]
    assert ann[0]["pii"] == {"PHONE": 1, "EMAIL": 1}
    assert "length_filter" in ann[0]["scores"] and "intra_doc_dedup" in ann[0]
    assert "id" not in ann[0]  # the row has its own id
    assert ann[2]["id"] == "raw.jsonl:4"  # a row without one gets it here, not as a new field
    assert res.report["ops"][2]["dropped"] == {"exact_duplicate": 1}


def test_rerun_over_own_output_keeps_fields_and_merges_annotations(tmp_path: Path) -> None:
    (tmp_path / "raw.jsonl").write_text("\n".join(USER_LINES) + "\n", encoding="utf-8")
    run_recipe(load_recipe(write(tmp_path / "r.yaml", RECIPE)), base_dir=tmp_path, progress=False)
    first = out_lines(tmp_path / "out")
    again = RECIPE.replace("[raw.jsonl]", "[out]").replace("{path: out}", "{path: out2}")
    run_recipe(load_recipe(write(tmp_path / "r2.yaml", again)), base_dir=tmp_path, progress=False)
    second = out_lines(tmp_path / "out2")
    strip = [line[: line.index(', "_lmops": ')] for line in first]
    assert [line[: line.index(', "_lmops": ')] for line in second] == strip
    # the id lmops gave a row without one is kept through the second run
    assert json.loads(second[2])["_lmops"]["id"] == "raw.jsonl:4"


def test_a_reserved_key_that_is_not_ours_is_a_named_error_or_skipped(tmp_path: Path) -> None:
    rows = [
        '{"text": "fine row with enough words"}',
        '{"text": "other row", "_lmops": "mine"}',
        f'{{"text": "mail {EMAIL}", "_lmops": {{"pii": ["EMAIL"]}}}}',
        '{"text": "scored row", "_lmops": {"scores": {"length_filter": 3}}}',
    ]
    (tmp_path / "raw.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    body = (
        "name: r\ninputs: [raw.jsonl]\nprocess: [{op: pii_mask}, {op: length_filter}]\n"
        "output: {path: out}\n"
    )
    with pytest.raises(UserError, match=r"raw\.jsonl:2: field '_lmops' is reserved"):
        run_recipe(load_recipe(write(tmp_path / "a.yaml", body)), base_dir=tmp_path, progress=False)
    skip = body.replace("out}", "out2}") + "on_error: skip\n"
    res = run_recipe(
        load_recipe(write(tmp_path / "b.yaml", skip)), base_dir=tmp_path, progress=False
    )
    assert res.report["errors"]["count"] == 3 and res.report["docs_out"] == 1
    errors = (tmp_path / "out2" / "_errors.jsonl").read_text(encoding="utf-8")
    assert "field '_lmops.pii' is not what lmops writes" in errors
    assert "field '_lmops.scores.length_filter' is not what lmops writes" in errors
    assert EMAIL not in errors  # the error file is masked like the data


def test_parquet_and_csv_rows_keep_their_fields(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist(
            [{"body": f"mail {EMAIL} now", "n": 1.5, "tags": ["a", "b"]}, {"body": "x", "n": 2.0}]
        ),
        tmp_path / "t.parquet",
    )
    (tmp_path / "t.csv").write_text(f'body,zip\n"mail {EMAIL}, thanks",00123\n', encoding="utf-8")
    body = (
        "name: r\ninputs: [t.parquet, t.csv]\ncolumns: {text: body}\n"
        "process: [{op: pii_mask}]\noutput: {path: out}\n"
    )
    run_recipe(load_recipe(write(tmp_path / "r.yaml", body)), base_dir=tmp_path, progress=False)
    rows = [json.loads(line) for line in out_lines(tmp_path / "out")]
    assert [{k: v for k, v in r.items() if k != "_lmops"} for r in rows] == [
        {"body": "mail <EMAIL> now", "n": 1.5, "tags": ["a", "b"]},
        {"body": "x", "n": 2.0, "tags": None},
        {"body": "mail <EMAIL>, thanks", "zip": "00123"},  # CSV values stay strings
    ]


def test_mix_keeps_user_fields_and_puts_its_own_under_lmops(tmp_path: Path, store: Store) -> None:
    from lmops.data.jobs import mix_datasets

    (tmp_path / "a.jsonl").write_text("\n".join(USER_LINES[:2]) + "\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(USER_LINES[3] + "\n", encoding="utf-8")
    store.assets.register("dataset", "a", tmp_path / "a.jsonl")
    store.assets.register("dataset", "b", tmp_path / "b.jsonl")
    v, _ = mix_datasets(store, {"a": 2.0, "b": 1.0}, "ab", total=6)
    lines = out_lines(store.assets.path(v.ref))
    by_source: dict[str, list[str]] = {}
    for line in lines:
        by_source.setdefault(json.loads(line)["_lmops"]["source"], []).append(line)
    assert len(lines) == 6 and len(by_source["a"]) == 4
    for line in lines:
        user = line[: line.index(', "_lmops": ')] + "}"
        assert user in (USER_LINES[0], USER_LINES[1], USER_LINES[3])


# -- item 11: no raw PII in a masked dataset ------------------------------------------------------
def test_report_examples_and_error_rows_are_masked_like_the_data(
    tmp_path: Path, store: Store
) -> None:
    rows = [
        json.dumps({"text": f"Short: {PHONE}, {EMAIL}"}),
        json.dumps({"text": "A kept document that talks about tulips, with plenty of words."}),
        '{"text": "broken row, write to han.meimei@example.org", ',
    ]
    (tmp_path / "raw.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    body = """\
    name: masked
    inputs: [raw.jsonl]
    on_error: skip
    process:
      - op: length_filter
        min_words: 6
      - op: pii_mask
    output: {path: out, dataset: masked}
    """
    res = run_recipe(
        load_recipe(write(tmp_path / "r.yaml", body)),
        base_dir=tmp_path,
        store=store,
        progress=False,
    )
    example = res.report["ops"][0]["examples"]["too_few_words"][0]["text"]
    assert example == "Short: <PHONE>, <EMAIL>"
    registered = store.assets.path(res.dataset or "")
    files = [p for p in Path(registered).rglob("*") if p.is_file()]
    assert any(p.name == "_errors.jsonl" for p in files)
    for p in files:
        data = p.read_bytes()
        for secret in (PHONE, EMAIL, "han.meimei@example.org"):
            assert secret.encode() not in data, (p.name, secret)
    run_report = Path(store.runs.dir(res.run_id or "")) / "report.json"
    assert PHONE not in run_report.read_text(encoding="utf-8")


# -- item 12: multi-field records -----------------------------------------------------------------
ALPACA = [
    {
        "instruction": f"Write to {EMAIL} politely.",
        "input": "",
        "output": f"Dear Li,   please call me at {PHONE} when you can.",
        "system": f"keep {PHONE}",  # not a processed field: left alone
        "id": 1,
    },
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Name a flower.", "output": "The tulip is a spring flower.", "input": None},
]

CHAT = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"My mail is {EMAIL}", "name": "li"},
            {"role": "assistant", "content": f"Noted, I will write to {EMAIL}."},
        ],
        "topic": "mail",
    },
    {
        "messages": [
            {"role": "user", "content": "Name a flower."},
            {"role": "assistant", "content": "Tulip."},
        ]
    },
]


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    return path


def test_alpaca_recipe_masks_every_named_field_and_keeps_the_row_shape(tmp_path: Path) -> None:
    write_rows(tmp_path / "sft.jsonl", ALPACA)
    body = """\
    name: sft
    inputs: [sft.jsonl]
    fields: [instruction, input, output]
    process:
      - op: clean_whitespace
      - op: pii_mask
      - op: length_filter          # scores the output only
        field: output
        min_chars: 3
      - op: exact_dedup
    output: {path: out}
    """
    res = run_recipe(
        load_recipe(write(tmp_path / "r.yaml", body)), base_dir=tmp_path, progress=False
    )
    rows = [json.loads(line) for line in out_lines(tmp_path / "out")]
    assert [list(r) for r in rows] == [[*ALPACA[0], "_lmops"], [*ALPACA[2], "_lmops"]]
    assert rows[0]["instruction"] == "Write to <EMAIL> politely."
    assert rows[0]["output"] == "Dear Li, please call me at <PHONE> when you can."
    assert rows[0]["system"] == f"keep {PHONE}" and rows[0]["id"] == 1
    assert rows[1]["input"] is None
    assert rows[0]["_lmops"]["pii"] == {"EMAIL": 1, "PHONE": 1}
    assert res.report["ops"][2]["dropped"] == {"too_short": 1}  # "5" is too short


def test_chat_recipe_masks_message_contents_only(tmp_path: Path) -> None:
    write_rows(tmp_path / "chat.jsonl", CHAT)
    body = """\
    name: chat
    inputs: [chat.jsonl]
    fields: messages
    process: [{op: pii_mask}, {op: exact_dedup}]
    output: {path: out}
    """
    run_recipe(load_recipe(write(tmp_path / "r.yaml", body)), base_dir=tmp_path, progress=False)
    rows = [json.loads(line) for line in out_lines(tmp_path / "out")]
    assert rows[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My mail is <EMAIL>", "name": "li"},
        {"role": "assistant", "content": "Noted, I will write to <EMAIL>."},
    ]
    assert rows[0]["topic"] == "mail" and rows[1]["messages"] == CHAT[1]["messages"]


def test_columns_mapping_keeps_the_field_name(tmp_path: Path) -> None:
    write_rows(tmp_path / "sft.jsonl", ALPACA[:2])
    body = """\
    name: cols
    inputs: [sft.jsonl]
    columns: {text: output}
    process: [{op: pii_mask}]
    output: {path: out}
    """
    run_recipe(load_recipe(write(tmp_path / "r.yaml", body)), base_dir=tmp_path, progress=False)
    rows = [json.loads(line) for line in out_lines(tmp_path / "out")]
    assert [list(r) for r in rows] == [[*ALPACA[0], "_lmops"], [*ALPACA[1], "_lmops"]]
    assert rows[0]["output"].endswith("call me at <PHONE> when you can.")
    assert "text" not in rows[0] and rows[0]["instruction"] == ALPACA[0]["instruction"]


def test_a_step_field_picks_what_dedup_compares(tmp_path: Path) -> None:
    answer = "The tulip is a spring flower grown from a bulb, first cultivated in Persia."
    rows = [
        {"instruction": "Name a spring flower.", "output": answer},
        {"instruction": "Tell me about tulips, in one sentence please.", "output": answer},
    ]
    write_rows(tmp_path / "sft.jsonl", rows)
    body = """\
    name: f
    inputs: [sft.jsonl]
    fields: [instruction, output]
    process:
      - op: minhash_dedup
    output: {path: OUT}
    """
    whole = run_recipe(
        load_recipe(write(tmp_path / "a.yaml", body.replace("OUT", "a"))),
        base_dir=tmp_path,
        progress=False,
    )
    assert whole.report["docs_out"] == 2  # the joined texts differ
    one = body.replace("minhash_dedup", "minhash_dedup\n        field: output")
    res = run_recipe(
        load_recipe(write(tmp_path / "b.yaml", one.replace("OUT", "b"))),
        base_dir=tmp_path,
        progress=False,
    )
    assert res.report["docs_out"] == 1
    assert res.report["ops"][0]["examples"]["minhash_duplicate"][0]["text"] == answer
    kept = json.loads(out_lines(tmp_path / "b")[0])
    assert kept["instruction"] == rows[0]["instruction"]
    assert kept["_lmops"]["scores"]["minhash_dedup"]["cluster_size"] == 2


def test_text_rewriting_global_op_needs_a_field_with_several_fields(tmp_path: Path) -> None:
    write_rows(tmp_path / "sft.jsonl", ALPACA)
    body = """\
    name: bad
    inputs: [sft.jsonl]
    fields: [instruction, output]
    process:
      - op: c4_span_dedup
    output: {path: out}
    """
    with pytest.raises(UserError, match=r"r\.yaml:\d+: process\[0\]: c4_span_dedup rewrites"):
        load_recipe(write(tmp_path / "r.yaml", body))
    with pytest.raises(UserError, match=r"process\[0\]: field 'outptu' is not one of the fields"):
        load_recipe(
            write(
                tmp_path / "r2.yaml",
                body.replace("c4_span_dedup", "c4_span_dedup\n        field: outptu"),
            )
        )
