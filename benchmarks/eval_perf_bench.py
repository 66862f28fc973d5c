"""How closely ``lmops eval perf`` measures known delays, and how its load keeps time: the
wall-clock figures that ``tests/eval/test_perf.py`` used to assert (and that failed on a
loaded machine). The tests keep the behaviour (each figure measured from the right events,
bounds a busy machine cannot break); this script prints the figures. Not a test.

    python benchmarks/eval_perf_bench.py [--repeats 3] [--json]

Against the in-package fake upstream (``lmops.serve.fake``, in this process, on 127.0.0.1)
and a raw socket server that sends exact bytes:

- ``delays``: TTFT 200 ms, ITL 20 ms, 8 output tokens, 5 requests at concurrency 1:
  measured / injected for TTFT (median), ITL (median), TPOT (mean), E2EL (median). The old
  test bounds: TTFT <= 1.10x, ITL and TPOT <= 1.30x, E2EL <= 1.15x.
- ``scaling``: TTFT 300 ms, ITL 50 ms, 4 tokens, 8 requests at concurrency 1 and 8: request
  and output throughput ratio (old bound: >= 4x).
- ``open loop``: 80 requests offered at 50 req/s (Poisson, seed 0) to a fast fake: the
  level's duration against the schedule's 1.6 s (old bound: <= +0.5 s), achieved request
  rate (>= 0.75x offered), send rate (within 5 %), median send lag (< 5 ms), lagged flag.
- ``schedule``: 60 requests at 50 req/s (seed 11) to a raw server that notes when it reads
  each: drift of the arrival times from the seeded schedule, median and max (old bounds:
  5 ms and 100 ms).
- ``held open``: a stream that ends with ``[DONE]`` while the server keeps the connection
  open for 3 s more: seconds until the request completes (old bound: < 1.5 s).

Each part runs ``--repeats`` times; the table gives every run's figure and whether it met
the old bound. ``--json`` prints one JSON line with everything instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socketserver
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lmops.eval.perf import arrival_times, run_perf
from lmops.serve.fake import fake_server

Script = list[bytes | float]


@contextlib.contextmanager
def raw_server(script: Callable[[int], Script], seen: list[float] | None = None) -> Iterator[str]:
    """One response per connection; ``script(n)`` gives the n-th request's bytes and waits
    (seconds); ``seen`` gets the time each request was read."""
    count = [0]
    lock = threading.Lock()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            length = 0
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.rfile.read(length)
            with lock:
                n = count[0]
                count[0] += 1
                if seen is not None:
                    seen.append(time.perf_counter())
            for step in script(n):
                if isinstance(step, float):
                    time.sleep(step)
                else:
                    self.wfile.write(step)
                    self.wfile.flush()

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _delta(text: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode()


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def delays() -> dict[str, Any]:
    ttft, itl, out = 0.2, 0.02, 8
    with fake_server(ttft_s=ttft, itl_s=itl, tokens=1000) as url:
        report = run_perf(url, "fake", concurrency=[1], requests=5, input_len=32, output_len=out)
    (lv,) = report.levels
    assert lv.ttft_ms and lv.itl_ms and lv.tpot_ms and lv.e2el_ms
    e2el = (ttft + (out - 1) * itl) * 1000
    return {
        "ttft": lv.ttft_ms.median / (ttft * 1000),
        "itl": lv.itl_ms.median / (itl * 1000),
        "tpot": lv.tpot_ms.mean / (itl * 1000),
        "e2el": lv.e2el_ms.median / e2el,
    }


def scaling() -> dict[str, Any]:
    with fake_server(ttft_s=0.3, itl_s=0.05, tokens=1000) as url:
        report = run_perf(url, "fake", concurrency=[1, 8], requests=8, input_len=16, output_len=4)
    one, eight = report.levels
    return {
        "request": eight.request_throughput / one.request_throughput,
        "output": eight.output_throughput / one.output_throughput,
    }


def open_loop() -> dict[str, Any]:
    rate, n = 50.0, 80
    with fake_server(tokens=8, model="fake") as url:
        report = run_perf(url, "fake", request_rate=rate, requests=n, output_len=4)
    (lv,) = report.levels
    return {
        "duration_over_schedule_s": lv.duration_s - n / rate,
        "achieved_rate": lv.request_throughput / rate,
        "send_rate": (lv.send_rate or 0.0) / rate,
        "send_lag_median_ms": lv.send_lag_ms.median if lv.send_lag_ms else None,
        "lagged": lv.lagged,
    }


def schedule() -> dict[str, Any]:
    rate, n, seed = 50.0, 60, 11
    seen: list[float] = []
    done: Script = [HEAD, b"data: " + _delta("x") + b"\n\ndata: [DONE]\n\n"]
    with raw_server(lambda i: done, seen) as url:
        run_perf(url, "m", request_rate=rate, requests=n, seed=seed, warmup=False, retries=0)
    due = np.asarray(arrival_times(n, rate, seed=seed))
    arrived = np.sort(seen)
    drift = np.abs((arrived - arrived[0]) - (due - due[0]))
    return {
        "drift_median_ms": float(np.median(drift)) * 1000,
        "drift_max_ms": float(drift.max()) * 1000,
    }


def held_open() -> dict[str, Any]:
    body = b"data: " + _delta("x") + b"\n\ndata: " + _delta("y") + b"\n\ndata: [DONE]\n\n"
    chunk = b"%x\r\n%s\r\n" % (len(body), body)
    with raw_server(lambda i: [CHUNKED, chunk, 3.0, b"0\r\n\r\n"]) as url:
        start = time.perf_counter()
        report = run_perf(url, "m", concurrency=[1], requests=1, warmup=False, timeout_s=2.0)
        elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "completed": report.levels[0].completed}


# (part, figure, bound check, bound text)
BOUNDS: list[tuple[str, str, Callable[[Any], bool], str]] = [
    ("delays", "ttft", lambda v: 0.99 <= v <= 1.10, "0.99-1.10x"),
    ("delays", "itl", lambda v: 0.95 <= v <= 1.30, "0.95-1.30x"),
    ("delays", "tpot", lambda v: 0.95 <= v <= 1.30, "0.95-1.30x"),
    ("delays", "e2el", lambda v: 0.99 <= v <= 1.15, "0.99-1.15x"),
    ("scaling", "request", lambda v: v >= 4, ">= 4x"),
    ("scaling", "output", lambda v: v >= 4, ">= 4x"),
    ("open loop", "duration_over_schedule_s", lambda v: -0.001 <= v <= 0.5, "0-0.5 s"),
    ("open loop", "achieved_rate", lambda v: 0.75 <= v <= 1.001, "0.75-1x"),
    ("open loop", "send_rate", lambda v: abs(v - 1) <= 0.05, "1 +- 5 %"),
    ("open loop", "send_lag_median_ms", lambda v: v is not None and v < 5, "< 5 ms"),
    ("open loop", "lagged", lambda v: not v, "False"),
    ("schedule", "drift_median_ms", lambda v: v < 5, "< 5 ms"),
    ("schedule", "drift_max_ms", lambda v: v < 100, "< 100 ms"),
    ("held open", "seconds", lambda v: v < 1.5, "< 1.5 s"),
]

PARTS: dict[str, Callable[[], dict[str, Any]]] = {
    "delays": delays,
    "scaling": scaling,
    "open loop": open_loop,
    "schedule": schedule,
    "held open": held_open,
}


def fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PARTS}
    for _ in range(args.repeats):
        for part, fn in PARTS.items():
            runs[part].append(fn())
    if args.json:
        print(json.dumps(runs))
        return
    print(f"{'part':<10} {'figure':<26} {'old bound':<11} runs (* = outside the bound)")
    for part, figure, ok, text in BOUNDS:
        values = [r[figure] for r in runs[part]]
        cells = " ".join(f"{fmt(v)}{'' if ok(v) else '*'}" for v in values)
        numeric = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        med = f"  median {statistics.median(numeric):.3f}" if numeric else ""
        print(f"{part:<10} {figure:<26} {text:<11} {cells}{med}")


if __name__ == "__main__":
    main()
