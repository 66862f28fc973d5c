"""The built-in engine: continuous batching gives exactly the greedy outputs of
sequential generation; late requests join a running batch; stop strings, max_tokens,
cancellation and the queue cap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lmops.serve.engine import Engine, EngineOverloaded
from lmops.serve.types import Delta, Done, GenRequest
from tests.train.tiny import make_model, make_tokenizer

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


def test_batched_greedy_equals_sequential(model_dir: Path) -> None:
    engine = Engine(model_dir, max_running=4)
    try:
        reqs = [
            GenRequest(f"r{i}", prompt_ids=engine.encode(p), max_tokens=12, temperature=0.0)
            for i, p in enumerate(PROMPTS)
        ]
        engine.eos_ids = set()  # compare full-length generations

        async def main() -> list[tuple[str, Done]]:
            # staggered: later requests join while earlier ones are decoding
            return await asyncio.gather(
                *(collect(engine, r, delay=0.02 * i) for i, r in enumerate(reqs))
            )

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
        ids = engine.encode("Hello")

        async def run(seed: int) -> str:
            text, _ = await collect(
                engine,
                GenRequest(
                    "s", prompt_ids=ids, max_tokens=8, temperature=1.0, top_p=0.9, seed=seed
                ),
            )
            return text

        a, b = asyncio.run(run(7)), asyncio.run(run(7))
        assert a == b
    finally:
        engine.close()
