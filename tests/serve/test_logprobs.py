"""Token logprobs from the built-in engine through the official openai client: chat
``logprobs``/``top_logprobs`` (streamed and not), completions ``logprobs: N``, and the
400 for more than 20 alternatives."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server
from tests.train.tiny import make_model, make_tokenizer

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")

MESSAGES = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("logprobs")
    env = lmops_env(root / "home")
    tok = make_tokenizer(root / "tok")
    model = make_model(root / "tiny", tok, seed=2)
    # guardrails off: this module checks the engine's numbers, not the output filter
    (root / "deployments.yaml").write_text(
        "deployments:\n"
        f"  - {{name: tiny, model: {model}, guardrails: {{preset: 'off'}}}}\n"
        f"  - {{name: guarded, model: {model}}}\n"
    )
    key = json.loads(lmops_cli(env)("keys", "create", "--name", "k", "--json"))["key"]
    proc, base = start_server(
        env,
        "--deployments",
        str(root / "deployments.yaml"),
    )
    yield {"base": base, "key": key}
    stop_server(proc)


def client(server: dict[str, Any]) -> Any:
    return openai.OpenAI(
        base_url=server["base"] + "/v1", api_key=server["key"], max_retries=0, timeout=60
    )


def check_entries(content: list[Any], k: int, *, greedy: bool) -> None:
    assert content, "no logprobs returned"
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == k
        assert bytes(e.bytes).decode("utf-8", errors="replace") == e.token or "\ufffd" in e.token
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True) and all(t <= 0 for t in tops)
        assert math.fsum(math.exp(t) for t in tops) <= 1 + 1e-4
        if greedy and k:
            # greedy decoding picks the most likely token: it is top-1, with the same logprob
            assert e.top_logprobs[0].token == e.token
            assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-6)
        elif k:
            assert e.logprob <= e.top_logprobs[0].logprob + 1e-6


def test_chat_top_logprobs_greedy(server: dict[str, Any]) -> None:
    r = client(server).chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    choice = r.choices[0]
    content = choice.logprobs.content
    check_entries(content, 5, greedy=True)
    # every generated token has one entry and together they spell the reply
    assert len(content) == r.usage.completion_tokens
    text = b"".join(bytes(e.bytes) for e in content).decode("utf-8", errors="replace")
    assert text.strip() == choice.message.content.strip()


def test_chat_logprobs_streamed_match_non_streamed(server: dict[str, Any]) -> None:
    c = client(server)
    kw: dict[str, Any] = dict(
        model="tiny", messages=MESSAGES, max_tokens=10, temperature=0, logprobs=True
    )
    full = c.chat.completions.create(**kw, top_logprobs=3)
    chunks = list(c.chat.completions.create(**kw, top_logprobs=3, stream=True))
    streamed = [
        e
        for ch in chunks
        if ch.choices and ch.choices[0].logprobs
        for e in ch.choices[0].logprobs.content
    ]
    check_entries(streamed, 3, greedy=True)
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == [
        (e.token, round(e.logprob, 5)) for e in full.choices[0].logprobs.content
    ]
    # logprobs without top_logprobs: the chosen tokens only
    bare = c.chat.completions.create(**kw)
    check_entries(bare.choices[0].logprobs.content, 0, greedy=True)
    # sampled (not greedy) tokens are still reported with their own logprob
    sampled = c.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=10,
        temperature=1.0,
        seed=7,
        logprobs=True,
        top_logprobs=20,
    )
    check_entries(sampled.choices[0].logprobs.content, 20, greedy=False)
    # no logprobs asked: none returned
    plain = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)
    assert plain.choices[0].logprobs is None


def test_guarded_deployment_still_reports_logprobs(server: dict[str, Any]) -> None:
    r = client(server).chat.completions.create(
        model="guarded",
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    # nothing was masked, so every token's text went out verbatim and is reported
    check_entries(r.choices[0].logprobs.content, 2, greedy=True)
    assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens


def test_completions_logprobs(server: dict[str, Any]) -> None:
    c = client(server)
    r = c.completions.create(
        model="tiny", prompt="Machine learning", max_tokens=6, temperature=0, logprobs=3
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    for tok, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value <= 0 and 1 <= len(top) <= 3
        best = max(top, key=top.get)
        assert best == tok and top[best] == pytest.approx(value, abs=1e-6)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    chunks = list(
        c.completions.create(
            model="tiny",
            prompt="Machine learning",
            max_tokens=6,
            temperature=0,
            logprobs=3,
            stream=True,
        )
    )
    streamed = [
        t
        for ch in chunks
        if ch.choices and ch.choices[0].logprobs
        for t in ch.choices[0].logprobs.tokens
    ]
    assert streamed == lp.tokens


def test_bad_logprob_requests_are_400(server: dict[str, Any]) -> None:
    c = client(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=2, logprobs=True, top_logprobs=21
        )
    assert e.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="hi", max_tokens=2, logprobs=6)
    assert e.value.body["param"] == "logprobs"


def test_logprobs_of_text_a_guardrail_rewrote_are_withheld() -> None:
    """A token's entry names its text, so it goes out only once that text went out
    verbatim: masked PII (and everything after it) keeps its logprobs back."""
    from lmops.models.types import TokenLogprob
    from lmops.serve.handlers import LogprobRelease as _LogprobRelease

    release = _LogprobRelease()
    pieces = ["mail ", "jane@", "example.com", " now"]
    end = 0
    for p in pieces:
        end += len(p)
        release.produced(p, TokenLogprob(p, -0.5, list(p.encode()), [], end - len(p), end))
    assert release.sent("") == []  # a guard holding everything back releases nothing
    assert [e.token for e in release.sent("mail ")] == ["mail "]
    assert release.sent("<EMAIL> now") == []  # rewritten: the address's tokens stay hidden
    assert len(release.pending) == 3

    verbatim = _LogprobRelease()
    for p in pieces:
        verbatim.produced(p, None)
    verbatim.produced("", TokenLogprob("x", -1.0, [120], [], 0, len("".join(pieces))))
    assert [e.token for e in verbatim.sent("".join(pieces))] == ["x"]


def test_a_reply_cut_inside_a_character_ends_before_it(server: dict[str, Any]) -> None:
    """max_tokens that ends between the bytes of a character: the reply (streamed or not)
    stops before that character instead of ending in U+FFFD; the token is still counted
    and its bytes are still in logprobs."""
    c = client(server)
    # sampled with a seed (reproducible): random byte tokens soon split a character
    for seed in range(10):
        kw: dict[str, Any] = dict(model="tiny", messages=MESSAGES, temperature=2.0, seed=seed)
        probe = c.chat.completions.create(**kw, max_tokens=40, logprobs=True)
        raw = [bytes(e.bytes) for e in probe.choices[0].logprobs.content]
        cuts = [
            k
            for k in range(1, len(raw) + 1)
            if b"".join(raw[:k]).decode("utf-8", errors="replace").endswith("\ufffd")
        ]
        if cuts:
            break
    assert cuts, "no sampled reply has a token that ends inside a character"
    k = cuts[0]
    whole = b"".join(raw[:k]).decode("utf-8", errors="replace").rstrip("\ufffd")
    r = c.chat.completions.create(**kw, max_tokens=k, logprobs=True)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == k
    assert r.choices[0].message.content == whole
    assert [bytes(e.bytes) for e in r.choices[0].logprobs.content] == raw[:k]
    chunks = [
        ch.choices[0]
        for ch in c.chat.completions.create(**kw, max_tokens=k, stream=True, logprobs=True)
        if ch.choices
    ]
    assert "".join(ch.delta.content or "" for ch in chunks) == whole
    streamed = [e for ch in chunks if ch.logprobs for e in ch.logprobs.content]
    assert [bytes(e.bytes) for e in streamed] == raw[:k]


def test_streamed_chunks_carry_exactly_their_tokens_text(server: dict[str, Any]) -> None:
    """With the default guardrails holding text back (and re-chunking it), each streamed
    chunk's content is exactly the text of the tokens its logprobs name, as OpenAI's and
    vLLM's are; together they are the whole reply, as the non-streamed one is."""
    c = client(server)
    for seed, temperature in [(0, 0.0)] + [(seed, 1.0) for seed in range(6)]:
        kw: dict[str, Any] = dict(
            model="guarded",
            messages=[{"role": "user", "content": "Hello, how are you today?"}],
            max_tokens=24,
            temperature=temperature,
            seed=seed,
            logprobs=True,
            top_logprobs=2,
        )
        full = c.chat.completions.create(**kw).choices[0]
        chunks = [ch.choices[0] for ch in c.chat.completions.create(**kw, stream=True)]
        for ch in chunks:
            tokens = ch.logprobs.content if ch.logprobs else []
            spelt = "".join(t.token for t in tokens)
            if "\ufffd" in spelt + (ch.delta.content or ""):
                # random byte tokens that are no UTF-8: the engine's text for them and
                # their tokens' U+FFFDs need not line up chunk by chunk
                continue
            assert spelt == (ch.delta.content or ""), ch
        assert "".join(ch.delta.content or "" for ch in chunks) == full.message.content
        streamed = [t.token for ch in chunks if ch.logprobs for t in ch.logprobs.content]
        assert streamed == [t.token for t in full.logprobs.content]
    legacy = c.completions.create(
        model="guarded", prompt="The quick brown", max_tokens=16, temperature=0, logprobs=2,
        stream=True,
    )  # fmt: skip
    for ch in legacy:
        got = ch.choices[0]
        assert "".join(got.logprobs.tokens if got.logprobs else []) == got.text


