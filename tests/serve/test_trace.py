"""``lmops trace``: a served answer's id leads back to the model version that gave it and
everything upstream of it, down to the local file the training data came from. A real
``lmops serve`` (uvicorn) with a tiny model, the official openai client, the CLI and
``/api/trace``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lmops.store import Store
from tests.serve.conftest import lmops_env, start_server, stop_server
from tests.train.tiny import make_model, make_tokenizer

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")


def test_an_answer_traces_back_to_the_raw_file(
    store: Store, lmops_home: Path, tmp_path: Path
) -> None:
    env = lmops_env(lmops_home)
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"text": "a raw document"}\n')
    (local,) = store.assets.record_inputs([(raw, "input")])
    data = store.assets.register("dataset", "sft-data", raw, inputs=[local])
    tok = make_tokenizer(tmp_path / "tok")
    model = store.assets.register(
        "model", "tiny", make_model(tmp_path / "m", tok), inputs=[(data.ref, "dataset")]
    )
    _, key = store.keys.create("app")
    _, admin = store.keys.create("ops", role="admin")
    deployments = tmp_path / "d.yaml"
    deployments.write_text(
        "deployments:\n  - {name: chat, model: tiny}\n"
        f"  - {{name: folder, model: '{tmp_path / 'm'}'}}\n"  # by its path, outside the store
    )
    proc, base = start_server(
        env,
        "--deployments",
        str(deployments),
    )
    try:
        c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
        r = c.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        by_path = c.chat.completions.create(
            model="folder", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        mine = c.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        theirs = openai.OpenAI(base_url=base + "/v1", api_key=admin, max_retries=0).chat
        other = theirs.completions.create(
            model="chat", messages=[{"role": "user", "content": "yo"}], max_tokens=3
        )

        def api(secret: str, **params: str) -> httpx.Response:
            auth = {"Authorization": f"Bearer {secret}"}
            return httpx.get(base + "/api/trace", params=params, headers=auth, timeout=30)

        # an admin traces any answer; a user key its own only (another's is not found)
        newest = api(admin, deployment="chat")
        assert newest.status_code == 200 and newest.json()["request_id"] == other.id
        assert api(key, deployment="chat").json()["request_id"] == mine.id
        assert api(key, request_id=r.id).json()["model_ref"] == model.ref
        hidden = api(key, request_id=other.id)
        assert hidden.status_code == 404 and "of your key app" in hidden.text
        assert api(key, key="ops").status_code == 403
    finally:
        stop_server(proc)  # flushes the request log

    def lmops(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "lmops.cli.main", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True)

    shown = lmops("trace", r.id)
    assert shown.returncode == 0, shown.stderr
    out = " ".join(shown.stdout.split())
    assert f"{r.id} " in out and "deployment chat key app status 200" in out
    assert f"answered by {model.ref}" in out
    assert f"dataset {data.ref} (dataset)" in out and f"input {local[0]} (external)" in out
    assert f"sources: {local[0]} (external) {raw}" in out

    as_json = json.loads(lmops("trace", "--last", "--key", "app", "--json").stdout)
    assert as_json["request_id"] == mine.id and as_json["model_ref"] == model.ref
    assert [(s["ref"], s["changed"]) for s in as_json["sources"]] == [(local[0], None)]
    assert set(as_json["model"]["nodes"]) == {model.ref, data.ref, local[0]}

    # the raw file changed since it was read: the trace says so
    with raw.open("a") as fh:
        fh.write('{"text": "added later"}\n')
    (source,) = json.loads(lmops("trace", r.id, "--json").stdout)["sources"]
    assert source["changed"] and "sha256" in source["changed"]
    assert "CHANGED since" in lmops("trace", r.id).stdout

    # a model served from a folder: the request, and a note instead of a lineage
    folder = lmops("trace", by_path.id)
    assert folder.returncode == 0, folder.stderr
    said = " ".join(folder.stdout.split())
    assert f"answered by {tmp_path / 'm'}" in said and "outside the store" in said

    missing = lmops("trace", "chatcmpl-nope")
    assert missing.returncode == 2
    assert "no logged request 'chatcmpl-nope'" in missing.stderr
    assert lmops("trace").returncode == 2
    both = lmops("trace", r.id, "--last")
    assert both.returncode == 2 and "not both" in both.stderr
    none = lmops("trace", "--last", "--deployment", "other")
    assert none.returncode == 2 and "no logged request of deployment 'other'" in none.stderr
