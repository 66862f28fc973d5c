"""An endpoint evaluation sends prompts in batches (``OpenAIEvalModel(batch_size=...)``,
``--batch-size``, ``batch_size:``): log-likelihood prompts, and generations with the same
sampling parameters, go several to a ``/v1/completions`` request, and score exactly as one
prompt a request does.

The endpoint is a real lmops gateway on 127.0.0.1 over a tiny model built here, its request
log (bodies kept) the witness of what each request carried; and the scripted server of
``test_endpoint`` for the contract around it: a server that refuses lists gets one prompt
a request after one notice, and failures of a batch count as documented."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.eval._batching import ItemFailed
from lmops.eval.endpoint import auto_batch_size
from lmops.eval.lm import EndpointDown, OpenAIEvalModel
from tests.eval.test_endpoint import Script, endpoint, gen, prompts

MC_TASK = """\
task: colours
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{q}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
"""

QUESTIONS = [
    "What colour is the sky on a clear day?",
    "What colour is grass?",
    "The quick brown fox jumps over which animal?",
    "What do you say when you meet someone?",
    "Which number comes after 12?",
    "今天天气怎么样？",
]
CHOICES = [["blue", "green", "red", "black"], ["the lazy dog", "a cat", "hello", "12 34"]]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An lmops gateway (in this process, on 127.0.0.1) deploying a tiny Llama as ``tiny``,
    with request bodies logged."""
    from lmops.serve.deployments import DeploymentSpec
    from lmops.serve.fake import serve_app
    from lmops.serve.server import gateway_app
    from lmops.store import Store
    from tests.train.tiny import make_model, make_tokenizer

    root = tmp_path_factory.mktemp("batch-gateway")
    folder = make_model(root / "tiny", make_tokenizer(root / "tok"), seed=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMOPS_HOME", str(root / "home"))
        store = Store()
    try:
        _, key = store.keys.create("eval")
        spec = DeploymentSpec(
            name="tiny", model=str(folder), guardrails={"preset": "off"}, log_bodies=True
        )
        app = gateway_app([spec], store)
        with serve_app(app, "gateway") as base:
            yield {"url": base + "/v1", "key": key, "app": app, "store": store}
    finally:
        store.close()


def sent_prompts(gateway: dict[str, Any]) -> list[Any]:
    """The ``prompt`` of every completions request the gateway has logged, oldest first."""
    from sqlalchemy import select

    from lmops.store.models import RequestLogRow

    gateway["app"].state.gateway.hooks.log.flush(10)
    q = select(RequestLogRow.request_body).where(RequestLogRow.endpoint == "completion")
    with gateway["store"].db.session() as s:
        bodies = list(s.scalars(q.order_by(RequestLogRow.id)))
    return [b["prompt"] for b in bodies]


def mc_task(tmp_path: Path) -> Path:
    data = tmp_path / "colours.jsonl"
    rows = [{"q": q, "choices": CHOICES[i % 2], "gold": i % 4} for i, q in enumerate(QUESTIONS)]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    task = tmp_path / "colours.yaml"
    task.write_text(MC_TASK.format(data=data), encoding="utf-8")
    return task


def evaluate_at(gateway: dict[str, Any], task: Path, **kw: Any) -> tuple[Any, list[Any]]:
    """The task's result through the gateway, and the prompts of the requests it sent."""
    from lmops.eval.run import evaluate
    from lmops.eval.tasks import load_task_file

    before = len(sent_prompts(gateway))
    model = OpenAIEvalModel(gateway["url"], "tiny", api_key=gateway["key"], chat=False, **kw)
    (result,) = evaluate(model, [load_task_file(task)], progress=False)
    assert model.failed == 0
    return result, sent_prompts(gateway)[before:]


def test_log_likelihood_prompts_go_in_lists_and_score_as_one_a_request(
    gateway: dict[str, Any], tmp_path: Path
) -> None:
    task = mc_task(tmp_path)
    one, singles = evaluate_at(gateway, task, batch_size=1, concurrency=2)
    assert len(singles) == 24 and all(isinstance(p, str) for p in singles)
    for concurrency in (1, 2):  # "auto": 8 prompts a request
        batched, lists = evaluate_at(gateway, task, concurrency=concurrency)
        assert [len(p) for p in lists] == [8, 8, 8]
        assert sorted(p for batch in lists for p in batch) == sorted(singles)
        # whole questions a request, longest context first: a question's four choices
        # share a batch, so the engine runs their context once (models/prefill.py)
        longest = sorted(QUESTIONS, key=len, reverse=True)
        asked = [
            [q for p in batch for q in QUESTIONS if f"Question: {q}\nAnswer:" in p]
            for batch in lists
        ]
        assert sorted(asked) == sorted(
            [q] * 4 + [r] * 4 for q, r in zip(longest[::2], longest[1::2], strict=True)
        )
        assert batched.metrics == one.metrics
        for a, b in zip(batched.items, one.items, strict=True):
            assert a["pred"] == b["pred"] and a["pred_norm"] == b["pred_norm"]
            # the engine pads a batch's prompts to the longest: the same up to float error
            assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)


