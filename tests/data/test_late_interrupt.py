"""Ctrl-C after the last stage of ``lmops data run`` had finished: the run is completed and
registered (and says the Ctrl-C came late) instead of reported "interrupted"; a second
Ctrl-C says what was left; the re-run says nothing was left to run, not
``0 docs/s over the 0 documents processed``."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.data.test_executor import RECIPE, make_corpus, write_recipe


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    make_corpus(tmp_path / "raw", files=2, per_file=30)
    body = RECIPE.replace("[raw/*.jsonl]", f"[{tmp_path}/raw/*.jsonl]")
    return write_recipe(tmp_path / "r.yaml", body.replace("out/demo", str(tmp_path / "out")))


def _ctrl_c_before(monkeypatch: pytest.MonkeyPatch, name: str, times: int) -> Any:
    """``times`` Ctrl-Cs as ``lmops.data.executor.<name>`` starts (after every stage);
    returns the real function."""
    import lmops.data.executor as executor

    real = getattr(executor, name)

    def pressed(*args: Any, **kwargs: Any) -> Any:
        for _ in range(times):
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(executor, name, pressed)
    return real


def test_a_ctrl_c_after_the_last_stage_finishes_and_registers_the_run(
    cli: Any, recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ctrl_c_before(monkeypatch, "_collect_stats", 1)
    r = cli("data", "run", str(recipe))
    assert r.code == 0, r.err
    assert "registered dataset demo-clean:1" in r.out
    assert "Ctrl-C came after the last stage had finished: the run was completed and " \
        "registered before stopping" in " ".join(r.err.split())  # fmt: skip
    assert "interrupted" not in r.err


def test_a_second_ctrl_c_says_what_was_left_and_the_rerun_has_nothing_to_run(
    cli: Any, recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _ctrl_c_before(monkeypatch, "_finish", 2)
    r = cli("data", "run", str(recipe))
    assert r.code == 130
    err = " ".join(r.err.split())
    assert "interrupted after all 3 stage(s) had finished, before the output (dataset " \
        f"demo-clean) was written; nothing is processed again: finish with: lmops data run {recipe}" \
        in err, err  # fmt: skip
    monkeypatch.setattr("lmops.data.executor._finish", real)  # (undo() would drop LMOPS_HOME)
    again = cli("data", "run", str(recipe))
    assert again.code == 0, again.err
    summary = " ".join(again.out[again.out.index("recipe demo:") :].split())
    assert summary.startswith("recipe demo: nothing left to run: all 9 shard stages were done "
                              "before the interrupt; kept 57 of 60 documents"), summary  # fmt: skip
    assert "docs/s" not in summary
    assert "stage 2 clean_whitespace (done before)" in again.out
    assert "registered dataset demo-clean:1" in summary


def test_ctrl_cs_once_the_output_is_being_registered_wait_for_it(
    cli: Any, recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a first Ctrl-C after the last stage, then two more as the work folder is retired
    # (after the dataset was registered and placed): once registering has begun, signals
    # wait, so the run is not marked cancelled nor told to "finish with" a re-run that
    # would find its output path taken (or register the same output twice)
    _ctrl_c_before(monkeypatch, "_collect_stats", 1)
    _ctrl_c_before(monkeypatch, "retire", 2)
    r = cli("data", "run", str(recipe))
    assert r.code == 0, r.err
    assert "registered dataset demo-clean:1" in r.out
    assert "finish with" not in r.err
    runs = cli("runs", "list", "--json")
    assert '"CANCELLED"' not in runs.out, runs.out
