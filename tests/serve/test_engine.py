"""The built-in engine: continuous batching gives exactly the greedy outputs of
sequential generation, whether prompts are prefilled together or late requests join a
running batch; streamed text is exactly what decoding the whole sequence gives; stop
strings (the earliest wins), max_tokens, cancellation, the queue cap, and a failing
sequence that ends alone."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from lmops.models.engine import Engine, EngineOverloaded
from lmops.models.sequences import Seq as _Seq
from lmops.models.types import Delta, Done, GenRequest
from tests.train.tiny import SENTENCES, make_model, make_tokenizer

PROMPTS = ["The quick brown", "今天天气", "Machine learning models need clean data and", "Hello"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engine")
    return make_model(root / "m", make_tokenizer(root / "tok"), seed=5)


async def collect(engine: Engine, req: GenRequest, delay: float = 0.0) -> tuple[str, Done]:
    await asyncio.sleep(delay)
    text = ""
    async for ev in engine.generate(req):
        if isinstance(ev, Delta):
            text += ev.text
        else:
            return text, ev
    raise AssertionError("no Done")


def reference(model_dir: Path, prompt_ids: list[int], n: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    out = m.generate(
        torch.tensor([prompt_ids]),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("arrival", ["staggered", "together"])
def test_batched_greedy_equals_sequential(model_dir: Path, arrival: str) -> None:
    engine = Engine(model_dir, max_running=4)
    try:
        reqs = [
            GenRequest(f"r{i}", prompt_ids=engine.encode(p), max_tokens=12, temperature=0.0)
            for i, p in enumerate(PROMPTS)
        ]
        engine.eos_ids = set()  # compare full-length generations

        async def main() -> list[tuple[str, Done]]:
            if arrival == "staggered":  # later requests join while earlier ones decode
                return await asyncio.gather(
                    *(collect(engine, r, delay=0.02 * i) for i, r in enumerate(reqs))
                )
            # all queued before the worker looks: their prompts (of different lengths) are
            # prefilled together, left-padded, in one forward pass
            with engine._cv:
                tasks = [asyncio.create_task(collect(engine, r)) for r in reqs]
                while engine.queued < len(reqs):
                    await asyncio.sleep(0)
            return await asyncio.gather(*tasks)

        results = asyncio.run(main())
        for req, (text, done) in zip(reqs, results, strict=True):
            expected = reference(model_dir, req.prompt_ids or [], 12)
            assert done.finish_reason == "length" and done.completion_tokens == 12
            assert text == engine.tokenizer.decode(expected, skip_special_tokens=True)
            assert done.prompt_tokens == len(req.prompt_ids or [])
    finally:
        engine.close()


def test_stop_strings_cancellation_and_queue_cap(model_dir: Path) -> None:
    engine = Engine(model_dir, max_running=1, max_queue=1)
    try:
        engine.eos_ids = set()
        ids = engine.encode("The quick brown")
        full = engine.tokenizer.decode(reference(model_dir, ids, 10), skip_special_tokens=True)
        stop = full[3:6]

        async def main() -> None:
            text, done = await collect(
                engine, GenRequest("s", prompt_ids=ids, max_tokens=10, temperature=0.0, stop=[stop])
            )
            assert done.finish_reason == "stop" and text == full[: full.index(stop)]
            # a client that leaves mid-stream frees the slot for the next request
            gen = engine.generate(GenRequest("c", prompt_ids=ids, max_tokens=200, temperature=0.0))
            await gen.__anext__()
            await gen.aclose()
            text, done = await asyncio.wait_for(
                collect(engine, GenRequest("n", prompt_ids=ids, max_tokens=3, temperature=0.0)), 20
            )
            assert done.completion_tokens == 3
            # capacity is free running slots (1) + queue (1): with the worker held (its
            # condition's RLock is re-entrant for this thread) two requests wait, a third is refused
            for _ in range(2000):  # let the worker retire the finished sequence first
                if engine.running == 0 and engine.queued == 0:
                    break
                await asyncio.sleep(0.005)
            with engine._cv:
                busy = [
                    asyncio.create_task(
                        collect(engine, GenRequest(f"b{i}", prompt_ids=ids, max_tokens=5))
                    )
                    for i in range(2)
                ]
                for _ in range(1000):
                    if engine.queued >= 2:
                        break
                    await asyncio.sleep(0)
                assert engine.queued == 2
                with pytest.raises(EngineOverloaded):
                    await collect(engine, GenRequest("x", prompt_ids=ids, max_tokens=2))
            results = await asyncio.wait_for(asyncio.gather(*busy), 30)
            assert [d.completion_tokens for _t, d in results] == [5, 5]

        asyncio.run(main())
    finally:
        engine.close()


def test_sampling_is_reproducible_with_a_seed(model_dir: Path) -> None:
    engine = Engine(model_dir)
    try:
        engine.eos_ids = set()
        ids = engine.encode("Hello")

        def sampled(seed: int, top_p: float = 0.9) -> GenRequest:
            return GenRequest(
                f"s{seed}", prompt_ids=ids, max_tokens=16, temperature=1.0, top_p=top_p, seed=seed
            )

        async def alone(req: GenRequest) -> str:
            return (await collect(engine, req))[0]

        async def among_others() -> list[tuple[str, Done]]:
            others = [
                GenRequest("g", prompt_ids=engine.encode("The quick brown"), max_tokens=20),
                sampled(8),
                sampled(9, top_p=1.0),
            ]
            return await asyncio.gather(*(collect(engine, r) for r in [sampled(7), *others]))

        a = asyncio.run(alone(sampled(7)))
        assert asyncio.run(alone(sampled(7))) == a
        assert asyncio.run(alone(sampled(8))) != a  # (not the same stream for every seed)
        # a seed draws from its own stream, whatever else is sampled in the same batch
        assert asyncio.run(among_others())[0][0] == a
        # a nucleus of (almost) nothing keeps only the most likely token: greedy decoding
        greedy = asyncio.run(alone(GenRequest("g", prompt_ids=ids, max_tokens=16, temperature=0)))
        assert asyncio.run(alone(sampled(7, top_p=1e-9))) == greedy
    finally:
        engine.close()


def test_a_failing_sequence_ends_alone(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(model_dir, max_running=4)
    try:
        engine.eos_ids = set()
        ids = engine.encode("The quick brown")
        accept = engine._accept

        def flaky(s: _Seq, tok: int, logprob: float, top: Any = None) -> None:
            if s.req.request_id == "late" and len(s.generated) == 3:
                raise RuntimeError("decoding broke")
            accept(s, tok, logprob, top)

        monkeypatch.setattr(engine, "_accept", flaky)
        ok = GenRequest("ok", prompt_ids=ids, max_tokens=8, temperature=0.0)
        expected = engine.tokenizer.decode(reference(model_dir, ids, 8), skip_special_tokens=True)

        async def together(reqs: list[GenRequest]) -> list[tuple[str, Done]]:
            with engine._cv:  # all are admitted, and prefilled, together
                tasks = [asyncio.create_task(collect(engine, r)) for r in reqs]
                while engine.queued < len(reqs):
                    await asyncio.sleep(0)
            return await asyncio.wait_for(asyncio.gather(*tasks), 60)

        (text, done), late, nan = asyncio.run(
            together(
                [
                    ok,
                    # fails in the decode step, on its 4th token
                    GenRequest("late", prompt_ids=ids, max_tokens=8, temperature=1.0, seed=1),
                    # no distribution to sample from: refused on the first token, which
                    # is picked for the prefilled batch at once
                    GenRequest("nan", prompt_ids=ids, max_tokens=8, temperature=float("nan")),
                ]
            )
        )
        assert done.finish_reason == "length" and text == expected
        assert (late[1].finish_reason, late[1].completion_tokens) == ("error", 3)
        assert "decoding broke" in (late[1].error or "")
        assert (nan[1].finish_reason, nan[1].completion_tokens) == ("error", 0)
        assert "temperature nan" in (nan[1].error or "")
        # no such token: the forward pass of the prompts prefilled with it fails, and they
        # are prefilled again one by one
        (text, done), oov = asyncio.run(
            together([ok, GenRequest("oov", prompt_ids=[*ids, 10**6], max_tokens=8)])
        )
        assert done.finish_reason == "length" and text == expected
        assert (oov[1].finish_reason, oov[1].completion_tokens) == ("error", 0)
        assert oov[1].error
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("temperature", "top_p", "expected"),
    [
        (1.0, 1.0, [0.5, 0.3, 0.2]),
        (1.0, 0.75, [0.5 / 0.8, 0.3 / 0.8, 0.0]),  # 0.2 lies past the nucleus
        (2.0, 1.0, [p**0.5 / sum(q**0.5 for q in (0.5, 0.3, 0.2)) for p in (0.5, 0.3, 0.2)]),
    ],
)
def test_sampling_follows_temperature_and_top_p(
    model_dir: Path, temperature: float, top_p: float, expected: list[float]
) -> None:
    """Token frequencies from the batched sampler against the distribution it samples."""
    import torch

    engine = Engine(model_dir)
    try:
        vocab = int(engine.model.config.vocab_size)
        row = torch.full((vocab,), -float("inf"))
        row[[10, 20, 30]] = torch.tensor([0.5, 0.3, 0.2]).log()
        loop = asyncio.new_event_loop()
        seqs = [
            _Seq(
                GenRequest("x", temperature=temperature, top_p=top_p, seed=i), loop, asyncio.Queue()
            )
            for i in range(8)
        ]
        counts = dict.fromkeys((10, 20, 30), 0)
        for _ in range(1500):
            for tok, logprob, _top in engine._pick(seqs, row.expand(8, vocab)):
                counts[tok] += 1
                assert logprob == pytest.approx(float(row[tok]), abs=1e-5)  # before temperature
        loop.close()
        freqs = [counts[t] / (8 * 1500) for t in (10, 20, 30)]
        assert freqs == pytest.approx(expected, abs=0.02)
    finally:
        engine.close()


# -- streamed text against whole-sequence decoding ------------------------------------------------
def stream(
    engine: Engine, tokens: list[int], stop: list[str], logprobs: bool, whole_chars: bool = False
) -> tuple[list[tuple[str, int | None, int | None]], str]:
    """Feed ``tokens`` to the engine as if sampled; the deltas it sends (text, and the
    logprob text offsets) and its finish reason."""
    loop = asyncio.new_event_loop()
    outbox: list[tuple[_Seq, Delta | Done]] = []
    req = GenRequest(
        "t",
        prompt_ids=[1],
        max_tokens=len(tokens),
        stop=stop,
        logprobs=logprobs,
        whole_chars=whole_chars,
    )
    s = _Seq(req, loop, asyncio.Queue(), outbox=outbox)
    for tok in tokens:
        engine._accept(s, tok, -1.0)
        if s.done:
            break
    loop.close()
    deltas = [
        (
            ev.text,
            *((ev.logprobs.text_offset, ev.logprobs.text_end) if ev.logprobs else (None,) * 2),
        )
        for _s, ev in outbox
        if isinstance(ev, Delta)
    ]
    (done,) = [ev for _s, ev in outbox if isinstance(ev, Done)]
    return deltas, done.finish_reason


def whole_sequence(
    tokenizer: Any, tokens: list[int], stop: list[str], logprobs: bool
) -> tuple[list[tuple[str, int | None, int | None]], str]:
    """The same, computed the slow way: decode every prefix of ``tokens`` whole."""
    out: list[tuple[str, int | None, int | None]] = []
    sent = prev = 0
    hold = max((len(st) - 1 for st in stop), default=0)
    text = ""
    for k in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:k], skip_special_tokens=True)
        span = (prev, len(text)) if logprobs else (None, None)
        prev = len(text)
        hits = [text.find(st) for st in stop if st in text]
        if hits:
            at = min(hits)
            if at > sent or logprobs:
                out.append((text[sent : max(at, sent)], *span))
            return out, "stop"
        ready = text.rstrip("\ufffd")  # partial characters wait
        upto = max(sent, len(ready) - hold)
        if upto > sent:
            out.append((ready[sent:upto], *span))
            sent = upto
        elif logprobs:
            out.append(("", *span))
    if len(text) > sent:
        out.append((text[sent:], None, None))
    return out, "length"


MULTIBYTE = "The quick 今天天气很好，我们 🙂🎉 fox 👩\u200d💻 done. 50+25=75"


def token_streams(tokenizer: Any) -> dict[str, list[int]]:
    ids = tokenizer.encode(MULTIBYTE, add_special_tokens=False)
    specials = list(tokenizer.all_special_ids)
    # special tokens (skipped when decoding), one between the bytes of a character
    spliced = ids[:3] + specials[:1] + ids[3:7] + specials + ids[7:]
    rng = random.Random(0)
    streams = {"multibyte": ids, "specials": spliced}
    for i in range(3):  # any ids at all: invalid UTF-8, stray bytes, specials
        streams[f"random{i}"] = [rng.randrange(len(tokenizer)) for _ in range(150)]
    return streams


@pytest.mark.parametrize(
    "stop", [[], ["天气", "fox"], ["fox", "qu", "o"], ["👩\u200d💻", "\ufffd"]], ids=str
)
def test_streamed_text_is_whole_sequence_decoding(model_dir: Path, stop: list[str]) -> None:
    engine = Engine(model_dir)
    try:
        engine.eos_ids = set()
        tok = engine.tokenizer
        for name, tokens in token_streams(tok).items():
            for logprobs in (False, True):
                got, reason = stream(engine, tokens, stop, logprobs)
                assert (got, reason) == whole_sequence(tok, tokens, stop, logprobs), name
                if reason == "length":
                    text = "".join(t for t, *_ in got)
                    assert text == tok.decode(tokens, skip_special_tokens=True), name
    finally:
        engine.close()


def test_a_max_tokens_cut_inside_a_character_drops_it_when_asked(model_dir: Path) -> None:
    """The gateway asks for whole characters: a reply cut by max_tokens between the bytes of
    a character ends before it, not in U+FFFD. Off (eval's way) the text is the tokenizer's
    decoding, replacement character included."""
    engine = Engine(model_dir)
    try:
        engine.eos_ids = set()
        tok = engine.tokenizer
        ids = tok.encode(MULTIBYTE, add_special_tokens=False)
        cut_inside = 0
        for k in range(1, len(ids) + 1):
            plain = tok.decode(ids[:k], skip_special_tokens=True)
            got, reason = stream(engine, ids[:k], [], False, whole_chars=True)
            assert reason == "length"
            assert "".join(t for t, *_ in got) == plain.rstrip("\ufffd"), k
            got, _ = stream(engine, ids[:k], [], False)
            assert "".join(t for t, *_ in got) == plain, k
            cut_inside += plain.endswith("\ufffd")
        assert cut_inside >= 5  # the text's CJK characters and emoji span several tokens
    finally:
        engine.close()


def test_streamed_text_with_a_byte_fallback_tokenizer(tmp_path: Path) -> None:
    """SentencePiece-style decoding: spaces as ``▁`` and bytes as ``<0x..>`` pieces, which
    decode to one U+FFFD each until their character is whole. (Not random ids: a run of byte
    pieces that is not UTF-8 decodes to U+FFFDs as a whole, even an ASCII byte piece
    decoded before the run went wrong, so whole-sequence decoding itself takes text back.)"""
    pytest.importorskip("sentencepiece", reason="the sentencepiece kinds need sentencepiece")
    from lmops.data.tokenizer import train_tokenizer

    train_tokenizer(
        SENTENCES, tmp_path / "tok", kind="sentencepiece_bpe", vocab_size=400, min_frequency=1
    )
    engine = Engine(make_model(tmp_path / "m", tmp_path / "tok"))
    try:
        engine.eos_ids = set()
        tok = engine.tokenizer
        for name, tokens in token_streams(tok).items():
            if name.startswith("random"):
                continue
            full = tok.decode(tokens, skip_special_tokens=True)
            got, reason = stream(engine, tokens, [], False)
            assert reason == "length"
            text = ""
            for piece, *_ in got:
                text += piece
                assert full.startswith(text), name  # nothing sent is ever taken back
            assert text == full, name
    finally:
        engine.close()


def test_the_earliest_stop_string_wins(model_dir: Path) -> None:
    engine = Engine(model_dir)
    try:
        ids = engine.tokenizer.encode(MULTIBYTE, add_special_tokens=False)
        # one token completes both "ox" and "fo"; the one listed first occurs later
        for stop in (["ox", "fo"], ["ox", "天气很", "fo"]):
            deltas, reason = stream(engine, ids, stop, False)
            expected = MULTIBYTE[: min(MULTIBYTE.index(st) for st in stop)]
            assert reason == "stop" and "".join(t for t, *_ in deltas) == expected
    finally:
        engine.close()


def test_generate_batches_hands_over_what_arrived_while_the_consumer_was_busy(
    model_dir: Path,
) -> None:
    """A slow consumer gets the tokens generated meanwhile in one batch (the server answers
    them with one write), and the events are exactly those ``generate`` yields."""
    engine = Engine(model_dir, max_running=2)

    def request() -> GenRequest:
        ids = engine.encode("The quick brown")
        # with logprobs every token arrives on exactly one delta
        return GenRequest(
            request_id="b", prompt_ids=ids, max_tokens=16, temperature=0.0, logprobs=True
        )

    async def batched() -> tuple[list[int], list[Delta | Done]]:
        sizes: list[int] = []
        events: list[Delta | Done] = []
        async for batch in engine.generate_batches(request()):
            sizes.append(len(batch))
            events += batch
            await asyncio.sleep(0.05)  # busy elsewhere: the engine runs ahead
        return sizes, events

    async def plain() -> list[Delta | Done]:
        return [ev async for ev in engine.generate(request())]

    try:
        sizes, events = asyncio.run(batched())
        reference_events = asyncio.run(plain())
    finally:
        engine.close()
    assert max(sizes) > 1 and isinstance(events[-1], Done)
    assert all(not isinstance(ev, Done) for ev in events[:-1])
    tokens = [ev.token_id for ev in events if isinstance(ev, Delta)]
    assert tokens == [ev.token_id for ev in reference_events if isinstance(ev, Delta)]
    assert len(tokens) == events[-1].completion_tokens


def test_a_generated_end_of_sequence_token_is_counted(model_dir: Path) -> None:
    """The EOS token a model generates is a completion token (as vLLM and OpenAI count
    it), though its text is never sent (issue #13 item 7)."""
    engine = Engine(model_dir)
    try:
        ids = engine.encode("The quick brown")
        greedy = reference(model_dir, ids, 8)
        # the first new greedy token (this tiny model may repeat its first) ends it now
        k = next((i for i in range(1, len(greedy)) if greedy[i] not in greedy[:i]), 0)
        engine.eos_ids = {greedy[k]}
        req = GenRequest(request_id="e", prompt_ids=ids, max_tokens=16, temperature=0.0)
        _text, done = asyncio.run(collect(engine, req))
    finally:
        engine.close()
    assert done.finish_reason == "stop" and done.completion_tokens == k + 1


def test_scored_prompts_are_prefilled_together_and_score_as_alone(model_dir: Path) -> None:
    """Prompts whose own logprobs are asked for (echo scoring, lm-eval's log-likelihood)
    share a forward pass, left-padded, and score what a plain forward pass of each gives;
    those that also generate go on to generate exactly the greedy tokens."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from lmops.models.sequences import prefill_groups

    engine = Engine(model_dir, max_running=8)
    try:
        engine.eos_ids = set()
        reqs = [
            GenRequest(f"s{i}", prompt_ids=engine.encode(p), max_tokens=4 * (i % 2),
                       temperature=0.0, prompt_logprobs=1)
            for i, p in enumerate(PROMPTS)
        ]  # fmt: skip
        seqs = [_Seq(r, None, None) for r in reqs]  # type: ignore[arg-type]
        assert len(prefill_groups(seqs)) < len(reqs)  # scored prompts group together

        async def main() -> list[list[Delta | Done]]:
            async def events(r: GenRequest) -> list[Delta | Done]:
                return [ev async for ev in engine.generate(r)]

            with engine._cv:  # all queued before the worker looks: one prefill group
                tasks = [asyncio.create_task(events(r)) for r in reqs]
                while engine.queued < len(reqs):
                    await asyncio.sleep(0)
            return await asyncio.gather(*tasks)

        got = asyncio.run(main())
        m = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        for req, evs in zip(reqs, got, strict=True):
            ids = req.prompt_ids or []
            first = evs[0]
            assert isinstance(first, Delta) and first.prompt_logprobs is not None
            with torch.no_grad():
                logits = m(torch.tensor([ids])).logits[0].float()
            want = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])
            scores = [e.logprob for e in first.prompt_logprobs]
            assert math.isnan(scores[0])
            assert scores[1:] == pytest.approx(want[:, 0].tolist(), abs=1e-4)
            done = evs[-1]
            assert isinstance(done, Done) and done.completion_tokens == req.max_tokens
            if req.max_tokens:
                text = "".join(ev.text for ev in evs if isinstance(ev, Delta))
                expected = reference(model_dir, ids, req.max_tokens)
                assert text == engine.tokenizer.decode(expected, skip_special_tokens=True)
    finally:
        engine.close()
