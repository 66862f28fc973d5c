"""Models whose layers attend to a sliding window of tokens (Mistral; Qwen2 with
``use_sliding_window``; Gemma 2 and 3, whose local and global layers alternate) generate
and score in the engine what each prompt gives alone: prompts of different lengths
prefilled together (left-padded), a request that joins a batch mid-generation, prompts
shorter than the window that generate past it, scored prompts that go on generating, the
few-shot prefix of an evaluation call (``cache_prefix``), and ``HFEvalModel``'s scoring
with a shared prefix. The reference for every token is transformers' own generation of the
prompt alone (its sliding-window cache), and for every logprob a forward pass of the
prompt and the tokens before it, alone."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from lmops.models.engine import Engine
from lmops.models.types import Delta, Done, GenRequest
from tests.train.tiny import make_tokenizer, tiny_shape

NEW = 24  # tokens generated: every prompt below runs past its window while generating
LENGTHS = (5, 60, 67, 80)  # one prompt shorter than every window, three longer


def _build(name: str, tok: Any) -> Any:
    import transformers as T

    shape = tiny_shape(tok)
    if name == "mistral":  # every layer slides over 16 tokens
        return T.MistralForCausalLM(T.MistralConfig(**shape, sliding_window=16))
    if name == "qwen2":  # layer 0 global, layer 1 slides over 8
        cfg = T.Qwen2Config(**shape, use_sliding_window=True, sliding_window=8, max_window_layers=1)
        return T.Qwen2ForCausalLM(cfg)
    if name == "gemma2":  # local then global, eager attention with soft-capping
        return T.Gemma2ForCausalLM(T.Gemma2Config(**shape, head_dim=16, sliding_window=8))
    if name == "gemma3x6":  # six layers, local local global (Gemma 3's pattern), window 5
        shape["num_hidden_layers"] = 6
        cfg = T.Gemma3TextConfig(**shape, head_dim=16, sliding_window=5, sliding_window_pattern=3)
        return T.Gemma3ForCausalLM(cfg)
    cfg = T.Gemma3TextConfig(**shape, head_dim=16, sliding_window=8, sliding_window_pattern=2)
    return T.Gemma3ForCausalLM(cfg)


MODELS = ["mistral", "qwen2", "gemma2", "gemma3"]  # the tests' models; and gemma3x6


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("window")
    tok = AutoTokenizer.from_pretrained(str(make_tokenizer(root / "tok")))
    out = {}
    for name in [*MODELS, "gemma3x6"]:
        torch.manual_seed(3)
        _build(name, tok).save_pretrained(str(root / name))
        tok.save_pretrained(str(root / name))
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def models(folders: dict[str, Path]) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    return {n: AutoModelForCausalLM.from_pretrained(str(f)).eval() for n, f in folders.items()}


def prompts(lengths: tuple[int, ...] = LENGTHS, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 300) for _ in range(n)] for n in lengths]


def greedy(hf: Any, ids: list[int], n: int = NEW) -> list[int]:
    """transformers' greedy tokens for ``ids`` alone, on its own sliding-window cache."""
    import torch

    out = hf.generate(
        torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return list(out[0, len(ids) :].tolist())


def logprobs_alone(hf: Any, ids: list[int]) -> list[float]:
    """log p(ids[j] | ids[:j]) for j >= 1, one forward pass of ``ids`` alone."""
    import torch

    with torch.no_grad():
        lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0, :-1].float(), -1)
    return list(lp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist())


def generated(events: list[Delta | Done]) -> tuple[list[int], list[float]]:
    deltas = [e for e in events if isinstance(e, Delta) and e.token_id is not None]
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "length", events[-1]
    return [e.token_id for e in deltas], [e.logprob for e in deltas]  # type: ignore[misc]


def together(engine: Engine, reqs: list[GenRequest]) -> list[list[Delta | Done]]:
    """Every request's events, all queued before the worker looks: prefilled together."""

    async def main() -> list[list[Delta | Done]]:
        async def events(r: GenRequest) -> list[Delta | Done]:
            return [ev async for ev in engine.generate(r)]

        with engine._cv:
            tasks = [asyncio.create_task(events(r)) for r in reqs]
            while engine.queued < len(reqs):
                await asyncio.sleep(0)
        return await asyncio.wait_for(asyncio.gather(*tasks), 120)

    return asyncio.run(main())


def request(i: int, ids: list[int], **kw: Any) -> GenRequest:
    return GenRequest(f"r{i}", prompt_ids=ids, max_tokens=NEW, temperature=0.0, logprobs=True, **kw)


