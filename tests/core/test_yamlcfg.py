"""Config errors in the user's words: the location names the user's keys and indexes, never
a union member pydantic tried (``list[str]``, ``ModelPreset``), while a mapping key that
happens to read like one is kept; an unknown field beside a missing one gets a
did-you-mean; a value no union member took says what each would take."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmops.core.errors import UserError
from lmops.core.yamlcfg import load_config, shown_error, user_loc


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preset: str
    tokenizer: str


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(1, ge=1)
    model: str | Inner = "m"
    targets: list[str] | Literal["all-linear"] = "all-linear"
    weights: dict[str, list[int]] = Field(default_factory=dict)


def shown(data: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    with pytest.raises(ValidationError) as e:
        Job.model_validate(data)
    return shown_error(e.value, data, Job)


def test_a_union_members_name_is_not_part_of_the_location() -> None:
    assert shown({"targets": "q_proj"}) == (
        ("targets",),
        "Input should be a valid list or 'all-linear'",
    )
    # the member whose shape the value has is the one that speaks
    assert shown({"model": {"preset": "p"}}) == (("model", "tokenizer"), "Field required")
    assert shown({"model": {"preset": "p", "tokenzer": "t"}}) == (
        ("model", "tokenzer"),
        "unknown field (did you mean 'tokenizer'?)",
    )


def test_mapping_keys_are_the_users_even_when_they_read_like_a_type() -> None:
    for key in ("list[str]", "Inner", "str"):
        assert shown({"weights": {key: ["x"]}}) == (
            ("weights", key, 0),
            "Input should be a valid integer, unable to parse string as an integer",
        )
    # without the data, nothing is dropped
    assert user_loc(("weights", "Inner", 0), None) == ("weights", "Inner", 0)


def test_an_unknown_field_beside_a_missing_one_is_named_first(tmp_path: Path) -> None:
    class Top(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str
        steps: dict[str, Any]

    f = tmp_path / "p.yaml"
    f.write_text("name: x\nstep:\n  a: 1\n")
    with pytest.raises(UserError) as e:
        load_config(f, Top)
    assert str(e.value) == f"{f}:2: step: unknown field (did you mean 'steps'?)"
    f.write_text("name: x\nsteps: {}\ncolour: red\n")
    with pytest.raises(UserError) as e:
        load_config(f, Top)
    assert str(e.value) == f"{f}:3: colour: unknown field (check the spelling)"
