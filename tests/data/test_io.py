"""Readers and writers: formats, ids, column mapping, byte-range shards, bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.data.document import Document
from lmops.data.io import (
    ErrorSink,
    InputFile,
    JsonlWriter,
    ReadOptions,
    Shard,
    plan_shards,
    read_documents,
    read_shard,
)

ROWS = [
    {"id": "a", "text": "第一篇文档。", "lang": "zh"},
    {"text": "second document", "lang": "en"},
    {"id": 7, "text": "third", "extra": {"k": [1, 2]}},
]


def write_jsonl(path: Path, rows: list[dict[str, object]] | list[str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_ids_and_fields_round_trip(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    docs = list(read_documents(src))
    assert [d.id for d in docs] == ["a", "in.jsonl:2", "7"]
    assert docs[0].text == "第一篇文档。" and docs[0].metadata == {}
    assert docs[0].record is not None and docs[0].record.values["lang"] == "zh"
    with JsonlWriter(tmp_path / "out.jsonl") as w:
        for d in docs:
            w.write(d)
    back = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text("utf-8").splitlines()]
    assert back[2] == {"id": 7, "text": "third", "extra": {"k": [1, 2]}}  # the user's own id
    assert back[1] == {"text": "second document", "lang": "en", "_lmops": {"id": "in.jsonl:2"}}
    assert not (tmp_path / "out.jsonl.tmp").exists()


def test_compressed_and_parquet_and_text(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    payload = "\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    for name in ("a.jsonl.gz", "a.jsonl.zst"):
        assert [d.text for d in read_documents(tmp_path / name)] == [
            "第一篇文档。",
            "second document",
            "third",
        ]
    pq.write_table(
        pa.Table.from_pylist([{"content": "p1", "n": 1}, {"content": "p2", "n": 2}]),
        tmp_path / "t.parquet",
    )
    docs = list(read_documents(tmp_path / "t.parquet", ReadOptions(text_key="content")))
    assert [(d.id, d.text, d.record and d.record.values) for d in docs] == [
        ("t.parquet:1", "p1", {"content": "p1", "n": 1}),
        ("t.parquet:2", "p2", {"content": "p2", "n": 2}),
    ]
    (tmp_path / "book.txt").write_text("Para one\nline two\n\nPara two\n", encoding="utf-8")
    whole = list(read_documents(tmp_path / "book.txt"))
    assert len(whole) == 1 and whole[0].id == "book.txt"
    paras = list(read_documents(tmp_path / "book.txt", ReadOptions(text_unit="paragraph")))
    assert [(d.id, d.text) for d in paras] == [
        ("book.txt:1", "Para one\nline two"),
        ("book.txt:4", "Para two\n"),
    ]


def test_column_mapping(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "m.jsonl", [{"doc_id": "x", "body": "hello"}])
    d = next(read_documents(src, ReadOptions(columns={"text": "body", "id": "doc_id"})))
    assert (d.id, d.text) == ("x", "hello")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "ok"}', '{"text": "broken"'], r"bad\.jsonl:2: malformed JSON"),
        (
            ['{"text": "ok"}', '{"body": "no text"}'],
            r"bad\.jsonl:2: field 'text' missing \(fields: body\); set text_key",
        ),
        (['{"text": 5}'], r"bad\.jsonl:1: field 'text' is int, expected a string"),
        (['{"text": "ok"}', '["a list"]'], r"bad\.jsonl:2: expected a JSON object, got array"),
        # a file that starts with "[" is a JSON array, whatever its name
        (['["a list"]'], r"bad\.jsonl:1 \(element 0\): expected a JSON object, got string"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, lines: list[str], message: str) -> None:
    src = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(UserError, match=message):
        list(read_documents(src))


def test_bad_encoding_and_empty_file(tmp_path: Path) -> None:
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin\.jsonl:2: not valid UTF-8"):
        list(read_documents(bad))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.jsonl: empty file"):
        list(read_documents(empty))


def test_skip_mode_counts_and_writes_errors(tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "mixed.jsonl", ['{"text": "a"}', "{oops", '{"x": 1}', '{"text": "b"}']
    )
    sink = ErrorSink(tmp_path / "errors.jsonl")
    f = InputFile(src, src.name, "jsonl")
    docs = list(read_shard(Shard(0, f), ReadOptions(on_error="skip"), sink))
    sink.close()
    assert [d.text for d in docs] == ["a", "b"]
    assert sink.count == 2
    recorded = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert (
        recorded[0]["where"].endswith("mixed.jsonl:2") and "malformed JSON" in recorded[0]["reason"]
    )
    assert recorded[1]["raw"] == '{"x": 1}\n'


def test_skipped_rows_are_counted_by_kind_not_by_particulars(tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "mixed.jsonl",
        ['{"text": "a', '{"text": "bc', '{"text": ', '{"body": "no text"}', '{"text": null}'],
    )
    sink = ErrorSink()
    f = InputFile(src, src.name, "jsonl")
    assert not list(read_shard(Shard(0, f), ReadOptions(on_error="skip"), sink))
    # three malformed lines, each at another column, are one kind; a reason with a colon
    # inside its particulars ("(fields: body)") is not cut there
    assert sink.by_reason == {
        "malformed JSON": 3,
        "field 'text' missing": 1,
        "field 'text' is null, expected a string": 1,
    }


def test_byte_range_shards_cover_every_line_once_with_line_numbers(tmp_path: Path) -> None:
    rows = [{"text": f"doc {i} " + "x" * (i % 37)} for i in range(500)]
    src = write_jsonl(tmp_path / "big.jsonl", rows)
    f = InputFile(src, src.name, "jsonl")
    shards = plan_shards([f], shard_bytes=1024)
    assert len(shards) > 10
    ids = [d.id for s in shards for d in read_shard(s)]
    assert ids == [f"big.jsonl:{i + 1}" for i in range(500)]


def test_writer_abort_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "o.jsonl"
    with pytest.raises(RuntimeError), JsonlWriter(target) as w:
        w.write(Document("t", "1"))
        raise RuntimeError("killed")
    assert not target.exists() and not (tmp_path / "o.jsonl.tmp").exists()


def test_hugging_face_dataset_saved_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip(
        "datasets", reason="pip install datasets to read saved HF datasets"
    )
    ds = datasets.Dataset.from_list(
        [{"id": "a", "text": "hello"}, {"id": "b", "text": "世界", "x": 1}]
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    docs = list(read_documents(tmp_path / "hf"))
    assert [(d.id, d.text) for d in docs] == [("a", "hello"), ("b", "世界")]
