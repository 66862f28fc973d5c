"""A batch that runs out of memory is split and tried again: every item is answered once, in
the items' order, the smaller size is kept, an item that fails alone is one error naming its
task and document, and an error that is not about memory is never retried as if it were.
The report records the batch size asked for and the one that ran.

The failing model is a real tiny Llama whose forward raises torch's ``OutOfMemoryError`` for
batches larger than N, or for any batch holding one marked document."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.eval._batching import Batches, ItemFailed, is_out_of_memory
from lmops.eval.lm import HFEvalModel
from lmops.eval.run import evaluate
from lmops.eval.tasks import load_task_file
from tests.train.tiny import make_model, make_tokenizer


def _oom(message: str = "CUDA out of memory. Tried to allocate 2.00 GiB") -> Exception:
    import torch

    return torch.OutOfMemoryError(message)


class Answerer:
    """Answers a batch with each item doubled; runs out of memory above ``limit`` items, or
    whenever ``poison`` is in the batch; ``error``: raised for any batch."""

    def __init__(
        self, limit: int, poison: int | None = None, error: Exception | None = None
    ) -> None:
        self.limit, self.poison, self.error = limit, poison, error
        self.calls: list[list[int]] = []  # every batch asked
        self.answered: list[int] = []  # items of the batches that answered

    def __call__(self, batch: Sequence[int]) -> list[int]:
        self.calls.append(list(batch))
        if self.error is not None:
            raise self.error
        if len(batch) > self.limit or self.poison in batch:
            raise _oom()
        self.answered += batch
        return [2 * x for x in batch]


def test_a_batch_that_runs_out_of_memory_is_split_and_nothing_is_lost_or_repeated() -> None:
    items = list(range(37))
    ask = Answerer(limit=5)
    batches = Batches(16)
    assert batches.run(items, ask, lambda x: x) == [2 * x for x in items]  # the items' order
    assert sorted(ask.answered) == items  # each item answered exactly once
    assert ask.calls[:3] == [items[:16], items[:8], items[:4]]  # 16 -> 8 -> 4 fits
    assert all(len(c) <= 4 for c in ask.calls[3:])  # the smaller size stays
    assert batches.size == 4 and batches.used == [4]


def test_an_item_that_fails_alone_is_named_once_and_not_retried_forever() -> None:
    ask = Answerer(limit=8, poison=13)
    with pytest.raises(ItemFailed) as e:
        Batches(8).run(list(range(20)), ask, lambda x: 100 + x)
    assert e.value.index == 113 and "out of memory in a batch of 1" in e.value.reason
    assert ask.calls[-1] == [13] and ask.calls.count([13]) == 1
    assert len(ask.calls) <= 8  # 8, 8 -> 4 -> 2 -> 1 (+ the ones before 13)


def test_an_error_that_is_not_about_memory_is_raised_at_once() -> None:
    ask = Answerer(limit=8, error=ValueError("bad token id"))
    with pytest.raises(ValueError, match="bad token id"):
        Batches(8).run(list(range(20)), ask, lambda x: x)
    assert len(ask.calls) == 1  # not split, not tried again
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(_oom())
    assert is_out_of_memory(MemoryError())  # the CPU allocator's, raised by Python


def test_cached_memory_is_freed_once_the_failed_batch_is_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The failed batch's tensors live in its frames, which the error's traceback holds
    until the except block ends: memory is handed back after it, when they are gone."""
    import weakref

    import lmops.eval._batching as batching

    class Activations:  # what a forward pass holds when it runs out of memory
        pass

    held: list[weakref.ref[Activations]] = []
    alive_at_free: list[bool] = []

    def answer(batch: Sequence[int]) -> list[int]:
        activations = Activations()
        held.append(weakref.ref(activations))
        if len(batch) > 2:
            raise _oom()
        return list(batch)

    monkeypatch.setattr(
        batching, "_free_cached_memory", lambda: alive_at_free.append(held[-1]() is not None)
    )
    assert Batches(4).run([1, 2, 3, 4], answer, lambda x: x) == [1, 2, 3, 4]
    assert alive_at_free == [False]


# -- the local model and the report -------------------------------------------------------------

