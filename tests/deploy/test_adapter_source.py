"""A transform given an adapter (``deploy export smol-alpaca``) says the exact command that
merges it, with the adapter's ref, and what to give instead; it said only ``merge it first
(lmops train merge)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _adapter(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4})
    )
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return folder


def test_an_adapter_asset_is_given_the_merge_command_with_its_ref(cli: Any, tmp_path: Path) -> None:
    folder = _adapter(tmp_path)
    assert cli("assets", "register", "adapter", "smol-alpaca", str(folder)).code == 0
    r = cli("deploy", "export", "smol-alpaca", "--format", "gguf", "-o", "out")
    assert r.code != 0
    err = " ".join(r.err.split())
    assert (
        "smol-alpaca is an adapter (smol-alpaca:1); merge it into its base model first: "
        "lmops train merge smol-alpaca:1 --output smol-alpaca-merged, then give "
        "smol-alpaca-merged"
    ) in err, err


def test_an_adapter_folder_is_told_to_register_it_first(cli: Any, tmp_path: Path) -> None:
    folder = _adapter(tmp_path)
    r = cli("deploy", "export", str(folder), "--format", "gguf", "-o", "out")
    assert r.code != 0
    err = " ".join(r.err.split())
    assert f"lmops assets register adapter NAME {folder}" in err, err
    assert "lmops train merge NAME:1" in err
