"""A step's cache key covers what it reads through its inputs, not only the inputs it names:
the files a data recipe's paths and globs match (and its dataset refs, by version), an
operator's model file, a tokenizer's or a mix's globs, the data files a task YAML names,
and the datasets a training job YAML names. Change one and the step runs again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lmops.pipelines import load_pipeline, run_pipeline
from tests.pipelines.test_runner import write_pipeline


def rows(path: Path, texts: list[str], key: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts), encoding="utf-8")
    return path


def run(path: Path, store: Any) -> Any:
    result = run_pipeline(load_pipeline(path), store, progress=False)
    assert result.ok, result.failed
    return result


def test_a_recipe_files_own_inputs_are_in_the_key(tmp_path: Path, store: Any) -> None:
    data = rows(tmp_path / "in.jsonl", ["one  two", "three four"])
    (tmp_path / "r.yaml").write_text(
        "name: small\ninputs: [in.jsonl]\nprocess: [{op: clean_whitespace}]\n"
        "output: {dataset: small-clean}\n"
    )
    path = write_pipeline(tmp_path, {"clean": {"type": "data", "recipe": "r.yaml"}})
    assert run(path, store).steps["clean"].summary == "small-clean:1: kept 2 of 2 documents"
    assert run(path, store).executed() == []

    with data.open("a") as fh:
        fh.write(json.dumps({"text": "five six"}) + "\n")
    again = run(path, store)
    assert again.executed() == ["clean"]
    assert again.steps["clean"].summary == "small-clean:2: kept 3 of 3 documents"
    assert run(path, store).executed() == []


def test_a_glob_matching_one_more_file_reruns_data_tokenizer_and_mix(
    tmp_path: Path, store: Any
) -> None:
    rows(tmp_path / "raw" / "part-0.jsonl", [f"document number {i} is here" for i in range(8)])
    steps = {
        "clean": {
            "type": "data",
            "recipe": {"inputs": ["raw/*.jsonl"], "process": [{"op": "clean_whitespace"}]},
            "output": "g-clean",
        },
        "tok": {
            "type": "tokenizer",
            "sources": ["raw/*.jsonl"],
            "name": "g-tok",
            "vocab_size": 300,
            "min_frequency": 1,
        },
        "mix": {"type": "mix", "ratios": {"raw/*.jsonl": 1.0}, "output": "g-mix"},
    }
    path = write_pipeline(tmp_path, steps)
    run(path, store)
    assert run(path, store).executed() == []

    rows(tmp_path / "raw" / "part-1.jsonl", ["a new file the globs now match"])
    again = run(path, store)
    assert again.executed() == ["clean", "tok", "mix"]
    assert again.steps["clean"].result["docs_in"] == 9


def test_a_recipes_dataset_ref_is_keyed_by_the_version_it_resolves_to(
    tmp_path: Path, store: Any
) -> None:
    v1 = store.assets.register("dataset", "src", rows(tmp_path / "a.jsonl", ["first  text"]))
    store.assets.alias(v1.ref, "prod")
    (tmp_path / "r.yaml").write_text(
        "name: r\ninputs: [src@prod]\nprocess: [{op: clean_whitespace}]\noutput: {dataset: out}\n"
    )
    path = write_pipeline(tmp_path, {"clean": {"type": "data", "recipe": "r.yaml"}})
    run(path, store)
    assert run(path, store).executed() == []

    v2 = store.assets.register("dataset", "src", rows(tmp_path / "b.jsonl", ["x", "y  z"]))
    store.assets.alias(v2.ref, "prod")
    again = run(path, store)
    assert again.executed() == ["clean"]
    assert again.steps["clean"].result["docs_in"] == 2


def test_an_operators_model_file_is_in_the_key(tmp_path: Path, store: Any) -> None:
    from lmops.data.ngram_lm import NgramLM

    texts = [f"the cat sat on mat number {i}" for i in range(20)]
    rows(tmp_path / "in.jsonl", texts)
    NgramLM.train(texts, order=3).save(tmp_path / "ref.ngram")
    op = {
        "op": "perplexity_filter",
        "model": "ref.ngram",
        "max_perplexity": None,
        "min_perplexity": None,
    }
    steps = {
        "clean": {
            "type": "data",
            "recipe": {"inputs": ["in.jsonl"], "process": [op]},
            "output": "ppl-clean",
        }
    }
    path = write_pipeline(tmp_path, steps)
    run(path, store)
    assert run(path, store).executed() == []

    NgramLM.train(["completely different words here"] * 5, order=3).save(tmp_path / "ref.ngram")
    assert run(path, store).executed() == ["clean"]


TASK = """\
task: caps
dataset_path: json
dataset_kwargs:
  data_files:
    test: eval.jsonl