def assert_as_alone(
    hf: Any, ids: list[int], tokens: list[int], lps: list[float], n: int = NEW
) -> None:
    assert tokens == greedy(hf, ids, n)
    # each generated token's logprob: a forward pass of the prompt and the tokens before it
    assert lps == pytest.approx(logprobs_alone(hf, ids + tokens)[len(ids) - 1 :], abs=1e-4)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_prompts_prefilled_together_generate_as_alone(
    folders: dict[str, Path], models: dict[str, Any], name: str, share: bool
) -> None:
    """Four prompts of 5 to 80 tokens (windows of 8 and 16) in one left-padded prefill:
    each generates, token for token and logprob for logprob, what it generates alone
    (with sharing off, too: 4 of 4 rows differed before, whatever the sharing)."""
    engine = Engine(folders[name], max_running=8, share_prefixes=share)
    try:
        engine.eos_ids = set()
        assert engine.share_min_saved is None  # a window counts padding inside a row
        batch = prompts()
        got = together(engine, [request(i, p) for i, p in enumerate(batch)])
        for ids, events in zip(batch, got, strict=True):
            assert_as_alone(models[name], ids, *generated(events))
    finally:
        engine.close()


@pytest.mark.parametrize("name", MODELS)
def test_a_request_joining_a_running_batch_generates_as_alone(
    folders: dict[str, Path], models: dict[str, Any], name: str
) -> None:
    """An 80-token prompt decodes; after its sixth token a 60-token and a 5-token prompt
    join the batch (their rows padded to the running cache's width, or it to theirs):
    all three generate what they generate alone."""
    engine = Engine(folders[name], max_running=8)
    try:
        engine.eos_ids = set()
        first, *later = prompts((80, 60, 5), seed=1)

        async def main() -> list[list[Delta | Done]]:
            got: list[Delta | Done] = []
            events = engine.submit(request(0, first))
            async for batch in events:
                got += batch
                if sum(isinstance(e, Delta) for e in got) >= 6:
                    break
            assert engine.running == 1
            joined = [engine.submit(request(i + 1, p)) for i, p in enumerate(later)]
            async for batch in events:
                got += batch

            async def drain(ev: Any) -> list[Delta | Done]:
                return [e async for b in ev for e in b]

            return [got, *await asyncio.gather(*(drain(e) for e in joined))]

        results = asyncio.run(main())
        for ids, events in zip([first, *later], results, strict=True):
            assert_as_alone(models[name], ids, *generated(events))
    finally:
        engine.close()


@pytest.mark.parametrize("name", ["mistral", "gemma2", "qwen2"])
def test_scored_prompts_score_as_alone_and_go_on(
    folders: dict[str, Path], models: dict[str, Any], name: str
) -> None:
    """Echo scoring of prompts of different lengths in one pass: each prompt token's
    logprob is a forward pass of the prompt alone; those that go on generate as alone."""
    engine = Engine(folders[name], max_running=8)
    try:
        engine.eos_ids = set()
        batch = prompts(seed=2)
        reqs = [request(i, p, prompt_logprobs=1) for i, p in enumerate(batch)]
        for ids, events in zip(batch, together(engine, reqs), strict=True):
            first = events[0]
            assert isinstance(first, Delta) and first.prompt_logprobs is not None
            scores = [e.logprob for e in first.prompt_logprobs[1:]]
            assert scores == pytest.approx(logprobs_alone(models[name], ids), abs=1e-4)
            assert_as_alone(models[name], ids, *generated(events))
    finally:
        engine.close()


@pytest.mark.parametrize("name", ["mistral", "gemma3"])
def test_the_cached_few_shot_prefix_is_not_used_and_prompts_generate_as_alone(
    folders: dict[str, Path], models: dict[str, Any], name: str
) -> None:
    """``cache_prefix`` (an evaluation call's few-shot examples) would leave padding
    between the prefix and each prompt's rest, which a window counts: the engine keeps
    the prefix's ids but prefills every prompt whole, and each generates as alone."""
    engine = Engine(folders[name], max_running=8)
    try:
        engine.eos_ids = set()
        shot = prompts((40,), seed=4)[0]
        batch = [shot + rest for rest in prompts((3, 20, 33), seed=5)]
        engine.cache_prefix(shot)
        got = together(engine, [request(i, p) for i, p in enumerate(batch)])
        assert engine._prefix is not None and engine._prefix[1] is None  # never computed
        for ids, events in zip(batch, got, strict=True):
            assert_as_alone(models[name], ids, *generated(events))
    finally:
        engine.close()


