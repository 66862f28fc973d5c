"""`lmops serve batch` on a deployment that binds a prompt wraps every row as the gateway
wraps a request: the prompt's messages around the row's, its variables from --var and the
row's own ``variables``, its model parameters where the command gave none; the version is
recorded on every row, in the dataset's metadata and in its lineage; a missing variable
stops the batch in one line before anything is asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmops.prompts import create
from lmops.serve.fake import fake_server
from tests.models.tiny_bert import make_tiny_bert


def rows_of(store: Any, ref: str) -> list[dict[str, Any]]:
    text = (store.assets.path(ref) / "data.jsonl").read_text(encoding="utf-8")
    return [json.loads(x) for x in text.splitlines()]


def test_a_bound_prompt_wraps_every_row(cli: Any, store: Any, tmp_path: Path) -> None:
    create(
        store,
        "pirate",
        [
            {"role": "system", "content": "You are a pirate who sells {{product}}."},
            {"role": "user", "content": "Customer asks: {{input}}"},
        ],
        config={"temperature": 0.3},
    )
    rows = [
        {"messages": [{"role": "user", "content": "what is it?"}]},
        {"text": "how much?", "variables": {"product": "rum"}},  # the row's own value wins
    ]
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sent: list[dict[str, Any]] = []
    with fake_server(requests=sent, reply="Arr", model="m") as up:
        deps = tmp_path / "deps.yaml"
        deps.write_text(
            "deployments:\n"
            f"  - {{name: pirate, upstream: '{up}/v1', upstream_model: m, prompt: pirate,\n"
            "      guardrails: {preset: off}}\n"
        )
        common = ["serve", "batch", "--deployments", str(deps), "--deployment", "pirate"]
        common += ["--input", str(p)]
        # the gateway refuses these rows with the same words; here, before any request
        r = cli(*common, "--output", "out")
        assert r.code == 2 and not sent
        assert r.err.strip().count("\n") == 0, r.err  # one line
        assert f"{p}:1: pirate:1: missing variable(s) product" in r.err
        assert "--var NAME=VALUE" in r.err

        r = cli(*common, "--output", "out", "--var", "product=lmops", "--json")
        assert r.code == 0, r.err
    assert sorted((m["messages"] for m in sent), key=str) == [
        [
            {"role": "system", "content": "You are a pirate who sells lmops."},
            {"role": "user", "content": "Customer asks: what is it?"},
        ],
        [
            {"role": "system", "content": "You are a pirate who sells rum."},
            {"role": "user", "content": "Customer asks: how much?"},
        ],
    ]
    assert {m["temperature"] for m in sent} == {0.3}  # the prompt's, none was given
    out = json.loads(r.out)["output"]
    data = rows_of(store, out)
    assert [d["metadata"]["prompt_ref"] for d in data] == ["pirate:1", "pirate:1"]
    assert data[0]["messages"][0]["content"] == "You are a pirate who sells lmops."
    v = store.assets.get(out)
    assert v.metadata["prompt_ref"] == "pirate:1"
    assert v.metadata["variables"] == {"product": "lmops"}
    assert ("pirate:1", "prompt") in {
        (e.parent, e.role) for e in store.assets.lineage(out).upstream
    }


def test_var_without_a_bound_prompt_and_a_batch_on_an_encoder_are_refused(
    cli: Any, tmp_path: Path
) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"text": "hi"}) + "\n")
    with fake_server(reply="ok", model="m") as up:
        r = cli(
            "serve", "batch", "--model", f"plain={up}/v1", "--input", str(p), "--output", "o",
            "--var", "product=x",
        )  # fmt: skip
    assert r.code == 2
    bert = make_tiny_bert(tmp_path / "bert")
    r = cli("serve", "batch", "--model", f"emb={bert}", "--input", str(p), "--output", "o")
    assert r.code == 2 and "deployment 'emb' serves embeddings only" in r.err


def test_a_prompts_budget_is_capped_as_the_gateway_caps_it(
    cli: Any, store: Any, tmp_path: Path
) -> None:
    """The cap is checked against the budget the batch will use: the prompt's, capped to
    the deployment's max_tokens_cap, not the --max-tokens default nobody gave."""
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"text": "hello"}) + "\n")
    deps = tmp_path / "deps.yaml"
    for name, budget, cap, used in (("short", 4, 8, 4), ("long", "400", 300, 300)):
        create(store, name, [{"role": "user", "content": "{{input}}"}],
               config={"max_tokens": budget})  # fmt: skip
        deps.write_text(
            "deployments:\n"
            f"  - {{name: {name}, fake: {{tokens: 2}}, prompt: {name}, max_tokens_cap: {cap},\n"
            "      guardrails: {preset: off}}\n"
        )
        r = cli("serve", "batch", "--deployments", str(deps), "--deployment", name,
                "--input", str(p), "--output", f"out-{name}", "--json")  # fmt: skip
        assert r.code == 0, r.err
        v = store.assets.get(json.loads(r.out)["output"])
        assert v.metadata["params"]["max_tokens"] == used


def test_every_sampling_field_of_a_bound_prompt_is_used_unless_given(
    cli: Any, store: Any, tmp_path: Path
) -> None:
    """The gateway fills every model parameter a request leaves out from the bound prompt
    (top_p, stop, the penalties, seed too): a batch answers as the gateway would."""
    config = {"temperature": 0.5, "top_p": 0.9, "stop": "END", "presence_penalty": 0.5,
              "frequency_penalty": 0.25, "seed": 7}  # fmt: skip
    create(store, "tuned", [{"role": "user", "content": "{{input}}"}], config=config)
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"text": "hello"}) + "\n" + json.dumps({"text": "again"}) + "\n")
    sent: list[dict[str, Any]] = []
    with fake_server(requests=sent, reply="Arr", model="m") as up:
        deps = tmp_path / "deps.yaml"
        deps.write_text(
            "deployments:\n"
            f"  - {{name: tuned, upstream: '{up}/v1', upstream_model: m, prompt: tuned,\n"
            "      guardrails: {preset: off}}\n"
        )
        common = ["serve", "batch", "--deployments", str(deps), "--input", str(p), "--json"]
        r = cli(*common, "--output", "a")
        assert r.code == 0, r.err
        got = sorted(sent, key=lambda b: b["seed"])
        assert [b["seed"] for b in got] == [7, 8]  # row i: the prompt's seed + i
        for b in got:
            assert {k: b[k] for k in ("temperature", "top_p", "stop")} == {
                "temperature": 0.5, "top_p": 0.9, "stop": ["END"]}  # fmt: skip
            assert b["presence_penalty"] == 0.5 and b["frequency_penalty"] == 0.25
        params = store.assets.get(json.loads(r.out)["output"]).metadata["params"]
        assert params["top_p"] == 0.9 and params["stop"] == ["END"] and params["seed"] == 7

        sent.clear()  # given on the command line, they win
        r = cli(*common, "--output", "b", "--top-p", "0.5", "--stop", "X", "--stop", "Y",
                "--seed", "1")  # fmt: skip
        assert r.code == 0, r.err
        assert {(b["top_p"], tuple(b["stop"])) for b in sent} == {(0.5, ("X", "Y"))}
        assert sorted(b["seed"] for b in sent) == [1, 2]


def test_a_bad_sampling_option_is_one_line_naming_it(cli: Any, tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"text": "hi"}) + "\n")
    r = cli("serve", "batch", "--model", "f=fake:", "--input", str(p), "--output", "o",
            "--top-p", "0")  # fmt: skip
    assert r.code == 2 and r.err.strip() == "error: --top-p: Input should be greater than 0"
