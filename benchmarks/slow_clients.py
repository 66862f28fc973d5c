"""Slow clients against `lmops serve` (issue #12, item 9). Not a test: it prints its figures.

    python benchmarks/slow_clients.py [--connections 3000] [--header-timeout 10]
        [--max-connections 2048] [--workers 1] [--requests 5000]

**hold**: opens ``--connections`` sockets to a real ``lmops serve`` on 127.0.0.1, each sending
half a request line and then nothing (what an attack run held for over a minute), then
counts those answered 503 at once (beyond ``--max-connections`` per worker), times a normal
``GET /healthz`` on a fresh connection right after (a 503 while the cap is full), when such
a request is answered 200 again, and how long after the last one was opened the server
had closed them all (the header deadline, ``--header-timeout``; uvicorn alone never closes
them).

**overhead**: the header deadline and connection cap cost a timer per connection and a few
checks per read. A bare ASGI app under uvicorn (httptools, one worker, in a subprocess)
answers ``--requests`` sequential keep-alive requests on one connection, with uvicorn's own
protocol and with ``lmops.serve.http``'s; the figure is the server's CPU per request
(user + system, ``psutil``).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import psutil

from lmops.core.net import free_port


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("server did not start")
        time.sleep(0.2)


def bench_hold(args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    home = tempfile.mkdtemp(prefix="lmops-slow-")
    env = {**os.environ, "LMOPS_HOME": home, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lmops.cli.main", "serve", "--port", str(port)]
    cmd += ["--log-level", "error", "--workers", str(args.workers)]
    cmd += ["--header-timeout", str(args.header_timeout)]
    cmd += ["--max-connections", str(args.max_connections)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_ready(base, proc)
        sel = selectors.DefaultSelector()
        socks = []
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /healthz HT")
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            socks.append(s)
        opened = time.perf_counter()
        first = httpx.get(f"{base}/healthz", timeout=60)  # at once, with the sockets held
        first_ms = (time.perf_counter() - opened) * 1e3
        ok_after = 0.0 if first.status_code == 200 else float("nan")
        refused, open_left = 0, len(socks)
        limit = opened + args.header_timeout * 3 + 30
        next_probe = time.perf_counter()
        while (open_left or ok_after != ok_after) and time.perf_counter() < limit:
            for key, _ in sel.select(timeout=0.05):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if data.startswith(b"HTTP/1.1 503"):
                    refused += 1  # the server closes it right after; count it closed
                if not data or data.startswith(b"HTTP/1.1 503"):
                    sel.unregister(s)
                    open_left -= 1
            if ok_after != ok_after and time.perf_counter() >= next_probe:
                if httpx.get(f"{base}/healthz", timeout=60).status_code == 200:
                    ok_after = time.perf_counter() - opened
                next_probe = time.perf_counter() + 0.25
        all_closed_s = time.perf_counter() - opened
        for s in socks:
            s.close()
        return {
            "connections": args.connections,
            "refused_503": refused,
            "healthz_at_once_status": first.status_code,
            "healthz_at_once_ms": round(first_ms, 2),
            "healthz_ok_after_s": round(ok_after, 2),
            "still_open_at_end": open_left,
            "all_closed_after_s": round(all_closed_s, 2) if not open_left else float("nan"),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


SERVER = """
import sys, uvicorn
from lmops.serve.http import protocol_factory
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
http = "httptools" if sys.argv[2] == "stock" else protocol_factory(10.0, 2048)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=http, lifespan="off",
            log_level="error", access_log=False)
"""


def bench_overhead(args: argparse.Namespace, which: str) -> float:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), which])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

        def one() -> None:
            s.sendall(req)
            got = b""
            while not got.endswith(b"ok"):
                got += s.recv(4096)

        for _ in range(200):  # warm up
            one()
        p = psutil.Process(proc.pid)
        before = p.cpu_times()
        for _ in range(args.requests):
            one()
        after = p.cpu_times()
        s.close()
        cpu = (after.user - before.user) + (after.system - before.system)
        return cpu / args.requests * 1e6
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--connections", type=int, default=3000)
    p.add_argument("--header-timeout", type=float, default=10.0)
    p.add_argument("--max-connections", type=int, default=2048)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--requests", type=int, default=5000)
    args = p.parse_args()
    hold = bench_hold(args)
    print(
        f"hold: {hold['connections']} half-open connections, {hold['refused_503']} answered 503 "
        f"at once (the cap); GET /healthz right after: {hold['healthz_at_once_status']} in "
        f"{hold['healthz_at_once_ms']} ms, 200 from {hold['healthz_ok_after_s']} s; all closed "
        f"by the server {hold['all_closed_after_s']} s after the last was opened (header "
        f"timeout {args.header_timeout} s; {hold['still_open_at_end']} still open)"
    )
    stock = bench_overhead(args, "stock")
    limited = bench_overhead(args, "limited")
    print(
        f"overhead: server CPU per keep-alive request, uvicorn httptools {stock:.1f} us, "
        f"with the limits {limited:.1f} us ({args.requests} requests each)"
    )
    print(json.dumps({"hold": hold, "cpu_us_per_request": {"stock": stock, "limited": limited}}))


if __name__ == "__main__":
    main()