def test_generations_with_the_same_sampling_go_together(gateway: dict[str, Any]) -> None:
    short = {"until": ["\n"], "max_gen_toks": 3}
    long = {"until": ["\n"], "max_gen_toks": 5}
    texts = ["The quick brown", "hello", "a b c", "今天", "12+34=", "Machine", "x"]
    requests = [(t, short if i % 2 == 0 else long) for i, t in enumerate(texts)]
    kw: dict[str, Any] = {"api_key": gateway["key"], "chat": False}
    before = len(sent_prompts(gateway))
    alone = OpenAIEvalModel(gateway["url"], "tiny", batch_size=1, **kw).generate(requests)
    at = len(sent_prompts(gateway))
    batched = OpenAIEvalModel(gateway["url"], "tiny", batch_size=3, **kw).generate(requests)
    sent = sent_prompts(gateway)
    assert batched == alone and any(alone)  # in the requests' order, greedy, the same
    assert len(sent[before:at]) == 7
    # up to 3 prompts a request, each request of one sampling setting, longest prompts
    # first (logged as they end); one left alone goes as a plain prompt
    assert len(sent[at:]) == 3
    assert {p if isinstance(p, str) else tuple(p) for p in sent[at:]} == {
        ("The quick brown", "12+34=", "a b c"),
        ("Machine", "hello", "今天"),
        "x",
    }

    # the chat API takes one conversation a request: no lists there
    script = Script()
    with endpoint(script) as url:
        outs = OpenAIEvalModel(url, "m", batch_size=8).generate(gen(prompts(5)))
    assert outs == [f"answer q{i}" for i in range(5)]
    assert len(script.bodies) == 5 and all("messages" in b for b in script.bodies)


def test_the_batch_size_flag_and_spec_field(
    cli,  # type: ignore[no-untyped-def]
    gateway: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LMOPS_API_KEY", gateway["key"])
    task = mc_task(tmp_path)
    args = ["--model", "tiny", "--endpoint", gateway["url"], "--task-file", str(task)]
    accs = []
    for flag, sizes in (([], [8, 8, 8]), (["--batch-size", "5"], [5, 5, 5, 5, 4])):
        before = len(sent_prompts(gateway))
        r = cli("eval", "run", *args, *flag, "--no-resume", "--json")
        assert r.code == 0, r.err
        sent = sent_prompts(gateway)[before:]
        assert all(isinstance(p, list) for p in sent)
        # logged as they end, which need not be the order they went out in
        assert sorted(map(len, sent), reverse=True) == sizes
        accs.append(json.loads(r.out)["results"]["colours"]["acc"])

    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"model: tiny\ntask_files: [{task}]\nendpoint: {gateway['url']}\nbatch_size: 1\n",
        encoding="utf-8",
    )
    before = len(sent_prompts(gateway))
    r = cli("eval", "run", str(spec), "--no-resume", "--json")
    assert r.code == 0, r.err
    sent = sent_prompts(gateway)[before:]
    assert len(sent) == 24 and all(isinstance(p, str) for p in sent)
    assert json.loads(r.out)["results"]["colours"]["acc"] == accs[0] == accs[1]

    bad = cli("eval", "run", str(spec), "batch_size=0")
    assert bad.code != 0 and "batch_size" in bad.err


