"""lmops scores multiple choice exactly as lm-evaluation-harness does: same per-item
choices, same acc and acc_norm, on a tiny random model and choices of different lengths.
Skipped when lm-eval is not installed (it is in the dev extra)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmops.eval.lm import HFEvalModel
from lmops.eval.run import evaluate
from lmops.eval.tasks import load_task_file
from tests.train.tiny import make_model, make_tokenizer

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-evaluation-harness not installed (pip install 'lmops[dev]')"
)

DOCS = [
    {
        "q": "The capital of France is",
        "options": ["Paris", "a small village in the mountains", "Rome", "blue"],
        "label": 0,
    },
    {"q": "2 + 2 =", "options": ["4", "five hundred", "22", "four or maybe three"], "label": 0},
    {"q": "今天天气", "options": ["很好", "不好不坏，适合出门", "下雨", "晴"], "label": 1},
    {
        "q": "Water boils at",
        "options": ["100 degrees Celsius at sea level", "0", "hot", "cold water"],
        "label": 0,
    },
    {
        "q": "The quick brown fox",
        "options": ["jumps", "sleeps all day long", "runs", "is a dog"],
        "label": 0,
    },
    {
        "q": "Machine learning needs",
        "options": ["data", "nothing at all", "clean data and compute", "luck"],
        "label": 2,
    },
] * 3

TASK = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{q}}}}\\nAnswer:"
doc_to_choice: "{{{{options}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_same_choices_and_scores_as_lm_eval(tmp_path: Path) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    data = tmp_path / "docs.jsonl"
    data.write_text(
        "\n".join(json.dumps(d, ensure_ascii=False) for d in DOCS) + "\n", encoding="utf-8"
    )
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "tiny_mc.yaml").write_text(TASK.format(data=data), encoding="utf-8")
    model_dir = make_model(tmp_path / "model", make_tokenizer(tmp_path / "tok"), seed=3)

    ours = evaluate(
        HFEvalModel(model_dir, device="cpu", batch_size=4),
        [load_task_file(task_dir / "tiny_mc.yaml")],
        progress=False,
    )[0]
    theirs = simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=str(task_dir)),
        batch_size=4,
        device="cpu",
        log_samples=True,
    )
    assert theirs is not None
    res = theirs["results"]["tiny_mc"]
    samples = sorted(theirs["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    their_ll = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    our_ll = [item["loglikelihoods"] for item in ours.items]
    for a, b in zip(our_ll, their_ll, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert [i["pred"] for i in ours.items] == [
        max(range(len(ll)), key=ll.__getitem__) for ll in their_ll
    ]
    assert ours.metrics["acc"] == pytest.approx(res["acc,none"])
    assert ours.metrics["acc_norm"] == pytest.approx(res["acc_norm,none"])
    assert ours.metrics["acc_stderr"] == pytest.approx(res["acc_stderr,none"])
