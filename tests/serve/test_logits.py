"""The built-in engine's logits processors (models/logits.py) against independent
references: repetition_penalty gives the greedy tokens of transformers' own
``generate(repetition_penalty=...)``; logit_bias and the frequency and presence penalties
give those of a plain loop that recomputes the whole sequence each step and applies
OpenAI's formula. Each sequence keeps its own processors inside a running batch, and a
seed still gives the same text whatever runs beside it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lmops.models.engine import Engine
from lmops.models.types import Delta, Done, GenRequest, LogitsOptions
from tests.train.tiny import make_model, make_tokenizer

PROMPTS = ["The quick brown", "今天天气", "Machine learning models need clean data and", "Hello"]
STEPS = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logits")
    return make_model(root / "m", make_tokenizer(root / "tok"), seed=5)


async def tokens(engine: Engine, req: GenRequest) -> list[int]:
    """The reply's token ids (with logprobs asked, each token arrives on one delta)."""
    req.logprobs = True
    out: list[int] = []
    async for ev in engine.generate(req):
        if isinstance(ev, Delta) and ev.token_id is not None:
            out.append(ev.token_id)
        elif isinstance(ev, Done):
            assert ev.finish_reason == "length", ev
    return out


def run_all(engine: Engine, reqs: list[GenRequest]) -> list[list[int]]:
    async def main() -> list[list[int]]:
        return list(await asyncio.gather(*(tokens(engine, r) for r in reqs)))

    return asyncio.run(main())


def reference_loop(model_dir: Path, prompt: list[int], options: LogitsOptions) -> list[int]:
    """Greedy tokens with OpenAI's formula applied to the full forward's last logits."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    out: list[int] = []
    with torch.no_grad():
        for _ in range(STEPS):
            logits = m(torch.tensor([prompt + out])).logits[0, -1].float()
            for t, b in options.logit_bias.items():
                logits[t] += b
            counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=len(logits))
            logits -= options.frequency_penalty * counts.float()
            logits -= options.presence_penalty * (counts > 0).float()
            out.append(int(logits.argmax()))
    return out


def test_repetition_penalty_matches_transformers(model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    engine = Engine(model_dir, max_running=8)
    try:
        engine.eos_ids = set()  # full-length replies
        cases = [(p, r) for p in PROMPTS for r in (1.0, 1.3, 2.0)]
        ids = {p: engine.encode(p) for p in PROMPTS}
        reqs = [
            GenRequest(
                f"{i}",
                prompt_ids=ids[p],
                max_tokens=STEPS,
                temperature=0.0,
                logits=LogitsOptions(repetition_penalty=r) if r != 1.0 else None,
            )
            for i, (p, r) in enumerate(cases)
        ]
        got = run_all(engine, reqs)  # all in one running batch
        for (p, r), tok in zip(cases, got, strict=True):
            want = hf.generate(
                torch.tensor([ids[p]]), max_new_tokens=STEPS, do_sample=False,
                repetition_penalty=r, eos_token_id=None, pad_token_id=0,
            )[0, len(ids[p]) :].tolist()  # fmt: skip
            assert tok == want, (p, r)
        # (it changes something: the greedy reply of the first prompt at 2.0)
        assert got[0] != got[2]
    finally:
        engine.close()


def test_logit_bias_and_penalties_match_a_reference_loop(model_dir: Path) -> None:
    engine = Engine(model_dir, max_running=8)
    try:
        engine.eos_ids = set()
        prompt = engine.encode("The quick brown")
        cases = [
            LogitsOptions(),
            LogitsOptions(frequency_penalty=1.5),
            LogitsOptions(presence_penalty=2.0),
            LogitsOptions(frequency_penalty=-0.5, presence_penalty=1.0),
            LogitsOptions(logit_bias={7: 100.0}),
            LogitsOptions(logit_bias={7: 8.0, 12: -100.0}, frequency_penalty=1.0),
        ]
        reqs = [
            GenRequest(
                f"{i}",
                prompt_ids=prompt,
                max_tokens=STEPS,
                temperature=0.0,
                logits=o if o.active else None,
            )
            for i, o in enumerate(cases)
        ]
        got = run_all(engine, reqs)
        for options, tok in zip(cases, got, strict=True):
            assert tok == reference_loop(model_dir, prompt, options), options
        assert got[4] == [7] * STEPS
        assert all(t != got[0] for t in got[1:])  # each one changed the plain reply
    finally:
        engine.close()


def test_seeded_sampling_with_penalties_reproduces_beside_other_requests(
    model_dir: Path,
) -> None:
    engine = Engine(model_dir, max_running=8)
    try:
        engine.eos_ids = set()
        ids = engine.encode("Hello")
        options = LogitsOptions(logit_bias={9: 3.0}, frequency_penalty=0.8, presence_penalty=0.3)

        def sampled(name: str) -> GenRequest:
            return GenRequest(
                name, prompt_ids=ids, max_tokens=STEPS, temperature=1.0, seed=7, logits=options
            )

        alone = run_all(engine, [sampled("a")])[0]
        others = [
            GenRequest("g", prompt_ids=engine.encode("The quick brown"), max_tokens=STEPS + 4),
            GenRequest("p", prompt_ids=ids, max_tokens=STEPS, logits=LogitsOptions(
                presence_penalty=2.0), temperature=0.5, seed=1),
        ]  # fmt: skip
        assert run_all(engine, [*others, sampled("b")])[-1] == alone
        plain = run_all(engine, [GenRequest("c", prompt_ids=ids, max_tokens=STEPS,
                                            temperature=1.0, seed=7)])[0]  # fmt: skip
        assert plain != alone
    finally:
        engine.close()