@pytest.mark.parametrize("name", ["mistral", "gemma3"])
def test_local_evaluation_with_a_few_shot_prefix_scores_as_alone(
    folders: dict[str, Path], models: dict[str, Any], name: str
) -> None:
    """``HFEvalModel``: contexts behind one few-shot prefix longer than the window, with
    one- and many-token continuations, scored in batches of three: each score is the sum
    of a forward pass of context + continuation alone, and each generation (on the
    engine, with the call's shared prefix) is transformers' greedy one."""
    from lmops.eval.lm import HFEvalModel, _Encoded, _run_async

    model = HFEvalModel(folders[name], device="cpu", batch_size=3)
    try:
        shot = prompts((30,), seed=6)[0]
        contexts = [shot + c for c in prompts((4, 11, 19, 26), seed=7)]
        continuations = prompts((1, 5, 12, 3), seed=8)
        encoded = [(c, x) for c in contexts for x in continuations[:2]] + [
            (contexts[0], continuations[2]),
            (contexts[3], continuations[3]),
        ]
        # token ids scored directly: random ids decoded and encoded again need not round-trip
        got = model._score([_Encoded(i, c, x) for i, (c, x) in enumerate(encoded)])
        for (c, x), (score, _) in zip(encoded, got, strict=True):
            want = sum(logprobs_alone(models[name], c + x)[len(c) - 1 :])
            assert score == pytest.approx(want, abs=1e-4)
        # generation, as generate() queues it: the call's shared prefix cached on the engine
        model.stop_ids = []
        reqs = [
            GenRequest(f"e{i}", prompt_ids=c, max_tokens=12, temperature=0.0)
            for i, c in enumerate(contexts)
        ]
        outs = _run_async(model._generate_on_engine(reqs))
        assert model._engine()._prefix[0][:30] == tuple(shot)  # kept, never used
        for c, out in zip(contexts, outs, strict=True):
            want = greedy(models[name], c, 12)
            assert out == model.tokenizer.decode(want, skip_special_tokens=True)
    finally:
        model.close()


def test_a_model_whose_every_layer_slides_keeps_only_its_window(
    folders: dict[str, Path], models: dict[str, Any]
) -> None:
    """Mistral's layers all read the last 16 tokens: the batch cache keeps 15 columns
    (what transformers' sliding-window cache keeps), so a decode step's mask is 16 wide
    however long the prompts; Gemma 3's global layers read everything, so its mask is as
    wide as the batch. Deliberately weak on Gemma 3 (only that its mask outgrows a window):
    the bound on its local layers' cache is asserted, step by step, in
    test_local_layers_keep_only_their_window_through_joins_and_early_ends."""
    widths: dict[str, set[int]] = {}
    for name in ("mistral", "gemma3"):
        engine = Engine(folders[name], max_running=8)
        seen = widths.setdefault(name, set())

        def spy(*args: Any, _w: set[int] = seen, _f: Any = engine.model.forward, **kw: Any) -> Any:
            if kw["input_ids"].shape[1] == 1:  # a decode step
                _w.add(kw["attention_mask"].shape[-1])
            return _f(*args, **kw)

        engine.model.forward = spy
        try:
            engine.eos_ids = set()
            together(engine, [request(i, p) for i, p in enumerate(prompts((60, 80), seed=9))])
        finally:
            engine.close()
    assert widths["mistral"] == {16}
    assert max(widths["gemma3"]) > 16


def top_alone(hf: Any, ids: list[int], k: int) -> list[list[float]]:
    """The ``k`` largest logprobs at each position from the last of ``ids``'s first token
    on, one forward pass of ``ids`` alone, most likely first."""
    import torch

    with torch.no_grad():
        lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
    return [row.topk(k).values.tolist() for row in lp]


