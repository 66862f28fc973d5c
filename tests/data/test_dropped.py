"""keep_dropped: every document a run drops, with the step and reason that dropped it, kept
as a dataset of its own (never among the kept part files), resumable as the output is."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

import lmops.data.executor as executor
from lmops.core.errors import UserError
from lmops.data.executor import run_recipe
from lmops.data.recipe import load_recipe, resolve_inputs
from lmops.store import Store

LONG = (
    "The river keeper walks the northern bank every morning before the mist lifts, counting "
    "herons, mending the old fence by the mill and writing down how high the water stood "
    "against the painted marks on the bridge."
)
FILES = {  # three files: three shards, in this order
    "a.jsonl": [
        {"id": "a1", "text": LONG},
        {"id": "a2", "text": "too short"},
        {"id": "a3", "text": "Write to anna@example.com for the minutes."},
        {
            "id": "a4",
            "text": "Gardening notes: tomatoes want sun, basil wants water, mint wants a pot.",
        },
    ],
    "b.jsonl": [
        {
            "id": "b1",
            "text": "Gardening notes: tomatoes want sun, basil wants water, mint wants a pot!",
        },
        {
            "id": "b2",
            "text": "A plain line about trains, timetables and the platform clock at noon.",
        },
    ],
    "c.jsonl": [
        {"id": "c1", "text": LONG.replace("bridge.", "bridges.")},
        {"id": "c2", "text": "tiny"},
    ],
}
# (id, step, op, reason, duplicate_of) of every dropped document, in the order they are kept
DROPPED = [
    ("a2", 0, "length_filter", "too_short", None),
    ("a3", 0, "length_filter", "too_short", None),
    ("b1", 1, "exact_dedup", "exact_duplicate", "a4"),
    ("c2", 0, "length_filter", "too_short", None),
    ("c1", 2, "minhash_dedup", "minhash_duplicate", "a1"),
]
RECIPE = """\
name: demo
inputs: [raw/*.jsonl]
process:
  - op: length_filter
    min_chars: 45
  - op: exact_dedup
  - op: minhash_dedup
  - op: pii_mask
output: {path: out/demo, dataset: demo-clean}
keep_dropped: true
"""


def _corpus(root: Path) -> None:
    (root / "raw").mkdir(parents=True, exist_ok=True)
    for name, rows in FILES.items():
        (root / "raw" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _recipe(root: Path, body: str = RECIPE, *overrides: str) -> Any:
    path = root / "r.yaml"
    path.write_text(textwrap.dedent(body))
    return load_recipe(path, list(overrides))


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for part in sorted(folder.glob("part-*.jsonl"))
        for line in part.read_text().splitlines()
    ]


def _parts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*.jsonl"))}


def test_every_dropped_document_is_kept_apart_with_its_step_and_reason(
    tmp_path: Path, store: Store
) -> None:
    _corpus(tmp_path)
    res = run_recipe(_recipe(tmp_path), base_dir=tmp_path, store=store, progress=False)
    out, dropped = tmp_path / "out" / "demo", tmp_path / "out" / "demo-dropped"
    rows = _rows(dropped)
    got = [
        (
            r["id"],
            r["_lmops"]["dropped"]["step"],
            r["_lmops"]["dropped"]["op"],
            r["_lmops"]["dropped"]["reason"],
            r["_lmops"].get("duplicate_of"),
        )
        for r in rows
    ]
    # per shard (a, b, c: the parts of shards that dropped any), stage by stage
    assert got == DROPPED
    assert sorted(p.name for p in dropped.glob("part-*")) == [
        f"part-0000{i}.jsonl" for i in range(3)
    ]
    by_id = {r["id"]: r for r in rows}
    assert by_id["c1"]["_lmops"]["scores"]["minhash_dedup"]["similarity"] > 0.75
    assert by_id["a2"]["text"] == "too short"  # the user's row, as it was when dropped
    assert by_id["a2"]["_lmops"]["scores"]["length_filter"]["chars"] == 9
    # dropped before pii_mask, masked as the kept documents are
    assert by_id["a3"]["text"] == "Write to <EMAIL> for the minutes."
    assert "drop_reason" not in by_id["a2"]["_lmops"] and "_shard" not in by_id["b1"]["_lmops"]

    # never part of the kept data: not in its folder, its asset, or what a reader of it reads
    kept = {r["id"] for r in _rows(out)}
    assert kept == {"a1", "a4", "b2"} and not kept & set(by_id)
    assert len(kept) + len(rows) == res.report["docs_in"] == 8
    assert not list(out.rglob("*dropped*"))
    read = resolve_inputs(["demo-clean"], tmp_path, store)
    assert {
        r["id"] for f in read.files for r in map(json.loads, f.path.read_text().splitlines())
    } == kept
    assert _parts(store.assets.path("demo-clean-dropped:1")) == _parts(dropped)

    # registered by the same run, with lineage to the same inputs, and named by the kept one
    assert res.report["dropped"] == {
        "docs": 5,
        "path": str(dropped),
        "dataset": "demo-clean-dropped:1",
    }
    assert store.assets.get("demo-clean:1").metadata["dropped"] == "demo-clean-dropped:1"
    upstream = {(e.parent, e.role) for e in store.assets.lineage("demo-clean:1").upstream}
    assert {
        (e.parent, e.role) for e in store.assets.lineage("demo-clean-dropped:1").upstream
    } == upstream
    assert len(upstream) == 3  # the raw files, by their external references
    assert sorted(store.runs.get(res.run_id or "").outputs) == [
        "demo-clean-dropped:1",
        "demo-clean:1",
    ]
    on_disk = json.loads((out / "_report" / "report.json").read_text())
    assert on_disk["dropped"]["dataset"] == "demo-clean-dropped:1"


def test_without_keep_dropped_nothing_is_written_beside(tmp_path: Path, store: Store) -> None:
    _corpus(tmp_path)
    res = run_recipe(
        _recipe(tmp_path, RECIPE.replace("keep_dropped: true\n", "")),
        base_dir=tmp_path,
        store=store,
        progress=False,
    )
    assert "dropped" not in res.report and not (tmp_path / "out" / "demo-dropped").exists()
    assert "dropped" not in store.assets.get("demo-clean:1").metadata
    assert [a.name for a in store.assets.list(kind="dataset")] == ["demo-clean"]


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Stop the run as a kill would, after the shard or stage has written its dropped
    documents and before its stats say it finished."""
    if where == "local":
        real_shard = executor.run_local_shard

        def shard(job: Any) -> Any:
            stats = real_shard(job)
            if job.stage.index == 0 and job.shard.index == 2:
                Path(job.work, "stage0", "00002.stats.json").unlink()
                raise KeyboardInterrupt
            return stats

        monkeypatch.setattr(executor, "run_local_shard", shard)
        return
    real_stage = executor.run_global_stage

    def stage(recipe: Any, st: Any, shards: Any, work: Path, last: bool) -> Any:
        stats = real_stage(recipe, st, shards, work, last)
        if st.index == 2:  # minhash_dedup
            (work / "stage2" / "global.stats.json").unlink()
            raise KeyboardInterrupt
        return stats

    monkeypatch.setattr(executor, "run_global_stage", stage)


@pytest.mark.parametrize("where", ["local", "global"])
def test_a_resumed_run_writes_the_same_dropped_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    for root in (fresh, resumed):
        _corpus(root)
    run_recipe(_recipe(fresh), base_dir=fresh, progress=False)
    with monkeypatch.context() as m:
        _interrupt_after(m, where)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(_recipe(resumed), base_dir=resumed, progress=False)
    # the interrupted shard (stage) had written its dropped documents: they are written again
    assert (
        resumed
        / "out"
        / "demo.lmops-work"
        / f"stage{0 if where == 'local' else 2}"
        / "00002.dropped.jsonl"
    ).exists()
    assert not (resumed / "out" / "demo-dropped").exists()
    res = run_recipe(_recipe(resumed), base_dir=resumed, progress=False)
    assert res.resumed_shards > 0
    expected = _parts(fresh / "out" / "demo-dropped")
    assert _parts(resumed / "out" / "demo-dropped") == expected and len(expected) == 3
    assert _parts(resumed / "out" / "demo") == _parts(fresh / "out" / "demo")


def test_turning_keep_dropped_on_for_a_resumed_run_loses_no_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # shards that finished without keep_dropped wrote no dropped file: they are redone
    _corpus(tmp_path)
    without = RECIPE.replace("keep_dropped: true\n", "")
    with monkeypatch.context() as m:
        _interrupt_after(m, "global")
        with pytest.raises(KeyboardInterrupt):
            run_recipe(_recipe(tmp_path, without), base_dir=tmp_path, progress=False)
    res = run_recipe(_recipe(tmp_path), base_dir=tmp_path, progress=False)
    assert res.resumed_shards == 0
    assert [r["id"] for r in _rows(tmp_path / "out" / "demo-dropped")] == [d[0] for d in DROPPED]


def test_named_target_an_existing_folder_and_a_run_that_drops_everything(tmp_path: Path) -> None:
    _corpus(tmp_path)
    named = RECIPE.replace("keep_dropped: true", "keep_dropped: {path: rejects}").replace(
        ", dataset: demo-clean", ""
    )
    res = run_recipe(_recipe(tmp_path, named), base_dir=tmp_path, progress=False)
    assert len(_rows(tmp_path / "rejects")) == 5 and res.report["dropped"]["path"] == str(
        tmp_path / "rejects"
    )
    # the folder is refused as the output's own is, unless the output may be overwritten
    again = named.replace("out/demo", "out/again")
    with pytest.raises(UserError, match=r"dropped-documents path .*rejects exists; remove it or"):
        run_recipe(_recipe(tmp_path, again), base_dir=tmp_path, progress=False)
    # a run that keeps nothing says where the documents it dropped are
    nothing = again.replace("min_chars: 45", "min_chars: 100000").replace("rejects", "r2")
    with pytest.raises(
        UserError, match=r"each is in .*again\.lmops-work/stage\*/\*\.dropped\.jsonl"
    ):
        run_recipe(_recipe(tmp_path, nothing), base_dir=tmp_path, progress=False)
    # nor inside the output folder, where they would be read as kept documents
    inside = named.replace("{path: rejects}", "{path: out/new/rejects}").replace(
        "{path: out/demo}", "{path: out/new}"
    )
    with pytest.raises(UserError, match=r"keep_dropped: path .*out/new/rejects and the output"):
        run_recipe(_recipe(tmp_path, inside), base_dir=tmp_path, progress=False)
    # the output's dataset may not be the dropped one's
    with pytest.raises(UserError, match=r"keep_dropped: dataset 'demo-clean' is the output's"):
        _recipe(
            tmp_path, RECIPE.replace("keep_dropped: true", "keep_dropped: {dataset: demo-clean}")
        )


