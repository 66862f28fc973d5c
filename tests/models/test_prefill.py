"""Prompts admitted together that start with the same tokens (the choices of a
multiple-choice question, as lm-eval and ``lmops eval`` score them through
``/v1/completions``) run those tokens once: the prefix once per question, then each
choice's rest on a copy of its keys and values. Each prompt still scores, token by token,
what a forward pass of it alone gives, and a scored prompt that goes on generating, or a
generation sharing a prefix, gives the greedy tokens it gives alone."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lmops.models.engine import Engine
from lmops.models.sequences import Seq, prefill_groups, shared_prefixes
from lmops.models.types import Delta, Done, GenRequest
from tests.train.tiny import make_model, make_tokenizer

# two questions whose contexts open alike, their choices, and a prompt that shares nothing
QUESTIONS = [
    (
        "Question: The quick brown fox jumps over the lazy dog. Which one jumps?\nAnswer:",
        [" the fox", " the lazy dog", " nobody today", " Machine learning"],
    ),
    (
        "Question: The quick brown dog is fine, thank you. How are you today?\nAnswer:",
        [" fine", " I am fine, thank you.", " 12+34=46", " clean data"],
    ),
]
UNRELATED = "Hello, how are you today? Machine learning models need clean data. 50+25=75."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prefill")
    return make_model(root / "m", make_tokenizer(root / "tok"), seed=7)


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()


def prompts_of(engine: Engine) -> tuple[list[list[int]], list[list[int]]]:
    """Each question's choices as prompts (context + choice), then the unrelated prompt;
    and the contexts' ids."""
    contexts = [engine.encode(c) for c, _ in QUESTIONS]
    prompts = [engine.encode(c + choice) for c, choices in QUESTIONS for choice in choices]
    for i, ids in enumerate(prompts):  # each choice's prompt starts with its context's ids
        assert ids[: len(contexts[i // 4])] == contexts[i // 4]
    return [*prompts, engine.encode(UNRELATED)], contexts


def run_together(engine: Engine, reqs: list[GenRequest]) -> list[list[Delta | Done]]:
    """Every request's events, all of them queued before the worker looks: admitted, and
    prefilled, together."""

    async def main() -> list[list[Delta | Done]]:
        async def events(r: GenRequest) -> list[Delta | Done]:
            return [ev async for ev in engine.generate(r)]

        with engine._cv:
            tasks = [asyncio.create_task(events(r)) for r in reqs]
            while engine.queued < len(reqs):
                await asyncio.sleep(0)
        return await asyncio.wait_for(asyncio.gather(*tasks), 120)

    return asyncio.run(main())


@contextmanager
def fed_rows(engine: Engine) -> Iterator[list[list[int]]]:
    """The rows of token ids the model is fed while inside, each without its padding."""
    rows: list[list[int]] = []
    forward = engine.model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        for i, row in enumerate(ids.tolist()):
            own = mask[i, -len(row) :].tolist() if mask is not None else [True] * len(row)
            rows.append([t for t, real in zip(row, own, strict=True) if real])
        return forward(*args, **kwargs)

    engine.model.forward = counting
    try:
        yield rows
    finally:
        del engine.model.forward


def holds(row: list[int], part: list[int]) -> bool:
    return any(row[i : i + len(part)] == part for i in range(len(row) - len(part) + 1))


def reference_logprobs(hf: Any, ids: list[int], k: int) -> tuple[list[float], list[list[float]]]:
    """Each token's logprob after the ones before it, by a forward pass of ``ids`` alone,
    and the ``k`` likeliest tokens' logprobs at each position."""
    import torch

    with torch.no_grad():
        logprobs = torch.log_softmax(hf(torch.tensor([ids])).logits[0, :-1].float(), -1)
    chosen = logprobs.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    return chosen, torch.topk(logprobs, k).values.tolist()


def greedy(hf: Any, ids: list[int], n: int) -> list[int]:
    import torch

    out = hf.generate(
        torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return list(out[0, len(ids) :].tolist())


def test_choices_of_a_question_share_their_context_and_score_as_alone(
    model_dir: Path, hf: Any
) -> None:
    """Two questions x four choices and a prompt that shares nothing, scored in one
    prefill group: each context runs once, and every prompt's logprobs (and its two
    likeliest tokens at each position) are what a forward pass of it alone gives."""
    engine = Engine(model_dir, max_running=16)
    try:
        prompts, contexts = prompts_of(engine)
        reqs = [
            GenRequest(f"p{i}", prompt_ids=ids, max_tokens=0, prompt_logprobs=2)
            for i, ids in enumerate(prompts)
        ]
        seqs = [Seq(r, None, None) for r in reqs]  # type: ignore[arg-type]
        (group,) = prefill_groups(seqs)  # one group: both questions and the unrelated prompt
        assert sorted(set(group.shared)) == [0, *sorted({len(c) for c in contexts})]
        with fed_rows(engine) as rows:
            got = run_together(engine, reqs)
        for context in contexts:  # once, not once per choice
            assert sum(holds(row, context) for row in rows) == 1
        for ids, events in zip(prompts, got, strict=True):
            first, done = events[0], events[-1]
            assert isinstance(first, Delta) and first.prompt_logprobs is not None
            assert isinstance(done, Done) and (done.finish_reason, done.prompt_tokens) == (
                "length",
                len(ids),
            )
            want, top = reference_logprobs(hf, ids, 2)
            scores = [e.logprob for e in first.prompt_logprobs]
            assert math.isnan(scores[0])
            assert scores[1:] == pytest.approx(want, abs=1e-4)
            alternatives = [[a.logprob for a in e.top_logprobs] for e in first.prompt_logprobs]
            assert alternatives[0] == []
            for got_top, want_top in zip(alternatives[1:], top, strict=True):
                assert got_top == pytest.approx(want_top, abs=1e-4)
    finally:
        engine.close()


def test_sharing_runs_fewer_tokens_than_the_whole_prompts(model_dir: Path) -> None:
    """The same scoring with sharing turned off feeds every prompt whole (each context
    once per choice): what sharing saves, counted in tokens the model is fed."""
    fed = {}
    for share in (True, False):
        engine = Engine(model_dir, max_running=16, share_prefixes=share)
        try:
            prompts, contexts = prompts_of(engine)
            reqs = [
                GenRequest(f"p{i}", prompt_ids=ids, max_tokens=0, prompt_logprobs=0)
                for i, ids in enumerate(prompts)
            ]
            with fed_rows(engine) as rows:
                run_together(engine, reqs)
            fed[share] = (sum(map(len, rows)), [sum(holds(r, c) for r in rows) for c in contexts])
        finally:
            engine.close()
    assert fed[False] == (sum(map(len, prompts)), [4, 4])
    assert fed[True][1] == [1, 1]
    assert fed[True][0] == fed[False][0] - 3 * sum(map(len, contexts))


@pytest.mark.parametrize("unrelated", [True, False])
@pytest.mark.parametrize("scored", [True, False])
def test_prompts_sharing_a_prefix_generate_as_alone(
    model_dir: Path, hf: Any, scored: bool, unrelated: bool
) -> None:
    """Choices that go on generating after their prefill (scored: echo with max_tokens),
    identical prompts (a request's n choices), and the prompt that shares nothing or not,
    in one group: each generates the greedy tokens it generates alone, each token with the
    logprob a forward pass of the prompt and the tokens before it gives, so every row
    joined the batch cache with its own keys and values."""
    import torch

    engine = Engine(model_dir, max_running=16)
    try:
        engine.eos_ids = set()
        prompts, contexts = prompts_of(engine)
        chosen = [*prompts[:3], *prompts[4:6], prompts[0]]  # prompts[0] twice
        prompts = [*chosen, prompts[-1]] if unrelated else chosen
        reqs = [
            GenRequest(f"g{i}", prompt_ids=ids, max_tokens=6 + i % 3, temperature=0.0,
                       logprobs=True, prompt_logprobs=0 if scored else None)
            for i, ids in enumerate(prompts)
        ]  # fmt: skip
        seqs = [Seq(r, None, None) for r in reqs]  # type: ignore[arg-type]
        (group,) = prefill_groups(seqs)  # the prompt that shares nothing among the others
        assert (0 in group.shared) == unrelated and len(set(group.shared) - {0}) == 2
        with fed_rows(engine) as rows:
            got = run_together(engine, reqs)
        for context in contexts:
            assert sum(holds(row, context) for row in rows) == 1
        for req, events in zip(reqs, got, strict=True):
            ids = req.prompt_ids or []
            done = events[-1]
            assert isinstance(done, Done) and done.completion_tokens == req.max_tokens
            tokens = [
                ev.token_id for ev in events if isinstance(ev, Delta) and ev.token_id is not None
            ]
            assert tokens == greedy(hf, ids, req.max_tokens)
            with torch.no_grad():
                logits = hf(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : -1]
            want = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(tokens)[:, None])
            logprobs = [
                ev.logprob for ev in events if isinstance(ev, Delta) and ev.token_id is not None
            ]
            assert logprobs == pytest.approx(want[:, 0].tolist(), abs=1e-4)
    finally:
        engine.close()


def test_a_failing_rest_fails_alone(model_dir: Path, hf: Any) -> None:
    """A choice whose rest holds no such token: the shared passes fail, the group's
    prompts are prefilled again one by one, and only that one fails."""
    engine = Engine(model_dir, max_running=16)
    try:
        prompts, _ = prompts_of(engine)
        bad = [*prompts[0], 10**6]
        reqs = [
            GenRequest(f"p{i}", prompt_ids=ids, max_tokens=0, prompt_logprobs=0)
            for i, ids in enumerate([*prompts[:4], bad])
        ]
        seqs = [Seq(r, None, None) for r in reqs]  # type: ignore[arg-type]
        assert all(prefill_groups(seqs)[0].shared)  # the bad one shares the context too
        got = run_together(engine, reqs)
        for ids, events in zip(prompts[:4], got[:4], strict=True):
            first = events[0]
            assert isinstance(first, Delta) and first.prompt_logprobs is not None
            want, _ = reference_logprobs(hf, ids, 1)
            assert [e.logprob for e in first.prompt_logprobs[1:]] == pytest.approx(want, abs=1e-4)
        done = got[-1][-1]
        assert isinstance(done, Done) and done.finish_reason == "error" and done.error
    finally:
        engine.close()


def test_shared_prefixes_are_each_questions_context() -> None:
    """Prompts whose contexts open alike are two clusters, each with its own context (not
    one with the common opening); identical prompts share all but their last token; a
    prefix that saves too little is not shared."""
    opening = list(range(100, 110))
    a, b = [*opening, *range(200, 240)], [*opening, *range(300, 330)]
    prompts = [[*a, 1], [*a, 2, 3], [*b, 4], [*b, 5], [*b, 6, 6], [7, 8, 9], [*b, 4]]
    assert shared_prefixes(prompts) == [50, 50, 40, 40, 40, 0, 40]
    assert shared_prefixes([a, a, a]) == [49, 49, 49]
    # one choice more than the prefix saves: (2 - 1) x 20 tokens < 32
    assert shared_prefixes([[*a[:20], 1], [*a[:20], 2]]) == [0, 0]
    assert shared_prefixes([[*a[:20], 1], [*a[:20], 2], [*a[:20], 3]]) == [20, 20, 20]
    assert shared_prefixes([[*a, 1], [*a, 2]], min_saved=100) == [0, 0]


def test_groups_keep_a_question_whole() -> None:
    """A question's choices stay in one group whatever their lengths (the prefix runs once
    for all of them), and a group is priced by its two passes: a long prompt sharing
    nothing does not join short rests it would pad."""

    def seqs(prompts: list[list[int]]) -> list[Seq]:
        return [
            Seq(GenRequest(str(i), prompt_ids=p, max_tokens=0, prompt_logprobs=0), None, None)  # type: ignore[arg-type]
            for i, p in enumerate(prompts)
        ]

    ctx = list(range(100, 140))
    question = [[*ctx, *range(1, 1 + n)] for n in (1, 3, 30, 2)]
    (group,) = prefill_groups(seqs(question))
    assert group.shared == [40] * 4
    # unshared, the 31-token difference pads too much: the longest prompt goes alone
    assert len(prefill_groups(seqs(question), min_saved=None)) == 2
    long = list(range(1000, 1200))
    groups = prefill_groups(seqs([*question, long]))
    assert [len(g.seqs) for g in groups] == [1, 4]


def test_no_sharing_with_a_sliding_window(model_dir: Path, tmp_path: Path) -> None:
    """A shared prefix's row has padding between the prefix and the rest, which a sliding
    window would count: a model with one prefills every prompt whole."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    from lmops.models.sequences import SHARE_MIN_SAVED
    from tests.train.tiny import tiny_shape

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(0)
    MistralForCausalLM(MistralConfig(**tiny_shape(tok), sliding_window=16)).save_pretrained(
        str(tmp_path / "mistral")
    )
    tok.save_pretrained(str(tmp_path / "mistral"))
    for folder, expected in ((tmp_path / "mistral", None), (model_dir, SHARE_MIN_SAVED)):
        engine = Engine(folder, max_running=16)
        try:
            assert engine.share_min_saved == expected
        finally:
            engine.close()


def test_no_sharing_where_padding_in_a_row_would_change_the_answer(
    model_dir: Path, tmp_path: Path
) -> None:
    """GPT-Neo's local layers count cache columns in their window (``attention_layers``,
    ``window_size``), and MPT's ALiBi reads cache columns for distance: a hole between a
    shared prefix and its rest changed their tokens (6 of 9 greedy rows). Neither shares,
    nor uses the cached few-shot prefix, which leaves the same holes."""
    import torch
    import transformers as T

    tok = T.AutoTokenizer.from_pretrained(str(model_dir))
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id, "vocab_size": len(tok)}  # fmt: skip
    models = {
        "gptneo": T.GPTNeoForCausalLM(
            T.GPTNeoConfig(
                hidden_size=64,
                num_layers=2,
                num_heads=4,
                attention_types=[[["global", "local"], 1]],
                window_size=16,
                max_position_embeddings=256,
                **ids,
            )
        ),
        "mpt": T.MptForCausalLM(
            T.MptConfig(d_model=64, n_layers=2, n_heads=4, max_seq_len=256, **ids)
        ),
    }
    for name, model in models.items():
        torch.manual_seed(0)
        model.save_pretrained(str(tmp_path / name))
        tok.save_pretrained(str(tmp_path / name))
        engine = Engine(tmp_path / name, max_running=16)
        try:
            assert engine.share_min_saved is None, name
            engine.cache_prefix(list(range(3, 40)))
            assert engine._prefix_of([]) is None, name
        finally:
            engine.close()


def test_a_question_too_big_for_one_pass_is_not_shared() -> None:
    """A shared cluster is one unit of a group: eight scored prompts with 1000-token rests
    made one 8,040-position pass against a 2,048 budget. Such a cluster is not shared; its
    prompts are grouped whole within the budget."""
    from lmops.models.sequences import SCORED_TOKENS, prefill_groups

    context = list(range(100, 140))
    seqs = [
        Seq(GenRequest(str(i), prompt_ids=context + [7 + i] * 1000, max_tokens=0,
                       prompt_logprobs=0), None, None)  # type: ignore[arg-type]
        for i in range(8)
    ]  # fmt: skip
    groups = prefill_groups(seqs, min_saved=32)
    assert all(not any(g.shared) for g in groups)
    assert all(sum(len(s.req.prompt_ids or []) for s in g.seqs) <= SCORED_TOKENS for g in groups)
