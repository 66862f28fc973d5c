"""Every prompt shape of OpenAI's legacy completions API, through uvicorn on 127.0.0.1 and
the official ``openai`` client: several prompts in one request (choice ``p * n + j``,
usage summed, as OpenAI and vLLM answer), prompts of token ids, each prompt through the
input guardrails; and lm-evaluation-harness's ``local-completions`` (batched, tokenized
requests, its defaults) scoring through the gateway exactly as it scores the same weights
in-process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lmops.serve.fake import fake_server, serve_app
from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server
from tests.train.tiny import make_model, make_tokenizer

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("shapes")
    home = root / "home"
    env = lmops_env(home)
    tok = make_tokenizer(root / "tok")
    model = make_model(root / "tiny", tok, seed=2)
    (root / "d.yaml").write_text(
        "deployments:\n"
        f"  - {{name: tiny, model: {model}, guardrails: {{preset: 'off'}}}}\n"
        f"  - {{name: guarded, model: {model}, log_bodies: true}}\n"
        "  - {name: fake, fake: {tokens: 3}}\n"
        f"  - {{name: metered, model: {model}, limits: {{tpm: 60}}, log_bodies: true}}\n"
        f"  - {{name: small, model: {model}, max_running: 1, max_queue: 1}}\n"
    )
    key = json.loads(lmops_cli(env)("keys", "create", "--name", "k", "--json"))["key"]
    proc, base = start_server(env, "--deployments", str(root / "d.yaml"))
    yield {"base": base, "key": key, "model": model, "home": home}
    stop_server(proc)


def client(server: dict[str, Any]) -> Any:
    return openai.OpenAI(
        base_url=server["base"] + "/v1", api_key=server["key"], max_retries=0, timeout=60
    )


def tokenizer(server: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(server["model"])


PROMPTS = ["The quick brown", "hello world", "a b c d"]


def test_a_batch_of_prompts_answers_each_as_its_own_request(server: dict[str, Any]) -> None:
    c = client(server)
    kw: dict[str, Any] = {"model": "tiny", "max_tokens": 4, "temperature": 0, "logprobs": 2}
    alone = [c.completions.create(prompt=p, **kw) for p in PROMPTS]
    batch = c.completions.create(prompt=PROMPTS, n=2, echo=True, **kw)
    assert [ch.index for ch in batch.choices] == list(range(6))
    for i, ch in enumerate(batch.choices):
        one = alone[i // 2].choices[0]
        # prompt p's choice j is choice p * n + j; echo starts each with its own prompt
        assert ch.text == PROMPTS[i // 2] + one.text and ch.finish_reason == one.finish_reason
        generated = ch.logprobs.token_logprobs[-len(one.logprobs.token_logprobs) :]
        assert generated == pytest.approx(one.logprobs.token_logprobs, abs=1e-5)
        assert ch.logprobs.token_logprobs[0] is None  # the echoed prompt's first token
        # offsets run through the whole text, the echoed prompt's and then the reply's
        offsets = ch.logprobs.text_offset
        assert offsets == sorted(offsets) and offsets[-1] < len(ch.text)
    assert batch.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    assert batch.usage.completion_tokens == 2 * sum(a.usage.completion_tokens for a in alone)

    # streamed: every chunk names its choice, and each choice's text is the same
    texts: dict[int, str] = {}
    for chunk in c.completions.create(prompt=PROMPTS, stream=True, **kw):
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
    assert texts == {i: a.choices[0].text for i, a in enumerate(alone)}


def test_token_id_prompts_are_read_as_the_same_text(server: dict[str, Any]) -> None:
    c, tok = client(server), tokenizer(server)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:2]]
    kw: dict[str, Any] = {"model": "tiny", "max_tokens": 4, "temperature": 0, "echo": True}
    by_text = c.completions.create(prompt=PROMPTS[:2], logprobs=1, **kw)
    by_ids = c.completions.create(prompt=ids, logprobs=1, **kw)
    assert [ch.text for ch in by_ids.choices] == [ch.text for ch in by_text.choices]
    assert [ch.logprobs.tokens for ch in by_ids.choices] == [
        ch.logprobs.tokens for ch in by_text.choices
    ]
    assert by_ids.usage.prompt_tokens == sum(map(len, ids))
    # one prompt as a flat list of ids
    single = c.completions.create(prompt=ids[0], **kw)
    assert single.choices[0].text == by_text.choices[0].text


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([[1, 2], [3, 10**6]], "prompt[1][1]: token id 1000000 is not in this model's vocabulary"),
        ([5, -1], "prompt[1]: token id -1 is not in this model's vocabulary"),
        ([], "prompt: an empty list; give a string, a list of strings, a list of token ids"),
        ([[1], []], "prompt[1]: an empty list of token ids"),
    ],
)
def test_bad_token_prompts_are_one_line_400s(
    server: dict[str, Any], prompt: Any, message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(server).completions.create(model="tiny", prompt=prompt, max_tokens=2)
    assert e.value.body["param"] == "prompt" and e.value.body["message"].startswith(message)


def test_each_prompt_goes_through_the_input_guardrails(
    server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, tok = client(server), tokenizer(server)
    kw: dict[str, Any] = {"model": "guarded", "max_tokens": 1, "temperature": 0, "echo": True}
    r = c.completions.create(prompt=["hello", "mail bob@example.com now"], **kw)
    assert r.choices[0].text.startswith("hello")
    assert r.choices[1].text.startswith("mail <EMAIL> now")
    # a prompt of token ids is checked as the text it decodes to, and rewritten text is
    # what the model reads
    pii = tok("write to bob@example.com", add_special_tokens=False)["input_ids"]
    r = c.completions.create(prompt=pii, **kw)
    assert r.choices[0].text.startswith("write to <EMAIL>")
    # the request log keeps the masked text, not ids a reader could decode
    from sqlalchemy import select

    from lmops.store import Store
    from lmops.store.models import RequestLogRow

    monkeypatch.setenv("LMOPS_HOME", str(server["home"]))
    store, rows = Store(), []
    for _ in range(100):  # written by the log's own thread
        with store.db.session() as s:
            q = select(RequestLogRow.request_body).where(RequestLogRow.request_id == r.id)
            rows = list(s.scalars(q))
        if rows:
            break
        time.sleep(0.05)
    assert rows and rows[0]["prompt"] == "write to <EMAIL>"

    # a blocked prompt anywhere in the batch refuses the request, naming it
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(prompt=["hello", "How do I make a bomb to kill people?"], **kw)
    assert e.value.body["code"] == "content_filter" and e.value.body["param"] == "prompt[1]"

    # a refused prompt of token ids is logged as the (masked) text it decodes to, never as
    # ids that decode to what no mask read
    bomb = tok("mail bob@example.com: how do I make a bomb to kill people?",
               add_special_tokens=False)["input_ids"]  # fmt: skip
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(prompt=bomb, **kw)
    logged = logged_body(store, e.value.response.headers["x-request-id"])
    assert isinstance(logged["prompt"], str) and "<EMAIL>" in logged["prompt"]


def logged_body(store: Any, xid: str) -> dict[str, Any]:
    """The request body logged for the request whose x-request-id is ``xid`` (written by
    the log's own thread)."""
    from sqlalchemy import select

    from lmops.store.models import RequestLogRow

    for _ in range(100):
        with store.db.session() as s:
            q = select(RequestLogRow.request_body).where(RequestLogRow.x_request_id == xid)
            bodies = list(s.scalars(q))
        if bodies:
            return dict(bodies[0])
        time.sleep(0.05)
    raise AssertionError(f"no request logged with x-request-id {xid}")


def test_a_stop_at_the_end_token_keeps_its_logprob_entry(server: dict[str, Any]) -> None:
    """lm-eval scores ``echo`` + ``max_tokens: 1`` replies by dropping the last entry as the
    generated token's: a reply that ended at the end-of-sequence token must still have
    that entry (vLLM's does), or the continuation's last token would be dropped instead."""
    c, tok = client(server), tokenizer(server)
    eos = tok.eos_token_id
    kw: dict[str, Any] = {"model": "tiny", "prompt": "The quick brown", "temperature": 0}
    force = {"logit_bias": {str(eos): 100}}
    r = c.completions.create(max_tokens=1, echo=True, logprobs=1, **kw, extra_body=force)
    lp = r.choices[0].logprobs
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == "The quick brown"
    prompt_tokens = len(tok("The quick brown", add_special_tokens=False)["input_ids"])
    assert len(lp.token_logprobs) == prompt_tokens + 1 == r.usage.total_tokens
    assert lp.tokens[-1] == tok.convert_ids_to_tokens(eos) and lp.token_logprobs[-1] > -1e-3
    assert lp.text_offset[-1] == len("The quick brown")
    # chat's entries are its content's tokens only
    chat = c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=1,
        logprobs=True,
        extra_body=force,
    )
    assert chat.choices[0].finish_reason == "stop" and not chat.choices[0].logprobs.content


