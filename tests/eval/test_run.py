"""Task YAML loading errors, generation scoring with filters and metrics, built-in GSM8K,
MMLU-Redux exclusion, report registration with lineage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.eval.lm import FakeEvalModel
from lmops.eval.run import evaluate, register_report, report_dict
from lmops.eval.tasks import load_task_file
from lmops.store import Store
from lmops.store.refs import name_views

GEN_TASK = """\
task: capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: capital of {{{{country}}}}?\\nA:"
doc_to_target: "{{{{capital}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
filter_list:
  - name: first-word
    filter:
      - function: regex
        regex_pattern: "([A-Z][a-z]+)"
      - function: take_first
metric_list:
  - metric: exact_match
  - metric: f1
  - metric: bleu
"""

ROWS = [
    {"country": "France", "capital": "Paris"},
    {"country": "Japan", "capital": "Tokyo"},
    {"country": "中国", "capital": "北京"},
]


def write_task(tmp_path: Path, body: str = GEN_TASK) -> Path:
    data = tmp_path / "caps.jsonl"
    data.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n", encoding="utf-8"
    )
    f = tmp_path / "caps.yaml"
    f.write_text(body.format(data=data), encoding="utf-8")
    return f


def test_generation_task_with_filter_and_metrics(tmp_path: Path) -> None:
    answers = {"France": " Paris is the capital\nmore", "Japan": " Kyoto, I think", "中国": " 北京"}
    model = FakeEvalModel(respond=lambda ctx: next(v for k, v in answers.items() if k in ctx))
    res = evaluate(model, [load_task_file(write_task(tmp_path))], progress=False)[0]
    # the regex keeps the first capitalised word: Paris (right), Kyoto (wrong), none for 北京
    assert res.metrics["exact_match,first-word"] == pytest.approx(1 / 3)
    assert res.items[0]["output"] == " Paris is the capital"  # cut at the stop sequence
    assert res.items[2]["pred,first-word"] is None
    assert 0 <= res.metrics["bleu,first-word"] <= 100
    assert res.scorer == "generate" and res.n == 3


def test_unknown_field_and_broken_template_name_the_line(tmp_path: Path) -> None:
    bad = write_task(tmp_path, GEN_TASK.replace("test_split: test", "test_splt: test"))
    with pytest.raises(UserError, match=r"caps\.yaml:6: test_splt: unknown field"):
        load_task_file(bad)
    broken = write_task(tmp_path, GEN_TASK.replace("{{{{country}}}}", "{{{{contry}}}}"))
    with pytest.raises(
        UserError, match=r"doc_to_text: cannot render .*contry.*\(columns: country, capital\)"
    ):
        load_task_file(broken)


def test_report_is_registered_with_lineage(tmp_path: Path, store: Store) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    store.assets.register("model", "m", tmp_path / "m")
    model = FakeEvalModel(respond=lambda ctx: " Paris")
    results = evaluate(model, [load_task_file(write_task(tmp_path))], progress=False)
    rep = report_dict("m", "m:1", results, {"tasks": ["capitals"]})
    v = register_report(store, "eval-m", rep, results, inputs=[("m:1", "model")], run_id=None)
    assert v.kind == "eval_report"
    files = store.assets.path(v.ref)
    assert json.loads((files / "results.json").read_text())["results"]["capitals"]["n"] == 3
    assert len((files / "items.jsonl").read_text().strip().split("\n")) == 3
    assert [e.parent for e in store.assets.lineage("eval-m").upstream] == ["m:1"]


def test_builtin_gsm8k_and_mmlu_redux(shared_datasets: Path) -> None:
    from lmops.eval.builtin import load_builtin

    gsm = load_builtin("gsm8k", root=shared_datasets)[0]
    doc = gsm.eval_docs[0]
    gold = doc["answer"].split("####")[-1].strip()
    model = FakeEvalModel(
        respond=lambda ctx: f" Let me think. The answer is ${gold}.\nQuestion: next"
    )
    res = evaluate(model, [gsm], limit=5, num_fewshot=2, progress=False)[0]
    assert res.metrics["exact_match,flexible-extract"] >= 0.2  # the first doc is right
    assert "Question:" in res.items[0]["context"] and res.num_fewshot == 2
    mmlu = load_builtin("mmlu_redux_anatomy", root=shared_datasets)[0]
    assert mmlu.excluded >= 0 and len(mmlu.eval_docs) + mmlu.excluded == 100
    everything = load_builtin("mmlu_redux", root=shared_datasets)
    assert len(everything) == 57 and sum(t.excluded for t in everything) > 100


def test_eval_against_an_openai_endpoint_counts_failures(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from lmops.serve.fake import fake_server

    task = write_task(tmp_path)
    with fake_server(tokens=3) as base:
        r = cli(
            "eval",
            "run",
            "--model",
            "fake",
            "--endpoint",
            base + "/v1",
            "--task-file",
            str(task),
            "--json",
        )
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["results"]["capitals"]["n"] == 3 and rep["failed_requests"] == 0
    with fake_server(tokens=3, fail_rate=1.0) as base:
        r = cli(
            "eval",
            "run",
            "--model",
            "fake",
            "--endpoint",
            base + "/v1",
            "--task-file",
            str(task),
            "--retries",
            "1",
            "--json",
        )
    assert r.code == 0, r.err
    assert json.loads(r.out)["failed_requests"] == 3


def test_perplexity_reads_each_rows_text(tmp_path: Path, store: Store) -> None:
    from lmops.eval.builtin import load_builtin

    data = tmp_path / "docs.jsonl"
    data.write_text('{"text": "one two three"}\n{"text": "four five", "id": 7}\n')
    (task,) = load_builtin(f"perplexity:{data}", store=store)
    seen: list[str] = []
    model = FakeEvalModel(score=lambda ctx, text: seen.append(text) or -2.0)
    (result,) = evaluate(model, [task], progress=False)
    assert seen == ["one two three", "four five"]  # the documents, not a template's word
    assert result.metrics["word_perplexity"] == pytest.approx(2.718281828 ** (4 / 5))


def test_perplexity_of_a_text_file_scores_its_paragraphs(tmp_path: Path, store: Store) -> None:
    """A .txt is a corpus of paragraphs (blank-line separated): --limit counts them and the
    progress moves, where a whole book as one document showed 0/1 for its whole run."""
    from lmops.eval.builtin import load_builtin

    book = tmp_path / "book.txt"
    book.write_text("ALICE:\nHello there.\n\nBOB:\nHi.\n \n\n\nALICE:\nBye now.\n")
    (task,) = load_builtin(f"perplexity:{book}", store=store)
    seen: list[str] = []
    model = FakeEvalModel(score=lambda ctx, text: seen.append(text) or -1.0)
    (result,) = evaluate(model, [task], limit=2, progress=False)
    assert seen == ["ALICE:\nHello there.", "BOB:\nHi."]
    assert result.n == 2
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(UserError, match="the file is empty"):
        load_builtin(f"perplexity:{tmp_path / 'empty.txt'}", store=store)


def test_perplexity_refuses_rows_without_text_naming_the_row(tmp_path: Path, store: Store) -> None:
    from lmops.eval.builtin import load_builtin

    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"text": "fine"}\n{"instruction": "Say hi", "output": "hi"}\n')
    with pytest.raises(UserError) as e:
        load_builtin(f"perplexity:{sft}", store=store)
    msg = str(e.value)
    assert msg.startswith(f"{sft}:2: perplexity:{sft} reads each row's 'text' field")
    assert "(fields: instruction, output)" in msg and "loglikelihood_rolling" in msg
    # a registered dataset's file is named by its version, not by the store's folder (as
    # the command line and the API print errors)
    store.assets.register("dataset", "sft", sft)
    with pytest.raises(UserError) as e:
        load_builtin("perplexity:sft", store=store)
    assert "/views/" in str(e.value)
    assert name_views(str(e.value)).startswith("sft:1/sft.jsonl:2: perplexity:sft reads")
    (tmp_path / "n.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(UserError, match="has a non-string 'text'"):
        load_builtin(f"perplexity:{tmp_path / 'n.jsonl'}", store=store)


def _member(name: str, accs: list[float], **extra: float) -> Any:
    from lmops.eval.run import TaskResult, _stderr

    items = [{"scores": {"acc": a}, "contaminated": i == 0} for i, a in enumerate(accs)]
    metrics = {"acc": sum(accs) / len(accs), "acc_stderr": _stderr(accs), **extra}
    return TaskResult(name, len(accs), metrics, "mc", "h", 0, group="g", items=items)


def test_group_stderr_is_never_made_up() -> None:
    import math
    import statistics

    from lmops.eval.run import group_results

    # subtasks of one item each (--limit 1) have no stderr; the group of all of them has
    ones = [_member(f"t{i}", [float(i % 3 == 0)]) for i in range(9)]
    g = group_results(ones)["g"]
    pooled = [float(i % 3 == 0) for i in range(9)]
    assert g["acc"] == pytest.approx(1 / 3)
    assert g["acc_stderr"] == pytest.approx(statistics.stdev(pooled) / 3)  # not 0.0
    # with a stderr per subtask: the stderr of their size-weighted mean
    a, b = _member("a", [1.0, 0.0, 1.0, 1.0]), _member("b", [0.0, 1.0])
    g = group_results([a, b])["g"]
    se_a, se_b = a.metrics["acc_stderr"], b.metrics["acc_stderr"]
    assert g["acc_stderr"] == pytest.approx(math.sqrt((4 / 6 * se_a) ** 2 + (2 / 6 * se_b) ** 2))
    # a metric without a stderr has none in the group either (shown as "-", not ±0.0000);
    # one recomputed on clean items weighs each subtask by its clean items; one that a
    # subtask lacks is averaged over the others
    a.metrics.update(contaminated_fraction=0.25, acc_clean=1.0)
    b.metrics.update(contaminated_fraction=0.5, acc_clean=1.0, extra=0.7)
    g = group_results([a, b])["g"]
    assert "contaminated_fraction_stderr" not in g and "acc_clean_stderr" not in g
    assert g["contaminated_fraction"] == pytest.approx((4 * 0.25 + 2 * 0.5) / 6)
    b.metrics["acc_clean"] = 0.0
    assert group_results([a, b])["g"]["acc_clean"] == pytest.approx(3 / 4)  # 3 clean + 1 clean
    assert group_results([a, b])["g"]["extra"] == pytest.approx(0.7)
    # a subtask of one item among larger ones: the group's items, taken together
    c = _member("c", [1.0])
    g = group_results([a, b, c])["g"]
    assert g["acc_stderr"] == pytest.approx(statistics.stdev([1, 0, 1, 1, 0, 1, 1]) / math.sqrt(7))


def test_report_files_are_json_without_nan(store: Store) -> None:
    from lmops.eval.run import TaskResult

    item = {"loglikelihoods": [float("-inf"), -1.0], "scores": {"acc": 1.0}}
    one = TaskResult("one", 1, {"acc": 1.0, "acc_stderr": float("nan")}, "mc", "h", 0, items=[item])
    v = register_report(
        store, "rep", report_dict("m", None, [one], {}), [one], inputs=[], run_id=None
    )
    files = store.assets.path(v.ref)

    def strict(text: str) -> Any:  # as JavaScript, jq and PostgreSQL read JSON
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in a report file"))

    assert strict((files / "results.json").read_text())["results"]["one"]["acc_stderr"] is None
    assert strict((files / "items.jsonl").read_text())["loglikelihoods"] == [None, -1.0]
    assert store.assets.get(v.ref).metadata["results"]["one"]["acc_stderr"] is None


def test_the_metric_names_of_a_report_are_known_before_scoring(
    tmp_path: Path, store: Store
) -> None:
    # a pipeline's gate checks its metrics against them before anything runs
    from lmops.eval.jobs import spec_metric_names, spec_tasks
    from lmops.eval.run import NOT_METRICS, flag_contamination
    from lmops.eval.spec import EvalSpec

    gen = write_task(tmp_path)
    mc = tmp_path / "mc.yaml"
    mc.write_text(
        f"task: capitals_mc\ngroup: geo\ndataset_path: {tmp_path / 'caps.jsonl'}\ntest_split: test\n"
        "doc_to_text: 'Q: capital of {{country}}?\\nA:'\ndoc_to_choice: '{{[capital, \"Rome\"]}}'\n"
        "doc_to_target: 0\n"
    )
    text = tmp_path / "docs.jsonl"
    text.write_text('{"text": "one two three"}\n')
    spec = EvalSpec(model="m", tasks=[f"perplexity:{text}"], task_files=[str(gen), str(mc)])
    tasks = spec_tasks(spec, store)
    model = FakeEvalModel(respond=lambda ctx: " Paris")
    for contamination in (False, True):
        results = evaluate(model, tasks, progress=False)
        if contamination:  # one item of each task is contaminated, the others are clean
            flag_contamination(results, tasks, ["France? A: Paris"], n=3)
        report = report_dict("fake", None, results, {})
        held = {
            f"{owner}/{k}"
            for part in ("results", "groups")
            for owner, summary in report[part].items()
            for k, v in summary.items()
            if isinstance(v, float) and "stderr" not in k and k not in NOT_METRICS
        }
        checked = EvalSpec.model_validate({**spec.model_dump(), "contamination": contamination})
        names = spec_metric_names(checked, store)
        # with contamination, the names a report may hold: corpus BLEU has no per-item
        # score to recompute on the clean items
        extra = {"capitals/bleu_clean,first-word"} if contamination else set()
        assert set(names) == held | extra and len(names) == len(set(names))
    assert "capitals/exact_match,first-word" in names and "geo/acc_clean" in names
