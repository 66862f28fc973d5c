"""The Ray executor gives the local executor's output, global MinHash dedup included.
Runs a local 2-CPU Ray; skipped when Ray is not installed (pip install 'lmops[ray]')."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmops.data.executor import run_recipe
from lmops.data.recipe import load_recipe
from tests.data.test_dedup import _copies_of_one_original
from tests.data.test_executor import make_corpus, write_recipe

ray = pytest.importorskip("ray", reason="Ray not installed; pip install 'lmops[ray]' to run")

RECIPE = """\
name: raytest
inputs: [raw/*.jsonl]
process:
  - op: clean_unicode
  - op: minhash_dedup
  - op: exact_dedup
  - op: clean_whitespace
output: {path: out/OUT}
executor: {type: local, workers: 2, shard_bytes: 2048}
"""


@pytest.fixture(scope="module")
def local_ray():  # type: ignore[no-untyped-def]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_output_equals_local(tmp_path: Path, local_ray: None) -> None:
    make_corpus(tmp_path / "raw", files=4, per_file=80)
    # plant near-duplicates across files: same text with one word changed
    with open(tmp_path / "raw" / "part3.jsonl", "a") as fh:
        base = " ".join(f"word{i}" for i in range(60))
        for doc_id, text in (("near-a", base), ("near-b", base.replace("word30", "changed"))):
            fh.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    # two edited copies (not near-duplicates of each other) before their original, in three
    # shards: one cluster, whichever executor
    o, a, b = _copies_of_one_original()
    for part, (doc_id, text) in enumerate((("copy-a", a), ("copy-b", b), ("orig", o))):
        with open(tmp_path / "raw" / f"part{part}.jsonl", "a") as fh:
            fh.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    outs = {}
    for kind in ("local", "ray"):
        recipe = load_recipe(write_recipe(tmp_path / f"{kind}.yaml", RECIPE.replace("OUT", kind)))
        res = run_recipe(recipe, base_dir=tmp_path, executor=kind, progress=False)
        outs[kind] = (
            {p.name: p.read_bytes() for p in sorted(Path(res.output_path or "").glob("part-*"))},
            res.report["ops"][1]["dropped"],
            res.report["ops"][1]["counters"],
        )
    assert outs["local"] == outs["ray"]
    assert outs["ray"][1].get("minhash_duplicate", 0) >= 3
    kept = b"".join(outs["ray"][0].values())
    assert b'"copy-a"' in kept and b'"copy-b"' not in kept and b'"orig"' not in kept
    assert outs["ray"][2]["clusters"] >= 2
    assert len(outs["ray"][0]) > 4