TASK = """\
task: sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}} ="
doc_to_choice: "{{{{options}}}}"
doc_to_target: "{{{{answer}}}}"
"""
MARK = "zebra"  # the document whose every batch runs out of memory


def _task_file(tmp_path: Path, marked: int | None = None) -> Path:
    rows = [
        {
            "q": (MARK + " " if i == marked else "") + f"{i} plus {i % 3}",
            "options": [f" {i}", f" {i + i % 3}", " the quick brown fox"],
            "answer": 1,
        }
        for i in range(12)
    ]
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    f = tmp_path / "sums.yaml"
    f.write_text(TASK.format(data=data), encoding="utf-8")
    return f


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lm")
    return make_model(tmp / "model", make_tokenizer(tmp / "tok"), seed=3)


def _failing(lm: HFEvalModel, limit: int, marked: list[int] | None = None) -> list[int]:
    """Make ``lm``'s forward run out of memory above ``limit`` rows, or on a row holding the
    ``marked`` tokens; returns the log of batch sizes it was asked for."""
    forward = lm.model.forward
    asked: list[int] = []

    def failing(*args: Any, **kw: Any) -> Any:
        ids = kw["input_ids"]
        asked.append(ids.shape[0])
        if ids.shape[0] > limit:
            raise _oom()
        if marked and any(
            ids[r, i : i + len(marked)].tolist() == marked
            for r in range(ids.shape[0])
            for i in range(ids.shape[1])
        ):
            raise _oom()
        return forward(*args, **kw)

    lm.model.forward = failing  # type: ignore[method-assign]
    return asked


def test_a_local_model_that_runs_out_of_memory_scores_what_it_would_have(
    model_dir: Path, tmp_path: Path
) -> None:
    task = load_task_file(_task_file(tmp_path), None)
    clean = evaluate(HFEvalModel(model_dir, device="cpu", batch_size=8), [task], progress=False)
    lm = HFEvalModel(model_dir, device="cpu", batch_size=8)
    asked = _failing(lm, limit=3)
    [res] = evaluate(lm, [task], progress=False)
    assert 8 in asked and 4 in asked  # it did run out of memory, twice

    # the same scores for the same documents, in their order
    def scores(items: list[dict[str, Any]]) -> list[float]:
        return [x for it in items for x in it["loglikelihoods"]]

    assert scores(res.items) == pytest.approx(scores(clean[0].items), abs=1e-5)
    assert [it["context"] for it in res.items] == [it["context"] for it in clean[0].items]
    assert res.batch_sizes == [2] and clean[0].batch_sizes == [8]  # what ran, not what was asked
    # the smaller size is kept for the model's later calls
    asked.clear()
    evaluate(lm, [task], progress=False)
    assert max(asked) == 2


def test_running_out_of_memory_at_one_length_caps_that_length_and_longer(
    model_dir: Path,
) -> None:
    """A batch of long contexts that runs out of memory lowers the size for contexts that
    long or longer in the model's later calls; shorter ones keep the size asked for."""
    lm = HFEvalModel(model_dir, device="cpu", batch_size=8)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    filler = " and the quick brown fox jumps over the lazy dog" * 4
    long = [(w + filler, " yes") for w in words]
    longer = [(w + filler * 2, " yes") for w in words]
    short = [(w, " yes") for w in words]
    threshold = len(lm._tok(words[0] + filler)) - 2  # a row this long needs the memory
    forward = lm.model.forward
    asked: list[tuple[int, int]] = []  # (rows, length) of every forward pass
    ran_out = 0

    def failing(*args: Any, **kw: Any) -> Any:
        nonlocal ran_out
        rows, length = kw["input_ids"].shape
        asked.append((rows, length))
        if rows > 2 and length >= threshold:
            ran_out += 1
            raise _oom()
        return forward(*args, **kw)

    lm.model.forward = failing  # type: ignore[method-assign]
    lm.loglikelihood(long)
    assert ran_out == 2 and lm.batches_run == [2]  # 8 -> 4 -> 2
    for reqs in (short, long, longer, short):
        asked.clear()
        lm.loglikelihood(reqs)
        first_pass = [rows for rows, length in asked if length > 1]  # the contexts' pass
        assert max(first_pass) == (8 if reqs is short else 2), reqs[0]
    assert ran_out == 2  # the long ones were not tried again at a size that failed
    assert lm.batches_run == [2, 8, 2, 2, 8]