LOCAL = {  # each layer's window, None for a global one
    "qwen2": [None, 8],
    "gemma2": [8, None],
    "gemma3": [8, None],
    "gemma3x6": [5, 5, None, 5, 5, None],
}


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_local_layers_keep_only_their_window_through_joins_and_early_ends(
    folders: dict[str, Path], models: dict[str, Any], name: str
) -> None:
    """Local and global layers mixed: an 80-token prompt decodes; after its sixth token,
    prompts of 60, 5 and 70 tokens join wanting 4, 24 and 12 tokens, so rows end at
    different steps (the batch loses rows, then leading columns). Every row generates what
    it generates alone, with its ``top_logprobs``; and at every decode step each local
    layer holds the last min(T, window - 1) of the mask's T columns (what transformers'
    own cache keeps), each global layer all T."""
    engine = Engine(folders[name], max_running=8)
    windows = LOCAL[name]
    assert engine._local == windows
    seen: list[tuple[int, list[int]]] = []  # (T, each layer's cached columns) per step
    forward = engine.model.forward

    def spy(*args: Any, **kw: Any) -> Any:
        if kw["input_ids"].shape[1] == 1:  # a decode step: the mask is (rows, T + 1)
            cache = kw[engine._cache_arg]
            widths = [layer.keys.shape[2] for layer in cache.layers]
            seen.append((kw["attention_mask"].shape[-1] - 1, widths))
        return forward(*args, **kw)

    engine.model.forward = spy
    try:
        engine.eos_ids = set()
        first, *later = prompts((80, 60, 5, 70), seed=11)
        wants = [NEW, 4, NEW, 12]

        def req(i: int, ids: list[int]) -> GenRequest:
            r = request(i, ids, top_logprobs=3)
            r.max_tokens = wants[i]
            return r

        async def main() -> list[list[Delta | Done]]:
            got: list[Delta | Done] = []
            events = engine.submit(req(0, first))
            async for batch in events:
                got += batch
                if sum(isinstance(e, Delta) for e in got) >= 6:
                    break
            joined = engine.submit_all([req(i + 1, p) for i, p in enumerate(later)])
            async for batch in events:
                got += batch

            async def drain(ev: Any) -> list[Delta | Done]:
                return [e async for b in ev for e in b]

            return [got, *await asyncio.gather(*(drain(e) for e in joined))]

        results = asyncio.run(main())
    finally:
        engine.close()
    hf = models[name]
    for ids, events, n in zip([first, *later], results, wants, strict=True):
        tokens, lps = generated(events)
        assert_as_alone(hf, ids, tokens, lps, n)
        entries = [e.logprobs for e in events if isinstance(e, Delta) and e.logprobs]
        tops = [[t.logprob for t in entry.top_logprobs] for entry in entries]
        want = top_alone(hf, ids + tokens, 3)[len(ids) - 1 : -1]
        assert len(tops) == n and all(
            got == pytest.approx(w, abs=1e-4) for got, w in zip(tops, want, strict=True)
        )
    assert max(t for t, _ in seen) > 80  # the batch ran far past the window
    for t, widths in seen:
        assert widths == [t if w is None else min(t, w - 1) for w in windows], (t, widths)