def test_a_stream_is_cut_at_token_boundaries() -> None:
    """The guard released text that ends inside a token: the token waits, whole, for the
    next chunk; after a rewrite the text goes on without entries."""
    from lmops.models.types import TokenLogprob
    from lmops.serve.replies import LogprobRelease

    release = LogprobRelease()
    end = 0
    for p in ["Hello", " there", ","]:
        release.produced(p, TokenLogprob(p, -0.5, list(p.encode()), [], end, end + len(p)))
        end += len(p)
    text, entries = release.chunk("Hello ")
    assert (text, [e.token for e in entries]) == ("Hello", ["Hello"])
    text, entries = release.chunk("there,")
    assert (text, [e.token for e in entries]) == (" there,", [" there", ","])
    assert release.chunk("", final=True) == ("", [])
    masked = LogprobRelease()
    masked.produced("call 555", TokenLogprob("call 555", -1.0, [], [], 0, 8))
    assert masked.chunk("call <PHONE>") == ("call <PHONE>", [])


def test_a_character_of_several_byte_tokens_goes_out_with_all_its_bytes() -> None:
    """As the engine reports them: the first byte token of a character gets the
    character's one-character span, the ones that complete it an empty span after it."""
    from lmops.models.types import TokenLogprob
    from lmops.serve.replies import LogprobRelease

    release = LogprobRelease()
    shown = []
    steps = [(b"\xe4", 0, 1, ""), (b"\xb8", 1, 1, ""), (b"\x8a", 1, 1, "上"), (b"x", 1, 2, "x")]
    for raw, start, end, delta in steps:
        release.produced(delta, TokenLogprob("?", -0.1, list(raw), [], start, end))
        text, entries = release.chunk(delta)
        shown.append((text, b"".join(bytes(e.bytes) for e in entries)))
    assert [s for s in shown if s != ("", b"")] == [("上", "上".encode()), ("x", b"x")]
