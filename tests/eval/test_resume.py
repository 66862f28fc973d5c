"""A killed or failed evaluation keeps what it finished: each task is saved as it finishes,
the same command reuses it and scores only the rest, other settings or an edited task
never reuse it, and the files go once the report registers. A failing endpoint stops the
run after requests fail in a row, keeping the tasks already scored."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lmops.eval.lm import FakeEvalModel
from lmops.eval.partial import PartialResults
from lmops.eval.run import evaluate
from lmops.eval.tasks import load_task_file

TASK = """\
task: {name}
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
  max_gen_toks: 8
metric_list:
  - metric: exact_match
"""

COUNTRIES = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
]


def write_task(tmp: Path, name: str, n: int, extra: str = "") -> Path:
    data = tmp / f"{name}.jsonl"
    data.write_text(
        "\n".join(json.dumps({"country": c, "capital": k}) for c, k in COUNTRIES[:n]) + "\n"
    )
    f = tmp / f"{name}.yaml"
    f.write_text(TASK.format(name=name, data=data) + extra, encoding="utf-8")
    return f


class Crash(Exception):
    pass


def test_a_crashed_run_keeps_finished_tasks_and_the_rerun_scores_only_the_rest(
    tmp_path: Path,
) -> None:
    tasks = [load_task_file(write_task(tmp_path, n, 3)) for n in ("a", "b", "c")]
    asked: list[str] = []

    def respond(ctx: str) -> str:
        asked.append(ctx)
        if "Japan" in ctx and len(asked) > 3:  # task b's second document
            raise Crash
        return " Paris"

    partial = PartialResults(tmp_path / "partial", "model m", {})
    with pytest.raises(Crash):
        evaluate(FakeEvalModel(respond), tasks, partial=partial, progress=False)
    assert [f.name.split(".")[0] for f in partial.finished()] == ["a"]
    assert not list(partial.dir.glob("*.tmp"))  # written to a temporary file, then renamed

    asked.clear()
    again = PartialResults(tmp_path / "partial", "model m", {})
    results = evaluate(FakeEvalModel(lambda ctx: " Paris"), tasks, partial=again, progress=False)
    assert again.reused == ["a"]
    assert [r.task for r in results] == ["a", "b", "c"] and results[0].n == 3
    assert results[0].items[0]["output"] == " Paris"
    assert sorted(f.name.split(".")[0] for f in again.finished()) == ["a", "b", "c"]
    again.clear()
    assert not again.dir.exists()


def test_other_settings_models_or_task_edits_do_not_reuse(tmp_path: Path) -> None:
    f = write_task(tmp_path, "a", 3)
    root = tmp_path / "partial"
    first = PartialResults(root, "model m", {})
    evaluate(FakeEvalModel(), [load_task_file(f)], partial=first, progress=False)

    def reused(model_key: str = "model m", **kw: Any) -> list[str]:
        p = PartialResults(root, model_key, {})
        evaluate(FakeEvalModel(), [load_task_file(f)], partial=p, progress=False, **kw)
        return p.reused

    assert reused() == ["a"]
    assert reused(system_instruction="Be brief.") == []
    assert reused(apply_chat_template=True) == []
    assert reused(limit=2) == []
    assert reused("model m2") == []
    f.write_text(f.read_text().replace("Q: capital", "Question: capital"))  # a new template
    assert reused() == []


# -- an endpoint that goes down in the middle of a run ----------------------------------------
# what vLLM says to a prompt longer than the model takes
REFUSAL = (
    "This model's maximum context length is 16 tokens. However, you requested 24 tokens "
    "(16 in the messages, 8 in the completion). Please reduce the length of the messages "
    "or completion."
)


@contextlib.contextmanager
def endpoint(state: dict[str, Any]) -> Iterator[str]:
    """A chat and completions endpoint that answers " Paris" (to each prompt of a list),
    and HTTP 500 once it has answered ``state["fail_after"]`` requests (or holds every
    request after ``state["hang_after"]`` until ``state["released"]`` is set); a 400 saying
    ``REFUSAL`` to a request with a prompt that contains ``state["refuse"]``;
    ``state["bodies"]`` records every request."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["bodies"].append(body)
            if state.get("hang_after") is not None and len(state["bodies"]) > state["hang_after"]:
                state["released"].wait(60)  # a request that never gets its answer
            limit = state["fail_after"]
            if limit is not None and len(state["bodies"]) > limit:
                self.send_response(500)
                self.end_headers()
                return
            prompt = body["prompt"] if "prompt" in body else body["messages"][-1]["content"]
            texts = prompt if isinstance(prompt, list) else [prompt]
            status, reply = 200, {"choices": []}
            for i in range(len(texts)):  # /v1/completions
                reply["choices"].append({"index": i, "text": " Paris"})
            if self.path.endswith("/chat/completions"):
                message = {"role": "assistant", "content": " Paris"}
                reply = {"choices": [{"index": 0, "message": message}]}
            if state.get("refuse") and any(state["refuse"] in t for t in texts):
                status, reply = 400, {"error": {"message": REFUSAL, "type": "BadRequestError"}}
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


