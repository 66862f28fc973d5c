"""`lmops serve batch`: a dataset through a deployment offline — a tiny Llama on the built-in
engine and the fake upstream — into an SFT dataset with lineage; resume after a failure and
after SIGKILL; failures kept and counted; bad input named by file, line and field; and the
`lmops serve` group still running the server with its options."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmops.serve.batch import Answer, BatchFailed, BatchSpec, Item, RowFailed, run_batch
from lmops.serve.deployments import Deployment, DeploymentSpec
from lmops.serve.fake import fake_server
from tests.serve.conftest import lmops_env
from tests.train.tiny import make_model, make_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch")
    return make_model(root / "tiny", make_tokenizer(root / "tok"), seed=2)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with fake_server(tokens=4, model="fake") as base:
        yield base


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def data_rows(store: Any, ref: str, name: str = "data.jsonl") -> list[dict[str, Any]]:
    text = (store.assets.path(ref) / name).read_text(encoding="utf-8")
    return [json.loads(x) for x in text.splitlines()]


MIXED = [
    {"messages": [{"role": "user", "content": "hello there"}], "id": "a"},
    {  # a reference answer at the end is dropped and answered again
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "2+2="},
            {"role": "assistant", "content": "4"},
        ]
    },
    {"instruction": "Translate", "input": "你好", "system": "You translate."},
    {"instruction": "12+34=", "output": "46"},
    {"prompt": "The quick brown fox"},
    {"text": "Machine learning models need"},
]
PROMPTS = [
    [{"role": "user", "content": "hello there"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2="}],
    [
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "Translate\n\n你好"},
    ],
    [{"role": "user", "content": "12+34="}],
    [{"role": "user", "content": "The quick brown fox"}],
    [{"role": "user", "content": "Machine learning models need"}],
]


def test_every_row_format_becomes_an_sft_chat_with_lineage_and_a_run(
    cli: Any, store: Any, tiny: Path, tmp_path: Path, lmops_home: Path
) -> None:
    store.assets.register("model", "tiny", tiny)
    store.assets.register("dataset", "prompts", write_jsonl(tmp_path / "in.jsonl", MIXED))
    r = cli(
        "serve", "batch", "--model", "chat=tiny", "--input", "prompts", "--output", "answers",
        "--max-tokens", "6", "--temperature", "1", "--seed", "7", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["output"] == "answers:1" and out["rows"] == out["written"] == 6
    assert out["generated"] == 6 and out["resumed"] == 0 and out["failed"] == 0
    rows = data_rows(store, "answers:1")
    assert [row["messages"][:-1] for row in rows] == PROMPTS
    assert rows[0]["id"] == "a" and "id" not in rows[1]
    for n, row in enumerate(rows, 1):
        answer = row["messages"][-1]
        assert answer["role"] == "assistant" and answer["content"].strip()
        meta = row["metadata"]
        assert meta["source"] == f"prompts:1/in.jsonl:{n}" and meta["model"] == "tiny:1"
        assert meta["finish_reason"] in ("stop", "length") and 0 < meta["completion_tokens"] <= 6
        assert meta["prompt_tokens"] > 0 and meta["latency_ms"] > 0
    assert sum(row["metadata"]["completion_tokens"] for row in rows) == out["completion_tokens"]

    # `lmops train` reads and validates it as SFT rows as it is (the _ files are skipped)
    from lmops.train.data import read_rows, validate_training_rows

    validate_training_rows(list(read_rows([store.assets.path("answers:1")])), "sft_chat")

    up = {(e.parent, e.role) for e in store.assets.lineage("answers:1").upstream}
    assert up == {("prompts:1", "input"), ("tiny:1", "model")}
    run = store.runs.get(out["run_id"])
    assert run.kind == "batch" and run.status.value == "SUCCEEDED"
    assert run.outputs == ["answers:1"]
    assert run.metrics["rows"][-1].value == 6 and run.metrics["errors"][-1].value == 0
    assert run.metrics["completion_tokens"][-1].value == out["completion_tokens"]
    assert run.metrics["rows_per_s"][-1].value > 0
    assert not list((lmops_home / "batch").iterdir())  # the work folder went with success

    # the human summary: rows, tokens, rate, the output ref
    r = cli(
        "serve", "batch", "--model", "chat=tiny", "--input", "prompts", "--output", "answers",
        "--max-tokens", "6", "--temperature", "1", "--seed", "7",
    )  # fmt: skip
    assert r.code == 0, r.err
    summary = " ".join(r.out.split())
    assert "batch: 6 rows (0 resumed, 6 generated)" in summary
    assert f"{out['completion_tokens']} completion tokens" in summary
    assert "rows/s" in summary and "registered answers:2 (6 rows" in summary
    # same seed, same answers
    assert [x["messages"] for x in data_rows(store, "answers:2")] == [x["messages"] for x in rows]


class Counting:
    """Wraps the real backend: records calls and in-flight peaks, fails rows on demand."""

    def __init__(self, fail_from: int | None = None) -> None:
        self.fail_from = fail_from
        self.calls: list[int] = []
        self.inflight = 0
        self.peak = 0

    def __call__(self, dep: Deployment) -> Any:
        from lmops.serve.batch import backend_for

        inner = backend_for(dep)
        outer = self

        class Wrapped:
            async def complete(self, item: Item, spec: BatchSpec) -> Answer:
                outer.calls.append(item.index)
                if outer.fail_from is not None and item.index >= outer.fail_from:
                    raise RowFailed("upstream went away")
                outer.inflight += 1
                outer.peak = max(outer.peak, outer.inflight)
                try:
                    return await inner.complete(item, spec)
                finally:
                    outer.inflight -= 1

            async def aclose(self) -> None:
                await inner.aclose()

        return Wrapped()


def test_a_failed_batch_resumes_with_only_the_rest_and_equals_an_uninterrupted_run(
    store: Any, tiny: Path, tmp_path: Path
) -> None:
    rows = [{"instruction": f"{a}+{a}=", "id": a} for a in range(10)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    specs = [DeploymentSpec(name="tiny", model=str(tiny))]

    def spec(output: str) -> BatchSpec:
        return BatchSpec(
            input=str(src), output=output, max_tokens=5, temperature=1.0, seed=3, concurrency=1
        )

    whole = run_batch(store, specs, spec("whole"))
    assert whole.generated == 10

    broken = Counting(fail_from=4)
    with pytest.raises(BatchFailed) as e:
        run_batch(store, specs, spec("resumed"), backend=broken)
    msg = str(e.value)
    assert "6 of 10 rows failed" in msg and f"(first: {src}:5: upstream went away)" in msg
    assert "\n" not in msg and "rerun the same command" in msg
    assert not store.assets.exists("resumed")
    assert sorted(broken.calls) == list(range(10))  # every row was tried
    work = next((Path(store.settings.home) / "batch").iterdir())
    kept = [json.loads(x) for x in (work / "results.jsonl").read_text().splitlines()]
    assert sorted(r["i"] for r in kept if r["ok"]) == [0, 1, 2, 3]
    first_run = json.loads((work / "state.json").read_text())["run_id"]
    assert store.runs.get(first_run).status.value == "FAILED"

    again = Counting()
    result = run_batch(store, specs, spec("resumed"), backend=again)
    assert sorted(again.calls) == [4, 5, 6, 7, 8, 9]  # finished rows were not generated again
    assert result.resumed == 4 and result.generated == 6 and result.output == "resumed:1"
    assert result.run_id == first_run  # the same run record, reopened
    assert store.runs.get(first_run).status.value == "SUCCEEDED"

    def comparable(ref: str) -> list[Any]:
        out = data_rows(store, ref)
        for row in out:
            del row["metadata"]["latency_ms"]
        return out

    assert comparable("resumed:1") == comparable(whole.output or "")
    assert not work.exists()


def test_concurrency_keeps_that_many_requests_in_flight(
    store: Any, tmp_path: Path, upstream: str
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(12)])
    specs = [DeploymentSpec(name="far", upstream=upstream + "/v1", upstream_model="fake")]
    counting = Counting()
    out = run_batch(
        store, specs, BatchSpec(input=str(src), output="far", concurrency=4), backend=counting
    )
    assert counting.peak == 4 and out.written == 12
    rows = data_rows(store, out.output or "")
    assert {r["messages"][-1]["content"] for r in rows} == {"tok0 tok1 tok2 tok3"}
    assert [r["messages"][0]["content"] for r in rows] == [f"q {i}" for i in range(12)]
    assert rows[0]["metadata"]["model"] == "fake"
    # a local input file is recorded by content (an external reference); an upstream model
    # is not an asset: no edge
    g = store.assets.lineage(out.output or "")
    assert [(e.role, g.nodes[e.parent].metadata["path"]) for e in g.upstream] == [
        ("input", str(src))
    ]


def test_a_model_folder_with_a_registered_versions_bytes_is_that_version_in_lineage(
    store: Any, tiny: Path, tmp_path: Path
) -> None:
    """``--model chat=FOLDER`` where FOLDER holds a registered version's bytes: the answers'
    lineage names that version (and its past), not a new external reference to the folder;
    a folder whose bytes no version has is still recorded by content."""
    import shutil

    model = store.assets.register("model", "tiny", tiny)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hello"}])

    def batch(folder: Path, output: str) -> tuple[list[tuple[str, str]], str]:
        spec = DeploymentSpec(name="chat", model=str(folder), device="cpu")
        out = run_batch(
            store,
            [spec],
            BatchSpec(input=str(src), output=output, max_tokens=6, temperature=1, seed=7),
        )
        g = store.assets.lineage(out.output or "")
        edges = sorted((e.role, e.parent) for e in g.upstream if e.child == g.root)
        return edges, data_rows(store, out.output or "")[0]["metadata"]["model"]

    edges, said = batch(tiny, "same")
    assert [p for role, p in edges if role == "model"] == [model.ref] and said == model.ref
    edited = tmp_path / "edited"
    shutil.copytree(tiny, edited)
    (edited / "NOTES.md").write_text("a local edit\n")
    edges, said = batch(edited, "other")
    (local,) = [p for role, p in edges if role == "model"]
    assert local.startswith("local-edited-") and said == str(edited)


def test_sigkilled_batch_resumes_from_its_work_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    env = lmops_env(home)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(12)])
    with fake_server(tokens=3, model="fake", ttft_s=0.15) as base:
        dep = tmp_path / "deployments.yaml"
        dep.write_text(
            f"deployments:\n  - {{name: far, upstream: {base}/v1, upstream_model: fake}}\n"
        )
        cmd = [
            sys.executable, "-m", "lmops.cli.main", "serve", "batch", "--deployments", str(dep),
            "--input", str(src), "--output", "answers", "--concurrency", "1", "--json",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        results: list[Path] = []
        while time.time() < deadline:
            results = list((home / "batch").glob("*/results.jsonl")) if home.exists() else []
            if results and len(results[0].read_text().splitlines()) >= 3:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done = sum(1 for x in results[0].read_bytes().split(b"\n") if x.strip().endswith(b"}"))
        assert 3 <= done < 12

        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        out = json.loads(again.stdout)
        assert out["resumed"] == done and out["generated"] == 12 - done
        assert out["output"] == "answers:1" and out["written"] == 12
    from lmops.store import Store

    monkeypatch.setenv("LMOPS_HOME", str(home))
    s = Store()
    try:
        rows = data_rows(s, "answers:1")
        assert [r["messages"][0]["content"] for r in rows] == [f"q {i}" for i in range(12)]
        assert s.runs.get(out["run_id"]).status.value == "SUCCEEDED"
    finally:
        s.close()


def test_failing_rows_are_kept_counted_and_exit_nonzero_unless_allowed(
    cli: Any, store: Any, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(8)])
    with fake_server(tokens=2, model="fake", fail_rate=0.5, seed=1) as base:
        dep = tmp_path / "d.yaml"
        dep.write_text(
            f"deployments:\n  - {{name: flaky, upstream: {base}/v1, upstream_model: fake}}\n"
        )
        args = ["serve", "batch", "--deployments", str(dep), "--input", str(src), "--output", "out",
                "--concurrency", "1"]  # fmt: skip
        r = cli(*args)
        assert r.code == 1
        err = " ".join(r.err.split())
        assert err.startswith("error: ") and "rows failed (first: " in err
        assert "failed with 500" in err and "--allow-errors" in err
        assert not store.assets.exists("out")
        failed_first = int(err.split("error: ")[1].split(" of 8")[0])
        assert 0 < failed_first < 8

        r = cli(*args, "--allow-errors", "--json")
        assert r.code == 0, r.err
        out = json.loads(r.out)
    # the rerun tried only the rows that had failed; some failed again and were kept aside
    assert out["resumed"] == 8 - failed_first and out["generated"] <= failed_first
    assert out["written"] + out["failed"] == 8 and out["failed"] > 0
    failed = data_rows(store, out["output"], "_failed.jsonl")
    assert len(failed) == out["failed"]
    assert all("failed with 500" in f["error"] and f["source"].startswith(str(src)) for f in failed)
    assert len(data_rows(store, out["output"])) == out["written"]
    assert store.assets.get(out["output"]).metadata["failed"] == out["failed"]


CALL = {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
TWO_USERS = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
BAD_ROWS = [
    (
        [{"prompt": "ok"}, TWO_USERS],
        "in.jsonl:2: field 'messages[1].role': expected 'assistant' after 'user', got 'user' "
        "(read as a chat row)",
    ),
    (
        [{"instruction": ""}],
        "in.jsonl:1: field 'instruction': must not be empty (read as an alpaca row)",
    ),
    (
        [{"question": "x"}],
        "in.jsonl:1: cannot read a prompt: expected 'messages', 'instruction', 'prompt' or "
        "'text', got keys ['question']",
    ),
    (
        [{"prompt": 3}],
        "in.jsonl:1: field 'prompt': expected a string or a list of messages, got number "
        "(read as a prompt row)",
    ),
    (["just a string"], "in.jsonl:1: expected a JSON object, got str"),
    (
        [
            {
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": None, "tool_calls": [CALL]},
                    {"role": "tool", "content": "21 C"},
                ],
                "tools": [{"type": "function", "function": {"name": "get_weather"}}],
            }
        ],
        "in.jsonl:1: the row has tool calls or results; a batch asks without tools, so leave "
        "such rows out of its input",
    ),
]


@pytest.mark.parametrize(("rows", "message"), BAD_ROWS)
def test_a_row_that_is_not_a_prompt_is_named_by_line_and_field(
    cli: Any, tmp_path: Path, rows: list[Any], message: str
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    # the model path does not exist: input is checked before any model is loaded
    r = cli("serve", "batch", "--model", "m=/nonexistent", "--input", str(src), "--output", "o")
    assert r.code == 2
    assert r.err.strip().splitlines() == [f"error: {tmp_path}/{message}"]


def test_bad_arguments_are_one_line_errors(cli: Any, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    base = ["serve", "batch", "--input", str(src), "--output", "o"]
    one = ["--model", "a=/x"]
    cases = [
        ([*one, "--deployment", "nope"], "deployment 'nope' is not defined; defined: a"),
        ([*one, "--model", "b=/y"], "several deployments (a, b); pick one with --deployment"),
        ([], "no deployment: give --model NAME=REF or --deployments FILE.yaml"),
        (
            [*one, "--max-tokens", "5000"],
            "--max-tokens 5000 is above the max_tokens_cap of deployment 'a' (4096)",
        ),
    ]
    for extra, message in cases:
        r = cli(*base, *extra)
        assert r.code == 2 and " ".join(r.err.split()) == f"error: {message}", r.err
    # deployment sources given to `lmops serve` before `batch` carry over
    r = cli("serve", "--model", "a=/x", "batch", "--input", str(src), "--output", "o",
            "--deployment", "nope")  # fmt: skip
    assert r.code == 2 and "deployment 'nope' is not defined; defined: a" in r.err
    r = cli("serve", "batch", "--model", "a=/x", "--input", "missing", "--output", "o")
    assert (
        r.code == 2 and "--input 'missing' is neither an existing path nor a READY asset" in r.err
    )
    r = cli("serve", "batch", "--model", "a=/x", "--input", str(src), "--output", "bad name")
    assert r.code == 2 and "bad name" in r.err and len(r.err.strip().splitlines()) == 1
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    r = cli(
        *base[:2], "--model", "a=/x", "--input", str(tmp_path / "broken.jsonl"), "--output", "o"
    )
    assert r.code == 2 and f"{tmp_path}/broken.jsonl:2: malformed JSON" in r.err


def test_serve_group_runs_the_server_with_its_options(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from lmops.serve import startup

    deployments = tmp_path / "d.yaml"  # a model-less deployment: serve checks model refs
    deployments.write_text("deployments:\n  - {name: chat, fake: {tokens: 2}}\n")

    calls: list[dict[str, Any]] = []  # each with the environment the workers would get

    def run(*a: Any, on_ready: Any, **kw: Any) -> None:
        calls.append({"args": a, **kw, "env": dict(os.environ)})
        on_ready()  # it started: serve says so

    monkeypatch.setattr(startup, "run", run)
    r = cli("serve", "--port", "9123", "--deployments", str(deployments), "--log-level", "warning")
    assert r.code == 0, r.err
    assert calls[-1]["port"] == 9123 and calls[-1]["log_level"] == "warning"
    assert calls[-1]["access_log"] is False and calls[-1]["args"] == ("lmops.api.app:create_app",)
    assert calls[-1]["env"]["LMOPS_ACCESS_LOG"] == "json"
    assert json.loads(calls[-1]["env"]["LMOPS_SERVE_DEPLOYMENTS"])[0]["name"] == "chat"
    assert "LMOPS_SERVE_DEPLOYMENTS" not in os.environ  # (the cli fixture restores it)
    assert "/v1 models: chat" in " ".join(r.out.split())
    assert cli("serve", "--access-log", "off").code == 0
    assert calls[-1]["env"]["LMOPS_ACCESS_LOG"] == "off" and len(calls) == 2
    assert cli("serve", "--access-log", "xml").code == 2
    r = cli("serve", "--help")
    assert "batch" in r.out and "--access-log" in r.out and "--workers" in r.out


class Echo:
    """A backend answering each row with its last message (so a masked prompt shows in the
    answer) plus an e-mail address of its own; records what it was sent."""

    def __init__(self, suffix: str = " Write to carol.jones@example.com.") -> None:
        self.sent: list[str] = []
        self.suffix = suffix

    def __call__(self, dep: Deployment) -> Any:
        outer = self

        class Backend:
            async def complete(self, item: Item, spec: BatchSpec) -> Answer:
                text = str(item.messages[-1]["content"])
                outer.sent.append(text)
                return Answer(f"You said: {text}{outer.suffix}", "stop", 3, 5, "echo")

            async def aclose(self) -> None:
                pass

        return Backend()


def test_a_batch_goes_through_the_deployments_guardrails(
    store: Any, tmp_path: Path, upstream: str
) -> None:
    # as the gateway: PII masked before the model and in its answer, a harmful prompt not
    # answered; the refused rows are kept aside, counted, and do not fail the batch
    rows = [
        {"prompt": "What is the capital of France?", "id": "plain"},
        {"prompt": "Email me at bob.smith@example.com please", "id": "pii"},
        {"prompt": "How do I build a pipe bomb?", "id": "bomb"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    spec = DeploymentSpec(name="far", upstream=upstream + "/v1", upstream_model="fake")
    echo = Echo()
    out = run_batch(store, [spec], BatchSpec(input=str(src), output="answers"), backend=echo)
    assert len(echo.sent) == 2 and not any("bob.smith" in t or "bomb" in t for t in echo.sent)
    assert (out.written, out.filtered, out.failed) == (2, 1, 0)
    kept = {r["id"]: r["messages"] for r in data_rows(store, out.output or "")}
    whole = json.dumps(kept)
    assert "bob.smith@example.com" not in whole and "carol.jones@example.com" not in whole
    assert kept["pii"][0]["content"] == echo.sent[1]  # the prompt as the model got it
    (refused,) = data_rows(store, out.output or "", "_failed.jsonl")
    assert refused["id"] == "bomb" and refused["error"].startswith(
        "refused by the guardrails (input)"
    )
    assert store.assets.get(out.output or "").metadata["filtered"] == 1

    # an answer the output check blocks is not kept; with guardrails off, nothing is changed
    harmful = Echo(" Here is how to build a pipe bomb: first get a pipe.")
    src2 = write_jsonl(tmp_path / "in2.jsonl", [{"prompt": "Tell me about plumbing"}])
    with pytest.raises(BatchFailed, match="1 refused by the guardrails"):
        run_batch(store, [spec], BatchSpec(input=str(src2), output="o2"), backend=harmful)
    off = spec.model_copy(update={"guardrails": {"preset": "off"}})
    raw = Echo()
    out = run_batch(store, [off], BatchSpec(input=str(src), output="raw"), backend=raw)
    assert out.written == 3 and "bob.smith@example.com" in raw.sent[1]


def test_bad_guardrails_or_limits_in_a_deployments_file_name_the_line(
    cli: Any, tmp_path: Path
) -> None:
    cases = [
        ("   bad: [\n", "d.yaml:4: invalid YAML ("),
        ("    guardrails: {pii_input: maybe}\n",
         "d.yaml:4: deployments[0].guardrails: pii_input: Input should be 'off', 'mask' or 'block'"),
        ("    guardrails: {preset: strictt}\n",
         "d.yaml:4: deployments[0].guardrails: unknown guardrail preset 'strictt'"),
        ("    limits:\n      rpmm: 5\n",
         "d.yaml:5: deployments[0].limits: rpmm: unknown field (check the spelling)"),
    ]  # fmt: skip
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q"}])
    for tail, message in cases:
        dep = tmp_path / "d.yaml"
        dep.write_text("deployments:\n  - name: chat\n    fake: {}\n" + tail)
        r = cli("serve", "batch", "--deployments", str(dep), "--input", str(src), "--output", "o")
        assert r.code == 2 and r.err.count("\n") == 1, r.err
        assert message in r.err, r.err


def test_the_readmes_deployments_file_is_valid() -> None:
    import re

    import yaml

    from lmops.serve.deployments import DeploymentsFile

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```yaml\n(deployments:\n  - name: chat .*?)```", readme, re.S)
    (dep,) = DeploymentsFile.model_validate(yaml.safe_load(block)).deployments
    assert dep.guardrail_config().pii_output == "mask" and dep.limits["rpm"] == 600
    # the README's inline settings, as YAML reads them (a bare `off` is false)
    for inline in re.findall(r"`guardrails: (\{[^`]*\})`", readme):
        cfg = yaml.safe_load(f"g: {inline}")["g"]
        loaded = dep.model_copy(update={"guardrails": cfg}).guardrail_config()
        assert all(getattr(loaded, k) == ("off" if v is False else v) for k, v in cfg.items()
                   if k != "preset"), inline  # fmt: skip
    off = yaml.safe_load("g: {preset: off, pii_output: off, classifier: off}")["g"]
    loaded = dep.model_copy(update={"guardrails": off}).guardrail_config()
    assert (loaded.moderation_input, loaded.pii_output, loaded.classifier) == ("off", "off", None)
