"""Serving-gateway benchmark (issue #6): the built-in engine's scaling with concurrency, the
gateway's overhead in front of a fast upstream, whether it keeps a paced upstream's token
throughput, and vLLM through the gateway. Not a test: it prints its figures (a table per
part, then one JSON line with everything).

    python benchmarks/serve_bench.py [--quick] [--parts engine,gateway,relay] [--duration 8]
        [--engine-concurrency 1,8] [--gateway-concurrency 1,2,4,8] [--relay-concurrency 1,32]
        [--workers 1] [--input-len 32] [--engine-output-len 64] [--gateway-output-len 16]
        [--vllm MODEL_DIR [--vllm-concurrency 1,16,64]]

Every figure comes from ``lmops eval perf`` (:func:`lmops.eval.perf.run_perf`): streaming
chat requests, a closed loop of *C* requests in flight, vLLM's serving-benchmark
definitions (E2EL = send to last content chunk; output throughput = usage
``completion_tokens`` / level wall time). Each level runs for about ``--duration`` seconds:
a short probe level (which also warms up) gives the request rate, and the measured level
gets ``rate * duration`` requests (``--quick``: 2 s levels). Servers are subprocesses
(``lmops serve``, the fake upstream under uvicorn) in a temporary ``LMOPS_HOME``, so the
load generator (this process) does not share their interpreter; ``OMP_NUM_THREADS`` is 1
for them (``--threads``), as in the tests. The tables give the CPU each process spent per
request (``psutil``, user + system, children included): on a small machine the load
generator, the upstream and the gateway share the cores, and CPU per request is the figure
that other load on the machine disturbs least.

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
through the gateway. Overhead = gateway p50 E2EL - direct p50 E2EL at the same
concurrency. Target: p50 overhead <= 5 ms at >= 500 requests/s through the gateway.

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

from lmops.eval.perf import _WORDS, LevelResult, run_perf  # noqa: E402

ENGINE_TARGET = 4.0
GATEWAY_RPS_TARGET = 500.0
GATEWAY_OVERHEAD_TARGET_MS = 5.0
VLLM_TARGET = 0.95
HUGE = 10**9  # key limits far above any load: every request is counted, none refused


# -- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(
    cmd: list[str], env: dict[str, str], log: Path, ready: Callable[[], bool], timeout: float
) -> Iterator[psutil.Process]:
    """Run ``cmd`` until the block ends; yields once ``ready()`` is true."""
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if ready():
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"{' '.join(cmd[:6])} did not start:\n{tail}")
                time.sleep(0.2)
            yield psutil.Process(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
) -> list[dict[str, Any]]:
    """Each level direct to ``upstream``, then through a gateway in front of it."""
    gw_port = free_port()
    gw = f"http://127.0.0.1:{gw_port}"
    deps = deployments_file(tmp / f"{label}.yaml", name, upstream + "/v1", name)
    gw_args = ["--deployments", str(deps), "--workers", str(args.workers)]
    rows = []
    with process(
        lmops_serve(gw_port, *gw_args),
        env,
        tmp / f"gateway-{label}.log",
        lambda: http_ok(gw + "/v1/models", key),
        timeout=120,
    ) as gp:
        watch = {"upstream": [upstream_proc], "gateway": [gp]}
        for c in concurrency:
            direct, through = (
                level(url, name, c, args, key=k, output_len=output_len, extra=extra, watch=watch)
                for url, k in ((upstream, None), (gw, key))
            )
            overhead = ratio = None
            if direct["e2el_p50_ms"] is not None and through["e2el_p50_ms"] is not None:
                overhead = round(through["e2el_p50_ms"] - direct["e2el_p50_ms"], 3)
            if direct["output_tok_s"]:
                ratio = round(through["output_tok_s"] / direct["output_tok_s"], 3)
            rows.append(
                {
                    "concurrency": c,
                    "direct": direct,
                    "gateway": through,
                    "overhead_p50_ms": overhead,
                    "tok_s_ratio": ratio,
                }
            )
    return rows


def fake_upstream(
    tmp: Path, env: dict[str, str], label: str, *, tokens: int, ttft_s: float, itl_s: float
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
    return base, process(cmd, env, tmp / f"fake-{label}.log", lambda: http_ok(base + "/health"), 60)


def bench_gateway(args: argparse.Namespace, tmp: Path, env: dict[str, str], key: str) -> Any:
    base, fake = fake_upstream(
        tmp, env, "gateway", tokens=args.gateway_output_len, ttft_s=0, itl_s=0
    )
    with fake as fp:
        rows = compare(
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
        )
    passing = [
        r
        for r in rows
        if r["gateway"]["rps"] >= GATEWAY_RPS_TARGET
        and r["overhead_p50_ms"] is not None
        and r["overhead_p50_ms"] <= GATEWAY_OVERHEAD_TARGET_MS
    ]
    return {
        "levels": rows,
        "max_gateway_rps": max(r["gateway"]["rps"] for r in rows),
        "target": f"p50 overhead <= {GATEWAY_OVERHEAD_TARGET_MS:g} ms at >= "
        f"{GATEWAY_RPS_TARGET:g} req/s",
        "met": bool(passing),
        "met_at_concurrency": [r["concurrency"] for r in passing],
    }


def bench_relay(args: argparse.Namespace, tmp: Path, env: dict[str, str], key: str) -> Any:
    """Streams paced like a model server's (the fake with TTFT and ITL): does the gateway
    keep the upstream's token throughput? A CPU stand-in for the vLLM comparison."""
    ttft, itl = args.relay_ttft_ms / 1000, args.relay_itl_ms / 1000
    out_len = args.relay_output_len
    base, fake = fake_upstream(tmp, env, "relay", tokens=out_len, ttft_s=ttft, itl_s=itl)
    with fake as fp:
        rows = compare(
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
    with process(cmd, env, tmp / "vllm.log", lambda: http_ok(base + "/health"), 900) as vp:
        rows = compare(
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


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run (2 s levels)")
    p.add_argument("--parts", default="engine,gateway,relay", help="engine,gateway,relay,vllm")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measured level")
    p.add_argument("--engine-concurrency", type=ints, default=[1, 8])
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
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the servers")
    p.add_argument("--vllm", type=Path, default=None, help="a model folder vLLM can serve")
    args = p.parse_args()
    if args.quick:
        args.duration = min(args.duration, 2.0)
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if args.vllm is not None:
        parts.add("vllm")

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
            print_pairs("gateway overhead (fake upstream, zero delay)", g)
            verdict = f"met at C={g['met_at_concurrency']}" if g["met"] else "NOT met"
            print(
                f"max gateway throughput {g['max_gateway_rps']:.1f} req/s; "
                f"target {g['target']}: {verdict}"
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
