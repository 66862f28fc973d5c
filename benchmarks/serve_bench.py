"""Serving-gateway benchmark (issue #6): the built-in engine's scaling with concurrency, the
gateway's overhead in front of a fast upstream, whether it keeps a paced upstream's token
throughput, and vLLM through the gateway. Not a test: it prints its figures (a table per
part, then one JSON line with everything).

    python benchmarks/serve_bench.py [--quick] [--parts engine,gateway,relay] [--duration 8]
        [--engine-concurrency 1,8] [--gateway-rates 100,300,500]
        [--gateway-concurrency 1,2,4,8] [--relay-concurrency 1,32]
        [--workers 1] [--input-len 32] [--engine-output-len 64] [--gateway-output-len 16]
        [--vllm MODEL_DIR [--vllm-concurrency 1,16,64]]
        [--gateway-cpus 0,1] [--upstream-cpus 2-5] [--client-cpus 6-15]

Every figure comes from ``lmops eval perf`` (:func:`lmops.eval.perf.run_perf`): streaming
chat requests, vLLM's serving-benchmark definitions (E2EL = send to last content chunk;
output throughput = usage ``completion_tokens`` / level wall time). Each level runs for
about ``--duration`` seconds (``--quick``: 2 s levels). A **closed-loop** level keeps *C*
requests in flight: a short probe level (which also warms up) gives the request rate, and
the measured level gets ``rate * duration`` requests. An **open-loop** level (the gateway's
``--gateway-rates``) offers *R* req/s, Poisson arrivals from a fixed seed (``eval perf
--request-rate``; at most 1000 in flight): an untimed second of the same rate warms up, and
the measured level gets ``R * duration`` requests; its send lag (actual send - due time) says
whether the load generator kept the schedule. Servers are subprocesses
(``lmops serve``, the fake upstream under uvicorn) in a temporary ``LMOPS_HOME``, so the
load generator (this process) does not share their interpreter; ``OMP_NUM_THREADS`` is 1
for them (``--threads``), as in the tests. The tables give the CPU each process spent per
request (``psutil``, user + system, children included): on a small machine the load
generator, the upstream and the gateway share the cores, and CPU per request is the figure
that other load on the machine disturbs least.

**CPU pinning** (Linux; none by default): on a bigger machine, ``--gateway-cpus 0,1`` pins
the ``lmops serve`` process (gateway or engine; its ``--workers`` processes are its children
and are pinned with it) to exactly those cores, while ``--upstream-cpus`` (the fake upstream,
or vLLM) and ``--client-cpus`` (this process, the load generator) put the rest of the work
elsewhere: the gateway's capacity on two cores, not shared. Lists are CPU numbers and
ranges (``0-3,8``), applied with ``psutil`` ``Process.cpu_affinity`` to the process and its
children as it starts, and again once it is ready (to catch children it started meanwhile). A
server with no list of its own gets every CPU this script may use, not the client's
(a child would otherwise inherit that). The affinity is printed first and is in the JSON.

**engine** — ``lmops serve --model tiny=DIR``: a Llama with ``llama-tiny`` dimensions (hidden
64, 2 layers, 4 heads / 2 KV heads) and a byte-level BPE tokenizer (512) trained on the
benchmark's own word list, written to a temporary folder. The EOS rows of its (untied) LM
head are zeroed and requests are greedy (``temperature=0``): the argmax over the vocabulary
of a random model is positive, so EOS never wins and every request produces exactly
``max_tokens`` (an ``ignore_eos`` for an engine that has none; the table says whether all
lengths matched). Target: output tok/s at ``C=8`` >= 4x ``C=1``.

**gateway** — the in-package fake OpenAI server (:mod:`lmops.serve.fake`, zero delays, replies
of exactly ``--gateway-output-len`` tokens) as the upstream, and ``lmops serve --deployments``
with one upstream deployment in front of it, called with a real API key that has RPM/TPM
limits (far above the load, so nothing is refused but every request is counted), default
guardrails, the request log and metrics on. Each level runs direct to the fake, then
through the gateway, with the same seed and number of requests. First the open-loop levels
(``--gateway-rates``, default 100, 300, 500 req/s): latency at an offered rate, so it holds
no queueing of the load generator's own making (a closed loop of *C* in flight has p50 ~
*C* / rate by construction). Overhead = gateway p50 E2EL - direct p50 E2EL at the same rate.
Target: p50 overhead <= 5 ms at >= 500 requests/s through the gateway; **met** iff at some
offered rate >= 500 the gateway achieved >= 490 req/s (500 within 2%) with no failed
request and p50 overhead <= 5 ms, while the client's send lag p50 stayed under 1 ms in both
runs. A run whose send lag p50 is 1 ms or more lagged (the load generator did not keep the
schedule, so the server saw less than the offered load). A level whose direct run lagged is
**not valid** (the client and the fake alone could not keep the rate on this machine); one
that lagged only through the gateway is a valid NOT met if the gateway still completed
< 490 req/s while the load reached it (sent at >= 490 req/s) or piled up in it (1000 in
flight), else not valid. The verdict says "not valid" instead of "NOT met" when a level at
>= 500 req/s is not valid and none met the target. Then the closed-loop levels (``--gateway-concurrency``), a second
table: they show the saturation throughput.

**relay** — the same with the fake pacing its streams like a model server (``--relay-ttft-ms``,
``--relay-itl-ms``): the gateway's output tok/s against the direct one, the CPU stand-in
for the vLLM comparison (target >= 0.95x).

**vllm** — ``--vllm MODEL_DIR``: ``vllm serve MODEL_DIR`` on a free port, the gateway in front of
it (an upstream deployment), the same levels direct and through the gateway with
``ignore_eos``. Target: gateway output tok/s >= 0.95x direct at every level. Skipped, with
the reason, when vLLM or a CUDA GPU is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmops.eval.perf import (  # noqa: E402
    _WORDS,
    DEFAULT_RATE_CAP,
    SEND_LAG_LIMIT_MS,
    LevelResult,
    run_perf,
)

ENGINE_TARGET = 4.0
GATEWAY_RPS_TARGET = 500.0
GATEWAY_OVERHEAD_TARGET_MS = 5.0
GATEWAY_RPS_TOLERANCE = 0.02  # achieved >= 98% of the target rate counts as reaching it
RATE_WARMUP_S = 1.0  # untimed seconds at the offered rate before each open-loop level
VLLM_TARGET = 0.95
HUGE = 10**9  # key limits far above any load: every request is counted, none refused


# -- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(proc: psutil.Process, cpus: list[int] | None) -> int:
    """Pin ``proc`` and its live children to ``cpus`` (None: leave them); how many were."""
    if cpus is None:
        return 0
    pinned = 0
    for q in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a child that has just exited
            q.cpu_affinity(cpus)
            pinned += 1
    return pinned


@contextlib.contextmanager
def process(
    cmd: list[str],
    env: dict[str, str],
    log: Path,
    ready: Callable[[], bool],
    timeout: float,
    *,
    cpus: list[int] | None = None,
) -> Iterator[psutil.Process]:
    """Run ``cmd`` until the block ends; yields once ``ready()`` is true.

    ``cpus``: pin it there at once (before it can start workers, which inherit the
    affinity), and again, with its children, once it is ready."""
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            ps = psutil.Process(proc.pid)
            pin(ps, cpus)
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if ready():
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"{' '.join(cmd[:6])} did not start:\n{tail}")
                time.sleep(0.2)
            if cpus is not None:
                n = pin(ps, cpus)
                print(f"[{log.stem}: {n} process(es) pinned to CPUs {cpu_text(cpus)}]")
            yield ps
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cpu_list(text: str) -> list[int]:
    """``"0,1"``, ``"0-3,8"`` -> sorted CPU numbers."""
    cpus: set[int] = set()
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a CPU list: {text!r} (e.g. 0,1 or 2-5)"
            ) from None
        if first < 0 or last < first:
            raise argparse.ArgumentTypeError(f"not a CPU range: {part!r}")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise argparse.ArgumentTypeError("an empty CPU list")
    return sorted(cpus)


def cpu_text(cpus: list[int]) -> str:
    """[0, 1, 2, 3, 8] -> "0-3,8"."""
    runs: list[list[int]] = []
    for c in cpus:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def set_affinity(args: argparse.Namespace) -> dict[str, list[int] | None]:
    """Check the CPU lists, pin this process (the client); the affinity of each role.

    A server without a list gets every CPU this process may use, so that it does not
    inherit the client's; with no list at all nothing is pinned (None everywhere)."""
    roles = {
        "gateway": args.gateway_cpus,
        "upstream": args.upstream_cpus,
        "client": args.client_cpus,
    }
    if all(v is None for v in roles.values()):
        return dict.fromkeys(roles)
    me = psutil.Process()
    if not hasattr(me, "cpu_affinity"):
        raise SystemExit("CPU pinning needs psutil's Process.cpu_affinity (Linux, Windows)")
    allowed = sorted(me.cpu_affinity())
    for role, cpus in roles.items():
        if cpus is not None and not set(cpus) <= set(allowed):
            raise SystemExit(
                f"--{role}-cpus {cpu_text(cpus)}: this process may only use CPUs "
                f"{cpu_text(allowed)}"
            )
    if args.client_cpus is not None:
        me.cpu_affinity(args.client_cpus)
    return {role: allowed if cpus is None else cpus for role, cpus in roles.items()}


