"""The built-in engine on a CUDA GPU: continuous batching on the device gives each request
the greedy tokens it gets alone, and the gateway serves it through the official client.
Skipped without CUDA (run ``pytest -m gpu`` on a GPU machine)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lmops.models.types import Delta, Done, GenRequest
from tests.train.tiny import make_model, make_tokenizer

pytestmark = pytest.mark.gpu


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


requires_cuda = pytest.mark.skipif(
    not _cuda(), reason="needs a CUDA GPU: run `pytest -m gpu` on a GPU machine"
)


@requires_cuda
def test_engine_batches_on_cuda_with_each_request_as_alone(tmp_path: Path) -> None:
    from lmops.models.engine import Engine

    model = make_model(tmp_path / "m", make_tokenizer(tmp_path / "tok"), seed=5)
    engine = Engine(model, device="cuda", max_running=8)
    assert engine.device == "cuda"
    prompts = ["The quick brown", "今天天气", "Machine learning models need", "Hello"] * 2

    async def run(prompt: str) -> tuple[list[int], Done]:
        ids = engine.encode(prompt)
        # with logprobs every generated token arrives on exactly one delta
        req = GenRequest(
            request_id=prompt, prompt_ids=ids, max_tokens=12, temperature=0.0, logprobs=True
        )
        toks: list[int] = []
        async for ev in engine.generate(req):
            if isinstance(ev, Delta) and ev.token_id is not None:
                toks.append(ev.token_id)
            elif isinstance(ev, Done):
                return toks, ev
        raise AssertionError("no Done")

    async def alone() -> list[tuple[list[int], Done]]:
        return [await run(p) for p in prompts]

    async def together() -> list[tuple[list[int], Done]]:
        return list(await asyncio.gather(*(run(p) for p in prompts)))

    try:
        one, batch = asyncio.run(alone()), asyncio.run(together())
    finally:
        engine.close()
    for (t1, d1), (t2, d2) in zip(one, batch, strict=True):
        assert d1.finish_reason == d2.finish_reason != "error"
        # bf16 on the GPU: a near-tie can flip late in a padded batch; the start must agree
        assert t1[:4] == t2[:4]


@requires_cuda
def test_gateway_serves_the_engine_on_cuda(tmp_path: Path) -> None:
    import json

    import openai

    from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server

    model = make_model(tmp_path / "m", make_tokenizer(tmp_path / "tok"), seed=5)
    env = lmops_env(tmp_path / "home")
    key = lmops_cli(env)("keys", "create", "--name", "gpu", "--json")
    secret: Any = json.loads(key)["key"]
    proc, base = start_server(
        env,
        "--model",
        f"tiny={model}",
    )
    try:
        c = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0, timeout=120)
        chunks = list(
            c.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    finally:
        stop_server(proc)
