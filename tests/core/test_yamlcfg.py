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


def test_every_problem_of_a_file_is_shown_once_top_to_bottom(tmp_path: Path) -> None:
    f = tmp_path / "job.yaml"
    # a misspelt field (its missing counterpart is not said again), a bad value, a union
    # no member took (one line, not one per member), a misspelt nested field
    f.write_text("targets: q_proj\nsteps: 0\nmodle: m\nmodel:\n  preset: p\n  tokenzer: t\n")
    with pytest.raises(UserError) as e:
        load_config(f, Job)
    assert str(e.value).splitlines() == [
        f"{f}:1: targets: Input should be a valid list or 'all-linear'",
        f"{f}:2: steps: Input should be greater than or equal to 1",
        f"{f}:3: modle: unknown field (did you mean 'model'?)",
        f"{f}:6: model.tokenzer: unknown field (did you mean 'tokenizer'?)",
    ]


def test_a_file_with_very_many_problems_says_how_many_more(tmp_path: Path) -> None:
    f = tmp_path / "job.yaml"
    f.write_text("".join(f"extra{i}: 1\n" for i in range(14)))
    with pytest.raises(UserError) as e:
        load_config(f, Job)
    lines = str(e.value).splitlines()
    assert lines[0] == f"{f}:1: extra0: unknown field (check the spelling)"
    assert lines[9] == f"{f}:10: extra9: unknown field (check the spelling)"
    assert lines[10:] == [f"{f}: and 4 more errors"]
