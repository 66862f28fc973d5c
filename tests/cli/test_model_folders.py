"""A model folder without a tokenizer, or a GGUF file, is said in one line: a warning at
registration, an error where a stage would load it (issue #13 item 14)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.core.modelfiles import check_model_folder
from tests.train.tiny import make_model, make_tokenizer


def test_folders_without_a_tokenizer_or_config_and_gguf_files_are_named(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m", make_tokenizer(tmp_path / "tok"))
    check_model_folder(model)  # a whole folder passes
    bare = tmp_path / "bare"
    shutil.copytree(model, bare)
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "vocab.txt"):
        (bare / f).unlink(missing_ok=True)
    with pytest.raises(UserError, match="has no tokenizer") as e:
        check_model_folder(bare)
    assert "\n" not in str(e.value)
    (tmp_path / "weights").mkdir()
    with pytest.raises(UserError, match=r"no config\.json"):
        check_model_folder(tmp_path / "weights")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(UserError, match="GGUF file"):
        check_model_folder(gguf)


def test_registration_warns_and_training_refuses_in_one_line(cli: Any, tmp_path: Path) -> None:
    model = make_model(tmp_path / "m", make_tokenizer(tmp_path / "tok"))
    (model / "tokenizer.json").unlink()
    for f in ("vocab.json", "merges.txt"):
        (model / f).unlink(missing_ok=True)
    r = cli("assets", "register", "model", "notok", str(model))
    assert r.code == 0 and "warning:" in r.err and "has no tokenizer" in r.err
    from lmops.models.loading import resolve_local
    from lmops.store import Store

    store = Store()
    try:  # where train, eval and serve get their model folder
        with pytest.raises(UserError, match="model notok:1 has no tokenizer"):
            resolve_local("notok", store, kind="model")
        with pytest.raises(UserError, match="has no tokenizer"):
            resolve_local(str(model), store, kind="model")
    finally:
        store.close()
