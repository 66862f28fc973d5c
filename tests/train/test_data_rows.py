"""Training reads every dataset format through the one row reader, skips bad rows when asked
(counted in the run's summary), and trains on what a multi-field data recipe produced."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from lmops.core.errors import UserError
from lmops.store import Store
from lmops.train.run import run_training
from lmops.train.spec import TrainSpec
from tests.train.tiny import make_model, make_tokenizer

ARRAY = """\
[
    {"instruction": "1+1=", "input": "", "output": "2"},
    {
        "instruction": "2+2=",
        "input": "",
        "output": ""
    },
    {"instruction": "3+3=", "input": "", "output": "6"},
    {"instruction": "4+4=", "output": "8"},
    "not an object"
]
"""


@pytest.fixture
def tiny(store: Store, tmp_path: Path) -> Store:
    tok = make_tokenizer(tmp_path / "tok")
    store.assets.register("model", "tiny", make_model(tmp_path / "tiny", tok))
    return store


def spec(dataset: str, **over: object) -> TrainSpec:
    data: dict[str, object] = {
        "stage": "sft",
        "method": "lora",
        "model": "tiny",
        "dataset": dataset,
        "output": "tuned",
        "device": "cpu",
        "train": {"max_steps": 2, "batch_size": 2, "max_seq_len": 64, "save_steps": 2},
        "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
    }
    data.update(over)
    return TrainSpec.model_validate(data)


def test_json_array_bad_rows_raise_with_line_or_are_skipped_and_counted(
    tiny: Store, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "adds.json"
    p.write_text(ARRAY, encoding="utf-8")
    with pytest.raises(UserError, match=r"adds\.json:3 \(element 1\): field 'output'"):
        run_training(spec(str(p)), tiny, progress=False)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec(str(p), on_error="skip").model_dump(mode="json")))
    r = cli("train", str(job))
    assert r.code == 0, r.err
    assert "rows: 3 used of 5 read, 2 skipped (empty 1, not_object 1)" in r.out
    run = next(x for x in tiny.runs.list() if x.kind == "train")
    assert run.params["data"]["rows_skipped"] == 2
    r = cli("train", str(job), "output=tuned-json", "--json")
    assert json.loads(r.out)["data"] == {
        "rows_read": 5,
        "rows_used": 3,
        "rows_skipped": 2,
        "skipped_by_reason": {"empty": 1, "not_object": 1},
        "row_shapes": {"sft_alpaca": 3},
    }


def test_csv_and_parquet_datasets_train(tiny: Store, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv = tmp_path / "adds.csv"
    csv.write_text('instruction,output\n1+1=,2\n"2+\n2=",4\n', encoding="utf-8")
    assert run_training(spec(str(csv)), tiny, progress=False).data["rows_used"] == 2
    pq.write_table(
        pa.Table.from_pylist([{"instruction": "1+1=", "output": "2", "input": None}]),
        tmp_path / "adds.parquet",
    )
    out = run_training(spec(str(tmp_path / "adds.parquet"), output="t2"), tiny, progress=False)
    assert out.data["rows_used"] == 1


RECIPES = {
    "alpaca": """\
        name: alpaca
        inputs: [alpaca.json]
        fields: [instruction, input, output]
        process:
          - op: clean_whitespace
          - op: pii_mask
          - op: length_filter
            field: output
            min_chars: 1
          - op: exact_dedup
        output: {dataset: alpaca-clean}
        """,
    "chat": """\
        name: chat
        inputs: [chat.jsonl]
        fields: messages
        process: [{op: pii_mask}, {op: minhash_dedup}]
        output: {dataset: chat-clean}
        """,
    "columns": """\
        name: columns
        inputs: [alpaca.json]
        columns: {text: output}
        process: [{op: pii_mask}, {op: length_filter, min_chars: 1}]
        output: {dataset: columns-clean}
        """,
}


def test_multi_field_recipes_feed_sft_end_to_end(tiny: Store, tmp_path: Path) -> None:
    from lmops.data.executor import run_recipe
    from lmops.data.recipe import load_recipe
    from lmops.train.data import read_rows

    alpaca = [
        {
            "instruction": f"Write to li{i}@example.com about {i}+{i}.",
            "input": "",
            "output": f"The sum is {2 * i}; call 1381234{5670 + i} for more.",
            "scores": {"mine": i},
        }
        for i in range(6)
    ]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca, indent=2), encoding="utf-8")
    chat = [
        {
            "messages": [
                {"role": "user", "content": f"My mail is li{i}@example.com, what is {i}+1?"},
                {"role": "assistant", "content": f"{i + 1}, and I will not write to you."},
            ]
        }
        for i in range(6)
    ]
    (tmp_path / "chat.jsonl").write_text(
        "\n".join(json.dumps(r) for r in chat) + "\n", encoding="utf-8"
    )
    for name, body in RECIPES.items():
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(textwrap.dedent(body), encoding="utf-8")
        res = run_recipe(load_recipe(recipe), base_dir=tmp_path, store=tiny, progress=False)
        assert res.dataset == f"{name}-clean:1", name
        rows = [r for _w, _n, r in read_rows([tiny.assets.path(res.dataset)])]
        assert rows and all("_lmops" not in r for r in rows), name  # scores never reach training
        processed = [r["output"] for r in rows] if name == "columns" else rows
        assert "@example.com" not in json.dumps(processed), name
        if name == "alpaca":
            assert rows[0]["scores"] == {"mine": 0}  # the user's own field is still there
        out = run_training(spec(res.dataset, output=f"{name}-model"), tiny, progress=False)
        assert out.output == f"{name}-model:1" and out.data["rows_used"] == 6, name
        ups = {e.parent for e in tiny.assets.lineage(f"{name}-model", depth=1).upstream}
        assert res.dataset in ups
