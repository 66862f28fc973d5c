"""Prompt optimisation end to end with a scripted model: the search picks the candidate
that really scores best, registers it with its evidence and lineage, promotes nothing
unless asked, and resumes from its journal when the endpoint fails mid-way."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.prompts import create, label, load
from lmops.prompts.lm import EndpointError, ScriptedChat
from lmops.prompts.optimize import OptimizeSettings, OptimizeTask, optimize
from lmops.store import Store

WORDS = ["good", "bad"]


def rows(n: int) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        good = (i * 7) % 3 != 0  # not balanced: always answering one label is not enough
        out.append(
            {
                "text": f"item {i} was {'good' if good else 'bad'}",
                "label": "positive" if good else "negative",
            }
        )
    return out


def truth(text: str) -> str:
    return "positive" if "good" in text else "negative"


def shape(messages: list[dict[str, str]]) -> tuple[bool, list[str], int, str]:
    """What a candidate shows, read as a model reads it, in a chat prompt's messages or a
    text prompt's one message: (the label instruction is there, the demos' answers, the
    asked item's number, its right label)."""
    text = "\n\n".join(m["content"] for m in messages)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    answers = answers or re.findall(r"Sentiment: (\w+)", text)  # a text prompt's demos
    n, word = re.findall(r"item (\d+) was (\w+)", text)[-1]
    return "exactly one of" in text, answers, int(n), truth(word)


def scripted(messages: list[dict[str, str]]) -> str:
    """A model whose accuracy depends only on the prompt's shape, known in advance:
    'exactly one of' and demos -> always right; the instruction alone -> wrong on every
    4th item; demos alone -> wrong on every 3rd; else always 'positive'. A proposer
    request gets a useless instruction."""
    if messages[-1]["content"].startswith("Write one clear instruction"):
        return "Reply in a friendly tone."
    instructed, demos, n, right = shape(messages)
    wrong = "negative" if right == "positive" else "positive"
    if instructed and demos:
        return right
    if instructed:
        return wrong if n % 4 == 0 else right
    if demos:
        return wrong if n % 3 == 0 else f"The answer: {right}."
    return "positive"


def accuracy(messages_for: Any, data: list[dict[str, str]]) -> float:
    return sum(scripted(messages_for(r["text"])) == r["label"] for r in data) / len(data)


@pytest.fixture
def setup(store: Store, tmp_path: Path) -> tuple[Store, OptimizeTask, Path]:
    data = tmp_path / "sentiment.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(160)))
    create(store, "senti", "Text: {{input}}\nSentiment:", message="start")
    label(store, "senti:1", "production")
    task = OptimizeTask(
        dataset=str(data),
        input_field="text",
        target_field="label",
        labels=["positive", "negative"],
        train=40,
        dev=40,
        test=80,
        max_tokens=4,
    )
    return store, task, tmp_path


def test_the_search_picks_the_best_candidate_and_registers_it(
    setup: tuple[Store, OptimizeTask, Path],
) -> None:
    store, task, _ = setup
    model = ScriptedChat(scripted)
    settings = OptimizeSettings(budget=400, instructions=2, demo_sets=2, k=2, concurrency=2)
    r = optimize(store, load(store, "senti@production"), task, model, settings)
    # the winner is the only shape that is always right
    assert "exactly one of" in r.best.instruction and r.best.demos
    assert r.test_best == 1.0 and r.test_baseline < 0.8
    assert r.diff_ci[0] > 0  # the held-out improvement's 95% CI excludes zero
    # what guessing scores on the same rows, beside it: the most common target's share (2 of
    # 3 rows are positive) and a uniform pick among the two labels
    assert r.majority_target == "positive" and 0.5 < r.test_majority < 0.85
    assert r.test_majority * r.test_items == round(r.test_majority * r.test_items)
    assert r.test_chance == 0.5
    assert (
        r.calls_search <= settings.budget
        and r.calls_total == r.calls_search + r.calls_propose + 2 * 80
    )
    assert model.calls == r.calls_total  # every answer was asked exactly once
    # registered as the next version, with evidence and lineage; production did not move
    assert r.registered == "senti:2" and r.promoted is None
    assert store.assets.resolve("senti@production").ref == "senti:1"
    new = load(store, "senti:2")
    # a text prompt stays a text prompt (what an eval task's doc_to_text and
    # /v1/completions take), its demos written into the text
    assert new.variables == ("input",) and new.spec.type == "text"
    assert new.version.metadata["optimize"]["test_best"] == 1.0
    text = new.render(input="item 7 was good")
    assert isinstance(text, str) and text.startswith("Answer with exactly one of: ")
    assert text.endswith("\n\nText: item 7 was good\nSentiment:")
    assert re.search(r"\nSentiment: (positive|negative)\n\nText: item", text)
    assert accuracy(lambda x: new.messages(input=x), rows(160)) == 1.0
    up = {(e.parent.split(":")[0], e.role) for e in store.assets.lineage("senti:2").upstream}
    assert ("senti", "base_prompt") in up and ("senti-optimize", "evidence") in up
    assert any(role == "dataset" for _, role in up)
    assert store.assets.lineage("senti:2").runs["senti:2"] == r.run_id