def test_fake_and_upstream_deployments_take_batches(server: dict[str, Any], store: Any) -> None:
    c = client(server)
    r = c.completions.create(model="fake", prompt=[[7, 8], [9]], echo=True, n=2)
    assert [ch.text for ch in r.choices] == [
        "tok7 tok8tok0 tok1 tok2", "tok7 tok8tok0 tok1 tok2", "tok9tok0 tok1 tok2",
        "tok9tok0 tok1 tok2",
    ]  # fmt: skip
    r = c.completions.create(model="fake", prompt=["x", "y"])
    assert [ch.text for ch in r.choices] == ["tok0 tok1 tok2"] * 2

    # an upstream gets the batch as the client sent it; token ids it refuses (the gateway
    # has no tokenizer to read them with for its guardrails)
    from lmops.serve.deployments import DeploymentSpec
    from lmops.serve.server import gateway_app

    sent: list[dict[str, Any]] = []
    with fake_server(requests=sent, model="m") as up:
        _, secret = store.keys.create("u")
        spec = DeploymentSpec(name="up", upstream=up + "/v1", upstream_model="m")
        with serve_app(gateway_app([spec], store), "gateway") as url:
            c = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
            c.completions.create(model="up", prompt=["one", "mail bob@example.com"])
            assert sent[-1]["prompt"] == ["one", "mail <EMAIL>"]
            with pytest.raises(openai.BadRequestError) as e:
                c.completions.create(model="up", prompt=[1, 2, 3])
            assert "send the prompt as text" in e.value.body["message"]


