"""The flow-back's cost: how fast `export_conversations` turns logged exchanges into training
rows, plain chats and tool conversations (each row is now read as `lmops train` reads it,
its tool calls checked against the tools' JSON schemas), and what each checkout keeps.

    python benchmarks/flowback_bench.py [--rows 5000] [--src DIR ...]

Logs ``--rows`` plain chats and as many two-turn tool conversations (a call, its result, the
answer) into a fresh store, then exports each kind on its own. ``--src DIR`` runs the same
in a subprocess on another checkout's ``src`` (e.g. the code before this change), so the
figures sit side by side. Not a test: figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _bodies(kind: str, i: int) -> tuple[dict[str, Any], dict[str, Any]]:
    ask = {"role": "user", "content": f"Weather in city {i}? Reply in one sentence."}
    if kind == "plain":
        said = {"role": "assistant", "content": f"It is {i % 30} C in city {i}."}
        return {"messages": [ask]}, {"choices": [{"message": said, "finish_reason": "stop"}]}
    call = {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": f"city {i}"})},
    }
    history = [
        ask,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{i}", "content": f"{i % 30} C"},
    ]
    said = {"role": "assistant", "content": f"It is {i % 30} C in city {i}."}
    return (
        {"messages": history, "tools": [WEATHER]},
        {"choices": [{"message": said, "finish_reason": "stop"}]},
    )


def run(rows: int) -> dict[str, Any]:
    """Figures of this interpreter's lmops (whatever is first on its path)."""
    from lmops.core.errors import UserError
    from lmops.monitor.metering import export_conversations, log_request
    from lmops.store import Store

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lmops-flowback-bench-") as home:
        os.environ["LMOPS_HOME"] = home
        store = Store()
        start = datetime.now(UTC) - timedelta(hours=1)
        for kind in ("plain", "tools"):
            for i in range(rows):
                request, response = _bodies(kind, i)
                log_request(
                    store,
                    at=start + timedelta(milliseconds=i),
                    request_id=f"{kind}-{i}",
                    deployment=kind,
                    endpoint="/v1/chat/completions",
                    status=200,
                    prompt_tokens=10,
                    completion_tokens=8,
                    request_body=request,
                    response_body=response,
                )
            t0 = time.perf_counter()
            try:
                v = export_conversations(store, deployment=kind, output=f"flow-{kind}")
                kept, skipped = v.metadata["count"], v.metadata["skipped"]
            except UserError as e:  # nothing exportable (the old code on tool chats)
                kept, skipped = 0, str(e).split("(skipped: ")[-1].split(")")[0]
            seconds = time.perf_counter() - t0
            out[kind] = {"kept": kept, "skipped": skipped, "s": seconds, "rows/s": rows / seconds}
        store.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--src", action="append", default=[], help="another checkout's src")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # for --src runs
    a = p.parse_args()
    if a.json:
        print(json.dumps(run(a.rows)))
        return
    results = {"this checkout": run(a.rows)}
    for src in a.src:
        env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, __file__, "--rows", str(a.rows), "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results[src] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{a.rows} logged exchanges of each kind")
    print(f"{'code':40} {'kind':6} {'kept':>6} {'seconds':>8} {'rows/s':>8}  skipped")
    for code, figures in results.items():
        for kind, f in figures.items():
            print(
                f"{code[-40:]:40} {kind:6} {f['kept']:>6} {f['s']:>8.2f} {f['rows/s']:>8.0f}  "
                f"{f['skipped'] or '-'}"
            )


if __name__ == "__main__":
    main()
