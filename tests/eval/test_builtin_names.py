"""A misspelt built-in task (``--tasks mmlu_redu``) is offered the close name, as a
misspelt asset is; a name like none of them lists the built-in groups as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmops.core.errors import UserError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    rows = [{"subject": s, "question": "q", "choices": ["a", "b", "c", "d"], "answer": 0}
            for s in ("anatomy", "astronomy")]  # fmt: skip
    (tmp_path / "mmlu_redux.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "gsm8k").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("name", "close"),
    [
        ("mmlu_redu", "mmlu_redux"),
        ("gsm8", "gsm8k"),
        ("mmlu_redux_anatomi", "mmlu_redux_anatomy"),  # a subtask whose data is there
    ],
)
def test_a_misspelt_task_is_offered_the_close_one(root: Path, name: str, close: str) -> None:
    from lmops.eval.builtin import load_builtin

    with pytest.raises(UserError) as e:
        load_builtin(name, root=root)
    assert (
        str(e.value) == f"unknown task {name!r}; did you mean {close!r}? (see `lmops eval tasks`)"
    )


def test_a_name_like_no_task_lists_the_groups(root: Path) -> None:
    from lmops.eval.builtin import load_builtin

    with pytest.raises(UserError) as e:
        load_builtin("hellaswag", root=root)
    assert str(e.value) == (
        "unknown task 'hellaswag'; built-in: mmlu_redux, cmmlu, gsm8k, perplexity:<dataset> "
        "(see `lmops eval tasks`)"
    )