test_split: test
output_type: generate_until
doc_to_text: "Q: capital of {{country}}?\\nA:"
doc_to_target: "{{capital}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
metric_list:
  - metric: exact_match
"""


def test_an_eval_task_files_data_is_in_the_key(tmp_path: Path, store: Any) -> None:
    from tests.train.tiny import make_model, make_tokenizer

    make_model(tmp_path / "model", make_tokenizer(tmp_path / "tok"), seed=1)
    (tmp_path / "caps.yaml").write_text(TASK, encoding="utf-8")
    (tmp_path / "folder.yaml").write_text(
        TASK.replace("dataset_path: json", "dataset_path: qs").replace(
            "dataset_kwargs:\n  data_files:\n    test: eval.jsonl\n", ""
        ),
        encoding="utf-8",
    )
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"country": "France", "capital": "Paris"}) + "\n")
    (tmp_path / "qs").mkdir()
    (tmp_path / "qs" / "test.jsonl").write_text(data.read_text())
    steps = {
        "model": {"type": "register", "path": "model", "name": "m", "kind": "model"},
        "eval": {
            "type": "eval",
            "model": "${steps.model.output}",
            "task_files": ["caps.yaml"],
            "device": "cpu",
            "output": "m-eval",
        },
        "eval-folder": {
            "type": "eval",
            "model": "${steps.model.output}",
            "task_files": ["folder.yaml"],
            "device": "cpu",
            "output": "m-eval-folder",
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "ev", "steps": steps}, sort_keys=False))
    first = run(path, store)
    assert first.steps["eval"].outputs["output"] == "m-eval:1"
    assert run(path, store).executed() == []

    data.write_text(
        "".join(json.dumps({"country": c, "capital": k}) + "\n" for c, k in [("Peru", "Lima")] * 2)
    )
    assert run(path, store).executed() == ["eval"]  # dataset_kwargs.data_files
    (tmp_path / "qs" / "test.jsonl").write_text(data.read_text())
    assert run(path, store).executed() == ["eval-folder"]  # dataset_path: a folder
    scored = store.assets.resolve("m-eval-folder").metadata["results"]["caps"]
    assert scored["n"] == 2


def test_a_training_jobs_datasets_are_in_the_key(tmp_path: Path, store: Any) -> None:
    from tests.train.tiny import make_model, make_tokenizer, write_alpaca

    make_model(tmp_path / "tiny", make_tokenizer(tmp_path / "tok"))
    write_alpaca(tmp_path / "adds.jsonl", 8)
    write_alpaca(tmp_path / "more.jsonl", 8)
    job = {
        "stage": "sft",
        "method": "full",
        "model": "tiny",
        "dataset": "adds.jsonl",
        "output": "adder",
        "device": "cpu",
        "train": {"max_steps": 1, "batch_size": 2, "max_seq_len": 32},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    steps = {
        "from-file": {"type": "train", "spec": "job.yaml"},
        # an inline job whose override names the dataset
        "inline": {"type": "train", "spec": job, "overrides": ["dataset=more.jsonl"]},
    }
    path = write_pipeline(tmp_path, steps)
    run(path, store)
    assert run(path, store).executed() == []

    write_alpaca(tmp_path / "adds.jsonl", 8, seed=1)
    assert run(path, store).executed() == ["from-file"]
    write_alpaca(tmp_path / "more.jsonl", 8, seed=1)
    assert run(path, store).executed() == ["inline"]