def settle(state: dict[str, Any], quiet_s: float = 0.3) -> None:
    """Wait until the endpoint has received nothing for ``quiet_s``."""
    import time

    seen = -1
    while seen != len(state["bodies"]):
        seen = len(state["bodies"])
        time.sleep(quiet_s)


def test_a_failing_endpoint_keeps_scored_tasks_and_the_same_command_resumes(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, lmops_home: Path
) -> None:
    from lmops.store import Store

    files = [write_task(tmp_path, "caps_a", 3), write_task(tmp_path, "caps_b", 6)]
    state: dict[str, Any] = {"bodies": [], "fail_after": 3}  # task a, then nothing
    with endpoint(state) as url:
        args = ["eval", "run", "--model", "m", "--endpoint", url, "--retries", "0"]
        args += ["--batch-size", "1"]  # one document a request, as the endpoint counts
        args += [a for f in files for a in ("--task-file", str(f))]
        down = cli(*args)
        assert down.code == 2
        err = " ".join(down.err.split())
        assert "5 requests in a row failed after 0 retries (last: HTTP 500" in err
        assert "1 finished task(s) are kept in" in err and "run the same command again" in err
        lines = down.err.strip().splitlines()  # progress lines, then a one-line error
        assert lines[-1].startswith("error: endpoint") and "Traceback" not in down.err
        assert lines[-2].startswith("eval: 3/9 docs") and lines[-2].endswith("stopped (caps_b)")
        kept = list((lmops_home / "eval-partial").rglob("*.json"))
        assert [f.name.split(".")[0] for f in kept] == ["caps_a"]

        settle(state)  # requests still in flight when the run stopped land first
        state.update(bodies=[], fail_after=None)
        ok = cli(*args, "--output", "caps")
        assert ok.code == 0, ok.err
    assert len(state["bodies"]) == 6  # task b only: task a was reused
    assert "reused 1 task(s) finished by an interrupted run" in " ".join(ok.out.split())
    report = json.loads((Store().assets.path("caps") / "results.json").read_text())
    assert report["config"]["resumed_tasks"] == ["caps_a"]
    assert report["results"]["caps_a"]["n"] == 3 and report["results"]["caps_b"]["n"] == 6
    assert not list((lmops_home / "eval-partial").rglob("*.json"))  # gone once registered