def test_a_document_that_fails_alone_is_named(model_dir: Path, tmp_path: Path) -> None:
    task = load_task_file(_task_file(tmp_path, marked=7), None)
    lm = HFEvalModel(model_dir, device="cpu", batch_size=4)
    mark = lm._tok(MARK)[1:]  # without the BOS the tokenizer adds
    _failing(lm, limit=100, marked=mark)
    with pytest.raises(UserError, match=r"^task sums, doc 7: out of memory in a batch of 1"):
        evaluate(lm, [task], progress=False)


def test_a_model_error_that_is_not_about_memory_is_not_split(
    model_dir: Path, tmp_path: Path
) -> None:
    task = load_task_file(_task_file(tmp_path), None)
    lm = HFEvalModel(model_dir, device="cpu", batch_size=8)
    asked: list[int] = []

    def broken(*args: Any, **kw: Any) -> Any:
        asked.append(kw["input_ids"].shape[0])
        raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")

    lm.model.forward = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="CUBLAS"):
        evaluate(lm, [task], progress=False)
    assert len(asked) == 1


# -- generation: the engine's sequences decoding together -------------------------------------

GEN_TASK = """\
task: echoes
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}} ="
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 4
metric_list:
  - metric: exact_match
"""


def _gen_task_file(tmp_path: Path, marked: int | None = None, n: int = 10) -> Path:
    rows = [
        {"q": (MARK + " " if i == marked else "") + f"{i} plus {i % 3}", "a": str(i + i % 3)}
        for i in range(n)
    ]
    data = tmp_path / "echoes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    f = tmp_path / "echoes.yaml"
    f.write_text(GEN_TASK.format(data=data), encoding="utf-8")
    return f


def test_generation_that_runs_out_of_memory_is_split_and_gives_the_same_replies(
    model_dir: Path, tmp_path: Path
) -> None:
    """On a local model, sequences decoding together that run out of memory are generated
    again with half as many at a time, the others' replies kept, and the smaller size kept
    for later calls; it stopped the run."""
    task = load_task_file(_gen_task_file(tmp_path), None)
    clean = HFEvalModel(model_dir, device="cpu", batch_size=8)
    [want] = evaluate(clean, [task], progress=False)
    clean.close()
    lm = HFEvalModel(model_dir, device="cpu", batch_size=8)
    asked = _failing(lm, limit=2)
    try:
        [res] = evaluate(lm, [task], progress=False)
        assert max(asked) > 2  # it did run out of memory
        assert [it["output"] for it in res.items] == [it["output"] for it in want.items]
        # what ran: 8 and then 4 ran out of memory, so 2 is the size that ran (the last two
        # documents were admitted at 4, once the first eight had failed at 8, and finished)
        assert res.batch_sizes == [2] and want.batch_sizes == [8]
        asked.clear()
        [again] = evaluate(lm, [task], progress=False)
        assert max(asked) <= 2 and again.batch_sizes == [2]  # kept for later calls
    finally:
        lm.close()


