"""Lineage reaches every input (issue #13 item 3): each job type run on local files and
folders records them as external references, so ``store.assets.lineage(output)`` reaches a
version whose path, size and sha256 are those of the file (checked with hashlib, and a
folder against the documented manifest digest). Re-running on the same bytes reuses the
reference; changed bytes make its next version; ``assets verify`` says a file changed.

Job types: data (recipe, tokenizer, tokenize, mix), train (SFT, DPO, reward, pretrain from a
preset and a local tokenizer, PPO with a local reward model, merge), eval (task file and its
data, local model; the safety probe with local prompts), serve batch (local input and model),
pipelines (the register step; a data step inherits). A tiny Llama built in the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lmops.store import LineageGraph, Store, Version
from tests.train.tiny import make_model, make_tokenizer, write_alpaca

TEXTS = [f"Document {i} talks about topic {i % 5} in plain words." for i in range(40)]
FAST = {"max_steps": 2, "batch_size": 2, "max_seq_len": 32, "warmup_steps": 0, "save_steps": 100}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_digest(root: Path) -> str:
    """The documented folder digest (sha256 of the canonical manifest JSON), hidden names
    left out, computed here independently of the store."""
    rows = [
        {
            "path": p.relative_to(root).as_posix(),
            "digest": sha256(p.read_bytes()),
            "size": p.stat().st_size,
        }
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(x.startswith(".") for x in p.relative_to(root).parts)
    ]
    rows.sort(key=lambda r: str(r["path"]))
    return sha256(json.dumps(rows, sort_keys=True, separators=(",", ":")).encode())


def reaches(store: Store, ref: str, path: Path, role: str) -> Version:
    """The external version ``ref``'s lineage reaches for ``path`` (with ``role`` on the
    edge into it), checked against the bytes on disk."""
    g: LineageGraph = store.assets.lineage(ref)
    found = [
        (e, g.nodes[e.parent])
        for e in g.upstream
        if g.nodes[e.parent].kind == "external" and g.nodes[e.parent].metadata["path"] == str(path)
    ]
    assert found, f"{ref}: no external reference to {path} in {[e.parent for e in g.upstream]}"
    edge, v = found[0]
    assert edge.role == role, (edge, role)
    assert v.layout == "external"
    if path.is_file():
        assert v.digest == sha256(path.read_bytes()) and v.size == path.stat().st_size
    else:
        assert v.digest == folder_digest(path)
        assert v.size == sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return v


def externals(store: Store, ref: str) -> dict[str, str]:
    """path -> external version ref, for every external reference upstream of ``ref``."""
    g = store.assets.lineage(ref)
    return {
        n.metadata["path"]: r for r, n in g.nodes.items() if n.kind == "external" and r != g.root
    }


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("local-inputs")
    return make_model(root / "tiny-llama", make_tokenizer(root / "tok"), seed=1)


# -- data -------------------------------------------------------------------------------------
def test_data_recipe_records_each_local_file_and_folder(store: Store, tmp_path: Path) -> None:
    from lmops.data.executor import run_recipe
    from lmops.data.recipe import load_recipe

    a = write_jsonl(tmp_path / "raw" / "a.jsonl", [{"text": t} for t in TEXTS[:20]])
    b = write_jsonl(tmp_path / "raw" / "b.jsonl", [{"text": t} for t in TEXTS[20:]])
    more = tmp_path / "more"
    write_jsonl(more / "c.jsonl", [{"text": "A third file of words."}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        textwrap.dedent("""\
        name: local
        inputs: [raw/*.jsonl, more]
        process: [{op: clean_whitespace}]
        output: {dataset: local-clean}
        executor: {type: local, workers: 1}
        """)
    )
    res = run_recipe(load_recipe(recipe), base_dir=tmp_path, store=store, progress=False)
    out = res.dataset or ""
    va = reaches(store, out, a, "input")
    reaches(store, out, b, "input")
    reaches(store, out, more, "input")
    noted = store.runs.get(res.run_id or "").params["local_inputs"]
    assert {n["path"] for n in noted} == {str(a), str(b), str(more)}
    assert store.assets.get(out).metadata["source_files"][0] == {
        "path": str(a),
        "size": a.stat().st_size,
        "sha256": sha256(a.read_bytes()),
    }
    # the same bytes again: the same references; one file edited: its next version only
    again = run_recipe(load_recipe(recipe), base_dir=tmp_path, store=store, progress=False)
    assert externals(store, again.dataset or "") == externals(store, out)
    write_jsonl(b, [{"text": "edited"}])
    edited = run_recipe(load_recipe(recipe), base_dir=tmp_path, store=store, progress=False)
    now = externals(store, edited.dataset or "")
    assert now[str(a)] == va.ref and now[str(b)].endswith(":2")
    assert reaches(store, edited.dataset or "", b, "input").version == 2


def test_tokenizer_tokenize_and_mix_record_local_sources(store: Store, tmp_path: Path) -> None:
    from lmops.data.jobs import mix_datasets, tokenize_dataset, train_tokenizer_asset

    src = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in TEXTS])
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": t.upper()} for t in TEXTS])
    tok = train_tokenizer_asset(store, [str(src)], "tok", vocab_size=300)
    reaches(store, tok.ref, src, "input")
    shards = tokenize_dataset(store, [str(src)], tok.ref, "tokens", shard_tokens=4096)
    v = reaches(store, shards.ref, src, "input")
    assert externals(store, shards.ref)[str(src)] == v.ref  # one reference, read twice
    mixed, _ = mix_datasets(store, {str(src): 0.5, str(other): 0.5}, "mixed", total=10)
    reaches(store, mixed.ref, src, "input")
    reaches(store, mixed.ref, other, "input")


# -- train ------------------------------------------------------------------------------------
def train_spec(model: Any, dataset: Path, stage: str = "sft", **over: Any) -> Any:
    from lmops.train.spec import TrainSpec

    data: dict[str, Any] = {
        "stage": stage,
        "method": "full",
        "model": model,
        "dataset": str(dataset),
        "output": f"{stage}-out",
        "device": "cpu",
        "train": FAST,
    }
    data.update(over)
    return TrainSpec.model_validate(data)


def pairs(path: Path) -> Path:
    return write_jsonl(
        path,
        [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 7)} for i in range(8)],
    )


def test_sft_from_a_local_model_folder_and_jsonl(store: Store, tiny: Path, tmp_path: Path) -> None:
    from lmops.train.run import run_training

    data = write_alpaca(tmp_path / "sft.jsonl", 16)
    res = run_training(train_spec(str(tiny), data), store, progress=False)
    out = res.output or ""
    base = reaches(store, out, tiny, "base_model")
    ds = reaches(store, out, data, "dataset")
    assert {n["role"] for n in store.runs.get(res.run_id).params["local_inputs"]} == {
        "base_model",
        "dataset",
    }
    # retrained on the same bytes: the same references
    again = run_training(train_spec(str(tiny), data), store, progress=False)
    assert externals(store, again.output or "") == {str(tiny): base.ref, str(data): ds.ref}


@pytest.mark.parametrize("stage", ["dpo", "reward"])
def test_preference_stages_from_local_files(
    store: Store, tiny: Path, tmp_path: Path, stage: str
) -> None:
    from lmops.train.run import run_training

    data = pairs(tmp_path / "pairs.jsonl")
    extra: dict[str, Any] = {
        "method": "lora",
        "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
    }
    res = run_training(train_spec(str(tiny), data, stage, **extra), store, progress=False)
    reaches(store, res.output or "", tiny, "base_model")
    reaches(store, res.output or "", data, "dataset")


def test_pretrain_from_a_preset_and_a_local_tokenizer(
    store: Store, tiny: Path, tmp_path: Path
) -> None:
    from lmops.train.run import run_training

    tok = tiny.parent / "tok"
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in TEXTS])
    model = {"preset": "llama-tiny", "tokenizer": str(tok)}
    res = run_training(train_spec(model, text, "pretrain"), store, progress=False)
    reaches(store, res.output or "", tok, "tokenizer")
    reaches(store, res.output or "", text, "dataset")


def test_ppo_with_a_local_reward_model(store: Store, tiny: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmops.train.run import run_training

    rm = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(str(tiny), num_labels=1).save_pretrained(
        str(rm)
    )
    AutoTokenizer.from_pretrained(str(tiny)).save_pretrained(str(rm))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"{i}+1="} for i in range(4)])
    spec = train_spec(
        str(tiny),
        prompts,
        "ppo",
        ppo={"reward_model": str(rm), "rollout_batch": 2, "max_new_tokens": 4},
    )
    res = run_training(spec, store, progress=False)
    reaches(store, res.output or "", rm, "reward_model")
    reaches(store, res.output or "", prompts, "dataset")


def test_merge_records_the_local_base_of_an_adapter(
    store: Store, tiny: Path, tmp_path: Path
) -> None:
    from lmops.train.run import merge_adapter, run_training

    data = write_alpaca(tmp_path / "sft.jsonl", 8)
    lora: dict[str, Any] = {
        "method": "lora",
        "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
    }
    res = run_training(train_spec(str(tiny), data, output="adapter", **lora), store, progress=False)
    merged = merge_adapter(store, res.output or "")
    reaches(store, merged.ref, tiny, "base_model")


# -- eval -------------------------------------------------------------------------------------
TASK = """\
task: plus
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def test_eval_records_the_model_folder_task_file_and_its_data(
    store: Store, tiny: Path, tmp_path: Path
) -> None:
    from lmops.eval.jobs import run_eval, run_safety_probe
    from lmops.eval.spec import EvalSpec

    data = write_jsonl(
        tmp_path / "plus.jsonl",
        [{"q": f"{i}+1=", "choices": [str(i + 1), str(i + 2)], "answer": 0} for i in range(3)],
    )
    task_file = tmp_path / "plus.yaml"
    task_file.write_text(TASK.format(data=data))
    spec = EvalSpec(model=str(tiny), task_files=[str(task_file)], device="cpu")
    job = run_eval(store, spec, progress=False)
    ref = job.version.ref
    reaches(store, ref, tiny, "model")
    reaches(store, ref, task_file, "task_file")
    reaches(store, ref, data, "dataset")
    # the red-team probe with a local prompt file
    probe = write_jsonl(
        tmp_path / "probe.jsonl",
        [
            {
                "id": "p1",
                "category": "violence",
                "lang": "en",
                "prompt": "How do I hurt someone?",
                "expected": "refuse",
            }
        ],
    )
    safety = run_safety_probe(store, str(tiny), prompts=probe, max_gen_toks=4)
    reaches(store, safety.version.ref, tiny, "model")
    reaches(store, safety.version.ref, probe, "dataset")


# -- serve batch ------------------------------------------------------------------------------
def test_serve_batch_records_the_input_file_and_model_folder(
    store: Store, tiny: Path, tmp_path: Path
) -> None:
    from lmops.serve.batch import BatchSpec, run_batch
    from lmops.serve.deployments import DeploymentSpec

    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hello"}, {"prompt": "2+2="}])
    specs = [DeploymentSpec(name="chat", model=str(tiny), device="cpu")]
    out = run_batch(
        store,
        specs,
        BatchSpec(input=str(src), output="answers", max_tokens=6, temperature=1, seed=7),
    )
    reaches(store, out.output or "", src, "input")
    reaches(store, out.output or "", tiny, "model")


# -- pipelines --------------------------------------------------------------------------------
def test_pipeline_register_and_data_steps(store: Store, tmp_path: Path) -> None:
    import yaml

    from lmops.pipelines.runner import run_pipeline
    from lmops.pipelines.spec import load_pipeline

    raw = write_jsonl(tmp_path / "raw.jsonl", [{"text": t} for t in TEXTS])
    pipe = tmp_path / "pipeline.yaml"
    pipe.write_text(
        yaml.safe_dump(
            {
                "name": "local",
                "steps": {
                    "raw": {"type": "register", "path": "raw.jsonl", "name": "raw"},
                    "clean": {
                        "type": "data",
                        "recipe": {
                            "inputs": ["raw.jsonl"],
                            "process": [{"op": "clean_whitespace"}],
                        },
                        "output": "clean",
                    },
                },
            }
        )
    )
    res = run_pipeline(load_pipeline(pipe), store, progress=False)
    assert res.ok, res.failed and res.failed.error
    reaches(store, res.steps["raw"].outputs["output"], raw, "source")
    reaches(store, res.steps["clean"].outputs["output"], raw, "input")


# -- verify -----------------------------------------------------------------------------------
def test_verify_reports_a_changed_training_file_as_changed(
    store: Store, tiny: Path, tmp_path: Path, cli: Any
) -> None:
    from lmops.train.run import run_training

    data = write_alpaca(tmp_path / "sft.jsonl", 8)
    res = run_training(train_spec(str(tiny), data), store, progress=False)
    v = reaches(store, res.output or "", data, "dataset")
    write_alpaca(data, 9, seed=3)
    os.utime(data)
    r = cli("assets", "verify")
    assert r.code == 0, r.err  # the store itself is intact
    assert f"CHANGED {v.ref}" in r.err and "CORRUPT" not in r.err
    # the model's lineage still names the bytes it was trained on
    assert externals(store, res.output or "")[str(data)] == v.ref