def test_cli_keep_dropped_and_report_examples(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _corpus(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        RECIPE.replace("keep_dropped: true\n", "").replace(
            "out/demo", str(tmp_path / "out" / "demo")
        )
    )
    r = cli("data", "run", str(recipe), "--keep-dropped")
    assert r.code == 0, r.err
    assert "dropped documents: 5, each with its step and reason" in r.out
    rep = cli("data", "report", "demo-clean")
    assert rep.code == 0, rep.err
    lines = rep.out.splitlines()
    at = lines.index("dropped examples (the first per reason):")
    assert lines[at + 1 : at + 5] == [
        "   0. length_filter too_short (3 dropped), e.g.:",
        "        a2: too short",
        "        a3: Write to <EMAIL> for the minutes.",
        "        c2: tiny",
    ]
    long = next(line for line in lines if line.startswith("        c1: The river keeper walks"))
    assert len(long) == 100 and long.endswith("…")
    assert "(read it: lmops assets path demo-clean-dropped:1)" in rep.out
    path = cli("assets", "path", "demo-clean-dropped:1")
    assert path.code == 0 and len(_rows(Path(path.out.strip()))) == 5
    assert json.loads(cli("data", "report", "demo-clean", "--json").out)["dropped"]["docs"] == 5


def test_a_pipeline_data_step_names_its_dropped_dataset(tmp_path: Path, store: Store) -> None:
    from lmops.pipelines import load_pipeline, run_pipeline
    from tests.pipelines.test_runner import write_pipeline

    _corpus(tmp_path)
    recipe = {"inputs": ["raw/*.jsonl"], "process": [{"op": "exact_dedup"}], "keep_dropped": True}
    path = write_pipeline(tmp_path, {"clean": {"type": "data", "recipe": recipe, "output": "p"}})
    result = run_pipeline(load_pipeline(path), store, progress=False)
    assert result.ok, result.failed
    assert result.steps["clean"].result["dropped_dataset"] == "p-dropped:1"
    assert [r["id"] for r in _rows(store.assets.path("p-dropped:1"))] == ["b1"]


def test_records_with_several_fields_are_dropped_whole_and_masked(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    first = '{"instruction": "Say hi", "input": null, "output": "Mail bob@example.com", "n": 1.10}'
    second = {"instruction": "Describe the river keeper", "input": None, "output": LONG, "n": 2}
    (tmp_path / "raw" / "sft.jsonl").write_text(first + "\n" + json.dumps(second) + "\n")
    body = RECIPE.replace("name: demo\n", "name: demo\nfields: [instruction, input, output]\n")
    run_recipe(_recipe(tmp_path, body), base_dir=tmp_path, progress=False)
    (row,) = _rows(tmp_path / "out" / "demo-dropped")
    assert row["_lmops"]["dropped"] == {"step": 0, "op": "length_filter", "reason": "too_short"}
    assert {k: v for k, v in row.items() if k != "_lmops"} == {
        "instruction": "Say hi",
        "input": None,
        "output": "Mail <EMAIL>",
        "n": 1.1,
    }
    # the user's fields as read (1.10 stays 1.10), as in the kept rows
    assert '"n": 1.10' in (tmp_path / "out" / "demo-dropped" / "part-00000.jsonl").read_text()