@pytest.mark.parametrize("lists", ["400", "422", "first"])
def test_an_endpoint_that_refuses_lists_gets_one_prompt_a_request_after_one_notice(
    lists: str, caplog: pytest.LogCaptureFixture
) -> None:
    requests = [(f"q{i}", " " + "x" * (i + 1)) for i in range(10)]
    script = Script(lists=lists)
    with endpoint(script) as url, caplog.at_level(logging.WARNING, logger="lmops.eval"):
        m = OpenAIEvalModel(url, "m", chat=False, concurrency=2, batch_size=4)
        lls = m.loglikelihood(requests)
        refused = len(script.bodies)
        outs = m.generate([(f"q{i}", {"max_gen_toks": 4}) for i in range(6)])
    assert lls == [(-float(len(x)), True) for _, x in requests] and m.failed == 0
    assert outs == [f"answer q{i}" for i in range(6)]
    # two lists were in flight when the first was refused; then nothing but strings
    lists_sent = [b["prompt"] for b in script.bodies if isinstance(b["prompt"], list)]
    assert 1 <= len(lists_sent) <= 2 and all(len(p) == 4 for p in lists_sent)
    assert len(script.bodies) == refused + 6 and m.batch_size == 1
    (notice,) = [r for r in caplog.records if r.name == "lmops.eval"]
    message = notice.getMessage()
    assert "did not take 4 prompts in one request" in message and "\n" not in message
    assert "one prompt per request from now on" in message
    assert ("choice(s)" if lists == "first" else f"{lists} ") in message


def test_a_prompt_the_endpoint_refuses_is_still_an_error_after_the_fall_back() -> None:
    script = Script(refuse={"q5"})
    with endpoint(script) as url:
        m = OpenAIEvalModel(url, "m", chat=False, concurrency=1, batch_size=4, retries=3)
        with pytest.raises(ItemFailed) as e:
            m.generate(gen(prompts(8)))
    assert not isinstance(e.value, EndpointDown)
    # the refused prompt's place in the call, and what the server said, in one line
    assert e.value.index == 5
    assert e.value.reason == (
        "endpoint refused the request: 400 bad request; shorten or drop the item, or raise the "
        "server's limit (its context length, its request size)"
    )
    # the first batch, the second refused as a whole, then its prompts alone up to q5
    assert [b["prompt"] for b in script.bodies] == [prompts(4), prompts(8)[4:], "q4", "q5"]


@pytest.mark.parametrize(
    ("status", "error", "fix"),
    [
        (
            400,
            {"message": "This model's maximum context length is 2048 tokens. However, you "
             "requested 4100 tokens", "param": None},
            "shorten or drop the item, or raise the server's limit",
        ),
        (413, {"message": "Request Entity Too Large"}, "shorten or drop the item"),
        (
            422,
            {"message": "Unsupported parameter: 'logprobs' is not supported with this model.",
             "param": "logprobs"},
            "the server does not take a parameter of the request (its message names it): "
            "change the task's generation_kwargs or the eval flags that set it",
        ),
        (
            400,
            {"message": "stop: Extra inputs are not permitted", "param": "stop"},
            "the server does not take a parameter of the request",
        ),
    ],
)  # fmt: skip
def test_a_refused_prompt_says_what_must_change(
    status: int, error: dict[str, Any], fix: str
) -> None:
    """Shortening the item is the fix for a refusal of its length, not for one of a
    parameter the request sends."""
    script = Script(refuse={"q2"}, refusal=(status, {"error": error}))
    with endpoint(script) as url:
        m = OpenAIEvalModel(url, "m", chat=False, concurrency=1, batch_size=1, retries=0)
        with pytest.raises(ItemFailed) as e:
            m.generate(gen(prompts(4)))
    assert e.value.index == 2 and e.value.reason.startswith(
        f"endpoint refused the request: {status}"
    )
    assert "; " + fix in e.value.reason
    if "parameter" in fix:
        assert "shorten" not in e.value.reason
    else:
        assert "parameter" not in e.value.reason


