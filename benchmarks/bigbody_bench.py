"""Large request bodies against `lmops serve` (issue #12 item 2): does one big request stall
the event loop that answers everyone else, and what does it cost the server?

    python benchmarks/bigbody_bench.py [--sizes-mb 1,4,16] [--parallel 2] [--src DIR]
        [--serve-arg=--max-body-mb --serve-arg=64] [--guard-max-chars N]

Starts the in-package fake upstream and `lmops serve` (one worker) with two deployments: the
built-in engine on a tiny Llama (256-token context) and an upstream deployment in front of
the fake. For each size, ``--parallel`` chat requests of that many megabytes of words go to
each deployment at once, while a prober asks ``GET /healthz`` every 20 ms on its own
connection. It prints, per size and deployment: the requests' statuses and seconds, the
prober's p50/p99/max latency while they ran (a stalled loop shows as a long max), and the
server's peak memory. ``--src DIR`` runs the server from another checkout's ``src`` (for a
before/after comparison in one sitting; give it the flags that checkout knows with
``--serve-arg``). Not a test: figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve_bench import free_port, tiny_model  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog while data models learn 数据 模型".split()


def body(mb: float, seed: int) -> bytes:
    rng = random.Random(seed)
    n = int(mb * 1024 * 1024)
    text = " ".join(rng.choice(WORDS) for _ in range(n // 5))[:n]
    return json.dumps(
        {"model": "", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    ).encode()


class Prober(threading.Thread):
    """GET /healthz every ``every_s`` on one keep-alive connection; latencies in ms."""

    def __init__(self, base: str, every_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.base, self.every_s = base, every_s
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=120) as c:
            while not self.stop.is_set():
                t = time.perf_counter()
                c.get(self.base + "/healthz")
                self.latencies.append((time.perf_counter() - t) * 1000)
                time.sleep(self.every_s)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def one_level(base: str, key: str, model: str, payload: bytes, parallel: int) -> dict[str, Any]:
    raw = payload.replace(b'"model": ""', f'"model": "{model}"'.encode(), 1)
    results: list[tuple[int, float]] = []

    def send() -> None:
        t = time.perf_counter()
        try:
            r = httpx.post(
                base + "/v1/chat/completions",
                content=raw,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                timeout=600,
            )
            status = r.status_code
        except httpx.HTTPError:
            status = -1
        results.append((status, time.perf_counter() - t))

    prober = Prober(base)
    prober.start()
    time.sleep(0.2)
    threads = [threading.Thread(target=send) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    prober.stop.set()
    prober.join()
    lat = prober.latencies
    return {
        "statuses": sorted(s for s, _ in results),
        "seconds_max": round(max(d for _, d in results), 2),
        "healthz_p50_ms": round(pct(lat, 0.5), 1),
        "healthz_p99_ms": round(pct(lat, 0.99), 1),
        "healthz_max_ms": round(max(lat), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes-mb", default="1,4,16")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--src", type=Path, default=None, help="run the server from DIR/src")
    p.add_argument("--serve-arg", action="append", default=[], help="extra lmops serve argument")
    p.add_argument(
        "--guard-max-chars",
        type=int,
        default=None,
        help="guardrails.max_guard_chars of both deployments (a checkout that knows it)",
    )
    a = p.parse_args()
    sizes = [float(x) for x in a.sizes_mb.split(",")]

    with tempfile.TemporaryDirectory(prefix="bigbody-") as tmp_s:
        tmp = Path(tmp_s)
        env = {**os.environ, "LMOPS_HOME": str(tmp / "home"), "OMP_NUM_THREADS": "1"}
        if a.src is not None:
            env["PYTHONPATH"] = str(a.src.resolve() / "src")
        model = tiny_model(tmp / "tiny")
        up_port, port = free_port(), free_port()
        fake = subprocess.Popen(
            [sys.executable, "-m", "lmops.serve.fake", "--port", str(up_port), "--tokens", "4"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        guard = (
            f", guardrails: {{max_guard_chars: {a.guard_max_chars}}}"
            if a.guard_max_chars is not None
            else ""
        )
        (tmp / "d.yaml").write_text(
            "deployments:\n"
            f"  - {{name: engine, model: {model}{guard}}}\n"
            f"  - {{name: upstream, upstream: http://127.0.0.1:{up_port}/v1, upstream_model: fake"
            f"{guard}}}\n"
        )
        key = json.loads(
            subprocess.run(
                [sys.executable, "-m", "lmops.cli.main", "keys", "create", "--name", "b", "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )["key"]
        server = subprocess.Popen(
            [sys.executable, "-m", "lmops.cli.main", "serve", "--port", str(port),
             "--deployments", str(tmp / "d.yaml"), "--log-level", "warning",
             "--access-log", "off", *a.serve_arg],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while not http_ok(base + "/readyz"):
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read()}")  # type: ignore[union-attr]
                time.sleep(0.2)
            proc = psutil.Process(server.pid)
            print(
                f"server from {a.src or 'this checkout'}; {a.parallel} parallel requests per level"
            )
            print(f"{'size':>8} {'deployment':>10} {'statuses':>16} {'s max':>7} "
                  f"{'healthz p50':>11} {'p99':>7} {'max ms':>8} {'RSS MB':>7}")  # fmt: skip
            rows = []
            for mb in sizes:
                payload = body(mb, seed=int(mb * 10))
                for dep in ("engine", "upstream"):
                    peak = [proc.memory_info().rss]
                    stop = threading.Event()

                    def watch(stop: threading.Event = stop, peak: list[int] = peak) -> None:
                        while not stop.wait(0.05):
                            peak[0] = max(peak[0], proc.memory_info().rss)

                    w = threading.Thread(target=watch, daemon=True)
                    w.start()
                    row = one_level(base, key, dep, payload, a.parallel)
                    stop.set()
                    w.join()
                    row.update(size_mb=mb, deployment=dep, rss_peak_mb=round(peak[0] / 2**20))
                    rows.append(row)
                    print(f"{mb:>6.0f}MB {dep:>10} {row['statuses']!s:>16} "
                          f"{row['seconds_max']:>7} {row['healthz_p50_ms']:>11} "
                          f"{row['healthz_p99_ms']:>7} {row['healthz_max_ms']:>8} "
                          f"{row['rss_peak_mb']:>7}")  # fmt: skip
            print(json.dumps({"rows": rows}))
        finally:
            server.terminate()
            fake.terminate()
            server.wait(30)
            fake.wait(30)


if __name__ == "__main__":
    main()
