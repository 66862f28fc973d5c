"""The eval job spec (YAML, presets, dotted overrides; CLI flags override it) and the lineage
of an evaluation through an endpoint: an lmops gateway's served model versions, a foreign
endpoint's masked URL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.eval.spec import build_spec, load_spec
from tests.eval.test_run import write_task


def test_spec_yaml_with_preset_overrides_and_relative_paths(tmp_path: Path) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    f = folder / "job.yaml"
    f.write_text(
        "preset: gsm8k-instruct\nmodel: m@production\ntask_files: [tasks/caps.yaml]\n"
        "limit: 10\ncontamination: {datasets: [train-set]}\n",
        "utf-8",
    )
    spec = load_spec(f, ["limit=3", "contamination.n=8"])
    assert spec.tasks == ["gsm8k"] and spec.num_fewshot == 5  # from the preset
    assert spec.apply_chat_template and spec.fewshot_as_multiturn
    assert spec.limit == 3  # the override wins over the YAML, which wins over the preset
    assert spec.contamination.datasets == ["train-set"] and spec.contamination.n == 8
    assert spec.contamination.wanted
    assert spec.task_files == [str(folder / "tasks" / "caps.yaml")]  # from the YAML's folder
    assert spec.inputs() == ["m@production", str(folder / "tasks" / "caps.yaml"), "train-set"]
    # flags (given values) win over the YAML; nested mappings merge
    flagged = build_spec(f, {"limit": 7, "contamination": {"n": 5}, "preset": "smoke"})
    assert flagged.limit == 7 and flagged.contamination.n == 5 and flagged.tasks == []
    assert flagged.contamination.datasets == ["train-set"]
    # `contamination: true`, as the flag reads; flags still merge into it
    f.write_text("model: m\ncontamination: true\n", "utf-8")
    assert load_spec(f).contamination.check
    merged = build_spec(f, {"contamination": {"n": 5}})
    assert merged.contamination.check and merged.contamination.n == 5


def test_spec_errors_name_the_file_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "job.yaml"
    f.write_text("model: m\ntasks: [gsm8k]\nlimt: 5\n", "utf-8")
    with pytest.raises(UserError, match=r"job\.yaml:3: limt: unknown field"):
        load_spec(f)
    f.write_text("model: m\nbatch_size: lots\n", "utf-8")
    with pytest.raises(UserError, match=r"job\.yaml:2: batch_size"):
        load_spec(f)
    f.write_text("preset: nope\nmodel: m\n", "utf-8")
    with pytest.raises(UserError, match="preset 'nope' unknown; presets: mmlu-redux"):
        load_spec(f)
    with pytest.raises(UserError, match="needs --apply-chat-template"):
        build_spec(None, {"model": "m", "fewshot_as_multiturn": True})
    with pytest.raises(UserError, match="no model: give --model"):
        build_spec(None, {"tasks": ["gsm8k"]})


def test_cli_runs_a_spec_with_flags_and_dotted_overrides(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from lmops.serve.fake import fake_server

    task = write_task(tmp_path)
    with fake_server(tokens=3) as base:
        # credentials in the URL: never recorded in clear
        secret = base.replace("http://", "http://user:s3cret@") + "/v1"
        spec = tmp_path / "job.yaml"
        spec.write_text(
            f"model: fake\nendpoint: {secret}\ntask_files: [{task.name}]\nlimit: 3\n"
            "output: caps-report\n",
            "utf-8",
        )
        r = cli("eval", "run", str(spec), "--limit", "2", "retries=0", "--json")
        assert r.code == 0, r.err
        rep = json.loads(r.out)
        assert rep["results"]["capitals"]["n"] == 2  # the flag overrode the spec's limit
        assert rep["report"].startswith("caps-report:")
        # a foreign endpoint (the fake server's /v1/models has no lmops versions): its URL,
        # masked, in the report and the run, and no served-model lineage
        served = rep["model"]["served"]
        assert served == {"endpoint": served["endpoint"], "gateway": None}
        assert served["endpoint"].startswith("http://***@127.0.0.1")
        assert "s3cret" not in r.out and rep["config"]["endpoint"] == served["endpoint"]
        # flags alone, as before the spec
        r = cli("eval", "run", "--model", "fake", "--endpoint", base + "/v1", "--task-file",
                str(task), "--limit", "1", "--json")  # fmt: skip
        assert r.code == 0, r.err
        assert json.loads(r.out)["results"]["capitals"]["n"] == 1
    from lmops.store import Store

    store = Store()
    try:
        v = store.assets.resolve("caps-report")
        assert v.metadata["model"]["served"]["endpoint"] == served["endpoint"]
        run = store.runs.get(v.run_id)
        assert "s3cret" not in json.dumps(run.model_dump(mode="json"))
        assert {e.role for e in store.assets.lineage(v.ref).upstream} == {"task_file", "dataset"}
    finally:
        store.close()


@pytest.fixture
def gateway(lmops_home: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``lmops serve`` on 127.0.0.1 over this test's LMOPS_HOME, deploying an A/B split
    (``ab``) of a registered tiny model asset and a local model folder."""
    from lmops.store import Store
    from tests.serve.conftest import lmops_env, start_server, stop_server
    from tests.train.tiny import make_model, make_tokenizer

    tok = make_tokenizer(tmp_path / "tok")
    folder = make_model(tmp_path / "tiny", tok, seed=2)
    other = make_model(tmp_path / "other", tok, seed=3)
    store = Store()
    try:
        version = store.assets.register("model", "tiny-model", folder)
        _, secret = store.keys.create("eval")
    finally:
        store.close()
    deployments = tmp_path / "deployments.yaml"
    deployments.write_text(
        "deployments:\n"
        f"  - {{name: ab, split: [{{model: {version.ref}, weight: 1}}, "
        f"{{model: {other}, weight: 1}}], guardrails: {{preset: 'off'}}}}\n",
        "utf-8",
    )
    proc, base = start_server(
        lmops_env(lmops_home),
        "--deployments",
        str(deployments),
    )
    try:
        yield {"base": base, "key": secret, "version": version.ref, "other": other}
    finally:
        stop_server(proc)


