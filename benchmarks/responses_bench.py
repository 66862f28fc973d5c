"""What OpenAI's Responses API costs over the chat API on the same gateway. Not a test: it
prints its figures (a table, then one JSON line).

    python benchmarks/responses_bench.py [--requests 200] [--tokens 64] [--ttft-ms 50]
        [--itl-ms 5] [--chain-depths 1,10,50] [--chain-requests 50]

``/v1/responses`` is served by translating to the chat path and back (lmops.serve.responses),
so the peer is ``/v1/chat/completions`` on the same ``lmops serve``, same deployment, same
key: the in-package fake OpenAI server (its own process, paced by ``--ttft-ms`` /
``--itl-ms``, replies of ``--tokens`` tokens) behind an upstream deployment with default
guardrails. Requests go one at a time through the official ``openai`` client, the two APIs
alternating, so load on the machine hits both alike; figures are p50/p95 of end-to-end
latency (non-streamed) and of time to the first text (streamed: the first content delta of
chat, the first ``response.output_text.delta`` of responses), and the gateway's CPU per
request (``psutil``, user + system). Overhead = responses - chat. Responses are stored by
default (lmops.serve.stored_responses), so ``responses`` pays for masking and writing each
one; ``responses, store: false`` is the stateless path beside it.

Then conversations: one of ``--chain-depths`` turns is built with ``previous_response_id``,
and ``--chain-requests`` next turns are sent two ways, alternating: continuing it by
``previous_response_id`` (the gateway reads the chain back and stores the new turn) and,
the peer, the client sending the whole conversation in ``input`` with ``store: false`` (what
a stateless server such as this gateway before, or a client that keeps its own history,
does). The model is given the same history both ways."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import serve_bench as sb  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def one(client: Any, api: str, stream: bool) -> tuple[float, float]:
    """(first text, end) in ms for one request (``api``: chat, responses, or responses
    with ``store: false``)."""
    t0 = time.perf_counter()
    first = None
    if api == "chat":
        kw: dict[str, Any] = {"model": "d", "messages": [{"role": "user", "content": "Hello!"}]}
        if not stream:
            client.chat.completions.create(**kw)
        else:
            for chunk in client.chat.completions.create(stream=True, **kw):
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
    elif not stream:
        client.responses.create(model="d", input="Hello!", store=api == "responses")
    else:
        store = api == "responses"
        for ev in client.responses.create(model="d", input="Hello!", stream=True, store=store):
            if first is None and ev.type == "response.output_text.delta":
                first = time.perf_counter()
    end = time.perf_counter()
    return ((first or end) - t0) * 1000, (end - t0) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=200, help="per API and mode")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=5.0)
    p.add_argument("--chain-depths", default="1,10,50", help="turns of each conversation")
    p.add_argument("--chain-requests", type=int, default=50, help="next turns per depth")
    args = p.parse_args()
    args.affinity = {"upstream": None, "gateway": None}
    from guard_bench import gateway_env

    tmp = Path(tempfile.mkdtemp(prefix="responses-bench-"))
    env, key = gateway_env(tmp)
    base, fake = sb.fake_upstream(
        args,
        tmp,
        env,
        "r",
        tokens=args.tokens,
        ttft_s=args.ttft_ms / 1000,
        itl_s=args.itl_ms / 1000,
    )
    out: dict[str, Any] = {"config": vars(args) | {"affinity": None}}
    try:
        rows, chains = measure(args, tmp, env, key, base, fake)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, rows, chains, out)


APIS = ("chat", "responses", "responses, store: false")


def conversations(args: argparse.Namespace, client: Any, gp: Any) -> dict[int, dict[str, Any]]:
    """Next turns of a conversation of each depth: by previous_response_id and by sending
    the whole conversation (see the module's docstring)."""
    out: dict[int, dict[str, Any]] = {}
    for depth in [int(d) for d in args.chain_depths.split(",")]:
        items: list[dict[str, Any]] = []
        last = None
        for turn in range(depth):
            text = f"Turn {turn}: tell me more."
            r = client.responses.create(model="d", input=text, previous_response_id=last)
            items += [
                {"role": "user", "content": text},
                {"role": "assistant", "content": r.output_text},
            ]
            last = r.id
        got: dict[str, list[float]] = {"previous_response_id": [], "whole input": []}
        cpu = dict.fromkeys(got, 0.0)
        for _ in range(args.chain_requests):
            for way in got:
                before, t0 = sb.cpu_seconds([gp]), time.perf_counter()
                if way == "previous_response_id":
                    client.responses.create(model="d", input="Next?", previous_response_id=last)
                else:
                    nxt = [*items, {"role": "user", "content": "Next?"}]
                    client.responses.create(model="d", input=nxt, store=False)
                got[way].append((time.perf_counter() - t0) * 1000)
                cpu[way] += sb.cpu_seconds([gp]) - before
        out[depth] = {
            way: {
                "e2e_p50_ms": round(statistics.median(xs), 2),
                "e2e_p95_ms": round(pct(xs, 0.95), 2),
                "gateway_cpu_ms": round(cpu[way] / len(xs) * 1000, 3),
            }
            for way, xs in got.items()
        }
    return out


def measure(
    args: argparse.Namespace, tmp: Path, env: dict[str, str], key: str, base: str, fake: Any
) -> tuple[dict[str, dict[str, Any]], dict[int, dict[str, Any]]]:
    import openai

    with fake:
        deps = {"deployments": [{"name": "d", "upstream": base + "/v1", "upstream_model": "fake"}]}
        path = tmp / "d.yaml"
        path.write_text(json.dumps(deps))
        port = sb.free_port()
        gw = f"http://127.0.0.1:{port}"
        cmd = sb.lmops_serve(port, "--deployments", str(path), "--workers", "1")
        with sb.process(
            cmd, env, tmp / "gw.log", lambda: sb.http_ok(gw + "/v1/models", key), 120
        ) as gp:
            client = openai.OpenAI(base_url=gw + "/v1", api_key=key, max_retries=0, timeout=60)
            for api in APIS:  # warm every path
                for stream in (False, True):
                    one(client, api, stream)
            rows: dict[str, dict[str, Any]] = {}
            for stream in (False, True):
                got: dict[str, list[tuple[float, float]]] = {api: [] for api in APIS}
                cpu: dict[str, float] = dict.fromkeys(APIS, 0.0)
                for _ in range(args.requests):
                    for api in APIS:
                        before = sb.cpu_seconds([gp])
                        got[api].append(one(client, api, stream))
                        cpu[api] += sb.cpu_seconds([gp]) - before
                for api, xs in got.items():
                    first, end = [x[0] for x in xs], [x[1] for x in xs]
                    rows[f"{api}, {'stream' if stream else 'full'}"] = {
                        "first_p50_ms": round(statistics.median(first), 2),
                        "first_p95_ms": round(pct(first, 0.95), 2),
                        "e2e_p50_ms": round(statistics.median(end), 2),
                        "e2e_p95_ms": round(pct(end, 0.95), 2),
                        "gateway_cpu_ms": round(cpu[api] / len(xs) * 1000, 3),
                    }
            chains = conversations(args, client, gp)
    return rows, chains


def report(
    args: argparse.Namespace,
    rows: dict[str, dict[str, Any]],
    chains: dict[int, dict[str, Any]],
    out: dict[str, Any],
) -> None:
    out["rows"], out["chains"] = rows, chains
    print(
        f"Responses vs chat through one lmops serve ({args.requests} requests each, fake "
        f"upstream: TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms, {args.tokens} tokens)"
    )
    print(f"{'api':34} {'first p50':>10} {'first p95':>10} {'e2e p50':>9} {'e2e p95':>9} "
          f"{'gw CPU ms/req':>14}")  # fmt: skip
    for name, r in rows.items():
        print(f"{name:34} {r['first_p50_ms']:10.2f} {r['first_p95_ms']:10.2f} "
              f"{r['e2e_p50_ms']:9.2f} {r['e2e_p95_ms']:9.2f} {r['gateway_cpu_ms']:14.3f}")  # fmt: skip
    for mode in ("full", "stream"):
        c, r = rows[f"chat, {mode}"], rows[f"responses, {mode}"]
        print(f"overhead ({mode}): e2e p50 {r['e2e_p50_ms'] - c['e2e_p50_ms']:+.2f} ms, "
              f"first text p50 {r['first_p50_ms'] - c['first_p50_ms']:+.2f} ms, "
              f"gateway CPU {r['gateway_cpu_ms'] - c['gateway_cpu_ms']:+.3f} ms/request")  # fmt: skip
        s = rows[f"responses, store: false, {mode}"]
        print(f"storing ({mode}): e2e p50 {r['e2e_p50_ms'] - s['e2e_p50_ms']:+.2f} ms, "
              f"gateway CPU {r['gateway_cpu_ms'] - s['gateway_cpu_ms']:+.3f} ms/request")  # fmt: skip
    print(
        f"\nNext turn of a conversation ({args.chain_requests} each): previous_response_id "
        "vs the whole conversation in input (store: false)"
    )
    print(f"{'turns':>5} {'way':22} {'e2e p50':>9} {'e2e p95':>9} {'gw CPU ms/req':>14}")
    for depth, ways in chains.items():
        for way, r in ways.items():
            print(f"{depth:5d} {way:22} {r['e2e_p50_ms']:9.2f} {r['e2e_p95_ms']:9.2f} "
                  f"{r['gateway_cpu_ms']:14.3f}")  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
