"""A preset model's ``model.overrides`` that transformers' config validators refuse (a hidden
size not divisible by the number of heads) is a one-line user error, not an internal one."""

from __future__ import annotations

import pytest

from lmops.core.errors import UserError
from lmops.train.models import _preset_model
from lmops.train.spec import ModelPreset


def test_overrides_the_config_validators_refuse_are_one_line() -> None:
    tokenizer = type("Tok", (), {"__len__": lambda self: 64, "bos_token_id": 1,
                                 "eos_token_id": 2, "pad_token_id": 0})()  # fmt: skip
    preset = ModelPreset(preset="llama-tiny", tokenizer="tok",
                         overrides={"num_attention_heads": 3})  # fmt: skip
    with pytest.raises(UserError) as e:
        _preset_model(preset, tokenizer)
    message = str(e.value)
    assert message.startswith("model.overrides: ") and "\n" not in message
    assert "not a multiple of the number of attention heads (3)" in message
