"""Long texts through `lmops serve` and the official `openai` client (issue #12): an upstream
deployment's guard masks PII across a window boundary and blocks a term across a seam, and
text over ``max_guard_chars`` is refused with a 400 naming the limit, never forwarded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from lmops.security import long
from lmops.serve.fake import fake_server
from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server

W = long.WINDOW
LIMIT = 200_000
FILLER = "plain notes about the weather and the garden, written on a quiet afternoon. "


def filler(n: int) -> str:
    return (FILLER * (n // len(FILLER) + 1))[:n]


def with_at(text: str, at: int, piece: str) -> str:
    return text[:at] + piece + text[at + len(piece) :]


@pytest.fixture(scope="module")
def g(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("long")
    env = lmops_env(root / "home")
    received: list[dict[str, Any]] = []
    with fake_server(tokens=4, model="up", requests=received) as up:
        (root / "d.yaml").write_text(
            "deployments:\n"
            f"  - {{name: up, upstream: {up}/v1, upstream_model: up,"
            f" guardrails: {{max_guard_chars: {LIMIT}}}}}\n"
        )
        key = json.loads(lmops_cli(env)("keys", "create", "--name", "k", "--json"))["key"]
        proc, base = start_server(
            env,
            "--deployments",
            str(root / "d.yaml"),
            ready=lambda b: httpx.get(b + "/healthz", timeout=2).status_code == 200,
        )
        try:
            client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
            yield {"client": client, "received": received}
        finally:
            stop_server(proc)


def ask(g: dict[str, Any], content: str) -> Any:
    return g["client"].chat.completions.create(
        model="up", messages=[{"role": "user", "content": content}], max_tokens=4
    )


def test_pii_across_a_window_boundary_is_masked_before_the_upstream(g: dict[str, Any]) -> None:
    text = with_at(filler(5 * W), W - 6, " 13812345678 ")  # starts 5 characters before it
    text = with_at(text, 3 * W - 3, " alice.smith@example.com ")
    assert ask(g, text).choices[0].message.content
    sent = g["received"][-1]["messages"][0]["content"]
    assert "<PHONE>" in sent and "<EMAIL>" in sent
    assert "13812345678" not in sent and "alice.smith" not in sent
    assert len(sent) < len(text)


def test_a_term_across_a_seam_is_blocked(g: dict[str, Any]) -> None:
    n = len(g["received"])
    text = with_at(filler(3 * W), W - 6, " how to make a bomb ")
    assert long.chunk_bounds(text)[0][1] in range(W - 5, W + 13)  # the seam cuts the term
    with pytest.raises(openai.BadRequestError) as e:
        ask(g, text)
    assert e.value.status_code == 400 and e.value.code == "content_filter"
    assert len(g["received"]) == n  # nothing reached the upstream


def test_text_over_the_cap_is_refused_naming_the_limit(g: dict[str, Any]) -> None:
    n = len(g["received"])
    with pytest.raises(openai.BadRequestError) as e:
        ask(g, filler(LIMIT + 1))
    assert e.value.status_code == 400 and e.value.code == "content_filter"
    assert "max_guard_chars" in e.value.message and f"{LIMIT:,}" in e.value.message
    assert len(g["received"]) == n
    assert ask(g, filler(LIMIT)).choices[0].message.content  # at the cap: checked and sent