def http_ok(url: str, key: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url, headers=headers, timeout=2).status_code == 200


def lmops_serve(port: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lmops.cli.main",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU of ``procs`` and their live children."""
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            for q in [p, *p.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = q.cpu_times()
                    total += t.user + t.system
    return total


# -- measuring ------------------------------------------------------------------------------------
def level(
    url: str,
    model: str,
    c: int,
    args: argparse.Namespace,
    *,
    key: str | None,
    output_len: int,
    extra: dict[str, Any],
    watch: dict[str, list[psutil.Process]],
) -> dict[str, Any]:
    """One concurrency level of about ``args.duration`` s (after a probe that warms up)."""
    kw: dict[str, Any] = dict(
        api_key=key,
        concurrency=[c],
        input_len=args.input_len,
        output_len=output_len,
        extra_body=extra,
        timeout_s=120.0,
    )
    probe = run_perf(url, model, requests=max(2 * c, 4), warmup=True, **kw).levels[0]
    rate = probe.request_throughput or 1.0
    n = max(2 * c, math.ceil(rate * args.duration))
    cpu0 = {name: cpu_seconds(ps) for name, ps in watch.items()}
    me0 = time.process_time()
    lv = run_perf(url, model, requests=n, warmup=False, seed=1, **kw).levels[0]
    me = time.process_time() - me0
    cpu = {name: cpu_seconds(ps) - cpu0[name] for name, ps in watch.items()}
    return summarize(lv, output_len, {"client": me, **cpu})


def rate_level(
    url: str,
    model: str,
    rate: float,
    args: argparse.Namespace,
    *,
    key: str | None,
    output_len: int,
    extra: dict[str, Any],
    watch: dict[str, list[psutil.Process]],
) -> dict[str, Any]:
    """``rate * args.duration`` requests offered at ``rate`` req/s (Poisson, seed 1), after
    ``RATE_WARMUP_S`` untimed seconds at the same rate."""
    kw: dict[str, Any] = dict(
        api_key=key,
        request_rate=rate,
        concurrency=[DEFAULT_RATE_CAP],
        input_len=args.input_len,
        output_len=output_len,
        extra_body=extra,
        timeout_s=120.0,
    )
    run_perf(url, model, requests=max(10, math.ceil(rate * RATE_WARMUP_S)), warmup=True, **kw)
    n = max(10, math.ceil(rate * args.duration))
    cpu0 = {name: cpu_seconds(ps) for name, ps in watch.items()}
    me0 = time.process_time()
    lv = run_perf(url, model, requests=n, warmup=False, seed=1, **kw).levels[0]
    me = time.process_time() - me0
    cpu = {name: cpu_seconds(ps) - cpu0[name] for name, ps in watch.items()}
    lag = lv.send_lag_ms
    return {
        "offered_rps": rate,
        **summarize(lv, output_len, {"client": me, **cpu}),
        "sent_rps": None if lv.send_rate is None else round(lv.send_rate, 1),
        "send_lag_p50_ms": None if lag is None else round(lag.median, 3),
        "send_lag_p99_ms": None if lag is None else round(lag.p99, 3),
        "cap_waits": lv.cap_waits,
        "lagged": lv.lagged,
    }


def summarize(lv: LevelResult, output_len: int, cpu: dict[str, float]) -> dict[str, Any]:
    done = max(lv.completed, 1)
    e2el, ttft = lv.e2el_ms, lv.ttft_ms
    return {
        "concurrency": lv.concurrency,
        "requests": lv.requests,
        "failed": lv.failed,
        "errors": lv.errors,
        "duration_s": round(lv.duration_s, 3),
        "rps": round(lv.request_throughput, 1),
        "output_tok_s": round(lv.output_throughput, 1),
        "lengths_match": lv.total_output_tokens == lv.completed * output_len,
        "e2el_p50_ms": None if e2el is None else round(e2el.median, 3),
        "e2el_p99_ms": None if e2el is None else round(e2el.p99, 3),
        "ttft_p50_ms": None if ttft is None else round(ttft.median, 3),
        "cpu_ms_per_request": {k: round(v * 1000 / done, 3) for k, v in cpu.items()},
    }


# -- engine ---------------------------------------------------------------------------------------
def tiny_model(folder: Path) -> Path:
    """A llama-tiny-sized random Llama whose LM head can never pick EOS greedily."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lmops.data.tokenizer import train_tokenizer
    from lmops.train.models import MODEL_PRESETS

    texts = [" ".join(_WORDS[i:] + _WORDS[:i]) for i in range(0, len(_WORDS), 7)]
    train_tokenizer(texts, folder, vocab_size=512, min_frequency=1)
    tok = AutoTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        **MODEL_PRESETS["llama-tiny"],
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    eos = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    with torch.no_grad():
        for i in eos:
            if isinstance(i, int) and i >= 0:
                model.lm_head.weight[i].zero_()  # logit 0 < the argmax of the random rest
    model.save_pretrained(str(folder))
    return folder


def bench_engine(args: argparse.Namespace, tmp: Path, env: dict[str, str], key: str) -> Any:
    model = tiny_model(tmp / "tiny")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    levels = []
    with process(
        lmops_serve(port, "--model", f"tiny={model}", "--access-log", "off"),
        env,
        tmp / "engine.log",
        lambda: http_ok(base + "/v1/models", key),
        timeout=120,
        cpus=args.affinity["gateway"],
    ) as server:
        for c in args.engine_concurrency:
            levels.append(
                level(
                    base,
                    "tiny",
                    c,
                    args,
                    key=key,
                    output_len=args.engine_output_len,
                    extra={"temperature": 0},
                    watch={"server": [server]},
                )
            )
    one = next((lv for lv in levels if lv["concurrency"] == 1), None)
    eight = next((lv for lv in levels if lv["concurrency"] == 8), None)
    ratio = None
    if one and eight and one["output_tok_s"]:
        ratio = round(eight["output_tok_s"] / one["output_tok_s"], 2)
    return {
        "levels": levels,
        "ratio_8_to_1": ratio,
        "target": f">= {ENGINE_TARGET}x",
        "met": ratio is not None and ratio >= ENGINE_TARGET,
    }


# -- gateway --------------------------------------------------------------------------------------
def deployments_file(path: Path, name: str, upstream: str, model: str) -> Path:
    spec = {"deployments": [{"name": name, "upstream": upstream, "upstream_model": model}]}
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


@contextlib.contextmanager
def gateway(
    args: argparse.Namespace,
    tmp: Path,
    env: dict[str, str],
    key: str,
    *,
    upstream: str,
    name: str,
    label: str,
) -> Iterator[tuple[str, psutil.Process]]:
    """``lmops serve`` with one upstream deployment ``name`` in front of ``upstream``; yields
    its base URL and process."""
    gw_port = free_port()
    gw = f"http://127.0.0.1:{gw_port}"
    deps = deployments_file(tmp / f"{label}.yaml", name, upstream + "/v1", name)
    gw_args = ["--deployments", str(deps), "--workers", str(args.workers)]
    with process(
        lmops_serve(gw_port, *gw_args),
        env,
        tmp / f"gateway-{label}.log",
        lambda: http_ok(gw + "/v1/models", key),
        timeout=120,
        cpus=args.affinity["gateway"],
    ) as gp:
        yield gw, gp


def pair(
    label: str, value: float, direct: dict[str, Any], through: dict[str, Any]
) -> dict[str, Any]:
    """One level direct and through the gateway, with the overhead and the tok/s ratio."""
    overhead = ratio = None
    if direct["e2el_p50_ms"] is not None and through["e2el_p50_ms"] is not None:
        overhead = round(through["e2el_p50_ms"] - direct["e2el_p50_ms"], 3)
    if direct["output_tok_s"]:
        ratio = round(through["output_tok_s"] / direct["output_tok_s"], 3)
    return {
        label: value,
        "direct": direct,
        "gateway": through,
        "overhead_p50_ms": overhead,
        "tok_s_ratio": ratio,
    }


def compare(
    args: argparse.Namespace,
    tmp: Path,
    env: dict[str, str],
    key: str,
    *,
    upstream: str,
    name: str,
    concurrency: list[int],
    output_len: int,
    extra: dict[str, Any],
    upstream_proc: psutil.Process,
    label: str,
    rates: list[float] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each level direct to ``upstream``, then through a gateway in front of it: the
    open-loop ``rates`` first, then the closed-loop ``concurrency`` levels."""
    kw: dict[str, Any] = dict(output_len=output_len, extra=extra)
    with gateway(args, tmp, env, key, upstream=upstream, name=name, label=label) as (gw, gp):
        kw["watch"] = {"upstream": [upstream_proc], "gateway": [gp]}
        via = ((upstream, None), (gw, key))
        rate_rows = [
            pair("rate", r, *(rate_level(u, name, r, args, key=k, **kw) for u, k in via))
            for r in rates or []
        ]
        rows = [
            pair("concurrency", c, *(level(u, name, c, args, key=k, **kw) for u, k in via))
            for c in concurrency
        ]
    return rate_rows, rows


def fake_upstream(
    args: argparse.Namespace,
    tmp: Path,
    env: dict[str, str],
    label: str,
    *,
    tokens: int,
    ttft_s: float,
    itl_s: float,
) -> Any:
    """The in-package fake OpenAI server in its own process; yields (base URL, process)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    code = (
        "import sys, uvicorn; from lmops.serve.fake import create_fake_app; "
        "app = create_fake_app(tokens=int(sys.argv[2]), ttft_s=float(sys.argv[3]), "
        "itl_s=float(sys.argv[4]), model='fake'); "
        "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), log_level='warning', "
        "access_log=False)"
    )
    cmd = [sys.executable, "-c", code, str(port), str(tokens), str(ttft_s), str(itl_s)]
    ready = functools.partial(http_ok, base + "/health")
    log = tmp / f"fake-{label}.log"
    return base, process(cmd, env, log, ready, 60, cpus=args.affinity["upstream"])


def bench_gateway(args: argparse.Namespace, tmp: Path, env: dict[str, str], key: str) -> Any:
    base, fake = fake_upstream(
        args, tmp, env, "gateway", tokens=args.gateway_output_len, ttft_s=0, itl_s=0
    )
    with fake as fp:
        rate_rows, rows = compare(
            args,
            tmp,
            env,
            key,
            upstream=base,
            name="fake",
            concurrency=args.gateway_concurrency,
            output_len=args.gateway_output_len,
            extra={},
            upstream_proc=fp,
            label="gateway",
            rates=args.gateway_rates,
        )
    return {
        "rate_levels": rate_rows,
        "levels": rows,
        "max_gateway_rps": max((r["gateway"]["rps"] for r in rows), default=None),
        "target": f"p50 overhead <= {GATEWAY_OVERHEAD_TARGET_MS:g} ms at >= "
        f"{GATEWAY_RPS_TARGET:g} req/s",
        **gateway_verdict(rate_rows),
    }


def rate_status(row: dict[str, Any]) -> str:
    """``met``, ``NOT met``, ``behind`` or ``not valid`` for one open-loop level (any rate).

    Met: the client kept its schedule (send lag p50 under ``SEND_LAG_LIMIT_MS``, direct and
    through the gateway) and the gateway achieved the target rate within
    ``GATEWAY_RPS_TOLERANCE``, failed nothing and added at most the target p50 overhead.
    Not valid: the client lagged direct (it and the fake alone could not keep the rate).
    When it kept the rate direct but lagged through the gateway, the gateway saw at most the
    offered load; if the gateway still completed less than the target rate while the load
    reached it (sent at >= the target rate) or piled up in it (the cap of in-flight requests
    was reached), the gateway fell behind (``behind``: a valid NOT met), else not valid.
    """
    gw = row["gateway"]
    floor = GATEWAY_RPS_TARGET * (1 - GATEWAY_RPS_TOLERANCE)
    if row["direct"]["lagged"]:
        return "not valid"
    if gw["lagged"]:
        piled_up = bool(gw["cap_waits"]) or (gw["sent_rps"] or 0.0) >= floor
        return "behind" if piled_up and gw["rps"] < floor else "not valid"
    overhead = row["overhead_p50_ms"]
    ok = (
        gw["rps"] >= floor
        and gw["failed"] == 0
        and overhead is not None
        and overhead <= GATEWAY_OVERHEAD_TARGET_MS
    )
    return "met" if ok else "NOT met"


def rates(xs: list[float]) -> str:
    return ", ".join(f"{x:g}" for x in xs)


def gateway_verdict(rate_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The target is met iff a level offered at >= the target rate is ``met``; the verdict
    is not valid when none is and one of them is ``not valid`` (it might have been met)."""
    candidates = [r for r in rate_rows if r["rate"] >= GATEWAY_RPS_TARGET]
    for r in rate_rows:
        r["status"] = rate_status(r) if r in candidates else "-"  # below the target rate
    met = [r["rate"] for r in candidates if r["status"] == "met"]
    invalid = [r["rate"] for r in candidates if r["status"] == "not valid"]
    behind = [r["rate"] for r in candidates if r["status"] == "behind"]
    if met:
        verdict = f"met at {rates(met)} req/s offered"
    elif invalid:
        verdict = (
            f"NOT VALID: the load generator could not keep up at {rates(invalid)} req/s "
            f"(client send lag p50 >= {SEND_LAG_LIMIT_MS:g} ms)"
        )
    elif behind:
        verdict = f"NOT met: the gateway fell behind the load it was sent at {rates(behind)} req/s"
    elif candidates:
        verdict = "NOT met"
    else:
        verdict = f"not measured: no --gateway-rates level >= {GATEWAY_RPS_TARGET:g}"
    return {"met": bool(met), "valid": bool(met) or not invalid, "verdict": verdict}


def bench_relay(args: argparse.Namespace, tmp: Path, env: dict[str, str], key: str) -> Any:
    """Streams paced like a model server's (the fake with TTFT and ITL): does the gateway
    keep the upstream's token throughput? A CPU stand-in for the vLLM comparison."""
    ttft, itl = args.relay_ttft_ms / 1000, args.relay_itl_ms / 1000
    out_len = args.relay_output_len
    base, fake = fake_upstream(args, tmp, env, "relay", tokens=out_len, ttft_s=ttft, itl_s=itl)
    with fake as fp:
        _, rows = compare(
            args,
            tmp,
            env,
            key,
            upstream=base,
            name="fake",
            concurrency=args.relay_concurrency,
            output_len=out_len,
            extra={},
            upstream_proc=fp,
            label="relay",
        )
    return {
        "levels": rows,
        "fake": {"ttft_ms": args.relay_ttft_ms, "itl_ms": args.relay_itl_ms, "tokens": out_len},
        "target": f"gateway >= {VLLM_TARGET}x direct output tok/s",
        "met": all(r["tok_s_ratio"] is not None and r["tok_s_ratio"] >= VLLM_TARGET for r in rows),
    }


# -- vLLM -----------------------------------------------------------------------------------------
def vllm_missing() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not installed (pip install 'lmops[vllm]')"
    return None


def bench_vllm(args: argparse.Namespace, tmp: Path, env: dict[str, str], key: str) -> Any:
    why = vllm_missing()
    if why:
        return {"skipped": f"vLLM comparison skipped: {why}"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    name = "vllm"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(args.vllm),
        "--served-model-name",
        name,
        "--port",
        str(port),
        "--disable-log-requests",
    ]
    ready = functools.partial(http_ok, base + "/health")
    cpus = args.affinity["upstream"]
    with process(cmd, env, tmp / "vllm.log", ready, 900, cpus=cpus) as vp:
        _, rows = compare(
            args,
            tmp,
            env,
            key,
            upstream=base,
            name=name,
            concurrency=args.vllm_concurrency,
            output_len=args.vllm_output_len,
            extra={"ignore_eos": True},
            upstream_proc=vp,
            label="vllm",
        )
    return {
        "levels": rows,
        "target": f"gateway >= {VLLM_TARGET}x direct output tok/s",
        "met": all(r["tok_s_ratio"] is not None and r["tok_s_ratio"] >= VLLM_TARGET for r in rows),
    }


# -- report ---------------------------------------------------------------------------------------
def _f(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_engine(res: dict[str, Any], output_len: int) -> None:
    print("\nbuilt-in engine (tiny Llama, greedy, fixed lengths)")
    print(
        f"{'C':>4} {'requests':>9} {'tok/s':>9} {'req/s':>8} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'lengths':>8} {'server cpu ms/tok':>18} {'client cpu ms/tok':>18}"
    )
    for lv in res["levels"]:
        cpu = lv["cpu_ms_per_request"]
        print(
            f"{lv['concurrency']:>4} {lv['requests']:>9} {_f(lv['output_tok_s']):>9} "
            f"{_f(lv['rps']):>8} {_f(lv['e2el_p50_ms']):>9} {_f(lv['e2el_p99_ms']):>9} "
            f"{'ok' if lv['lengths_match'] else 'DIFFER':>8} "
            f"{_f(cpu['server'] / output_len, '.3f'):>18} "
            f"{_f(cpu['client'] / output_len, '.3f'):>18}"
        )
    verdict = "met" if res["met"] else "NOT met"
    print(
        f"C=8 / C=1 output tok/s: {_f(res['ratio_8_to_1'], '.2f')}x "
        f"(target {res['target']}: {verdict})"
    )


def print_pairs(title: str, res: dict[str, Any]) -> None:
    print(f"\n{title}")
    procs = ("client", "upstream", "gateway")
    print(
        f"{'C':>4} {'via':>8} {'requests':>9} {'req/s':>8} {'tok/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'ttft p50':>9} "
        + " ".join(f"{p + ' cpu':>12}" for p in procs)
        + f" {'overhead':>9} {'tok/s x':>8}"
    )
    for r in res["levels"]:
        for via in ("direct", "gateway"):
            lv = r[via]
            cpu = lv["cpu_ms_per_request"]
            cells = " ".join(f"{_f(cpu.get(p), '.2f'):>12}" for p in procs)
            tail = ""
            if via == "gateway":
                tail = f"{_f(r['overhead_p50_ms'], '.2f'):>9} {_f(r['tok_s_ratio'], '.3f'):>8}"
            print(
                f"{r['concurrency']:>4} {via:>8} {lv['requests']:>9} {_f(lv['rps']):>8} "
                f"{_f(lv['output_tok_s']):>9} {_f(lv['e2el_p50_ms'], '.2f'):>8} "
                f"{_f(lv['e2el_p99_ms'], '.2f'):>8} {_f(lv['ttft_p50_ms'], '.2f'):>9} "
                f"{cells} {tail}"
            )
            if lv["failed"]:
                print(f"      {lv['failed']} failed: {lv['errors']}")
    print(
        "cpu = CPU ms per request of each process (user + system, children included); "
        "overhead = gateway p50 - direct p50; tok/s x = gateway / direct output tok/s"
    )


def print_rates(title: str, res: dict[str, Any]) -> None:
    print(f"\n{title}")
    procs = ("client", "upstream", "gateway")
    print(
        f"{'offered':>8} {'via':>8} {'requests':>9} {'sent/s':>8} {'req/s':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'lag p50':>8} {'lag p99':>8} {'cap wait':>8} "
        + " ".join(f"{p + ' cpu':>12}" for p in procs)
        + f" {'overhead':>9}  status"
    )
    for r in res["rate_levels"]:
        for via in ("direct", "gateway"):
            lv = r[via]
            cpu = lv["cpu_ms_per_request"]
            cells = " ".join(f"{_f(cpu.get(p), '.2f'):>12}" for p in procs)
            tail = ""
            if via == "gateway":
                tail = f"{_f(r['overhead_p50_ms'], '.2f'):>9}  {r['status']}"
            print(
                f"{r['rate']:>8g} {via:>8} {lv['requests']:>9} {_f(lv['sent_rps']):>8} "
                f"{_f(lv['rps']):>8} "
                f"{_f(lv['e2el_p50_ms'], '.2f'):>8} {_f(lv['e2el_p99_ms'], '.2f'):>8} "
                f"{_f(lv['send_lag_p50_ms'], '.2f'):>8} {_f(lv['send_lag_p99_ms'], '.2f'):>8} "
                f"{lv['cap_waits']:>8} {cells} {tail}"
            )
            if lv["failed"]:
                print(f"      {lv['failed']} failed: {lv['errors']}")
            if lv["lagged"]:
                why = f", {lv['cap_waits']} waited for the cap" if lv["cap_waits"] else ""
                print(
                    f"      the load generator could not keep up: send lag p50 >= "
                    f"{SEND_LAG_LIMIT_MS:g} ms{why}"
                )
    print(
        "open loop, Poisson arrivals (seed 1), at most "
        f"{DEFAULT_RATE_CAP} in flight; sent/s = rate the client sent at; req/s = achieved; "
        "lag = client send lag (ms, actual send - due); cpu = CPU ms per request of each "
        "process; overhead = gateway p50 - direct p50; status (target): met, NOT met, "
        "behind (NOT met: the gateway fell behind the load it got) or not valid (the client "
        "lagged)"
    )


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run (2 s levels)")
    p.add_argument("--parts", default="engine,gateway,relay", help="engine,gateway,relay,vllm")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measured level")
    p.add_argument("--engine-concurrency", type=ints, default=[1, 8])
    p.add_argument(
        "--gateway-rates", type=floats, default=[100.0, 300.0, 500.0], help="offered req/s"
    )
    p.add_argument("--gateway-concurrency", type=ints, default=[1, 2, 4, 8])
    p.add_argument("--relay-concurrency", type=ints, default=[1, 32])
    p.add_argument("--relay-output-len", type=int, default=64)
    p.add_argument("--relay-ttft-ms", type=float, default=50.0, help="the fake's TTFT")
    p.add_argument("--relay-itl-ms", type=float, default=20.0, help="the fake's ITL")
    p.add_argument("--vllm-concurrency", type=ints, default=[1, 16, 64])
    p.add_argument("--input-len", type=int, default=32, help="prompt words")
    p.add_argument("--engine-output-len", type=int, default=64)
    p.add_argument("--gateway-output-len", type=int, default=16)
    p.add_argument("--vllm-output-len", type=int, default=128)
    p.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    p.add_argument("--gateway-cpus", type=cpu_list, help="pin lmops serve (e.g. 0,1)")
    p.add_argument("--upstream-cpus", type=cpu_list, help="pin the fake upstream / vLLM")
    p.add_argument("--client-cpus", type=cpu_list, help="pin this process (load generator)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the servers")
    p.add_argument("--vllm", type=Path, default=None, help="a model folder vLLM can serve")
    args = p.parse_args()
    if args.quick:
        args.duration = min(args.duration, 2.0)
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if args.vllm is not None:
        parts.add("vllm")
    args.affinity = set_affinity(args)  # also in the JSON's config
    pinned = [f"{r} {cpu_text(c)}" for r, c in args.affinity.items() if c is not None]
    print(f"{os.cpu_count()} CPUs; affinity: {'; '.join(pinned) if pinned else 'none (unpinned)'}")

    tmp = Path(tempfile.mkdtemp(prefix="lmops-serve-bench-"))
    home = tmp / "home"
    env = {
        **os.environ,
        "LMOPS_HOME": str(home),
        "OMP_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    os.environ["LMOPS_HOME"] = str(home)
    from lmops.store import Store

    store = Store(origin="cli")
    _, key = store.keys.create("bench", rpm=HUGE, tpm=HUGE)
    store.close()

    out: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
    }
    try:
        if "engine" in parts:
            out["engine"] = bench_engine(args, tmp, env, key)
            print_engine(out["engine"], args.engine_output_len)
        if "gateway" in parts:
            out["gateway"] = g = bench_gateway(args, tmp, env, key)
            if g["rate_levels"]:
                print_rates("gateway overhead at offered rates (fake upstream, zero delay)", g)
            if g["levels"]:
                print_pairs("gateway, closed loop (fake upstream, zero delay)", g)
                print(f"max gateway throughput (closed loop) {_f(g['max_gateway_rps'])} req/s")
            print(f"target {g['target']}: {g['verdict']}")
            floor = GATEWAY_RPS_TARGET * (1 - GATEWAY_RPS_TOLERANCE)
            if not g["met"] and g["levels"] and g["max_gateway_rps"] < floor:
                print(
                    f"(the gateway's closed-loop saturation, {g['max_gateway_rps']:.0f} req/s, "
                    f"is below {GATEWAY_RPS_TARGET:g} req/s on this machine)"
                )
        if "relay" in parts:
            out["relay"] = r = bench_relay(args, tmp, env, key)
            f = r["fake"]
            print_pairs(
                f"paced streams through the gateway (fake upstream: TTFT {f['ttft_ms']:g} ms, "
                f"ITL {f['itl_ms']:g} ms, {f['tokens']} tokens)",
                r,
            )
            print(f"target {r['target']}: {'met' if r['met'] else 'NOT met'}")
        if "vllm" in parts:
            out["vllm"] = v = bench_vllm(args, tmp, env, key)
            if "skipped" in v:
                print(f"\n{v['skipped']}")
            else:
                print_pairs("vLLM direct vs through the gateway", v)
                print(f"target {v['target']}: {'met' if v['met'] else 'NOT met'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
