"""Framework scaffolds and few-shot selection (fixed, seeded random, BM25, embeddings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmops.core.errors import ConflictError, UserError
from lmops.prompts import create, load
from lmops.prompts.fewshot import (
    Example,
    FewShotSelector,
    embedding_available,
    format_demos,
    load_examples,
)
from lmops.prompts.frameworks import FRAMEWORKS, scaffold, write_scaffold
from lmops.prompts.registry import load_spec_file
from lmops.store import Store

POOL = [
    {"q": "How do I reset my password?", "a": "Use the reset link."},
    {"q": "What is the refund policy for annual plans?", "a": "Pro-rated refunds."},
    {"q": "Can I change the billing currency?", "a": "Yes, in settings."},
    {"q": "My password reset email never arrived", "a": "Check spam."},
    {"q": "Where are invoices stored?", "a": "Under billing."},
    {"q": "How to export my data?", "a": "Settings, export."},
]


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_scaffolds_are_prompt_files_with_the_framework_fields(
    framework: str, tmp_path: Path, store: Store
) -> None:
    path = tmp_path / f"{framework}.yaml"
    write_scaffold(path, framework)
    spec = load_spec_file(path)  # what `prompts create --file` reads
    fields = {v for _, v, _ in FRAMEWORKS[framework]}
    variables = {v for _, t in spec.compiled() for v in t.variables}
    assert variables == fields | {"input"}
    with pytest.raises(ConflictError, match="exists"):
        write_scaffold(path, framework)
    create(store, framework, spec)
    values = {v: f"<{v}>" for v in variables}
    system = load(store, framework).messages(**values)[0]["content"]
    for title, var, _ in FRAMEWORKS[framework]:
        assert f"## {title}\n<{var}>" in system
    assert "Statement" in scaffold("crispe")[0] and "Capacity and role" in scaffold("crispe")[0]
    with pytest.raises(UserError, match="unknown framework 'cot'"):
        scaffold("cot")


@pytest.fixture
def pool(tmp_path: Path, store: Store) -> list[Example]:
    path = tmp_path / "faq.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in POOL))
    v = store.assets.register("dataset", "faq", path)
    examples, ref = load_examples(store, v.ref, input_field="q", output_field="a")
    assert ref == "faq:1" and len(examples) == 6
    return examples


def test_fixed_and_random_are_deterministic(pool: list[Example]) -> None:
    assert [e.index for e in FewShotSelector(pool, strategy="fixed", k=2).select("x")] == [0, 1]
    picked = FewShotSelector(pool, strategy="fixed", indices=[4, 2]).select("")
    assert [e.index for e in picked] == [4, 2]
    a = FewShotSelector(pool, strategy="random", k=3, seed=7)
    b = FewShotSelector(pool, strategy="random", k=3, seed=7)
    assert [e.index for e in a.select("q1")] == [e.index for e in b.select("q2")]
    seeds = {
        tuple(e.index for e in FewShotSelector(pool, strategy="random", k=3, seed=s).select(""))
        for s in range(6)
    }
    assert len(seeds) > 1  # the seed matters
    assert format_demos(picked[:1]) == "Input: Where are invoices stored?\nOutput: Under billing."


def test_bm25_picks_the_rows_that_share_rare_words(pool: list[Example]) -> None:
    sel = FewShotSelector(pool, strategy="bm25", k=2)
    assert [e.index for e in sel.select("forgot password, no reset email")] == [3, 0]
    assert sel.select("billing currency")[0].index == 2


@pytest.mark.slow  # loads torch and sentence-transformers
@pytest.mark.skipif(embedding_available() is not None, reason=str(embedding_available()))
def test_embeddings_pick_the_rows_nearest_in_meaning(pool: list[Example]) -> None:
    sel = FewShotSelector(pool, strategy="embedding", k=2)
    # no word in common with row 1 beyond stop words: meaning, not overlap
    assert sel.select("Do I get my money back if I cancel a yearly subscription?")[0].index == 1


def test_a_row_without_the_field_is_named(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"q": "a", "a": "b"}\n{"q": "c"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: no field 'a'"):
        load_examples(store, str(path), input_field="q", output_field="a")
