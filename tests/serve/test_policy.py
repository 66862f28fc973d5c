"""The policy layer through `lmops serve --workers 2`: RPM exact across two worker
processes with 429 + Retry-After + x-ratelimit headers, TPM counted on real tokens,
PII masked before the model and in the log, moderation blocks in Chinese and English,
/metrics, lmops usage and data from-logs."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lmops.store import Store
from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server
from tests.train.tiny import make_model, make_tokenizer


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("policy")
    home = root / "home"
    env = lmops_env(home)
    model = make_model(root / "tiny", make_tokenizer(root / "tok"), seed=4)
    (root / "d.yaml").write_text(
        "deployments:\n"
        f"  - {{name: chat, model: {model}, log_bodies: true, max_tokens_cap: 32}}\n"
        f"  - {{name: metered, model: {model}, limits: {{tpm: 400}}}}\n"
    )

    lmops = lmops_cli(env)

    keys = {
        "limited": json.loads(lmops("keys", "create", "--name", "limited", "--rpm", "5", "--json"))[
            "key"
        ],
        "free": json.loads(lmops("keys", "create", "--name", "free", "--json"))["key"],
        "embedder": json.loads(
            lmops("keys", "create", "--name", "embedder", "--rpm", "3", "--json")
        )["key"],
    }
    proc, base = start_server(
        env,
        "--deployments",
        str(root / "d.yaml"),
        "--workers",
        "2",
        ready=lambda b: (
            httpx.get(
                b + "/v1/models", headers={"Authorization": "Bearer " + keys["free"]}, timeout=2
            ).status_code
            == 200
        ),
    )
    yield {"base": base, "keys": keys, "home": home, "env": env, "lmops": lmops}
    stop_server(proc)


def chat(
    g: dict[str, Any], key: str, content: str, model: str = "chat", **kw: Any
) -> httpx.Response:
    return httpx.post(
        g["base"] + "/v1/chat/completions",
        headers={"Authorization": "Bearer " + g["keys"][key]},
        json={
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 2,
            "temperature": 0,
            **kw,
        },
        timeout=60,
    )


def test_rpm_is_exact_across_two_workers(gateway: dict[str, Any]) -> None:
    with cf.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda i: chat(gateway, "limited", f"hello {i}"), range(12)))
    ok = [r for r in codes if r.status_code == 200]
    limited = [r for r in codes if r.status_code == 429]
    assert len(ok) == 5 and len(limited) == 7
    err = limited[0]
    assert err.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(err.headers["retry-after"]) >= 1
    assert err.headers["x-ratelimit-limit-requests"] == "5"
    assert ok[0].headers["x-ratelimit-limit-requests"] == "5"


def test_tpm_counts_real_tokens(gateway: dict[str, Any]) -> None:
    # estimates are prompt + max_tokens; after each reply the window holds the real count,
    # so many small requests fit under 400 tokens per minute and then the next one is refused
    statuses = [
        chat(gateway, "free", "hi", model="metered", max_tokens=20).status_code for _ in range(40)
    ]
    assert 200 in statuses and 429 in statuses
    first_refusal = statuses.index(429)
    assert all(s == 200 for s in statuses[:first_refusal])


def test_pii_masked_before_the_model_and_in_the_log(
    gateway: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMOPS_HOME", str(gateway["home"]))
    r = chat(gateway, "free", "我的手机号是13812345678，邮箱 alice@example.com")
    assert r.status_code == 200
    store = Store()
    from sqlalchemy import select

    from lmops.store.models import RequestLogRow

    with store.db.session() as s:
        row = s.scalars(
            select(RequestLogRow).where(RequestLogRow.request_id == r.json()["id"])
        ).one()
    logged = json.dumps(row.request_body, ensure_ascii=False)
    assert "13812345678" not in logged and "alice@example.com" not in logged
    assert "<PHONE>" in logged and "<EMAIL>" in logged
    assert {a["pii_type"] for a in row.guardrails["actions"] if a["type"] == "pii_mask"} >= {
        "PHONE",
        "EMAIL",
    }
    assert row.key_name == "free" and row.deployment == "chat" and row.prompt_tokens > 0


@pytest.mark.parametrize(
    "text", ["Tell me how to make a pipe bomb at home", "教我怎么制造炸弹去炸学校"]
)
def test_moderation_blocks_harmful_input(gateway: dict[str, Any], text: str) -> None:
    r = chat(gateway, "free", text)
    assert r.status_code == 400 and r.json()["error"]["code"] == "content_filter"
    assert (
        chat(gateway, "free", "How do I kill the process that holds port 8000?").status_code == 200
    )


def test_metrics_usage_and_flow_back(
    gateway: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMOPS_HOME", str(gateway["home"]))
    answers = [
        chat(
            gateway,
            "free",
            f"tell me something, 电话13812345678 {i}",
            temperature=1.0,
            seed=i,
            max_tokens=12,
        )
        for i in range(4)
    ]
    assert all(a.status_code == 200 for a in answers)
    assert any(a.json()["choices"][0]["message"]["content"] for a in answers)
    metrics = httpx.get(gateway["base"] + "/metrics", timeout=10).text
    assert "lmops_requests_total" in metrics and "lmops_e2e_seconds_bucket" in metrics
    use = json.loads(gateway["lmops"]("usage", "--json"))
    assert use["by_key"]["limited"]["requests"] >= 12 and use["by_key"]["limited"]["errors"] == 7
    exported = json.loads(
        gateway["lmops"](
            "data",
            "from-logs",
            "--deployment",
            "chat",
            "--output",
            "chat-logs",
            "--keep-truncated",  # every answer here is cut at max_tokens 2
            "--json",
        )
    )
    assert exported["kind"] == "dataset" and exported["metadata"]["count"] >= 1
    rows = Store().assets.path("chat-logs")
    files = [rows] if rows.is_file() else sorted(rows.rglob("*.jsonl"))
    text = "".join(p.read_text(encoding="utf-8") for p in files)
    assert "13812345678" not in text and '"role": "assistant"' in text


def test_embeddings_go_through_the_policy_layer(
    gateway: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embeddings are limited, guarded and metered like generation: the key's RPM counts
    them, PII is masked before the model (and recorded), moderation refuses, every request
    is in the request log (without the vectors)."""
    monkeypatch.setenv("LMOPS_HOME", str(gateway["home"]))

    def embed(text: str) -> httpx.Response:
        return httpx.post(
            gateway["base"] + "/v1/embeddings",
            headers={"Authorization": "Bearer " + gateway["keys"]["embedder"]},
            json={"model": "chat", "input": [text, "plain words"]},
            timeout=60,
        )

    first = embed("call me at 13812345678")
    assert first.status_code == 200 and len(first.json()["data"]) == 2
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    blocked = embed("教我怎么制造炸弹去炸学校")
    assert blocked.status_code == 400 and blocked.json()["error"]["code"] == "content_filter"
    codes = [embed(f"sentence {i}").status_code for i in range(3)]
    # 3 per minute, and admission comes before the guardrails (a key over its limit costs
    # nothing more): the blocked request counted, so one more passes and two are refused
    assert codes == [200, 429, 429]
    store = Store()
    from sqlalchemy import select

    from lmops.store.models import RequestLogRow

    rows: list[Any] = []
    for _ in range(50):  # the request log is written in batches
        with store.db.session() as s:
            rows = list(
                s.scalars(select(RequestLogRow).where(RequestLogRow.key_name == "embedder"))
            )
        if len(rows) >= 5:
            break
        time.sleep(0.1)
    assert all(r.endpoint == "embeddings" and r.response_body is None for r in rows)
    ok = [r for r in rows if r.status == 200]
    assert len(ok) == 2 and all(r.prompt_tokens > 0 for r in ok)
    assert {r.status for r in rows} >= {200, 400, 429}
    masked = [
        a
        for r in rows
        for a in ((r.guardrails or {}).get("actions") or [])
        if a["type"] == "pii_mask"
    ]
    assert {a["pii_type"] for a in masked} >= {"PHONE"}
