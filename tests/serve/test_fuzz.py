"""Schemathesis fuzzes a real `lmops serve` from its own /openapi.json: the /v1 endpoints
(an upstream deployment on the in-package fake server and a tiny built-in engine) and the
/api endpoints, with schema-violating (negative) and schema-valid (positive) requests.
No reply may be a 5xx, and every 4xx body must have OpenAI's error shape."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server
from tests.train.tiny import make_model, make_tokenizer

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")
hypothesis = pytest.importorskip("hypothesis")

# examples per operation and generation mode; (negative, positive). LMOPS_FUZZ_CASES=N
# asks for N cases per operation everywhere (half of each mode): the long run whose figures
# a release reports, e.g. LMOPS_FUZZ_CASES=500 pytest tests/serve/test_fuzz.py -s
_CASES = int(os.environ.get("LMOPS_FUZZ_CASES", "0") or 0)
V1_EXAMPLES = (_CASES - _CASES // 2, _CASES // 2) if _CASES else (90, 45)
API_EXAMPLES = (_CASES - _CASES // 2, _CASES // 2) if _CASES else (8, 8)
MIN_REQUESTS = 500


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fuzz")
    env = {**lmops_env(root / "home"), "LMOPS_ACCESS_LOG": "off"}
    tok = make_tokenizer(root / "tok")
    model = make_model(root / "tiny", tok, seed=2)
    from lmops.serve.fake import fake_server

    with fake_server(tokens=4) as upstream:
        (root / "deployments.yaml").write_text(
            "deployments:\n"
            f"  - {{name: fake, upstream: {upstream}/v1, upstream_model: fake}}\n"
            f"  - {{name: tiny, model: {model}, max_tokens_cap: 4}}\n"
            f"  - {{name: dead, upstream: http://127.0.0.1:{free_port()}/v1}}\n"
        )
        lmops = lmops_cli(env)
        keys = {
            role: json.loads(
                lmops("keys", "create", "--name", f"fuzz-{role}-key", "--role", role, "--json")
            )["key"]
            for role in ("user", "admin")
        }
        proc, base = start_server(
            env,
            "--deployments",
            str(root / "deployments.yaml"),
        )
        yield {"base": base, "keys": keys}
        stop_server(proc)


def test_no_5xx_and_openai_error_shapes_under_fuzzing(server: dict[str, Any]) -> None:
    import requests
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    base = server["base"]
    schema = schemathesis.openapi.from_dict(httpx.get(base + "/openapi.json", timeout=10).json())
    operations = [r.ok() for r in schema.get_all_operations()]
    paths = {(op.method.upper(), op.path) for op in operations}
    # the /v1 routes parse their own JSON, but their bodies are described in the schema
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        assert ("POST", path) in paths
        op = next(o for o in operations if o.path == path)
        assert op.body, f"{path} has no request body in /openapi.json"

    session = requests.Session()
    models = itertools.cycle(["fake", "tiny", None])  # None: keep the generated name (404)
    seen: list[tuple[str, int]] = []
    failures: list[str] = []

    def check(case: Any) -> None:
        if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
            name = next(models)
            if name is not None and case.body["model"]:
                case.body["model"] = name
        r = case.call(base_url=base, session=session, timeout=60)
        seen.append((f"{case.method} {case.path}", r.status_code))
        problem = None
        if r.status_code >= 500:
            problem = "server error"
        elif r.status_code >= 400:
            try:
                err = r.json()["error"]
                assert set(err) >= {"message", "type", "param", "code"}
                assert isinstance(err["message"], str) and isinstance(err["type"], str)
            except (ValueError, KeyError, TypeError, AssertionError):
                problem = "not an OpenAI error body"
        if problem:
            body = json.dumps(case.body, default=str)[:300] if case.body is not None else ""
            failures.append(
                f"{problem}: {case.method} {case.formatted_path} {case.query or ''} "
                f"{body} -> {r.status_code} {r.text[:300]}"
            )

    started = time.perf_counter()
    for op in operations:
        v1 = op.path.startswith("/v1")
        key = server["keys"]["user" if v1 else "admin"]
        if not v1 and op.method.upper() == "DELETE" and op.path == "/api/keys/{name}":
            continue  # the fuzzer must not revoke the keys it fuzzes with
        for mode, n in zip(
            (GenerationMode.NEGATIVE, GenerationMode.POSITIVE),
            V1_EXAMPLES if v1 else API_EXAMPLES,
            strict=True,
        ):
            strategy = op.as_strategy(
                generation_mode=mode, headers={"Authorization": f"Bearer {key}"}
            )

            @settings(
                max_examples=n,
                derandomize=True,  # the same requests on every run
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],  # failures are collected, not shrunk
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                check(case)

            # Unsatisfiable: no request can violate this operation's schema (no parameters)
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                run()
    elapsed = time.perf_counter() - started

    assert not failures, f"{len(failures)} bad replies, e.g.:\n" + "\n".join(failures[:10])
    assert len(seen) >= MIN_REQUESTS, f"only {len(seen)} requests were generated"
    v1_statuses = {s for op, s in seen if op.startswith("POST /v1")}
    # the fuzzer got past validation to both deployments, and was refused for bad input
    assert 200 in v1_statuses and 400 in v1_statuses and 404 in v1_statuses
    by_op: dict[str, dict[int, int]] = {}
    for op_name, status in seen:
        counts = by_op.setdefault(op_name, {})
        counts[status] = counts.get(status, 0) + 1
    print(f"\n{len(seen)} fuzzed requests in {elapsed:.1f}s, 0 with a 5xx")
    for op_name, counts in sorted(by_op.items()):
        print(f"  {op_name}: {sum(counts.values())} cases, statuses {dict(sorted(counts.items()))}")


def test_what_the_fuzzer_found_stays_fixed(server: dict[str, Any]) -> None:
    """Each of these was a 5xx (or a 200 with ``finish_reason: "error"``) before."""
    headers = {"Authorization": "Bearer " + server["keys"]["user"]}
    msg = [{"role": "user", "content": "hi"}]

    def post(path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(server["base"] + path, headers=headers, json=body, timeout=60)

    # a top_p that rounds to 0 in float32 emptied the nucleus: NaN probabilities
    r = post("/v1/chat/completions", {"model": "tiny", "messages": msg, "top_p": 5e-324})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    # a seed beyond 64 bits failed in the sampler, failing every sequence of the batch
    r = post("/v1/chat/completions", {"model": "tiny", "messages": msg, "seed": 2**70})
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    r = post("/v1/chat/completions", {"model": "tiny", "messages": msg, "seed": 2**63 - 1, "n": 2})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2
    # an unreachable upstream behind /v1/embeddings was an unhandled exception
    r = post("/v1/embeddings", {"model": "dead", "input": "hi"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    # an upstream's error is relayed in OpenAI's shape (the fake has no /embeddings)
    r = post("/v1/embeddings", {"model": "fake", "input": "hi"})
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