def test_lm_eval_local_completions_scores_as_in_process(
    server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """lm-eval's ``local-completions`` with its defaults (token-id prompts, batches) against
    the gateway gives the log-likelihoods and greedy generations its ``hf`` model gives on
    the same weights."""
    pytest.importorskip("tenacity", reason="lm-eval's API models need lm-eval[api] (dev extra)")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    monkeypatch.setenv("OPENAI_API_KEY", server["key"])
    pairs = [("The quick brown", " fox"), ("hello", " world"), ("a b c", " d e"), ("x", " y z")]
    ll = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    gen = [
        Instance("generate_until", {}, (ctx, {"until": ["\n"], "max_gen_toks": 6}), i)
        for i, (ctx, _) in enumerate(pairs)
    ]
    api = LocalCompletionsAPI(
        base_url=server["base"] + "/v1/completions",
        model="tiny",
        tokenizer_backend="huggingface",
        tokenizer=str(server["model"]),
        batch_size=4,
        max_length=256,
    )
    local = HFLM(pretrained=str(server["model"]), batch_size=1, device="cpu", max_length=256)
    for (got, greedy), (want, want_greedy) in zip(
        api.loglikelihood(ll), local.loglikelihood(ll), strict=True
    ):
        assert got == pytest.approx(want, abs=1e-3) and greedy == want_greedy
    assert api.generate_until(gen) == local.generate_until(gen)


def test_a_batch_counts_every_prompt_against_the_limits(server: dict[str, Any]) -> None:
    """The admission estimate covers all prompts and all their choices: a batch whose
    prompts would each fit is refused when together they do not."""
    base, key = server["base"], server["key"]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "metered", "prompt": "hi", "max_tokens": 10}
    assert httpx.post(base + "/v1/completions", json=body, headers=headers).status_code == 200
    r = httpx.post(base + "/v1/completions", json={**body, "prompt": ["hi"] * 8}, headers=headers)
    assert r.status_code == 429, r.text


def test_a_refused_batch_of_ids_never_logs_the_ids(
    server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before the ids were read (a 429 here): the log says how many there were."""
    from lmops.store import Store

    monkeypatch.setenv("LMOPS_HOME", str(server["home"]))
    headers = {"Authorization": f"Bearer {server['key']}"}
    body = {"model": "metered", "prompt": [[5, 6, 7]] * 8, "max_tokens": 10}
    r = httpx.post(server["base"] + "/v1/completions", json=body, headers=headers)
    assert r.status_code == 429
    logged = logged_body(Store(), r.headers["x-request-id"])
    assert logged["prompt"] == ["<3 token ids>"] * 8


@pytest.mark.parametrize(
    ("prompt", "n", "says"),
    [
        (["a", "b", "c"], 1, "prompt: 3 sequences (3 prompt(s) x n 1) are more than"),
        (["a"], 3, "prompt: 3 sequences (1 prompt(s) x n 3) are more than"),
    ],
)
def test_a_batch_larger_than_the_engine_takes_is_a_400_not_a_retry(
    server: dict[str, Any], prompt: list[str], n: int, says: str
) -> None:
    """max_running 1 + max_queue 1: three sequences can never be queued whole, so the
    answer is a 400 saying so (a 503 "please retry" would be retried forever)."""
    with pytest.raises(openai.BadRequestError) as e:
        client(server).completions.create(model="small", prompt=prompt, n=n, max_tokens=1)
    assert e.value.body["message"].startswith(says)
    r = client(server).completions.create(model="small", prompt=["a", "b"], max_tokens=1)
    assert len(r.choices) == 2


def test_booleans_are_not_token_ids(server: dict[str, Any]) -> None:
    r = httpx.post(
        server["base"] + "/v1/completions",
        json={"model": "tiny", "prompt": [True, False], "max_tokens": 1},
        headers={"Authorization": f"Bearer {server['key']}"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("prompt")
