"""A data command's input that is neither a path nor a dataset: the message quotes the
argument as given (not a recipe's ``inputs[0]``) and keeps the store's reason, a close
name included (``'alpaca-clen'``: did you mean ``'alpaca-clean'``?)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def test_a_misspelt_dataset_argument_is_offered_the_close_name(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "one document"}\n{"text": "another document"}\n')
    assert cli("assets", "register", "dataset", "alpaca-clean", str(data)).code == 0
    monkeypatch.chdir(tmp_path)
    r = cli("data", "tokenizer", "train", "alpaca-clen", "--name", "tok", "--vocab-size", "300")
    assert r.code == 2
    err = " ".join(r.err.split())
    assert "error: 'alpaca-clen' is neither an existing path" in err, err
    assert "did you mean 'alpaca-clean'?" in err
    assert "inputs[0]" not in err  # a recipe's words, not a command's
    far = cli("data", "validate", "zzz-nothing-alike")
    assert far.code == 2
    assert "see `lmops assets list`" in " ".join(far.err.split())


def test_a_recipe_input_keeps_its_place_and_the_store_reason(tmp_path: Path) -> None:
    from lmops.core.errors import UserError
    from lmops.data.recipe import Recipe, resolve_inputs
    from lmops.store import Store

    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "one document"}\n')
    store = Store()
    try:
        store.assets.register("dataset", "alpaca-clean", data)
        recipe = Recipe.model_validate(
            {"name": "t", "inputs": ["rows.jsonl", "alpaca-clen"], "output": {"path": "out"}}
        )
        with pytest.raises(UserError) as e:
            resolve_inputs(recipe, tmp_path, store)
    finally:
        store.close()
    assert str(e.value).startswith("inputs[1]: 'alpaca-clen' is neither an existing path")
    assert str(e.value).endswith("(asset 'alpaca-clen' not found; did you mean 'alpaca-clean'?)")