def test_a_refused_prompt_names_its_task_and_document_and_the_run_resumes(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, lmops_home: Path
) -> None:
    from lmops.store import Store

    files = [write_task(tmp_path, "caps_a", 3), write_task(tmp_path, "caps_b", 6)]
    state: dict[str, Any] = {"bodies": [], "fail_after": None, "refuse": "Chile"}
    with endpoint(state) as url:
        args = ["eval", "run", "--model", "m", "--endpoint", url, "--retries", "0"]
        args += ["--batch-size", "4"]  # the refused list falls back to one prompt a request
        args += [a for f in files for a in ("--task-file", str(f))]
        refused = cli(*args)
        assert refused.code == 2 and "Traceback" not in refused.err
        # one line: the task, the document (items.jsonl's numbering), the server's words
        error = refused.err.strip().splitlines()[-1]
        assert error.startswith(
            f"error: task caps_b, doc 5: endpoint refused the request: 400 {REFUSAL}; "
            "shorten or drop the item, or raise the server's limit (its context length, its "
            "request size); 1 finished task(s) are kept in "
        )
        # the same command, unchanged, would be refused again: the hint says so
        assert error.endswith("; once that is changed, the same command scores only the rest")
        kept = list((lmops_home / "eval-partial").rglob("*.json"))
        assert [f.name.split(".")[0] for f in kept] == ["caps_a"]

        settle(state)
        state.update(bodies=[], refuse=None)  # the document is fixed (or the server is)
        ok = cli(*args, "--output", "caps")
        assert ok.code == 0, ok.err
    sent = [p for b in state["bodies"] for p in b["prompt"]]  # lists of 4 again
    assert sorted(sent) == sorted(f"Q: capital of {c}?\nA:" for c, _ in COUNTRIES)  # b's only
    report = json.loads((Store().assets.path("caps") / "results.json").read_text())
    assert report["config"]["resumed_tasks"] == ["caps_a"]
    assert report["results"]["caps_a"]["n"] == 3 and report["results"]["caps_b"]["n"] == 6


def test_chat_prompts_go_to_an_endpoint_as_messages(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = write_task(tmp_path, "caps", 2)
    state: dict[str, Any] = {"bodies": [], "fail_after": None}
    with endpoint(state) as url:
        r = cli(
            "eval",
            "run",
            "--model",
            "m",
            "--endpoint",
            url,
            "--task-file",
            str(f),
            "--apply-chat-template",
            "--system-instruction",
            "Be brief.",
            "--json",
        )
    assert r.code == 0, r.err
    assert [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: capital of France?\nA:"},
    ] in [b["messages"] for b in state["bodies"]]  # (sent concurrently: in any order)
    report = json.loads(r.out)
    assert report["config"]["apply_chat_template"] is True
    assert report["config"]["fewshot_as_multiturn"] is True

    # the server's template renders the turns: no log-likelihood after them to ask for
    mc = tmp_path / "mc.yaml"
    mc.write_text(
        f.read_text().replace("output_type: generate_until", "output_type: multiple_choice")
        + 'doc_to_choice: ["Paris", "Tokyo"]\n'
    )
    with endpoint(state) as url:
        bad = cli(
            "eval",
            "run",
            "--model",
            "m",
            "--endpoint",
            url,
            "--task-file",
            str(mc),
            "--apply-chat-template",
        )
    assert bad.code == 2 and "on an endpoint scores generation tasks only (caps is" in bad.err


def test_a_sigkilled_run_resumes_from_its_finished_tasks(tmp_path: Path) -> None:
    """A real kill (no exception, no clean-up): the task written before it is whole, and
    the same command in a new process reuses it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    home = tmp_path / "home"
    env = {**os.environ, "LMOPS_HOME": str(home)}
    files = [write_task(tmp_path, "caps_a", 3), write_task(tmp_path, "caps_b", 3)]
    state: dict[str, Any] = {
        "bodies": [],
        "fail_after": None,
        "hang_after": 3,  # task a is answered, task b waits forever
        "released": threading.Event(),
    }
    with endpoint(state) as url:
        cmd = [sys.executable, "-m", "lmops.cli.main", "eval", "run", "--model", "m"]
        cmd += ["--endpoint", url, "--output", "caps", "--json"]
        cmd += ["--batch-size", "1"]  # one document a request, as the endpoint counts
        cmd += [a for f in files for a in ("--task-file", str(f))]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120  # a guard against a hang, not a measurement
        while not list((home / "eval-partial").rglob("caps_a.*.json")):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state.update(bodies=[], hang_after=None)
        state["released"].set()
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["config"]["resumed_tasks"] == ["caps_a"]
    assert sorted(b["prompt"] for b in state["bodies"]) == sorted(
        f"Q: capital of {c}?\nA:" for c, _ in COUNTRIES[:3]
    )  # task b's three questions only (plain text: no --apply-chat-template)
    assert report["results"]["caps_a"]["n"] == 3 and report["results"]["caps_b"]["n"] == 3
    assert not list((home / "eval-partial").rglob("*.json"))
