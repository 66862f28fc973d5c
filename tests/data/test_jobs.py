"""lmops data tokenizer train / tokenize / mix / validate, end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmops.data.shards import TokenShards
from lmops.data.tokenizer import load_tokenizer
from lmops.store import Store
from tests.data.test_user_fields import out_lines

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "今天天气很好，我们去公园散步吧。",
    "Machine learning models need clean data.",
    "数据清洗是训练大模型的重要一步。",
] * 25


def corpus(tmp_path: Path, name: str = "c.jsonl", texts: list[str] = TEXTS) -> Path:
    p = tmp_path / name
    p.write_text(
        "\n".join(
            json.dumps({"id": str(i), "text": t}, ensure_ascii=False) for i, t in enumerate(texts)
        )
        + "\n"
    )
    return p


def test_tokenizer_train_and_tokenize_register_assets_with_lineage(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = corpus(tmp_path)
    assert cli("assets", "register", "dataset", "text", str(src)).code == 0
    r = cli("data", "tokenizer", "train", "text", "--name", "tok", "--vocab-size", "300", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["kind"] == "tokenizer"
    r = cli(
        "data",
        "tokenize",
        "text",
        "--tokenizer",
        "tok",
        "--output",
        "text-tokens",
        "--shard-tokens",
        "2048",
        "--json",
    )
    assert r.code == 0, r.err
    meta = json.loads(r.out)["metadata"]
    assert meta["format"] == "token_shards" and meta["num_docs"] == len(TEXTS)
    store = Store()
    shards = TokenShards(store.assets.path("text-tokens"))
    tok = load_tokenizer(store.assets.path("tok"))
    eos = meta["eos_id"]
    doc = shards.document(1)
    assert tok.decode(np.asarray(doc[doc != eos]).tolist()) == TEXTS[1]
    edges = {(e.parent, e.role) for e in store.assets.lineage("text-tokens").upstream}
    assert edges == {("text:1", "input"), ("tok:1", "tokenizer")}
    r = cli("data", "tokenize", "text", "--tokenizer", "text", "--output", "x")
    assert r.code == 2 and "is a dataset, not a tokenizer" in r.err


def test_mix_realises_ratios_within_one_percent(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = corpus(tmp_path, "a.jsonl", [f"english document number {i}" for i in range(400)])
    b = corpus(tmp_path, "b.jsonl", [f"中文文档 {i}" for i in range(300)])
    cli("assets", "register", "dataset", "en", str(a))
    cli("assets", "register", "dataset", "zh", str(b))
    r = cli(
        "data",
        "mix",
        "--source",
        "en=0.75",
        "--source",
        "zh=0.25",
        "--total",
        "400",
        "--output",
        "mixed",
        "--json",
    )
    assert r.code == 0, r.err
    rep = json.loads(r.out)["report"]
    assert abs(rep["sources"]["en"]["realised_ratio_docs"] - 0.75) <= 0.01
    assert abs(rep["sources"]["zh"]["realised_ratio_docs"] - 0.25) <= 0.01
    store = Store()
    assert {e.parent for e in store.assets.lineage("mixed").upstream} == {"en:1", "zh:1"}
    assert cli("data", "mix", "--source", "en", "--output", "m").code == 2
    twice = cli("data", "mix", "--source", "en=1", "--source", "en=2", "--output", "m")
    assert twice.code == 2 and "'en' is given twice" in twice.err
    for bad in ("en=-1", "en=nan", "en=inf", "=1"):
        r = cli("data", "mix", "--source", bad, "--source", "zh=1", "--output", "m")
        assert r.code == 2 and "ratio >= 0" in r.err, bad
    # a zero weight leaves a source out, as data.mix documents
    zero = cli("data", "mix", "--source", "en=0", "--source", "zh=1", "--output", "z", "--json")
    assert zero.code == 0, zero.err
    assert json.loads(zero.out)["report"]["sources"]["en"]["taken_docs"] == 0


def test_mix_takes_sft_rows_whole_and_warns_when_formats_differ(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path
) -> None:
    """SFT rows have no ``text``: they are mixed whole (counted over their text and message
    fields). Sources of different formats mix with a warning that says which is which."""
    alpaca = tmp_path / "alpaca.jsonl"
    chat = tmp_path / "chat.jsonl"
    alpaca.write_text(
        "".join(
            json.dumps({"id": f"alp-{i}", "url": "https://example.com/x", "instruction": f"翻译 {i}",
                        "input": "" if i % 2 else "你好", "output": "Hi"}) + "\n"
            for i in range(30)
        )
    )  # fmt: skip
    chat.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
            for i in range(10)
        )
    )  # fmt: skip
    r = cli("data", "mix", "--source", f"{alpaca}=1", "--output", "sft", "--total", "20", "--json")
    assert r.code == 0, r.err
    assert "warning" not in r.err and "warnings" not in json.loads(r.out)["report"]
    r = cli(
        "data", "mix", "--source", f"{alpaca}=3", "--source", f"{chat}=1", "--output", "both",
        "--by", "tokens", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    formats = f"({alpaca}: sft_alpaca, {chat}: sft_chat)"
    assert f"warning: the sources hold different row formats {formats}" in r.err
    rep = json.loads(r.out)["report"]
    assert rep["sources"][str(chat)]["taken_tokens"] > 0
    store = Store()
    rows = [json.loads(x) for x in out_lines(store.assets.path("both"))]
    shapes = {tuple(k for k in row if k != "_lmops") for row in rows}
    assert shapes == {("id", "url", "instruction", "input", "output"), ("messages",)}
    # read (and counted) by the format's text fields: not the id, not the url
    marks = {tuple(row["_lmops"]["fields"]) for row in rows}
    assert marks == {("instruction", "input", "output"), ("messages",)}
    originals = {line.strip() for f in (alpaca, chat) for line in f.read_text().splitlines()}
    for row in rows:  # each row as it was, plus lmops's own key
        del row["_lmops"]
        assert json.dumps(row, ensure_ascii=False) in originals or json.dumps(row) in originals
    # a tokenizer learns from SFT rows whole (every text and message field); packed
    # pretraining shards want one text field and say how to name it
    r = cli("data", "tokenizer", "train", "both", "--name", "tok", "--vocab-size", "300")
    assert r.code == 0, r.err
    tok = load_tokenizer(store.assets.path("tok"))
    assert len(tok.encode("翻译").ids) == 1  # learned from the alpaca rows' instructions
    assert len(tok.encode("alp-").ids) > 1  # not from their ids
    # rows an earlier run marked (`_lmops.fields`) are read by their marks
    marked = tmp_path / "marked.jsonl"
    marked.write_text(
        json.dumps({"en_q": "hello", "zh_q": "你好", "_lmops": {"fields": ["en_q"]}}) + "\n"
    )
    r = cli("data", "mix", "--source", f"{marked}=1", "--output", "m", "--json")
    assert r.code == 0, r.err
    (row,) = [json.loads(x) for x in out_lines(store.assets.path("m"))]
    assert row["_lmops"]["fields"] == ["en_q"]
    r = cli("data", "tokenize", str(alpaca), "--tokenizer", "tok", "--output", "x")
    assert r.code == 2 and "field 'text' missing" in r.err and "--text-key" in r.err


def test_validate_lists_bad_rows_and_exits_1(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [
        {"instruction": "翻译成英文", "input": "你好", "output": "Hello"},
        {"instruction": "Say hi", "output": ""},
        "not json",
        {"instruction": "Count", "output": "1 2 3"},
    ]
    p = tmp_path / "sft.jsonl"
    p.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows)
        + "\n"
    )
    r = cli("data", "validate", str(p), "--json")
    assert r.code == 1
    rep = json.loads(r.out)
    assert rep["total_rows"] == 4 and rep["valid_rows"] == 2
    assert [e["row"] for e in rep["errors"]] == [2, 3]
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n")
    assert cli("data", "validate", str(good)).code == 0


def test_validate_of_a_dataset_without_rows_exits_1(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "empty"  # as an earlier version registered a run that kept nothing
    folder.mkdir()
    (folder / "part-00000.jsonl").write_text("")
    assert cli("assets", "register", "dataset", "p2", str(folder)).code == 0
    r = cli("data", "validate", "p2")
    assert r.code == 1 and r.out.startswith("0 rows, 0 valid, 0 invalid"), r
    assert r.err.strip() == "error: p2: no rows; there is nothing to validate or train on"


def test_errors_name_a_datasets_files_by_its_version(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # not by the store's view folder (views/<digest>/...), which means nothing to a user
    folder = tmp_path / "mix"
    folder.mkdir()
    (folder / "part-00000.jsonl").write_text('{"text": "a"}\n{"text": 5}\n')
    assert cli("assets", "register", "dataset", "mix1", str(folder)).code == 0
    checked = cli("data", "validate", "mix1")
    assert checked.code == 1 and "mix1:1/part-00000.jsonl:2: field 'text'" in checked.out
    assert "views" not in checked.out
    r = cli("data", "tokenizer", "train", "mix1", "--name", "tok", "--vocab-size", "300")
    assert r.code == 2 and r.err.startswith("error: mix1:1/part-00000.jsonl:2: field 'text'")


def test_an_empty_part_of_a_dataset_is_read_as_no_rows(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # datasets registered by earlier versions hold an empty part for a shard left without
    # rows; every reader takes it as no rows, while an empty file a user names is reported
    folder = tmp_path / "written-by-0.0"
    folder.mkdir()
    corpus(folder, "part-00000.jsonl")
    (folder / "part-00001.jsonl").write_text("")
    assert cli("assets", "register", "dataset", "old", str(folder)).code == 0
    r = cli("data", "tokenizer", "train", "old", "--name", "tok", "--vocab-size", "300")
    assert r.code == 0, r.err
    r = cli("data", "tokenize", "old", "--tokenizer", "tok", "--output", "old-tokens", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["metadata"]["num_docs"] == len(TEXTS)
    r = cli("data", "mix", "--source", "old=1", "--output", "old-mix", "--json")
    assert r.code == 0, r.err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: again\ninputs: [old]\noutput: {dataset: again}\n")
    r = cli("data", "run", str(recipe), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["report"]["docs_out"] == len(TEXTS)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = cli("data", "tokenize", str(empty), "--tokenizer", "tok", "--output", "x")
    assert r.code == 2 and "empty.jsonl: empty file (no rows)" in r.err
