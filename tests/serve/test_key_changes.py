"""Changing a key while `lmops serve` runs, spoken to with the official openai client: a
new limit from `lmops keys update` applies without a restart, and after `lmops keys rotate`
the old secret is refused within the gateway's key cache time while the new one works, with
the key's rate counters and request log carried on under its name."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lmops.serve.openai_api import KEY_CACHE_S
from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("key-changes")
    env = lmops_env(root / "home")
    (root / "d.yaml").write_text("deployments:\n  - {name: chat, fake: {tokens: 3}}\n")
    proc, base = start_server(env, "--deployments", str(root / "d.yaml"))
    yield {"base": base, "lmops": lmops_cli(env), "proc": proc}
    stop_server(proc)


def client(g: dict[str, Any], key: str) -> Any:
    return openai.OpenAI(base_url=g["base"] + "/v1", api_key=key, max_retries=0, timeout=30)


def chat(c: Any) -> str:
    return str(c.chat.completions.create(model="chat", messages=HI).choices[0].message.content)


def refused_within(c: Any, error: type[Exception], seconds: float) -> float:
    """Seconds until a request with ``c`` raises ``error``; fails after ``seconds``. It
    asks ``/v1/models`` (the same key check and cache as chat), so the polls spend none
    of the key's requests per minute, whatever the machine's speed."""
    start = time.monotonic()
    while True:
        try:
            c.models.list()
        except error:
            return time.monotonic() - start
        assert time.monotonic() - start < seconds, f"still accepted after {seconds}s"
        time.sleep(0.05)


def test_a_new_rpm_limit_applies_without_a_restart(gw: dict[str, Any]) -> None:
    lmops = gw["lmops"]
    c = client(gw, json.loads(lmops("keys", "create", "--name", "tenant-a", "--json"))["key"])
    for _ in range(3):  # no limit yet: the gateway now holds the key in its cache
        assert chat(c) == "tok0 tok1 tok2"
    lmops("keys", "update", "tenant-a", "--rpm", "1")
    time.sleep(KEY_CACHE_S)  # at most this long on the old limits
    assert chat(c) == "tok0 tok1 tok2"
    with pytest.raises(openai.RateLimitError) as refused:
        chat(c)  # the second request within the minute
    assert refused.value.status_code == 429
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert "rpm" in refused.value.message

    lmops("keys", "update", "tenant-a", "--no-rpm")  # and the limit can be lifted again
    time.sleep(KEY_CACHE_S)
    assert chat(c) == "tok0 tok1 tok2"
    assert gw["proc"].poll() is None  # one server throughout


def test_after_rotate_the_old_secret_is_refused_and_the_new_one_works(
    gw: dict[str, Any],
) -> None:
    lmops = gw["lmops"]
    old = json.loads(lmops("keys", "create", "--name", "tenant-b", "--rpm", "2", "--json"))["key"]
    c_old = client(gw, old)
    assert chat(c_old) == "tok0 tok1 tok2"  # cached by the gateway from here on
    new = lmops("keys", "rotate", "tenant-b").strip().splitlines()[-1]
    assert new.startswith("lmk-") and new != old
    waited = refused_within(c_old, openai.AuthenticationError, KEY_CACHE_S + 1.0)
    assert waited <= KEY_CACHE_S + 1.0
    with pytest.raises(openai.AuthenticationError) as e:
        chat(c_old)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"

    c_new = client(gw, new)
    assert chat(c_new) == "tok0 tok1 tok2"
    assert [m.id for m in c_new.models.list()] == ["chat"]
    # the rpm window counts the old secret's request too: the key is the same, by name
    with pytest.raises(openai.RateLimitError):
        chat(c_new)
    usage = json.loads(lmops("usage", "--key", "tenant-b", "--json"))["by_key"]["tenant-b"]
    assert (usage["requests"], usage["errors"]) == (3, 1)  # both secrets' requests, one 429
