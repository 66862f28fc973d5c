"""An endpoint evaluation sends its requests concurrently (``OpenAIEvalModel``,
``--concurrency``) and keeps the sequential contract: answers in the documents' order,
429/5xx tried again per request, a 4xx an error at once, failures counted, and failures
in a row (in the order requests complete) stopping the run with ``EndpointDown``.

The endpoint is a real HTTP server on 127.0.0.1 that records every prompt, how many
requests were in flight at once, and the order it answered in; it can hold a request
until others have been answered, to make an order of completion happen."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.eval.lm import EndpointDown, OpenAIEvalModel


@dataclass
class Script:
    """What the endpoint does. A prompt in ``order`` is answered once the prompts before it
    in ``order`` have been answered and (with ``gather``) every prompt of ``order`` has
    arrived, which needs them all in flight at once; or after ``hold_s``: a client that
    sends one request at a time is answered, late. ``pace_s`` passes between two answers
    of ``order``. A prompt in ``fail`` gets a 500, in ``refuse`` a 400, and in ``flaky`` a 503
    on its first try only.

    A list of prompts (``/v1/completions``) is answered as a server answers one, a choice
    per prompt (index p for prompt p), with ``lists`` "yes"; "400" or "422" refuses it with
    that status, naming the prompt, as some servers do; "first" answers its first prompt
    only, as a server that took the list for one prompt. A prompt of it in ``fail``,
    ``refuse`` or ``flaky`` fails the whole request. ``order`` and ``gather`` hold single
    prompts only."""

    order: list[str] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)
    refuse: set[str] = field(default_factory=set)
    flaky: set[str] = field(default_factory=set)
    gather: bool = True
    hold_s: float = 5.0
    first_together: int = 0  # the first this many requests wait until all have arrived
    content: str | None = None  # every chat answer (default: "answer <prompt>")
    pace_s: float = 0.0
    delay_s: float = 0.0  # before every answer
    lists: str = "yes"  # how a list of prompts is answered: yes, 400, 422, first
    # how a prompt in ``refuse`` is refused: (status, body)
    refusal: tuple[int, dict[str, Any]] = (
        400,
        {"error": {"message": "bad request", "type": "invalid_request_error"}},
    )
    # what happened
    bodies: list[dict[str, Any]] = field(default_factory=list)  # every request, as sent
    prompts: list[str] = field(default_factory=list)  # as they arrived (tries included)
    answered: list[str] = field(default_factory=list)  # as they were answered
    paths: list[str] = field(default_factory=list)  # the API each request called
    in_flight: int = 0
    max_in_flight: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def reply(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        prompt = body["prompt"] if "prompt" in body else body["messages"][-1]["content"]
        self.bodies.append(body)
        if isinstance(prompt, list):
            return self.reply_to_list(path, body, prompt)
        self.paths.append(path)
        with self.cond:
            tries = self.prompts.count(prompt)
            self.prompts.append(prompt)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.cond.notify_all()  # held requests wait for this one's arrival too
        try:
            if tries == 0 and len(set(self.prompts)) <= self.first_together:
                with self.cond:
                    self.cond.wait_for(
                        lambda: len(self.prompts) >= self.first_together, timeout=self.hold_s
                    )
            if prompt in self.order:
                before = self.order[: self.order.index(prompt)]
                with self.cond:
                    self.cond.wait_for(
                        lambda: (
                            (not self.gather or all(p in self.prompts for p in self.order))
                            and all(p in self.answered for p in before)
                        ),
                        timeout=self.hold_s,
                    )
                time.sleep(self.pace_s)
            time.sleep(self.delay_s)
            return self.answer(path, body, prompt, tries)
        finally:
            with self.cond:
                self.in_flight -= 1
                self.answered.append(prompt)
                self.cond.notify_all()

    def answer(
        self, path: str, body: dict[str, Any], prompt: str, tries: int
    ) -> tuple[int, dict[str, Any]]:
        if prompt in self.refuse:
            return self.refusal
        if prompt in self.fail or (prompt in self.flaky and tries == 0):
            return (503 if prompt in self.flaky else 500), {"error": {"message": "down"}}
        if path.endswith("/chat/completions"):
            content = f"answer {prompt}" if self.content is None else self.content
            message = {"role": "assistant", "content": content}
            return 200, {"choices": [{"index": 0, "message": message}]}
        if not body.get("echo"):  # a generation through the completions API
            text = f"answer {prompt}" if self.content is None else self.content
            return 200, {"choices": [{"index": 0, "text": text}]}
        return 200, {"choices": [{"index": 0, "text": prompt, "logprobs": _logprobs(prompt)}]}

    def reply_to_list(
        self, path: str, body: dict[str, Any], batch: list[str]
    ) -> tuple[int, dict[str, Any]]:
        self.paths.append(path)
        with self.cond:
            tries = {p: self.prompts.count(p) for p in batch}
            self.prompts += batch
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.cond.notify_all()
        try:
            time.sleep(self.delay_s)
            if self.lists in ("400", "422"):
                error = {"message": "prompt: expected a string", "param": "prompt"}
                return int(self.lists), {"error": {**error, "type": "invalid_request_error"}}
            choices = []
            for p in batch[:1] if self.lists == "first" else batch:
                status, reply = self.answer(path, body, p, tries[p])
                if status != 200:
                    return status, reply
                choices.append({**reply["choices"][0], "index": len(choices)})
            return 200, {"choices": choices}
        finally:
            with self.cond:
                self.in_flight -= 1
                self.answered += batch
                self.cond.notify_all()


def _logprobs(text: str) -> dict[str, Any]:
    """Echoed prompt logprobs with one token per character, each -1, each the greedy one
    (so a continuation of n characters scores -n)."""
    return {
        "tokens": list(text),
        "token_logprobs": [None] + [-1.0] * (len(text) - 1),
        "text_offset": list(range(len(text))),
        "top_logprobs": [None] + [{c: -1.0} for c in text[1:]],
    }


@contextlib.contextmanager
def endpoint(script: Script) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.endswith(("/v1/completions", "/v1/chat/completions")):
                status, reply = script.reply(self.path, body)
            else:
                status, reply = 404, {"error": {"message": "Not Found"}}
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def prompts(n: int) -> list[str]:
    return [f"q{i}" for i in range(n)]


def gen(texts: list[str]) -> list[tuple[str, dict[str, Any]]]:
    return [(t, {"until": ["\n"], "max_gen_toks": 8}) for t in texts]


def test_generations_go_out_concurrently_and_come_back_in_the_documents_order() -> None:
    # the first four are answered last first: they are all in flight together, and the
    # answers arrive in reverse
    script = Script(order=["q3", "q2", "q1", "q0"])
    with endpoint(script) as url:
        m = OpenAIEvalModel(url, "m", concurrency=4)
        outs = m.generate(gen(prompts(12)))
    assert outs == [f"answer q{i}" for i in range(12)]
    assert script.max_in_flight == 4  # never more than --concurrency
    assert [p for p in script.answered if p in script.order] == ["q3", "q2", "q1", "q0"]
    assert m.failed == 0


def test_log_likelihoods_go_out_concurrently_and_come_back_in_the_requests_order() -> None:
    # one prompt a request, so that the script can hold each (batches: test_endpoint_batch)
    requests = [(f"q{i}", " " + "x" * (i + 1)) for i in range(10)]
    whole = [c + x for c, x in requests]
    script = Script(order=whole[:5][::-1])
    with endpoint(script) as url:
        m = OpenAIEvalModel(url, "m", chat=False, concurrency=5, batch_size=1)
        lls = m.loglikelihood(requests)
    assert lls == [(-float(len(x)), True) for _, x in requests]
    assert script.max_in_flight == 5
    assert sorted(script.prompts) == sorted(whole)


def test_one_at_a_time_with_concurrency_1() -> None:
    script = Script(delay_s=0.01)
    with endpoint(script) as url:
        outs = OpenAIEvalModel(url, "m", concurrency=1).generate(gen(prompts(6)))
    assert outs == [f"answer q{i}" for i in range(6)]
    assert script.max_in_flight == 1 and script.prompts == prompts(6)


def test_429_and_5xx_are_tried_again_per_request_in_parallel() -> None:
    script = Script(flaky=set(prompts(8)))  # each fails its first try with a 503
    with endpoint(script) as url:
        m = OpenAIEvalModel(url, "m", retries=1, concurrency=8)
        t0 = time.perf_counter()
        outs = m.generate(gen(prompts(8)))
        seconds = time.perf_counter() - t0
    assert outs == [f"answer q{i}" for i in range(8)] and m.failed == 0
    assert sorted(script.prompts) == sorted(prompts(8) * 2)
    # eight 0.5 s back-offs side by side, not one after another (4 s); a bound, not a timing
    assert seconds < 3.0


def test_failures_are_counted_and_in_a_row_means_in_the_order_requests_complete() -> None:
    # answered one by one in the documents' order (0.05 s apart, so they complete in it),
    # with four in flight: never three failures in a row, so the run goes on
    n = 10
    failing = {"q1", "q2", "q4", "q5", "q7", "q8"}
    script = Script(order=prompts(n), gather=False, fail=failing, pace_s=0.05)
    with endpoint(script) as url:
        m = OpenAIEvalModel(url, "m", retries=0, max_failures_in_a_row=3, concurrency=4)
        outs = m.generate(gen(prompts(n)))
    assert outs == ["" if p in failing else f"answer {p}" for p in prompts(n)]
    assert m.failed == 6 and script.max_in_flight == 4

    # the same endpoint with three failures in a row (q2, q3, q4) stops at the third
    script = Script(order=prompts(20), gather=False, fail={"q2", "q3", "q4"}, pace_s=0.05)
    with endpoint(script) as url:
        m = OpenAIEvalModel(url, "m", retries=0, max_failures_in_a_row=3, concurrency=4)
        with pytest.raises(EndpointDown, match="3 requests in a row failed after 0 retries"):
            m.generate(gen(prompts(20)))
        assert m.failed == 3
        # q5-q7 were in flight when q4 failed; nothing after them was sent
        assert len(script.prompts) <= 8


def test_an_endpoint_that_is_down_stops_the_run_without_sending_the_rest() -> None:
    script = Script(fail=set(prompts(40)), delay_s=0.02)
    with endpoint(script) as url:
        m = OpenAIEvalModel(url, "m", retries=0, concurrency=4)  # 5 in a row by default
        with pytest.raises(EndpointDown, match=r"5 requests in a row failed .*HTTP 500"):
            m.generate(gen(prompts(40)))
        assert m.failed == 5  # what failed after the stop is not counted
        assert len(script.prompts) < 12


def test_a_4xx_raises_at_once_and_stops_the_call() -> None:
    script = Script(refuse={"q1"}, delay_s=0.05)
    with endpoint(script) as url:
        m = OpenAIEvalModel(url, "m", retries=3, concurrency=2)
        t0 = time.perf_counter()
        with pytest.raises(UserError, match="endpoint refused the request: 400") as e:
            m.generate(gen(prompts(30)))
        assert not isinstance(e.value, EndpointDown)
        assert time.perf_counter() - t0 < 2.0  # not tried again, not all 30 (1.5 s)
        assert script.prompts.count("q1") == 1 and len(script.prompts) <= 4


CHILD = """
import sys
from lmops.eval.lm import OpenAIEvalModel