def test_the_queue_runs_at_the_smaller_size_from_the_first_generation_out_of_memory(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The sequences still waiting when the first ones run out of memory are admitted at
    half the size at once, not at the size that just failed; and a run that recovers says
    so in eval's warnings only: the engine's error with its traceback (for a server's log)
    is at debug level."""
    task = load_task_file(_gen_task_file(tmp_path, n=24), None)
    lm = HFEvalModel(model_dir, device="cpu", batch_size=8)
    lm._engine()  # made (its probes run) before the model runs out of memory
    asked = _failing(lm, limit=4)
    try:
        with caplog.at_level(logging.DEBUG, logger="lmops"):
            [res] = evaluate(lm, [task], progress=False)
        # the first eight's prefill and decode step ran 8 at a time and failed; every other
        # sequence (the sixteen waiting, the eight again) ran at most 4 together
        assert asked.count(8) == 2 and sum(n > 4 for n in asked) == 2
        assert res.batch_sizes == [4] and len(res.items) == 24
    finally:
        lm.close()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.name, r.levelname) for r in loud] == [("lmops.eval", "WARNING")]
    assert "ran out of memory 8 at a time: decoding 4 at a time" in loud[0].message
    (quiet,) = [r for r in caplog.records if r.name == "lmops.serve"]
    assert quiet.levelno == logging.DEBUG and quiet.exc_info is not None


def test_a_generation_that_runs_out_of_memory_alone_names_its_document(
    model_dir: Path, tmp_path: Path
) -> None:
    task = load_task_file(_gen_task_file(tmp_path, marked=6), None)
    lm = HFEvalModel(model_dir, device="cpu", batch_size=4)
    _failing(lm, limit=100, marked=lm._tok(MARK)[1:])
    try:
        with pytest.raises(UserError, match=r"^task echoes, doc 6: out of memory in a batch of 1"):
            evaluate(lm, [task], progress=False)
    finally:
        lm.close()


def test_a_generation_error_that_is_not_about_memory_is_not_retried(
    model_dir: Path, tmp_path: Path
) -> None:
    task = load_task_file(_gen_task_file(tmp_path), None)
    lm = HFEvalModel(model_dir, device="cpu", batch_size=8)
    lm._engine()  # made (its probes run) before the model breaks
    asked: list[int] = []

    def broken(*args: Any, **kw: Any) -> Any:
        asked.append(kw["input_ids"].shape[0])
        raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")

    lm.model.forward = broken  # type: ignore[method-assign]
    try:
        with pytest.raises(UserError, match="generation failed: RuntimeError: CUBLAS"):
            evaluate(lm, [task], progress=False)
        # the batch's prefill, then each prompt's alone (the engine's own fallback), once
        assert asked.count(8) == 1 and lm._engine().max_running == 8
    finally:
        lm.close()


def test_the_report_records_the_batch_size_asked_for_and_the_one_that_ran(
    cli,  # type: ignore[no-untyped-def]
    model_dir: Path,
    tmp_path: Path,
) -> None:
    from lmops.store import Store

    task = _task_file(tmp_path)
    args = ("eval", "run", "--model", str(model_dir), "--task-file", str(task), "--device", "cpu")
    r = cli(*args, "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    # auto on a CPU: 32 contexts a forward pass for contexts this short
    assert report["config"]["batch_size"] == "auto"
    assert report["config"]["batch_size_used"] == 32
    store = Store()
    try:
        meta = store.assets.resolve(report["report"]).metadata
    finally:
        store.close()
    assert meta["batch_size"] == "auto" and meta["batch_size_used"] == 32
    r = cli(*args, "--batch-size", "5")
    assert r.code == 0, r.err
    assert "batch size: 5, ran 5" in r.out


def test_the_summary_line_stays_short_for_many_tasks() -> None:
    from lmops.cli.eval import _batch_line

    few = {"batch_size": "auto", "batch_size_used": {"capitals": [4, 1], "sums": [8]}}
    assert _batch_line(few) == "batch size: auto, ran capitals 1–4; sums 8"
    many = {f"mmlu_subject_{i}": [8 + i % 4, 8] for i in range(57)}
    line = _batch_line({"batch_size": "auto", "batch_size_used": many})
    assert line == "batch size: auto, ran 8–11, varying by task (each task's in the report)"


def test_an_endpoint_reports_the_prompts_per_request_it_sent(tmp_path: Path) -> None:
    from lmops.eval.lm import OpenAIEvalModel
    from lmops.eval.run import batch_size_used
    from tests.eval.test_endpoint import Script, endpoint
    from tests.eval.test_run import write_task

    task = load_task_file(write_task(tmp_path), None)
    with endpoint(Script()) as url:
        lm = OpenAIEvalModel(url, "m", chat=False, batch_size="auto", concurrency=2)
        assert batch_size_used(evaluate(lm, [task], progress=False)) == 8  # auto, resolved
    with endpoint(Script(lists="400")) as url:  # a server that takes one prompt a request
        lm = OpenAIEvalModel(url, "m", chat=False, batch_size=4)
        assert batch_size_used(evaluate(lm, [task], progress=False)) == {"capitals": [4, 1]}
    with endpoint(Script()) as url:  # chat requests carry one prompt each
        lm = OpenAIEvalModel(url, "m", chat=True, batch_size=4)
        assert batch_size_used(evaluate(lm, [task], progress=False)) == 1
