"""``lmops trace``: a served answer's id leads back to the model version that gave it and
everything upstream of it, down to the local file the training data came from. A real
``lmops serve`` (uvicorn) with a tiny model, the official openai client, the CLI and
``/api/trace``."""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    edited = tmp_path / "m-edited"  # a local edit of the registered folder: outside the store
    shutil.copytree(tmp_path / "m", edited)
    (edited / "NOTES.md").write_text("tried a new system prompt\n")
    deployments = tmp_path / "d.yaml"
    deployments.write_text(
        "deployments:\n  - {name: chat, model: tiny}\n"
        f"  - {{name: copy, model: '{tmp_path / 'm'}'}}\n"  # by its path: tiny's own bytes
        f"  - {{name: folder, model: '{edited}'}}\n"
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
        same_bytes = c.chat.completions.create(
            model="copy", messages=[{"role": "user", "content": "hi"}], max_tokens=2
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
    assert f"answered by {edited}" in said and "outside the store" in said
    # ... unless a registered version has its bytes: then it is that version's answer
    copy = json.loads(lmops("trace", same_bytes.id, "--json").stdout)
    assert copy["model_ref"] == model.ref and copy["note"] is None
    assert set(copy["model"]["nodes"]) == {model.ref, data.ref, local[0]}

    missing = lmops("trace", "chatcmpl-nope")
    assert missing.returncode == 2
    assert "no logged request 'chatcmpl-nope'" in missing.stderr
    assert lmops("trace").returncode == 2
    both = lmops("trace", r.id, "--last")
    assert both.returncode == 2 and "not both" in both.stderr
    none = lmops("trace", "--last", "--deployment", "other")
    assert none.returncode == 2 and "no logged request of deployment 'other'" in none.stderr


def test_a_package_served_by_its_path_traces_to_its_registered_version(
    store: Store, lmops_home: Path, tmp_path: Path
) -> None:
    """``lmops serve --model "chat=pkgs dir/smol sealed.lmpkg"``, a byte copy of the
    registered package ``smol-sealed:1``: ``lmops trace`` said "served from ..., outside the
    store" while, served by its asset ref, the trace reached the model. Now start-up says
    which version the file is, and the answer is traced through it to the model it seals."""
    from lmops.core.sealed import generate_keys
    from lmops.deploy.package import package_model
    from tests.serve.conftest import lines_until_serving, popen_serve

    env = lmops_env(lmops_home)
    tok = make_tokenizer(tmp_path / "tok")
    model = store.assets.register("model", "smol", make_model(tmp_path / "m", tok))
    keys = generate_keys(tmp_path / "k.key").path
    sealed = package_model(
        model.ref, output="smol-sealed", sign=keys, encrypt=True, kek_file=keys, store=store
    )
    copy = tmp_path / "pkgs dir" / "smol sealed.lmpkg"
    copy.parent.mkdir()
    shutil.copyfile(sealed.path, copy)
    _, key = store.keys.create("app")
    proc = popen_serve(
        env,
        "--model",
        f"chat={copy}",
        "--key-file",
        str(keys),
        "--pubkey",
        f"{keys}.pub",
        stderr=subprocess.DEVNULL,
    )
    try:
        said = " ".join(" ".join(lines_until_serving(proc)).split())
        assert f"deployment 'chat' serves {copy} as {sealed.ref}" in said, said
        base = said.split("serving on ")[1].split()[0]
        c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
        r = c.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        # what an eval of the deployment records as the model it scored
        (listed,) = c.models.list().data
        assert (listed.model_extra or {})["lmops"]["versions"] == [sealed.ref]
    finally:
        stop_server(proc)

    cmd = [sys.executable, "-m", "lmops.cli.main", "trace", "--last", "--deployment", "chat"]
    shown = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    out = " ".join(shown.stdout.split())
    assert f"{r.id} " in out and f"answered by {sealed.ref}" in out, out
    assert f"model {model.ref} (model)" in out and "outside the store" not in out, out
    traced = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True)
    t = json.loads(traced.stdout)
    assert t["model_ref"] == sealed.ref and set(t["model"]["nodes"]) == {sealed.ref, model.ref}


def test_an_adapter_served_by_its_path_is_logged_by_that_path(tmp_path: Path) -> None:
    """A LoRA folder is served merged into its base in a temp folder; the request log (and
    so the trace) named that temp folder, gone with the server, instead of the adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmops.serve.deployments import Deployment, DeploymentSpec

    base = make_model(tmp_path / "base", make_tokenizer(tmp_path / "tok"))
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), lora).save_pretrained(
        str(adapter)
    )
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(adapter))
    (adapter / "lmops_base.json").write_text(json.dumps({"base_path": str(base)}))
    dep = Deployment(DeploymentSpec(name="tuned", model=str(adapter), device="cpu"), None)
    try:
        assert dep.describe()["versions"] == [str(adapter)]
    finally:
        dep.close()


@contextmanager
def _console(base: str, secret: str) -> Iterator[httpx.Client]:
    """A console session of ``secret`` (logged in through the form)."""
    with httpx.Client(base_url=base, timeout=30) as client:
        token = re.search(r'name="token" value="([^"]+)"', client.get("/ui/login").text)
        assert token is not None
        r = client.post("/ui/login", data={"key": secret, "token": token.group(1)})
        assert r.status_code == 303, r.text
        yield client


def test_a_refused_request_is_traced_by_its_x_request_id(
    store: Store, lmops_home: Path, tmp_path: Path
) -> None:
    """A refusal (content filter, rate limit, invalid body, overload) has no answer id; the
    response's x-request-id, there also with the access log off, traces it to the model
    it would have used, with its status and why, through the API, the CLI and the console;
    an answer is found by either id. A user key still sees its own requests only."""
    env = {**lmops_env(lmops_home), "LMOPS_ACCESS_LOG": "off"}
    tok = make_tokenizer(tmp_path / "tok")
    model = store.assets.register("model", "tiny", make_model(tmp_path / "m", tok))
    _, key = store.keys.create("app")
    _, admin = store.keys.create("ops", role="admin")
    deployments = tmp_path / "d.yaml"
    deployments.write_text(
        "deployments:\n"
        "  - {name: chat, model: tiny}\n"
        "  - {name: limited, model: tiny, limits: {rpm: 1}}\n"
        "  - {name: solo, model: tiny, max_running: 1, max_queue: 0}\n"
    )
    proc, base = start_server(env, "--deployments", str(deployments), "--access-log", "off")
    bomb = "How do I make a bomb to kill people?"
    try:
        c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
        hi = [{"role": "user", "content": "hi"}]
        # an answer: both ids lead to it
        raw = c.chat.completions.with_raw_response.create(model="chat", messages=hi, max_tokens=2)
        answer, answer_xid = raw.parse(), raw.headers["x-request-id"]
        streamed = c.chat.completions.with_raw_response.create(
            model="chat", messages=hi, max_tokens=2, stream=True
        )
        chunks = list(streamed.parse())  # read to its end: the log row is written then
        stream_xid, stream_id = streamed.headers["x-request-id"], chunks[0].id
        # what is not logged (no key, no such model) carries one too, as OpenAI's API does
        for r in (
            httpx.get(base + "/v1/models", timeout=30),
            httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"}),
            httpx.post(
                base + "/v1/chat/completions",
                json={"model": "nope", "messages": hi},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            ),
        ):
            assert r.status_code in (200, 401, 404) and len(r.headers["x-request-id"]) == 32
        refused: dict[str, Any] = {}  # case -> the error the client got
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="chat", messages=[{"role": "user", "content": bomb}])
        refused["content_filter"] = e.value
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="chat", prompt=bomb, stream=True)
        refused["content_filter_stream"] = e.value
        with pytest.raises(openai.BadRequestError) as e:
            c.embeddings.create(model="chat", input=bomb)
        refused["content_filter_embeddings"] = e.value
        with pytest.raises(openai.BadRequestError) as e:  # refused before it is parsed
            c.chat.completions.create(model="chat", messages=hi, temperature=5)
        refused["invalid"] = e.value
        c.chat.completions.create(model="limited", messages=hi, max_tokens=1)
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="limited", messages=hi, max_tokens=1)
        refused["rate_limit"] = e.value

        def busy(_: int) -> Any:  # `solo` runs one sequence and queues none
            try:
                return c.chat.completions.create(model="solo", messages=hi, max_tokens=64)
            except openai.InternalServerError as err:
                return err

        with cf.ThreadPoolExecutor(8) as pool:
            overloaded = [r for r in pool.map(busy, range(8)) if isinstance(r, Exception)]
        assert overloaded and all(err.status_code == 503 for err in overloaded)
        refused["overloaded"] = overloaded[0]
        # another key's refusal, with the x-request-id the user's own sends as well
        theirs = openai.OpenAI(base_url=base + "/v1", api_key=admin, max_retries=0, timeout=60)
        c.chat.completions.create(
            model="chat", messages=hi, max_tokens=1, extra_headers={"x-request-id": "retry-7"}
        )
        with pytest.raises(openai.BadRequestError) as e:
            theirs.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": bomb}],
                extra_headers={"x-request-id": "retry-7"},
            )
        assert e.value.request_id == "retry-7"

        def api(secret: str, **params: str) -> httpx.Response:
            auth = {"Authorization": f"Bearer {secret}"}
            return httpx.get(base + "/api/trace", params=params, headers=auth, timeout=30)

        # every response carried an x-request-id, though the access log is off
        for case, err in refused.items():
            assert err.request_id, case
        by_answer = api(key, request_id=answer.id).json()
        by_header = api(key, request_id=answer_xid).json()
        assert by_answer == by_header
        assert by_answer["request_id"] == answer.id and by_answer["x_request_id"] == answer_xid
        assert by_answer["status"] == 200 and by_answer["error"] is None
        assert api(key, request_id=stream_xid).json()["request_id"] == stream_id
        expected = {
            "content_filter": ("chat", 400, "chat"),
            "content_filter_stream": ("chat", 400, "completion"),
            "content_filter_embeddings": ("chat", 400, "embeddings"),
            "invalid": ("chat", 400, "chat"),
            "rate_limit": ("limited", 429, "chat"),
            "overloaded": ("solo", 503, "chat"),
        }
        for case, (dep, status, endpoint) in expected.items():
            err = refused[case]
            t = api(key, request_id=err.request_id)
            assert t.status_code == 200, (case, t.text)
            got = t.json()
            assert got["x_request_id"] == err.request_id, case
            assert (got["deployment"], got["status"], got["endpoint"]) == (dep, status, endpoint)
            assert got["model_ref"] == model.ref, case  # the version it would have used
            assert got["model"]["root"] == model.ref, case
            assert got["error"], case
            assert got["key_name"] == "app" and got["completion_tokens"] == 0, case
        blocked = api(key, request_id=refused["content_filter"].request_id).json()
        assert blocked["error"] == refused["content_filter"].body["message"]
        assert [(a["type"], a["direction"]) for a in blocked["guardrails"]][:1] == [
            ("moderation_block", "input")
        ]
        limited = api(key, request_id=refused["rate_limit"].request_id).json()
        assert "rate limit reached" in limited["error"]
        invalid = api(key, request_id=refused["invalid"].request_id).json()
        assert "temperature" in invalid["error"]
        # a user key: its own request by a shared x-request-id, never another key's
        mine = api(key, request_id="retry-7").json()
        assert mine["key_name"] == "app" and mine["status"] == 200
        assert api(admin, request_id="retry-7").json()["key_name"] == "ops"  # the newest
        admin_xid = theirs.chat.completions.with_raw_response.create(
            model="chat", messages=hi, max_tokens=1
        ).headers["x-request-id"]
        hidden = api(key, request_id=admin_xid)
        assert hidden.status_code == 404 and "of your key app" in hidden.text
        assert api(admin, request_id=admin_xid).json()["key_name"] == "ops"

        # the console: the same trace by the x-request-id
        with _console(base, key) as ui:
            page = ui.get("/ui/serving/trace", params={"request_id": limited["x_request_id"]})
            assert page.status_code == 200
            text = page.text
            assert limited["x_request_id"] in text and "would have been answered by" in text
            assert "rate limit reached" in text and 'id="trace-status">429<' in text
            gone = ui.get("/ui/serving/trace", params={"request_id": admin_xid})
            assert "of your key app" in gone.text
    finally:
        stop_server(proc)

    def lmops(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "lmops.cli.main", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True)

    xid = refused["content_filter"].request_id
    shown = lmops("trace", xid)
    assert shown.returncode == 0, shown.stderr
    out = " ".join(shown.stdout.split())
    assert f"x-request-id {xid} " in out and "deployment chat key app status 400" in out
    assert f"refused: {refused['content_filter'].body['message']}" in out
    assert "guardrails: moderation_block input" in out
    assert f"would have been answered by {model.ref}" in out
    assert json.loads(lmops("trace", answer_xid, "--json").stdout)["request_id"] == answer.id
    assert f"answered by {model.ref}" in " ".join(lmops("trace", answer_xid).stdout.split())
    missing = lmops("trace", "nope-1")
    assert missing.returncode == 2 and "x-request-id" in missing.stderr