def test_a_chat_prompt_stays_a_chat_prompt(setup: tuple[Store, OptimizeTask, Path]) -> None:
    store, task, _ = setup
    create(
        store,
        "senti-chat",
        [
            {"role": "system", "content": "Classify the sentiment."},
            {"role": "user", "content": "Text: {{input}}"},
        ],
    )
    settings = OptimizeSettings(budget=300, instructions=1, demo_sets=1, k=2)
    r = optimize(store, load(store, "senti-chat:1"), task, ScriptedChat(scripted), settings)
    assert r.registered == "senti-chat:2" and r.test_best == 1.0
    new = load(store, "senti-chat:2")
    assert new.spec.type == "chat"
    asked = new.messages(input="item 7 was good")
    # the instruction beside the prompt's own system text, demos as turns, then the question
    assert asked[0]["role"] == "system" and asked[0]["content"].endswith(
        "\n\nClassify the sentiment."
    )
    assert [m["role"] for m in asked[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert asked[-1] == {"role": "user", "content": "Text: item 7 was good"}
    assert accuracy(lambda x: new.messages(input=x), rows(160)) == 1.0


def test_promote_moves_the_label(setup: tuple[Store, OptimizeTask, Path]) -> None:
    store, task, _ = setup
    settings = OptimizeSettings(budget=300, instructions=1, demo_sets=1, k=2)
    r = optimize(
        store, load(store, "senti:1"), task, ScriptedChat(scripted), settings, promote="staging"
    )
    assert store.assets.resolve("senti@staging").ref == r.registered == "senti:2"


def test_a_failed_endpoint_resumes_from_the_journal(
    setup: tuple[Store, OptimizeTask, Path],
) -> None:
    store, task, _ = setup
    settings = OptimizeSettings(budget=200, instructions=1, demo_sets=1, k=2, concurrency=1)

    class Flaky(ScriptedChat):
        def complete(self, messages: list[dict[str, str]], **params: Any) -> str:
            if self.calls >= 90:
                raise EndpointError("http://127.0.0.1:9/v1 (m): APIConnectionError: refused")
            return super().complete(messages, **params)

    flaky = Flaky(scripted)
    with pytest.raises(UserError, match="APIConnectionError"):
        optimize(store, load(store, "senti:1"), task, flaky, settings)
    assert store.assets.show("senti").latest == 1  # nothing registered
    again = ScriptedChat(scripted)
    r = optimize(store, load(store, "senti:1"), task, again, settings)
    assert flaky.calls == 90 and again.calls == r.calls_total - 90  # nothing asked twice
    assert r.registered == "senti:2"
    assert not list((store.settings.home / "prompt-optimize").glob("*.jsonl"))


def test_targets_outside_the_labels_are_refused_before_any_call(
    setup: tuple[Store, OptimizeTask, Path],
) -> None:
    store, task, tmp_path = setup
    data = tmp_path / "langid.jsonl"
    data.write_text('{"text": "hello", "label": "en"}\n{"text": "hi", "label": "English"}\n')
    model = ScriptedChat(scripted)
    wrong = task.model_copy(update={"dataset": str(data), "labels": ["en", "zh"]})
    with pytest.raises(
        UserError, match=r"langid.jsonl:2: target 'English' is not one of labels \[en, zh\]"
    ):
        optimize(store, load(store, "senti:1"), wrong, model, OptimizeSettings(budget=50))
    assert model.calls == 0


def test_ctrl_c_stops_at_once_keeps_what_finished_and_resumes(
    setup: tuple[Store, OptimizeTask, Path],
) -> None:
    import os
    import signal
    import threading
    import time

    from lmops.prompts.optimize import OptimizeInterrupted

    store, task, _ = setup
    settings = OptimizeSettings(budget=200, instructions=1, demo_sets=1, k=2, concurrency=2)

    class Slow(ScriptedChat):
        def complete(self, messages: list[dict[str, str]], **params: Any) -> str:
            time.sleep(0.2)  # a batch of 40 dev rows takes 4 s on 2 workers
            return super().complete(messages, **params)

    slow = Slow(scripted)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))  # a real Ctrl-C
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(OptimizeInterrupted) as e:
        optimize(store, load(store, "senti:1"), task, slow, settings)
    waited = time.monotonic() - t0 - 1.5
    timer.join()
    assert waited < 0.6  # no wait for the queued requests
    time.sleep(0.5)  # the requests that were in flight end; nothing more is asked
    assert 0 < e.value.kept <= slow.calls <= e.value.kept + settings.concurrency
    assert str(e.value) == (
        f"interrupted; {e.value.kept} answers kept; rerun the same command to resume"
    )
    again = ScriptedChat(scripted)
    r = optimize(store, load(store, "senti:1"), task, again, settings)
    assert again.calls == r.calls_total - e.value.kept  # the kept answers are not asked again