def test_eval_through_an_lmops_gateway_links_the_served_versions(
    cli,  # type: ignore[no-untyped-def]
    gateway: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lmops.store import Store

    monkeypatch.setenv("LMOPS_API_KEY", gateway["key"])
    task = write_task(tmp_path)
    r = cli("eval", "run", "--model", "ab", "--endpoint", gateway["base"] + "/v1",
            "--task-file", str(task), "--output", "eval-ab", "--json")  # fmt: skip
    assert r.code == 0, r.err
    report = json.loads(r.out)
    served = report["model"]["served"]
    assert served["gateway"] == "lmops" and served["deployment"] == "ab"
    assert served["versions"] == [gateway["version"], str(gateway["other"])]
    store = Store()
    try:
        lineage = store.assets.lineage(report["report"])
        served_in = [e.parent for e in lineage.upstream if e.role == "served_model"]
        # the asset version by its ref, the local folder on this host by content
        assert gateway["version"] in served_in and len(served_in) == 2
        folder = next(lineage.nodes[p] for p in served_in if p != gateway["version"])
        assert folder.kind == "external" and folder.metadata["path"] == str(gateway["other"])
        meta = store.assets.resolve(report["report"]).metadata
        assert meta["model"]["served"]["deployment"] == "ab"
    finally:
        store.close()


def test_presets_are_listed_and_usable(cli) -> None:  # type: ignore[no-untyped-def]
    from lmops.eval.spec import PRESETS, build_spec

    r = cli("eval", "presets", "--json")
    assert r.code == 0 and json.loads(r.out) == PRESETS
    for name in PRESETS:  # every preset makes a valid spec
        assert build_spec(None, {"model": "m", "preset": name}).model == "m"
