"""One tokenizer for every deploy test (training it is the slow part of building a tiny model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.train.tiny import make_tokenizer


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("deploy-tok") / "tok")


def greedy_ids(engine: Any, prompt_ids: list[int], n: int = 8) -> list[int]:
    """The tokens ``engine`` generates greedily after ``prompt_ids`` (each Delta's token)."""
    import asyncio

    from lmops.models.types import Delta, GenRequest

    async def gen() -> list[int]:
        req = GenRequest("t", prompt_ids=prompt_ids, max_tokens=n, temperature=0.0)
        return [
            ev.token_id
            async for ev in engine.generate(req)
            if isinstance(ev, Delta) and ev.token_id is not None
        ]

    return asyncio.run(gen())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A model folder to package: a few small files are enough, nothing loads weights."""
    f = tmp_path / "model"
    f.mkdir()
    (f / "config.json").write_text('{"model_type": "llama"}')
    (f / "model.safetensors").write_bytes(b"\0" * 5000)
    (f / "tokenizer.json").write_text("{}")  # packaging checks that there is one
    return f
