"""Wall time of the full quickstart (target: <= 10 minutes on a 2-core CPU machine), then of an
unchanged re-run (every step cached), in a fresh LMOPS_HOME; prints the eval table it produced.

    .venv/bin/python benchmarks/quickstart_bench.py [--tiny] [--shared ../shared/datasets]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], env: dict[str, str]) -> tuple[float, dict]:  # type: ignore[type-arg]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lmops.cli.main", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"quickstart failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return wall, json.loads(proc.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--shared", type=Path, default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmops-qs-bench-") as tmp:
        env = {
            **os.environ,
            "LMOPS_HOME": str(Path(tmp) / "home"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        args = ["quickstart", "--workdir", str(Path(tmp) / "work")]
        args += ["--tiny"] if a.tiny else []
        args += ["--shared", str(a.shared)] if a.shared else []
        first, out = run(args, env)
        again, out2 = run(args, env)
    steps = {s["name"]: round(s["seconds"], 1) for s in out["steps"]}
    print(
        f"quickstart{' --tiny' if a.tiny else ''}: {first:.1f} s wall (target {'60' if a.tiny else '600'} s)"
    )
    print(
        f"re-run: {again:.1f} s wall, {sum(s['status'] == 'cached' for s in out2['steps'])} of "
        f"{len(out2['steps'])} steps cached"
    )
    print("step seconds:", ", ".join(f"{k} {v}" for k, v in steps.items() if v >= 0.5))
    print(f"{'model':<6} {'version':<12} {'exact':>7} {'word ppl':>10} {'safe':>6}")
    for r in out["eval"]:

        def f(v: float | None, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        print(
            f"{r['model']:<6} {r['ref'] or '-':<12} {f(r['exact_match'], '.3f'):>7} "
            f"{f(r['word_perplexity'], '.1f'):>10} {f(r['safe_response_rate'], '.3f'):>6}"
        )
    gate = out["gate"] or {}
    print(
        f"gate: {gate.get('decision')} {gate.get('model')}; served answer: {out['serve']['answer']!r}"
    )
    print(json.dumps({"wall_s": round(first, 1), "rerun_s": round(again, 1), "eval": out["eval"]}))


if __name__ == "__main__":
    main()