def test_the_command_prints_one_line_and_exits_130_on_ctrl_c(
    cli: Any, setup: tuple[Store, OptimizeTask, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmops.prompts import optimize as opt

    _, task, tmp_path = setup
    (tmp_path / "task.yaml").write_text(json.dumps(task.model_dump()))

    def interrupted(*a: Any, **kw: Any) -> None:
        raise opt.OptimizeInterrupted(7)

    monkeypatch.setattr(opt, "optimize", interrupted)
    r = cli("prompts", "optimize", "senti:1", "--task", str(tmp_path / "task.yaml"), "--model", "m")
    assert r.code == 130
    assert r.err.strip() == "interrupted; 7 answers kept; rerun the same command to resume"


def test_a_run_with_another_proposer_does_not_resume_the_old_ones_instructions(
    setup: tuple[Store, OptimizeTask, Path],
) -> None:
    """The journal keeps the proposer's instructions; the resume key did not name the
    proposer, so --proposer B after a failed run with A reused A's instructions."""
    store, task, _ = setup
    settings = OptimizeSettings(budget=200, instructions=1, demo_sets=1, k=2, concurrency=1)

    class Proposer:
        def __init__(self, name: str, says: str) -> None:
            self.name, self.says, self.calls = name, says, 0

        def complete(self, messages: list[dict[str, str]], **params: Any) -> str:
            self.calls += 1
            return self.says

    class Flaky(ScriptedChat):
        def complete(self, messages: list[dict[str, str]], **params: Any) -> str:
            if self.calls >= 40:
                raise EndpointError("http://127.0.0.1:9/v1 (m): APIConnectionError: refused")
            return super().complete(messages, **params)

    a = Proposer("a", "Classify the sentiment.")
    with pytest.raises(UserError, match="APIConnectionError"):
        optimize(store, load(store, "senti:1"), task, Flaky(scripted), settings, proposer=a)
    assert a.calls == 1
    b = Proposer("b", "Say positive or negative.")
    optimize(store, load(store, "senti:1"), task, ScriptedChat(scripted), settings, proposer=b)
    assert b.calls == 1  # asked: its instruction, not a's from the journal
