"""One tokenizer for every deploy test (training it is the slow part of building a tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.tiny import make_tokenizer


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("deploy-tok") / "tok")
