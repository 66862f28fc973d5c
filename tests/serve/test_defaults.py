"""Serving defaults like vLLM's (issue #13 items 7 and 14), through a real `lmops serve`:
a request that sets no sampling field takes the model's generation_config.json
(temperature, top_p, max_new_tokens), a deployment can override or ignore it, and a model
served with the ChatML fallback says so in /v1/models and in the access log."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server
from tests.train.tiny import make_model, make_tokenizer

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")


def with_generation_config(src: Path, dst: Path, config: dict[str, Any]) -> Path:
    shutil.copytree(src, dst)
    (dst / "generation_config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("defaults")
    log = root / "access.log"
    env = {
        **lmops_env(root / "home"),
        "LMOPS_ACCESS_LOG": "json",
        "LMOPS_ACCESS_LOG_FILE": str(log),
    }
    base_model = make_model(root / "tiny", make_tokenizer(root / "tok"), seed=7)
    greedy = with_generation_config(
        base_model, root / "greedy", {"temperature": 0.0, "max_new_tokens": 3}
    )
    hot = with_generation_config(base_model, root / "hot", {"temperature": 1.5})
    bare = root / "bare"  # no chat template: served with the ChatML fallback
    shutil.copytree(base_model, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    (root / "d.yaml").write_text(
        "deployments:\n"
        f"  - {{name: greedy, model: {greedy}, guardrails: {{preset: 'off'}}}}\n"
        f"  - {{name: pinned, model: {hot}, sampling: {{temperature: 0}},"
        f" guardrails: {{preset: 'off'}}}}\n"
        f"  - {{name: ignoring, model: {greedy}, generation_config: ignore,"
        f" guardrails: {{preset: 'off'}}}}\n"
        f"  - {{name: bare, model: {bare}, guardrails: {{preset: 'off'}}}}\n"
    )
    key = json.loads(lmops_cli(env)("keys", "create", "--name", "app", "--json"))["key"]
    proc, base = start_server(
        env,
        "--deployments",
        str(root / "d.yaml"),
        "--log-level",
        "info",  # the access log writes at info
        "--log-bodies",
    )
    yield {"base": base, "key": key, "log": log, "lmops": lmops_cli(env), "env": env}
    stop_server(proc)


def client(g: dict[str, Any]) -> Any:
    return openai.OpenAI(base_url=g["base"] + "/v1", api_key=g["key"], max_retries=0, timeout=60)


def texts(g: dict[str, Any], model: str, **kw: Any) -> list[str]:
    r = client(g).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello, how are you"}], n=4, **kw
    )
    return [c.message.content for c in r.choices]


def test_the_model_generation_config_gives_the_defaults(gw: dict[str, Any]) -> None:
    greedy = texts(gw, "greedy")
    assert len(set(greedy)) == 1  # temperature 0 from generation_config.json: all alike
    r = client(gw).chat.completions.create(
        model="greedy", messages=[{"role": "user", "content": "Hello"}]
    )
    assert r.usage.completion_tokens <= 3  # max_new_tokens is the default budget
    # a request's own fields win
    assert len(set(texts(gw, "greedy", temperature=1.0, max_tokens=12))) > 1


def test_a_deployment_overrides_or_ignores_the_generation_config(gw: dict[str, Any]) -> None:
    assert len(set(texts(gw, "pinned", max_tokens=12))) == 1  # sampling: temperature 0
    assert len(set(texts(gw, "ignoring", max_tokens=12))) > 1  # back to temperature 1.0


def test_the_chatml_fallback_is_said_in_models_and_the_access_log(gw: dict[str, Any]) -> None:
    c = client(gw)
    cards = {m.id: m.model_extra["lmops"] for m in c.models.list().data}
    assert cards["bare"]["chat_template_fallback"] is True
    assert cards["greedy"]["chat_template_fallback"] is False
    assert cards["greedy"]["versions"] and all(cards["greedy"]["versions"])
    raw = c.chat.completions.with_raw_response.create(
        model="bare", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    rid = raw.parse().id
    for _ in range(100):
        lines = [json.loads(x) for x in gw["log"].read_text().splitlines() if x.strip()]
        mine = [x for x in lines if x.get("completion_id") == rid]
        if mine:
            break
        time.sleep(0.1)
    assert mine and mine[0]["warnings"] == ["chat_template_fallback"], lines[-3:]


def test_log_bodies_from_the_cli_keeps_streams_for_the_flow_back(gw: dict[str, Any]) -> None:
    """`lmops serve --log-bodies` logs bodies for every deployment, a stream as the
    completion it assembled to; `data from-logs` leaves truncated answers out unless
    --keep-truncated (issue #13 item 10)."""
    import os
    import subprocess
    import sys

    from lmops.store import Store

    chunks = client(gw).chat.completions.create(
        model="ignoring",  # temperature 1.0, seeded: text that is not all whitespace
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=6,
        seed=1,
        stream=True,
    )
    chunks = [c for c in chunks if c.choices]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert streamed.strip()

    def from_logs(*extra: str) -> tuple[dict[str, Any] | None, list[str], str]:
        """The exported version (None if nothing was exportable), its answers, stderr."""
        r = subprocess.run(
            [sys.executable, "-m", "lmops.cli.main", "data", "from-logs", "--deployment",
             "ignoring", "--output", "flow", "--json", *extra],
            env=gw["env"], capture_output=True, text=True,
        )  # fmt: skip
        if r.returncode != 0:
            return None, [], r.stderr
        v = json.loads(r.stdout)
        os.environ["LMOPS_HOME"] = gw["env"]["LMOPS_HOME"]
        store = Store()
        try:
            rows = store.assets.path(f"{v['asset']}:{v['version']}").read_text().splitlines()
        finally:
            store.close()
        return v, [json.loads(x)["messages"][-1]["content"] for x in rows], r.stderr

    answers: list[str] = []
    for _ in range(100):  # the request log is written in batches
        _v, answers, _err = from_logs("--keep-truncated")
        if streamed in answers:
            break
        time.sleep(0.1)
    assert streamed in answers  # the stream was logged as the text it sent
    v, answers, err = from_logs()
    assert streamed not in answers  # cut at max_tokens: left out by default, and counted
    assert (v is None and "truncated" in err) or (v and v["metadata"]["skipped"]["truncated"])