m = OpenAIEvalModel(sys.argv[1], "m", concurrency=4, timeout=60)
try:
    m.generate([(f"q{i}", {}) for i in range(20)])
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_stops_at_once_and_requests_in_flight_do_not_hold_the_exit() -> None:
    import signal
    import subprocess
    import sys

    # every request is held (for "never", which does not come) for 30 s
    script = Script(order=["never", *prompts(20)], hold_s=30.0)
    with endpoint(script) as url:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE, text=True
        )
        deadline = time.time() + 60  # a guard against a hang, not a measurement
        while len(script.prompts) < 4:
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=15)
        finally:
            proc.kill()
            with script.cond:  # let the held requests go
                script.prompts.append("never")
                script.answered.append("never")
                script.cond.notify_all()
    assert out.strip() == "interrupted" and proc.returncode == 0
    assert time.perf_counter() - t0 < 10  # not the 30 s the requests in flight are held
    assert len(script.prompts) == 4 + 1  # nothing was sent after the interrupt


def test_concurrency_below_1_is_refused() -> None:
    with pytest.raises(UserError, match="concurrency must be at least 1"):
        OpenAIEvalModel("http://127.0.0.1:9/v1", "m", concurrency=0)


TASK = """\
task: caps
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "q{{{{i}}}}"
doc_to_target: "answer q{{{{i}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
metric_list:
  - metric: exact_match
"""


