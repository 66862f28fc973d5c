"""One row reader for every command: JSON arrays, JSONL, Parquet and CSV, with errors that
name the file and the line (and, in a JSON array, the element)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.core.rows import Row, iter_rows, read_rows, row_format

# A JSON array as the Alpaca releases ship it: pretty-printed, one object over several lines.
ALPACA_ARRAY = """\
[
    {
        "instruction": "Give three tips for staying healthy.",
        "input": "",
        "output": "Eat well, move, sleep.",
        "meta": {
            "k": [1,
                  2.50]
        }
    },
    {
        "instruction": "Say hi in French.",
        "input": "",
        "output": ""
    },
    {"instruction": "Add", "input": "2 and 3", "output": "5", "price": 1.10}
]
"""


def test_json_array_rows_with_element_lines(tmp_path: Path) -> None:
    p = tmp_path / "alpaca.json"
    p.write_text(ALPACA_ARRAY, encoding="utf-8")
    assert row_format(p) == "json"
    rows = [r for r in iter_rows(p) if isinstance(r, Row)]
    assert [r.where for r in rows] == [
        f"{p}:2 (element 0)",
        f"{p}:11 (element 1)",
        f"{p}:16 (element 2)",
    ]
    assert rows[2].values == {"instruction": "Add", "input": "2 and 3", "output": "5", "price": 1.1}
    assert rows[2].raw is not None and rows[2].raw["price"] == ('"price"', "1.10")


def test_jsonl_named_json_and_compressed_json_array(tmp_path: Path) -> None:
    lines = tmp_path / "rows.json"
    lines.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert row_format(lines) == "jsonl"
    assert [(r.where, r.values) for r in read_rows([lines])] == [
        (f"{lines}:1", {"a": 1}),
        (f"{lines}:3", {"a": 2}),
    ]
    gz = tmp_path / "arr.json.gz"
    gz.write_bytes(gzip.compress(b'\xef\xbb\xbf[{"a": 1}, {"a": 2}]'))  # with a BOM
    assert [r.values["a"] for r in read_rows([gz])] == [1, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[\n  {"a": 1},\n  {"a": 2,}\n]', r"bad\.json:3 \(element 1\): malformed JSON \(Exp"),
        ('[\n  {"a": 1},\n  "text"\n]', r"bad\.json:3 \(element 1\): expected a JSON object"),
        ('[\n  {"a": 1}\n  {"a": 2}\n]', r"bad\.json:3: malformed JSON \(Expecting ','"),
        ('[\n  {"a": 1}', r"bad\.json:2: malformed JSON"),
        ('[{"a": "tab\there"}]', r"JSON \(Invalid control character at column 12\);"),
    ],
)
def test_json_array_errors_name_line_and_element(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        list(read_rows([p]))


def test_csv_rows_keep_strings_and_name_lines(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text('q,a\n"multi\nline",00123\nonly-one-field\n', encoding="utf-8")
    got = list(iter_rows(p))
    assert isinstance(got[0], Row) and got[0].values == {"q": "multi\nline", "a": "00123"}
    assert got[0].where == f"{p}:2"
    assert not isinstance(got[1], Row) and got[1].where == f"{p}:4"
    assert "1 field" in got[1].reason and "header has 2" in got[1].reason


def test_parquet_rows_are_named_by_row_not_line(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"a": 1}, {"a": 2}]), p)
    assert [(r.where, r.values) for r in read_rows([p])] == [
        (f"{p}:row 1", {"a": 1}),
        (f"{p}:row 2", {"a": 2}),
    ]


def test_validate_reads_a_json_array(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "alpaca.json"
    p.write_text(ALPACA_ARRAY, encoding="utf-8")
    r = cli("data", "validate", str(p), "--json")
    rep = json.loads(r.out)
    assert r.code == 1 and (rep["total_rows"], rep["valid_rows"]) == (3, 2)
    assert rep["errors"][0]["message"] == (f"{p}:11 (element 1): field 'output': must not be empty")
    csv = tmp_path / "t.csv"
    csv.write_text("instruction,output\nSay hi,hi\nCount,\n", encoding="utf-8")
    rep = json.loads(cli("data", "validate", str(csv), "--json").out)
    assert (rep["total_rows"], rep["valid_rows"]) == (2, 1)
    assert rep["errors"][0]["message"].startswith(f"{csv}:3: field 'output'")


def test_data_run_reads_json_array_and_csv(tmp_path: Path) -> None:
    from lmops.data.executor import run_recipe
    from lmops.data.recipe import load_recipe

    (tmp_path / "alpaca.json").write_text(ALPACA_ARRAY, encoding="utf-8")
    (tmp_path / "t.csv").write_text("output,instruction\nhello there,greet\n", encoding="utf-8")
    (tmp_path / "r.yaml").write_text(
        "name: r\ninputs: [alpaca.json, t.csv]\nfields: [instruction, output]\n"
        "process: [{op: clean_whitespace}]\noutput: {path: out}\n",
        encoding="utf-8",
    )
    res = run_recipe(load_recipe(tmp_path / "r.yaml"), base_dir=tmp_path, progress=False)
    rows = [
        json.loads(line)
        for line in (tmp_path / "out" / "part-00000.jsonl").read_text().splitlines()
    ]
    assert res.report["docs_in"] == 4 and len(rows) == 3
    assert rows[2]["price"] == 1.1 and rows[0]["_lmops"]["id"] == "alpaca.json[0]"
    written = (tmp_path / "out" / "part-00000.jsonl").read_text()
    assert '"price": 1.10' in written  # the value's JSON text as read
    assert '"meta": {"k": [1,2.50]}' in written  # on one line: only the line breaks went


def test_eval_task_reads_a_json_array_with_line_errors(tmp_path: Path) -> None:
    from lmops.eval.tasks import load_task_file

    data = tmp_path / "caps.json"
    data.write_text('[\n  {"q": "France", "a": "Paris"},\n  {"q": "Japan" "a": "Tokyo"}\n]')
    task = tmp_path / "t.yaml"
    task.write_text(
        "task: caps\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: generate_until\n"
        'doc_to_text: "{{q}}"\ndoc_to_target: "{{a}}"\n',
        encoding="utf-8",
    )
    with pytest.raises(UserError, match=r"caps\.json:3 \(element 1\): malformed JSON"):
        load_task_file(task)
    data.write_text('[\n  {"q": "France", "a": "Paris"},\n  {"q": "Japan", "a": "Tokyo"}\n]')
    assert len(load_task_file(task).splits["test"]) == 2


def test_real_alpaca_json_array(cli, shared_datasets: Path) -> None:  # type: ignore[no-untyped-def]
    p = shared_datasets / "alpaca_zh_en" / "part_0.json"
    if not p.exists():
        pytest.skip(f"{p} not found")
    lines = p.read_text(encoding="utf-8").split("\n")
    starts = [i + 1 for i, line in enumerate(lines) if line == "    {"]  # element k starts here
    rows = json.loads(p.read_text(encoding="utf-8"))
    empty = [k for k, r in enumerate(rows) if not r["output"].strip()]
    rep = json.loads(cli("data", "validate", str(p), "--json").out)
    assert rep["total_rows"] == len(rows) == 1000
    assert rep["valid_rows"] == 1000 - len(empty)
    assert [e["message"].split(": field")[0] for e in rep["errors"]] == [
        f"{p}:{starts[k]} (element {k})" for k in empty
    ]


def test_a_jsonl_line_cut_short_is_named_at_its_own_end(tmp_path: Path) -> None:
    """The most common malformed line, a write cut short, was reported at "column 1": the
    column, on the next line, of the position after the line break."""
    p = tmp_path / "cut.jsonl"
    p.write_text('{"a": 1}\n{"instruction": "x", "output": \n{"a": 2}\r\n', encoding="utf-8")
    got = list(iter_rows(p))
    assert not isinstance(got[1], Row)
    assert got[1].where == f"{p}:2"
    assert got[1].reason == "malformed JSON (Expecting value at column 32)"
    assert isinstance(got[2], Row) and got[2].values == {"a": 2}
