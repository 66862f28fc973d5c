"""``lmops quickstart``: the whole lifecycle on one machine, as an ordinary pipeline.

:func:`prepare` writes the generated inputs (corpus with planted problems, the addition
skill, a held-out text set, an Alpaca slice when the shared datasets are there) and
``quickstart.yaml`` into a work folder; :func:`run_quickstart` runs that pipeline through
:func:`lmops.pipelines.run_pipeline` and summarises it: the data report, base vs SFT vs DPO,
the gate's decision and the served answer. Users can edit ``quickstart.yaml`` and run it
again with ``lmops run``; unchanged steps come from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmops.core.config import find_shared_datasets
from lmops.core.errors import UserError
from lmops.core.jsonl import json_objects
from lmops.pipelines import samples
from lmops.pipelines.steps import pick_metric

__all__ = ["QuickstartFiles", "eval_table", "find_shared", "pipeline_dict", "prepare"]

MODELS = ("base", "sft", "dpo")


def find_shared(explicit: Path | None = None) -> Path | None:
    """The shared datasets folder (see :func:`lmops.core.config.find_shared_datasets`);
    an ``explicit`` folder that does not exist is an error, not a fallback."""
    if explicit is not None and not explicit.is_dir():
        raise UserError(f"--shared {explicit}: no such folder")
    return find_shared_datasets(explicit)


@dataclass
class QuickstartFiles:
    workdir: Path
    pipeline: Path
    corpus: samples.CorpusStats
    task: samples.SkillTask
    shared: Path | None  # the shared datasets folder read (None: generated data only)
    alpaca_rows: int


def _heldout_texts(tmp: Path, docs: int) -> list[dict[str, Any]]:
    """Clean generated articles from another seed: text none of the models trained on."""
    stats = samples.write_corpus(tmp, docs=docs, seed=1, shards=1)
    keep = {i for i, label in stats.labels.items() if label == "clean"}
    return [
        {"text": row["text"]}
        for f in stats.files
        for _, _, row in json_objects(f.read_text(encoding="utf-8"), str(f))
        if row["id"] in keep
    ]


def prepare(
    workdir: Path, *, tiny: bool, shared: Path | None, serve: bool = False
) -> QuickstartFiles:
    """Write the quickstart's data and ``quickstart.yaml`` under ``workdir`` (deterministic:
    re-preparing writes identical files, so a re-run hits the step cache)."""
    import shutil

    profile = samples.PROFILES["tiny" if tiny else "full"]
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    shakespeare = shared / "tinyshakespeare" / "input.txt" if shared else None
    if shakespeare is not None and not shakespeare.is_file():
        shakespeare = None
    corpus_dir = data / "corpus"
    if corpus_dir.exists():
        shutil.rmtree(corpus_dir)
    corpus = samples.write_corpus(
        corpus_dir,
        docs=profile["corpus_docs"],
        seed=0,
        shakespeare=shakespeare,
        shakespeare_fraction=profile["shakespeare_fraction"],
    )
    # the answer key stays beside the corpus, not in the raw data the pipeline registers
    (corpus_dir / "planted.json").replace(data / "planted.json")
    task = samples.write_skill_task(
        data / "task",
        train=profile["task_train"],
        eval=profile["task_eval"],
        prefs=profile["task_prefs"],
        seed=0,
    )
    heldout_tmp = data / ".heldout-src"
    samples.write_jsonl(
        data / "heldout" / "heldout.jsonl", _heldout_texts(heldout_tmp, profile["heldout_docs"])
    )
    shutil.rmtree(heldout_tmp, ignore_errors=True)
    alpaca_dir = shared / "alpaca_zh_en" if shared else None
    alpaca_rows: list[dict[str, Any]] = []
    if alpaca_dir is not None and alpaca_dir.exists() and profile["alpaca"] > 0:
        alpaca_rows = samples.alpaca_slice(alpaca_dir, profile["alpaca"], seed=0)
        samples.write_jsonl(data / "alpaca" / "alpaca.jsonl", alpaca_rows)
    samples.write_recipe(
        workdir / "recipe.yaml", inputs=["placeholder"], output_path=None, dataset="qs-clean"
    )
    pipe = pipeline_dict(
        tiny=tiny,
        profile=profile,
        task=task,
        workdir=workdir,
        alpaca=bool(alpaca_rows),
        serve=serve,
    )
    path = workdir / "quickstart.yaml"
    header = (
        "# Written by `lmops quickstart`; run it again with `lmops run quickstart.yaml`.\n"
        "# Unchanged steps come from the step cache; edit a step and only it and what\n"
        "# follows run again.\n"
    )
    path.write_text(
        header + yaml.safe_dump(pipe, sort_keys=False, allow_unicode=True, width=100),
        encoding="utf-8",
    )
    return QuickstartFiles(
        workdir,
        path,
        corpus,
        task,
        shared,
        len(alpaca_rows),
    )


def pipeline_dict(
    *,
    tiny: bool,
    profile: dict[str, Any],
    task: samples.SkillTask,
    workdir: Path,
    alpaca: bool,
    serve: bool,
) -> dict[str, Any]:
    """The quickstart pipeline (paths relative to ``workdir``)."""

    def rel(p: Path) -> str:
        return str(p.resolve().relative_to(workdir.resolve()))

    # SFT replays some of the cleaned pretraining text (trained on every token): without it
    # the adapter forgets ordinary text (held-out perplexity 67 -> 6,797 in 1000 steps)
    sft_data = ["${steps.skill_sft.output}"] + (["${steps.alpaca.output}"] if alpaca else [])
    sft_data.append("${steps.replay.output}")
    steps: dict[str, Any] = {
        "corpus": {
            "type": "register",
            "path": "data/corpus",
            "name": "qs-raw-corpus",
            "description": "generated bilingual corpus with planted problems (+ Shakespeare)",
        },
        "skill_sft": {"type": "register", "path": rel(task.sft), "name": "qs-skill-sft"},
        "skill_prefs": {"type": "register", "path": rel(task.prefs), "name": "qs-skill-prefs"},
        "skill_text": {"type": "register", "path": rel(task.text), "name": "qs-skill-text"},
        "heldout": {"type": "register", "path": "data/heldout", "name": "qs-heldout"},
    }
    if alpaca:
        steps["alpaca"] = {"type": "register", "path": "data/alpaca", "name": "qs-alpaca"}
    steps["clean"] = {
        "type": "data",
        "recipe": "recipe.yaml",
        "inputs": ["${steps.corpus.output}"],
        "output": "qs-clean",
    }
    steps["tokenizer"] = {
        "type": "tokenizer",
        "sources": ["${steps.clean.output}", "${steps.skill_text.output}"],
        "name": "qs-tokenizer",
        "vocab_size": profile["vocab_size"],
    }
    pretrain = {
        "stage": "pretrain",
        "method": "full",
        "model": {**profile["model"], "tokenizer": "${steps.tokenizer.output}"},
        "dataset": ["${steps.clean.output}", "${steps.skill_text.output}"],
        "output": "qs-base",
        "train": profile["pretrain"],
    }
    steps["pretrain"] = {"type": "train", "spec": pretrain}
    steps["replay"] = {
        "type": "mix",
        "ratios": {"${steps.clean.output}": 1.0},
        "total": profile["replay_docs"],
        "output": "qs-replay",
    }
    steps["sft"] = {
        "type": "train",
        "spec": {
            "stage": "sft",
            "method": "lora",
            "model": "${steps.pretrain.output}",
            "dataset": sft_data,
            "output": "qs-sft",
            "train": profile["sft"],
            "lora": profile["lora"],
            "packing": bool(profile.get("sft_packing", False)),
        },
    }
    steps["dpo"] = {
        "type": "train",
        "spec": {
            "stage": "dpo",
            "method": "lora",
            "model": "${steps.sft.output}",
            "dataset": "${steps.skill_prefs.output}",
            "output": "qs-dpo",
            "train": profile["dpo"],
            "lora": profile.get("dpo_lora", profile["lora"]),
            "preference": profile["preference"],
        },
    }
    for m in MODELS:
        model = f"${{steps.{'pretrain' if m == 'base' else m}.output}}"
        steps[f"eval_{m}"] = {
            "type": "eval",
            "model": model,
            "task_files": [rel(task.task_yaml)],
            "tasks": ["perplexity:${steps.heldout.output}"],
            "limit": profile.get("eval_limit"),
            "output": f"qs-eval-{m}",
        }
        steps[f"safety_{m}"] = {
            "type": "safety",
            "model": model,
            "limit": profile["safety_limit"],
            "max_gen_toks": 24,
            "output": f"qs-safety-{m}",
        }
    # the skill must improve, and ordinary text must not get much harder to predict
    steps["gate"] = {
        "type": "gate",
        "candidates": ["${steps.eval_sft.output}", "${steps.eval_dpo.output}"],
        "baseline": "${steps.eval_base.output}",
        "conditions": [
            {"metric": f"{TASK_NAME}/exact_match", "improve_by": 0.05},
            {"metric": PPL_METRIC, "not_worse_than": profile["ppl_tolerance"]},
        ],
        "alias": "production",
    }
    steps["serve"] = {
        "type": "serve",
        "model": "${steps.gate.outputs.selected}",
        "name": "qs-chat",
        "prompt": "What is 2 3 + 4 5?",
        "max_tokens": 8,
        "keep": serve,
    }
    return {
        "name": "quickstart-tiny" if tiny else "quickstart",
        "description": "raw text -> cleaned data -> tokenizer -> pretrain -> LoRA SFT -> DPO "
        "-> eval -> gate -> serve",
        "steps": steps,
    }


TASK_NAME = "quickstart_addition"
PPL_METRIC = "perplexity:${steps.heldout.output}/word_perplexity"


def eval_table(result: Any) -> list[dict[str, Any]]:
    """One row per model: exact match on the held-out task, perplexity, safety."""
    rows = []
    for m in MODELS:
        ev = result.steps.get(f"eval_{m}")
        sf = result.steps.get(f"safety_{m}")
        metrics = dict(ev.result.get("metrics", {})) if ev else {}
        safety = dict(sf.result.get("metrics", {})) if sf else {}
        ppl = next((v for k, v in metrics.items() if k.endswith("/word_perplexity")), None)
        rows.append(
            {
                "model": m,
                "ref": ev.result.get("model") if ev else None,
                "exact_match": pick_metric(metrics, f"{TASK_NAME}/exact_match"),
                "word_perplexity": ppl,
                "safe_response_rate": safety.get("safety/safe_response_rate"),
                "refusal_rate": safety.get("safety/refusal_rate"),
            }
        )
    return rows
