"""Built-in tasks over the shared public data sets (``LMOPS_SHARED_DATASETS`` or an
argument): ``mmlu_redux`` (57 subjects + group), ``cmmlu`` (67 subjects + group, 5-shot from
``dev``), ``gsm8k`` (generation, n-shot from ``train``), and ``perplexity:<dataset>``.

Templates follow lm-evaluation-harness's MMLU, CMMLU and GSM8K tasks.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from lmops.core.config import find_shared_datasets
from lmops.core.errors import UserError
from lmops.eval.tasks import Task, TaskConfig

__all__ = [
    "builtin_names",
    "cmmlu_subject_names",
    "load_builtin",
    "perplexity_config",
    "shared_root",
]

LETTERS = ["A", "B", "C", "D"]


def shared_root(explicit: Path | None = None) -> Path:
    root = find_shared_datasets(explicit)
    if root is None:
        raise UserError("shared datasets not found: set LMOPS_SHARED_DATASETS or pass --data-dir")
    return root


def _mmlu_rows(root: Path) -> list[dict[str, Any]]:
    f = root / "mmlu_redux.jsonl"
    if not f.exists():
        raise UserError(f"{f}: not found (MMLU-Redux)")
    return [json.loads(line) for line in f.read_text(encoding="utf-8").split("\n") if line.strip()]


def _mmlu_subjects(root: Path) -> list[str]:
    return sorted({r["subject"] for r in _mmlu_rows(root)})


def _cmmlu_subjects(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "cmmlu" / "test").glob("*.csv"))


def builtin_names(root: Path | None = None) -> dict[str, list[str]]:
    """Groups and their subtasks (empty when the data is absent)."""
    try:
        r = shared_root(root)
    except UserError:
        return {"mmlu_redux": [], "cmmlu": [], "gsm8k": [], "perplexity:<dataset>": []}
    return {
        "mmlu_redux": [f"mmlu_redux_{s}" for s in _mmlu_subjects(r)]
        if (r / "mmlu_redux.jsonl").exists()
        else [],
        "cmmlu": [f"cmmlu_{s}" for s in _cmmlu_subjects(r)] if (r / "cmmlu").exists() else [],
        "gsm8k": ["gsm8k"] if (r / "gsm8k").exists() else [],
        "perplexity:<dataset>": [],
    }


def _mmlu_task(subject: str, rows: list[dict[str, Any]], include_errors: bool) -> Task:
    docs = [r for r in rows if r["subject"] == subject]
    kept = (
        docs
        if include_errors
        else [r for r in docs if str(r.get("error_type", "ok")).lower() == "ok"]
    )
    cfg = TaskConfig(
        task=f"mmlu_redux_{subject}",
        group="mmlu_redux",
        dataset_path="builtin",
        test_split="test",
        description=f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n",
        doc_to_text="{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
        doc_to_choice=LETTERS,
        doc_to_target="answer",
        metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}],
    )
    return Task(cfg, {"test": kept}, source="builtin:mmlu_redux", excluded=len(docs) - len(kept))


def _read_from(tasks: list[Task], path: Path) -> list[Task]:
    """``tasks``, each noting the local file or folder of the shared data set it was read
    from (recorded as an external reference in the lineage of its report)."""
    for t in tasks:
        t.local_inputs.append((path, "dataset"))
    return tasks


def cmmlu_subject_names() -> dict[str, str]:
    """CMMLU subject -> its Chinese name, as lm-evaluation-harness's cmmlu task files write
    it into the prompt (``resources/cmmlu_subjects.json``, derived from those files)."""
    global _CMMLU_NAMES
    if _CMMLU_NAMES is None:
        f = Path(__file__).parent / "resources" / "cmmlu_subjects.json"
        _CMMLU_NAMES = dict(json.loads(f.read_text(encoding="utf-8"))["subjects"])
    return _CMMLU_NAMES


_CMMLU_NAMES: dict[str, str] | None = None


def _cmmlu_task(root: Path, subject: str) -> Task:
    def read(split: str) -> list[dict[str, Any]]:
        with open(root / "cmmlu" / split / f"{subject}.csv", encoding="utf-8", newline="") as fh:
            return [dict(r) for r in csv.DictReader(fh)]

    name = cmmlu_subject_names().get(subject, subject.replace("_", " "))
    cfg = TaskConfig(
        task=f"cmmlu_{subject}",
        group="cmmlu",
        dataset_path="builtin",
        test_split="test",
        fewshot_split="dev",
        fewshot_config={"sampler": "first_n"},
        num_fewshot=5,
        # the Chinese subject name, as the reference harnesses prompt (a subject outside
        # the table, in a user's own CMMLU-shaped folder, keeps its file name)
        description=f"以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n",
        doc_to_text="{{Question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案：",
        doc_to_choice=LETTERS,
        doc_to_target="{{['A', 'B', 'C', 'D'].index(Answer)}}",
        metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}],
    )
    return Task(cfg, {"test": read("test"), "dev": read("dev")}, source="builtin:cmmlu")


def _gsm8k_task(root: Path) -> Task:
    def read(split: str) -> list[dict[str, Any]]:
        f = root / "gsm8k" / f"{split}.jsonl"
        return [
            json.loads(line) for line in f.read_text(encoding="utf-8").split("\n") if line.strip()
        ]

    cfg = TaskConfig(
        task="gsm8k",
        dataset_path="builtin",
        test_split="test",
        fewshot_split="train",
        num_fewshot=5,
        doc_to_text="Question: {{question}}\nAnswer:",
        doc_to_target="{{answer}}",
        output_type="generate_until",
        generation_kwargs={"until": ["Question:", "</s>", "<|im_end|>"], "max_gen_toks": 256},
        # lm-eval's two filters by name; the number is read as eval.extract reads it (a
        # "#### N" line only, or the anchored final answer) and compared as a number
        filter_list=[
            {"name": "strict-match", "filter": [{"function": "number", "mode": "strict"}]},
            {"name": "flexible-extract", "filter": [{"function": "number", "mode": "flexible"}]},
        ],
        metric_list=[{"metric": "exact_match", "numeric": True}],
    )
    return Task(cfg, {"test": read("test"), "train": read("train")}, source="builtin:gsm8k")


def perplexity_config(dataset: str) -> TaskConfig:
    """The task ``perplexity:<dataset>`` (its name is the dataset as given)."""
    return TaskConfig(
        task=f"perplexity:{dataset}",
        dataset_path="builtin",
        test_split="test",
        doc_to_text="text",
        doc_to_target="text",
        output_type="loglikelihood_rolling",
        metric_list=[
            {"metric": "word_perplexity"},
            {"metric": "byte_perplexity"},
            {"metric": "bits_per_byte"},
        ],
    )


def _perplexity_task(dataset: str, store: Any | None) -> Task:
    from lmops.core.rows import read_rows
    from lmops.models.loading import resolve_local

    path, ref = resolve_local(dataset, store, kind="dataset")
    if path.suffix == ".txt":
        # one document per paragraph (blank-line separated), as a corpus of documents is
        # scored: --limit counts paragraphs and progress moves (a whole book as one
        # document showed 0/1 for as long as it took)
        content = path.read_text(encoding="utf-8")
        rows = [{"text": p.strip("\n")} for p in re.split(r"\n\s*\n", content) if p.strip()]
        if not rows:
            raise UserError(f"{path}: the file is empty; give text to score")
    else:
        rows = []
        for r in read_rows([path]):
            text = r.values.get("text")
            if not isinstance(text, str):
                # (a template naming a missing field would score the word "text" itself)
                have = ", ".join(r.values) or "none"
                raise UserError(
                    f"{r.where}: perplexity:{dataset} reads each row's 'text' field, and this "
                    f"row has {'no' if text is None else 'a non-string'} 'text' (fields: "
                    f"{have}); give a dataset of {{'text': ...}} rows or a .txt file, or write "
                    "a task file with output_type: loglikelihood_rolling and doc_to_text "
                    "naming your fields"
                )
            rows.append(r.values)
    local = [] if ref else [(path, "dataset")]
    return Task(
        perplexity_config(dataset),
        {"test": rows},
        [ref] if ref else [],
        source=f"perplexity:{dataset}",
        local_inputs=local,
    )


def load_builtin(
    name: str, *, root: Path | None = None, store: Any | None = None, include_errors: bool = False
) -> list[Task]:
    """Tasks for a built-in name: a group (``mmlu_redux``), one subtask, or perplexity."""
    if name.startswith("perplexity:"):
        return [_perplexity_task(name.split(":", 1)[1], store)]
    r = shared_root(root)
    if name == "gsm8k":
        return _read_from([_gsm8k_task(r)], r / "gsm8k")
    if name == "mmlu_redux" or name.startswith("mmlu_redux_"):
        rows = _mmlu_rows(r)
        subjects = _mmlu_subjects(r) if name == "mmlu_redux" else [name.removeprefix("mmlu_redux_")]
        unknown = [s for s in subjects if s not in set(x["subject"] for x in rows)]
        if unknown:
            raise _unknown_task(f"mmlu_redux_{unknown[0]}", root)
        return _read_from(
            [_mmlu_task(s, rows, include_errors) for s in subjects], r / "mmlu_redux.jsonl"
        )
    if name == "cmmlu" or name.startswith("cmmlu_"):
        subjects = _cmmlu_subjects(r) if name == "cmmlu" else [name.removeprefix("cmmlu_")]
        if not all((r / "cmmlu" / "test" / f"{s}.csv").exists() for s in subjects):
            raise _unknown_task(name, root)
        return _read_from([_cmmlu_task(r, s) for s in subjects], r / "cmmlu")
    raise _unknown_task(name, root)


def _unknown_task(name: str, root: Path | None) -> UserError:
    """``unknown task 'mmlu_redu'; did you mean 'mmlu_redux'?`` (a group or a subtask whose
    data is there), else the built-in groups."""
    import difflib

    groups = builtin_names(root)
    known = [g for g in groups if g != "perplexity:<dataset>"]
    known += [t for subtasks in groups.values() for t in subtasks if t not in groups]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    hint = f"did you mean {close[0]!r}?" if close else f"built-in: {', '.join(groups)}"
    return UserError(f"unknown task {name!r}; {hint} (see `lmops eval tasks`)")