@pytest.mark.parametrize("chat", [False, True])
def test_a_refused_prompt_names_its_task_and_document(tmp_path: Path, chat: bool) -> None:
    """Log-likelihood requests (a document's four choices side by side, in lists of 8 that
    fall back to one prompt a request) and chat generations (one a request): the refused
    prompt is named by its task and its document's place in items.jsonl."""
    from lmops.eval.run import evaluate
    from lmops.eval.tasks import load_task_file

    task = load_task_file(mc_task(tmp_path))
    if chat:  # the same questions as a generation task, through the chat API
        text = (tmp_path / "colours.yaml").read_text()
        gen_task = tmp_path / "gen.yaml"
        gen_task.write_text(
            text.replace("output_type: multiple_choice", "output_type: generate_until")
            .replace("  - metric: acc_norm\n", "")
            .replace("metric: acc", "metric: exact_match")
            .replace("doc_to_target: gold", 'doc_to_target: "{{choices[gold]}}"')
        )
        task = load_task_file(gen_task)
        refused = "Question: Which number comes after 12?\nAnswer:"  # doc 4
    else:  # doc 4's third choice
        refused = "Question: Which number comes after 12?\nAnswer: red"
    script = Script(refuse={refused})
    with endpoint(script) as url:
        m = OpenAIEvalModel(url, "m", chat=chat, concurrency=2, batch_size=8)
        with pytest.raises(UserError) as e:
            evaluate(m, [task], progress=False, apply_chat_template=chat)
    assert str(e.value) == (
        f"task {task.name}, doc 4: endpoint refused the request: 400 bad request; shorten or "
        "drop the item, or raise the server's limit (its context length, its request size)"
    )


def test_a_batch_that_fails_fails_each_prompt_and_counts_once_in_a_row() -> None:
    script = Script(fail={"q1 yes"}, flaky={"q6 yes"})
    with endpoint(script) as url:
        m = OpenAIEvalModel(
            url, "m", chat=False, concurrency=1, batch_size=4, retries=1, max_failures_in_a_row=2
        )
        lls = m.loglikelihood([(p, " yes") for p in prompts(8)])
    # q0-q3 failed together after their retry (each -inf, each counted); q4-q7's 503 was
    # tried again whole
    assert lls[:4] == [(-math.inf, False)] * 4 and lls[4:] == [(-4.0, True)] * 4
    assert m.failed == 4
    sent = [[p.removesuffix(" yes") for p in b["prompt"]] for b in script.bodies]
    assert sent == [prompts(4)] * 2 + [prompts(8)[4:]] * 2

    # an endpoint that is down: two failed requests in a row stop the run, 8 prompts lost
    script = Script(fail={f"{p} yes" for p in prompts(40)})
    with endpoint(script) as url:
        m = OpenAIEvalModel(
            url, "m", chat=False, concurrency=1, batch_size=4, retries=0, max_failures_in_a_row=2
        )
        with pytest.raises(EndpointDown, match="2 requests in a row failed after 0 retries"):
            m.loglikelihood([(p, " yes") for p in prompts(40)])
    assert m.failed == 8 and len(script.bodies) == 2


def test_auto_batch_size_keeps_at_most_64_prompts_in_flight() -> None:
    assert [auto_batch_size(c) for c in (1, 4, 8, 16, 32, 64, 100)] == [8, 8, 8, 4, 2, 1, 1]
    m = OpenAIEvalModel("http://127.0.0.1:9/v1", "m", concurrency=16)
    assert m.batch_size == 4 and m.generate_chunk == 64
    for bad in (0, -1, "big"):
        with pytest.raises(UserError, match="batch_size must be auto or at least 1"):
            OpenAIEvalModel("http://127.0.0.1:9/v1", "m", batch_size=bad)