def greedy_uncached(hf: Any, ids: list[int], n: int = NEW) -> list[int]:
    """Greedy tokens for ``ids`` alone, each from a forward pass of everything before it
    (no cache: for a model whose own cache its masks do not fit)."""
    import torch

    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(hf(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_model_whose_local_masks_ignore_the_cache_keeps_every_column(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: Any, attn: str
) -> None:
    """A Gemma 3 whose local layers' mask spans every column of the 2D mask, windowed by
    position (as a model that builds it without the cache's mask sizes does): a cache
    trimmed to the window no longer fits it: with sdpa the shapes differ (an error), with
    an eager attention that cuts the mask to the keys' width (as transformers' eager code
    once did) it masks the wrong columns, silently. The engine's one-time check sees both,
    keeps every column in those layers, says so once, and each prompt generates as alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.masking_utils import create_causal_mask, sliding_window_overlay
    from transformers.models.gemma3 import modeling_gemma3

    def full_width(**kw: Any) -> Any:  # sized from the first global layer's cache
        overlay = sliding_window_overlay(kw["config"].sliding_window)
        return create_causal_mask(**kw, and_mask_function=overlay)

    monkeypatch.setattr(modeling_gemma3, "create_sliding_window_causal_mask", full_width)
    eager = modeling_gemma3.eager_attention_forward

    def cut(module: Any, query: Any, key: Any, value: Any, mask: Any, **kw: Any) -> Any:
        mask = None if mask is None else mask[:, :, :, : key.shape[-2]]
        return eager(module, query, key, value, mask, **kw)

    monkeypatch.setattr(modeling_gemma3, "eager_attention_forward", cut)
    folder = str(folders["gemma3"])
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn).eval()
    loaded = (hf, AutoTokenizer.from_pretrained(folder))
    with caplog.at_level("WARNING", logger="lmops.serve"):
        engine = Engine(folders["gemma3"], max_running=8, device="cpu", loaded=loaded)
    try:
        assert engine._local is None
        assert [r.message for r in caplog.records].count(
            "Gemma3ForCausalLM: its local layers' masks do not follow a cache trimmed to "
            "their window; they keep every column"
        ) == 1
        engine.eos_ids = set()
        batch = prompts((80, 60, 5), seed=12)
        got = together(engine, [request(i, p) for i, p in enumerate(batch)])
        for ids, events in zip(batch, got, strict=True):
            tokens, lps = generated(events)
            assert tokens == greedy_uncached(hf, ids)
            want = logprobs_alone(hf, ids + tokens)[len(ids) - 1 :]
            assert lps == pytest.approx(want, abs=1e-4)
    finally:
        engine.close()


def counted_checks(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each run of the engine's start-up check (``trims_exactly``) answered."""
    from lmops.models import attention

    runs: list[bool] = []
    check = attention.trims_exactly

    def counted(*args: Any, **kw: Any) -> bool:
        runs.append(check(*args, **kw))
        return runs[-1]

    monkeypatch.setattr(attention, "trims_exactly", counted)
    return runs


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_transformers_own_mixed_models_trim_their_local_layers_unchecked(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """transformers' own Gemma 2/3 and Qwen2 mask their local layers with
    ``create_sliding_window_causal_mask`` (sized from the cache layer): the engine trims
    them with no start-up check (which for a real window, Gemma 2's 4096, would prefill two
    rows of 4098 tokens at every start). Where that is not known, the check runs once and
    passes: the layout the engine trusts is the one the check accepts."""
    from lmops.models import attention

    runs = counted_checks(monkeypatch)
    engine = Engine(folders[name], max_running=8)
    engine.close()
    assert runs == [] and engine._local == LOCAL[name]
    monkeypatch.setattr(attention, "masks_local_layers_from_cache", lambda model: False)
    engine = Engine(folders[name], max_running=8)
    engine.close()
    assert runs == [True] and engine._local == LOCAL[name]


def test_a_large_window_model_not_transformers_own_keeps_every_column_unchecked(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A Gemma 3 whose class is not transformers' own (as remote code's is), with a window
    of 260: the check would prefill two rows of 262 tokens, past the bound of 256, so it
    does not run; the local layers keep every column (correct, not trimmed), said once,
    and prompts longer and shorter than the window generate as alone."""
    import torch
    import transformers as T

    class Gemma3Elsewhere(T.Gemma3ForCausalLM):
        pass

    tok = T.AutoTokenizer.from_pretrained(str(folders["gemma3"]))
    shape = {**tiny_shape(tok), "max_position_embeddings": 512}
    cfg = T.Gemma3TextConfig(**shape, head_dim=16, sliding_window=260, sliding_window_pattern=2)
    torch.manual_seed(5)
    hf = Gemma3Elsewhere(cfg).eval()
    runs = counted_checks(monkeypatch)
    with caplog.at_level("WARNING", logger="lmops.serve"):
        engine = Engine(folders["gemma3"], max_running=8, device="cpu", loaded=(hf, tok))
    try:
        assert runs == [] and engine._local is None
        assert [r.message for r in caplog.records].count(
            "Gemma3Elsewhere: its local layers' masks are not transformers' own, and their "
            "window (260) is too large to check at start-up (262 tokens a row, over 256); "
            "they keep every column"
        ) == 1
        engine.eos_ids = set()
        batch = prompts((300, 20), seed=13)
        got = together(engine, [request(i, p) for i, p in enumerate(batch)])
        for ids, events in zip(batch, got, strict=True):
            assert_as_alone(hf, ids, *generated(events))
    finally:
        engine.close()


def test_local_layers_are_kept_whole_where_the_cache_counts_seen_tokens_elsewhere(
    models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine sets a trimmed local layer's count of tokens seen where transformers 5.x
    keeps it (``cumulative_length``, ``lmops.models.compat``): a transformers whose
    sliding-window layer keeps it under another name gets no trimmed local layers."""
    from transformers.cache_utils import DynamicSlidingWindowLayer

    from lmops.models.attention import local_windows

    assert local_windows(models["gemma3"]) == [8, None]
    init = DynamicSlidingWindowLayer.__init__

    def renamed(self: Any, *args: Any, **kw: Any) -> None:
        init(self, *args, **kw)
        self.seen_tokens = self.__dict__.pop("cumulative_length")

    monkeypatch.setattr(DynamicSlidingWindowLayer, "__init__", renamed)
    assert local_windows(models["gemma3"]) is None