def test_eval_run_concurrency_flag_and_spec_field(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "caps.jsonl"
    data.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(12)))
    task = tmp_path / "caps.yaml"
    task.write_text(TASK.format(data=data), encoding="utf-8")
    for flag, want in ((["--concurrency", "3"], 3), ([], 8)):
        # the first `want` are answered last first: all of them in flight together
        script = Script(order=prompts(want)[::-1])
        with endpoint(script) as url:
            args = ["eval", "run", "--model", "m", "--endpoint", url, "--task-file", str(task)]
            # one prompt a request, so that the script can hold each
            r = cli(*args, *flag, "--batch-size", "1", "--no-resume", "--json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["results"]["caps"]["exact_match,none"] == 1.0
        assert script.max_in_flight == want

    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"model: m\ntask_files: [{task}]\nconcurrency: 2\nbatch_size: 1\n", encoding="utf-8"
    )
    script = Script(order=["q1", "q0"])
    with endpoint(script) as url:
        r = cli("eval", "run", str(spec), f"endpoint={url}", "--no-resume", "--json")
    assert r.code == 0, r.err
    assert script.max_in_flight == 2

    bad = cli("eval", "run", str(spec), "concurrency=0")
    assert bad.code != 0 and "concurrency" in bad.err


def test_safety_and_judge_take_the_concurrency_flag(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = Script(first_together=3, content="Sorry, I can't help with that. Rating: [[7]]")
    with endpoint(script) as url:
        args = ["--model", "m", "--endpoint", url, "--concurrency", "3", "--json"]
        r = cli("eval", "safety", *args, "--limit", "1")
    assert r.code == 0, r.err
    assert len(script.prompts) >= 6 and script.max_in_flight == 3

    questions = tmp_path / "q.jsonl"
    questions.write_text(
        "".join(json.dumps({"id": f"q{i}", "question": f"question {i}?"}) + "\n" for i in range(6))
    )
    script = Script(first_together=4, content="Rating: [[7]]")
    with endpoint(script) as url:
        args = ["--model", "m", "--judge", "j", "--endpoint", url, "--judge-endpoint", url]
        r = cli("eval", "judge", *args, "--set", str(questions), "--concurrency", "4", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["mean"] == 7.0
    assert script.max_in_flight == 4


def test_eval_run_sends_plain_text_unless_the_chat_template_is_asked_for(
    cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """As lm-eval's local-completions and local-chat-completions: without
    --apply-chat-template a generation prompt goes to /v1/completions as plain text (the chat
    API would apply the server's template to a base-model prompt); with it, to the chat
    API. A chat-only endpoint's 404 says which flag it needs."""
    data = tmp_path / "caps.jsonl"
    data.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(3)))
    task = tmp_path / "caps.yaml"
    task.write_text(TASK.format(data=data), encoding="utf-8")
    for flag, path in (
        ([], "/v1/completions"),
        (["--apply-chat-template"], "/v1/chat/completions"),
    ):
        script = Script()
        with endpoint(script) as url:
            args = ["eval", "run", "--model", "m", "--endpoint", url, "--task-file", str(task)]
            r = cli(*args, *flag, "--no-resume", "--json")
        assert r.code == 0, r.err
        assert set(script.paths) == {path}
        assert json.loads(r.out)["results"]["caps"]["exact_match,none"] == 1.0
    lm = OpenAIEvalModel("http://127.0.0.1:9/v1", "m", chat=False, retries=0)
    with endpoint(Script()) as url:
        lm.client.base_url = url.replace("/v1", "/nothing")  # every path a 404 there
        with pytest.raises(UserError, match="chat-only APIs take generation tasks with --apply"):
            lm.generate(gen(["q0"]))
