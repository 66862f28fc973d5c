"""The quickstart's sample content: the generated corpus and what is planted in it, the data
recipe run through lmops' own executor, the addition task and its eval YAML, Alpaca slices,
and the profiles' specs."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.core.formats import validate_rows
from lmops.pipelines import samples
from lmops.pipelines.samples import (
    PROFILES,
    alpaca_slice,
    digits_split,
    write_corpus,
    write_recipe,
    write_skill_task,
)
from lmops.text.pii import detect_pii, id18_checksum_ok, luhn_ok


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted(folder.glob("*.jsonl"))
        for line in f.read_text(encoding="utf-8").splitlines()
    ]


def _files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}


# ------------------------------------------------------------------------------------ corpus


def test_corpus_is_deterministic(tmp_path: Path) -> None:
    a = write_corpus(tmp_path / "a", docs=120, seed=3)
    b = write_corpus(tmp_path / "b", docs=120, seed=3)
    c = write_corpus(tmp_path / "c", docs=120, seed=4)
    assert _files(a.path) == _files(b.path)  # shards and planted.json, byte for byte
    assert _files(a.path) != _files(c.path)
    assert len(a.files) == 4 and a.to_dict() == b.to_dict()


def test_corpus_plants_what_it_reports(tmp_path: Path) -> None:
    stats = write_corpus(tmp_path / "corpus", docs=400, seed=0)
    rows = _rows(stats.path)
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == stats.docs == 400 and len(by_id) == 400
    labels = Counter(stats.labels.values())
    assert labels["exact_duplicate"] == stats.exact_duplicates == 32
    assert labels["near_duplicate"] == stats.near_duplicates == 28
    assert sum(stats.junk.values()) == 60 and stats.removable == 120
    assert stats.good == stats.clean + sum(stats.repairable.values()) == 280
    assert Counter(r["lang"] for r in rows)["zh"] == pytest.approx(200, abs=20)

    # PII: the library detector finds exactly the planted findings, all in good documents,
    # and every ID number and card number is valid.
    found: Counter[str] = Counter()
    for r in rows:
        spans = detect_pii(r["text"])
        if spans:
            assert stats.labels[r["id"]] in ("clean", "repair:html"), (r["id"], spans)
        for s in spans:
            found[s.type] += 1
            if s.type == "ID_CARD":
                assert id18_checksum_ok(s.text)
            if s.type == "BANK_CARD":
                assert luhn_ok(re.sub(r"\D", "", s.text))
    assert dict(found) == {k: v for k, v in stats.pii.items() if v}
    assert set(stats.pii) == {"EMAIL", "PHONE", "ID_CARD", "BANK_CARD", "IP"}
    assert min(stats.pii.values()) >= 10

    # Duplicates come after their source; exact ones equal it once whitespace is collapsed,
    # near ones differ from it but share most 5-grams.
    from lmops.data.minhash import shingles

    order = {r["id"]: i for i, r in enumerate(rows)}
    for dup, src in stats.duplicate_of.items():
        assert order[dup] > order[src]
        a, b = by_id[dup]["text"], by_id[src]["text"]
        if stats.labels[dup] == "exact_duplicate":
            assert a.split() == b.split()
        else:
            sa, sb = shingles(a), shingles(b)
            assert a != b and len(sa & sb) / len(sa | sb) > 0.7


def test_corpus_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="docs must be at least 20"):
        write_corpus(tmp_path, docs=5)
    with pytest.raises(UserError, match="cannot read the Shakespeare text"):
        write_corpus(tmp_path, docs=40, shakespeare=tmp_path / "missing.txt")


def test_shakespeare_documents(shared_datasets: Path, tmp_path: Path) -> None:
    path = shared_datasets / "tinyshakespeare" / "input.txt"
    docs = samples.shakespeare_docs(path)
    assert len(docs) > 1000 and all(len(d) >= 600 for d in docs[:-1])
    assert "\n\n".join(docs).split() == path.read_text(encoding="utf-8").split()  # all of it
    stats = write_corpus(tmp_path, docs=40, shakespeare=path, shakespeare_fraction=0.01)
    assert stats.shakespeare == round(len(docs) * 0.01)
    sources = Counter(r["source"] for r in _rows(tmp_path))
    assert sources == {"web": 40, "tinyshakespeare": stats.shakespeare}


# ------------------------------------------------------------------------------------ recipe


def test_recipe_removes_planted_problems_and_keeps_good_documents(tmp_path: Path) -> None:
    from lmops.data.executor import run_recipe
    from lmops.data.recipe import load_recipe

    stats = write_corpus(tmp_path / "corpus", docs=300, seed=1)
    recipe_file = write_recipe(tmp_path / "recipe.yaml", dataset=None, workers=1)
    result = run_recipe(load_recipe(recipe_file), base_dir=tmp_path, progress=False)
    assert result.output_path is not None
    out = _rows(result.output_path)
    kept = {r["id"] for r in out}
    kept_by = Counter(stats.labels[i].split(":")[0] for i in kept)
    total_by = Counter(label.split(":")[0] for label in stats.labels.values())
    removed = stats.removable - kept_by["exact_duplicate"] - kept_by["near_duplicate"]
    removed -= kept_by["junk"]
    assert removed >= 0.9 * stats.removable
    assert kept_by["exact_duplicate"] == 0 and kept_by["junk"] == 0
    good_kept = kept_by["clean"] + kept_by["repair"]
    assert good_kept >= 0.9 * (total_by["clean"] + total_by["repair"])

    # Every planted PII finding is masked, and the report counts them by type.
    report = result.report
    assert report["pii"] == {k: v for k, v in stats.pii.items() if v}
    for r in out:
        assert not detect_pii(r["text"]), r["text"]
    assert sum(r["text"].count("<PHONE>") for r in out) == stats.pii["PHONE"]
    # Repairable documents come out repaired: no markup, mojibake, 火星文 or traditional
    # characters left.
    import opencc

    t2s = opencc.OpenCC("t2s").convert
    for r in out:
        label = stats.labels[r["id"]]
        if label.startswith("repair:"):
            assert "<p>" not in r["text"] and "</" not in r["text"]
            # mojibake leaves Latin-1 letters (Ã, â, ä, å, æ ...); the only one a repaired
            # article may hold is the é of "café"
            assert not re.search("[\u0080-\u00ff]", r["text"].replace("é", ""))
            assert not set(r["text"]) & set(samples._vocab()["martian"].values())
            assert t2s(r["text"]) == r["text"]
    assert report["docs_in"] == stats.docs and report["docs_out"] == len(out)


def test_recipe_keeps_shakespeare(shared_datasets: Path, tmp_path: Path) -> None:
    from lmops.data.executor import run_recipe
    from lmops.data.recipe import load_recipe

    path = shared_datasets / "tinyshakespeare" / "input.txt"
    stats = write_corpus(tmp_path / "corpus", docs=20, shakespeare=path, shakespeare_fraction=0.05)
    recipe_file = write_recipe(tmp_path / "recipe.yaml", dataset=None, workers=1)
    result = run_recipe(load_recipe(recipe_file), base_dir=tmp_path, progress=False)
    assert result.output_path is not None
    kept = Counter(stats.labels[r["id"]] for r in _rows(result.output_path))
    assert stats.shakespeare > 50 and kept["shakespeare"] >= 0.9 * stats.shakespeare


# -------------------------------------------------------------------------------- skill task


def test_skill_task_files(tmp_path: Path) -> None:
    task = write_skill_task(tmp_path / "t", train=600, eval=80, seed=5)
    again = write_skill_task(tmp_path / "u", train=600, eval=80, seed=5)
    assert _files(task.sft.parent) == _files(again.sft.parent)
    sft = [json.loads(x) for x in task.sft.read_text(encoding="utf-8").splitlines()]
    prefs = [json.loads(x) for x in task.prefs.read_text(encoding="utf-8").splitlines()]
    ev = [json.loads(x) for x in task.eval.read_text(encoding="utf-8").splitlines()]
    sizes = (len(sft), len(prefs), len(ev))
    assert sizes == (task.train_rows, task.pref_rows, task.eval_rows) == (600, 300, 80)
    assert validate_rows(sft, "sft_chat").ok
    assert validate_rows(prefs, "preference").ok

    def pair(question: str) -> tuple[int, int]:
        a, b = (int(n.replace(" ", "")) for n in re.findall(r"\d(?: \d)+", question))
        return a, b

    held = {frozenset(pair(r["question"])) for r in ev}
    assert len(held) == 80
    for r in ev:
        a, b = pair(r["question"])
        assert (r["a"], r["b"]) == (a, b) and r["answer"] == samples.spaced(a + b)
    for row in sft:
        a, b = pair(row["messages"][0]["content"])
        assert frozenset((a, b)) not in held  # neither a + b nor b + a is evaluated
        assert row["messages"][1]["content"] == samples.spaced(a + b)
    for row in prefs:
        a, b = pair(row["prompt"])
        assert frozenset((a, b)) not in held
        assert row["chosen"] == samples.spaced(a + b) != row["rejected"]
        assert re.fullmatch(r"\d(?: \d)*", row["rejected"])
    zh = sum(bool(re.search("[\u4e00-\u9fff]", r["question"])) for r in ev)
    assert zh == 40 == sum(r["lang"] == "zh" for r in ev)  # half the questions are Chinese


def test_skill_task_yaml_scores_exact_matches(tmp_path: Path) -> None:
    from lmops.eval.lm import FakeEvalModel
    from lmops.eval.run import evaluate
    from lmops.eval.tasks import load_task_file

    task_files = write_skill_task(tmp_path, train=10, eval=20, seed=0)
    task = load_task_file(task_files.task_yaml)
    doc = task.eval_docs[0]
    assert task.text(doc) == (
        f"<|im_start|>user\n{doc['question']}<|im_end|>\n<|im_start|>assistant\n"
    )
    answers = {task.text(d): d["answer"] for d in task.eval_docs}
    wrong = task.eval_docs[1]

    def respond(context: str) -> str:
        # What a model that stops late looks like once <|im_end|> is decoded away: the
        # answer is the run of digits it starts with.
        if context == task.text(wrong):
            return "1 0 0"
        return answers[context] + " user"

    [result] = evaluate(FakeEvalModel(respond=respond), [task], progress=False)
    assert result.metrics["exact_match,answer"] == pytest.approx(19 / 20)


def test_digit_tokens(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from lmops.data.tokenizer import train_tokenizer

    task = write_skill_task(tmp_path / "t", train=300, eval=10)
    corpus = write_corpus(tmp_path / "c", docs=60)
    texts = [json.loads(x)["text"] for x in task.text.read_text(encoding="utf-8").splitlines()]
    texts += [r["text"] for r in _rows(corpus.path)]
    train_tokenizer(texts, tmp_path / "tok", vocab_size=600, min_frequency=1)
    assert digits_split(AutoTokenizer.from_pretrained(str(tmp_path / "tok")))

    class Merging:  # a tokenizer that fuses "4 7" into one token
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
            return {"input_ids": [0]}

        def decode(self, ids: list[int]) -> str:
            return "4 7"

    assert not digits_split(Merging())


def test_skill_task_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="eval must be between 1 and 1000"):
        write_skill_task(tmp_path, train=10, eval=0)
    with pytest.raises(UserError, match="train must be at least 1"):
        write_skill_task(tmp_path, train=0, eval=10)


# ------------------------------------------------------------------------------------ alpaca


def test_alpaca_slice_from_a_file(tmp_path: Path) -> None:
    items = [
        {
            "instruction": f"问题{i}",
            "input": "",
            "output": f"回答{i}",
            "en_instruction": f"Question {i}",
            "en_input": "context" if i == 2 else "",
            "en_output": "" if i == 4 else f"Answer {i}",
        }
        for i in range(8)
    ]
    (tmp_path / "part_0.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    rows = alpaca_slice(tmp_path, 6, seed=1)
    assert rows == alpaca_slice(tmp_path / "part_0.json", 6, seed=1)
    assert len(rows) == 6 and validate_rows(rows, "sft_chat").ok
    langs = ["zh" if "问题" in r["messages"][0]["content"] else "en" for r in rows]
    assert langs == ["en", "zh"] * 3
    assert all(r["messages"][1]["content"] != "" for r in rows)
    with pytest.raises(UserError, match="no alpaca_zh_en"):
        alpaca_slice(tmp_path / "nothing", 3)


def test_alpaca_slice_from_the_shared_set(shared_datasets: Path) -> None:
    rows = alpaca_slice(shared_datasets / "alpaca_zh_en", 40, seed=0)
    assert len(rows) == 40 and validate_rows(rows, "sft_chat").ok
    assert rows == alpaca_slice(shared_datasets / "alpaca_zh_en", 40, seed=0)
    assert rows != alpaca_slice(shared_datasets / "alpaca_zh_en", 40, seed=1)


# ---------------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("name", ["tiny", "full"])
def test_profiles_are_valid_specs(name: str) -> None:
    from lmops.pipelines.gate import Condition
    from lmops.train.spec import LoraParams, ModelPreset, PreferenceParams, TrainParams

    p = PROFILES[name]
    assert set(p) == {
        "corpus_docs",
        "shakespeare_fraction",
        "task_train",
        "task_eval",
        "task_prefs",
        "heldout_docs",
        "alpaca",
        "vocab_size",
        "model",
        "pretrain",
        "sft",
        "sft_packing",
        "replay_docs",
        "ppl_tolerance",
        "lora",
        "dpo",
        "dpo_lora",
        "preference",
        "eval_limit",
        "safety_limit",
    }
    assert p["corpus_docs"] >= 20 and 0 <= p["shakespeare_fraction"] <= 1
    assert p["vocab_size"] > 260 and 1 <= p["eval_limit"] <= p["task_eval"]
    assert 1 <= p["replay_docs"] < p["corpus_docs"]
    Condition(metric="x/word_perplexity", not_worse_than=p["ppl_tolerance"])  # a valid rule
    ModelPreset.model_validate({**p["model"], "tokenizer": "tok"})
    for stage in ("pretrain", "sft", "dpo"):
        TrainParams.model_validate(p[stage])
    sft_lora = LoraParams.model_validate(p["lora"])
    dpo_lora = LoraParams.model_validate(p["dpo_lora"])
    assert "lm_head" in sft_lora.targets and "lm_head" not in dpo_lora.targets  # TRL refuses it
    assert p["model"]["overrides"]["tie_word_embeddings"] is False
    PreferenceParams.model_validate(p["preference"])
