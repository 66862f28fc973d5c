"""Embedding drift on live-traffic windows: does the monitor see a 20 % topic shift, and does
it stay quiet on stationary traffic? Side by side with Evidently's default embedding drift.

Traffic is built from real texts in the shared datasets: the reference pool is the English
Alpaca instructions (``alpaca_zh_en``, 3,000 prompts, ``input`` appended), the shifted topic
the GSM8K training questions. Each trial draws a reference window of ``--window`` prompts
and a disjoint current window: *stationary* trials draw it from Alpaca too; *shift* trials
replace ``--shift`` of it (20 %) by GSM8K questions. Every test sees the same windows.

- lmops ``embedding_mmd``: MMD with an RBF kernel and a
  permutation p-value, drift when p < 0.01 (``MonitorConfig`` defaults);
- lmops ``embedding_classifier``: logistic regression fitted on half the rows, AUC on the
  other half against the Mann-Whitney null, p < 0.01;
- ``either``: what a check reports as embedding drift (either lmops test drifted);
- Evidently (optional peer, ``pip install evidently 'pandas<3'``): the drift method
  ``EmbeddingsDriftMetric`` picks by default, ``model(bootstrap=n_ref < 1000)``: an SGD
  classifier on a 50/50 split, drift when its AUC beats the 95th percentile of random AUCs.

Cost: the CPU seconds (process time) of embedding 1,000 prompts with all-MiniLM-L6-v2 plus
the two tests on one 500/500 window pair, scaled to 1,000 requests. Run with
``OMP_NUM_THREADS=1`` for a one-core figure::

    OMP_NUM_THREADS=1 python benchmarks/monitor_bench.py --trials 100 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lmops.monitor import stats
from lmops.monitor.embed import HashedNgramEmbedder, MiniLMEmbedder, minilm_available


def _datasets(arg: str | None) -> Path:
    from lmops.core.config import find_shared_datasets

    path = Path(arg) if arg else find_shared_datasets()
    if path is None or not path.is_dir():
        sys.exit("shared datasets not found; pass --datasets or set LMOPS_SHARED_DATASETS")
    return path


def load_texts(root: Path, n_gsm: int) -> tuple[list[str], list[str]]:
    alpaca: list[str] = []
    for part in sorted((root / "alpaca_zh_en").glob("part_*.json")):
        for r in json.loads(part.read_text(encoding="utf-8")):
            extra = r.get("en_input") or ""
            alpaca.append(r["en_instruction"] + (f"\n\n{extra}" if extra else ""))
    with (root / "gsm8k" / "train.jsonl").open(encoding="utf-8") as fh:
        gsm = [json.loads(line)["question"] for _, line in zip(range(n_gsm), fh, strict=False)]
    return alpaca, gsm


def evidently_default() -> Any:
    """Evidently's default embedding drift method for a reference under 1,000 rows, or None."""
    try:
        from evidently.legacy.metrics.data_drift.embedding_drift_methods import model
    except ImportError:
        return None
    return model(bootstrap=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--shift", type=float, default=0.2)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--permutations", type=int, default=500)
    ap.add_argument("--embedder", choices=["minilm", "hashed"], default="minilm")
    ap.add_argument("--datasets")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    alpaca, gsm = load_texts(_datasets(args.datasets), 2000)
    emb = (
        MiniLMEmbedder()
        if args.embedder == "minilm" and minilm_available()
        else HashedNgramEmbedder()
    )
    emb.embed(["warm up"])  # model load is not per-request cost
    t0 = time.process_time()
    a_emb = emb.embed(alpaca[:1000])
    embed_cpu = time.process_time() - t0
    a_emb = np.vstack([a_emb, emb.embed(alpaca[1000:])])
    g_emb = emb.embed(gsm)

    peer = evidently_default()
    rng = np.random.default_rng(12345)
    w, k = args.window, round(args.window * args.shift)
    counts: dict[str, dict[str, int]] = {
        t: {"mmd": 0, "classifier": 0, "either": 0, "evidently": 0} for t in ("shift", "stationary")
    }
    test_cpu: list[float] = []
    for kind in ("shift", "stationary"):
        for trial in range(args.trials):
            idx = rng.permutation(len(a_emb))
            ref = a_emb[idx[:w]]
            if kind == "shift":
                cur = np.vstack(
                    [a_emb[idx[w : 2 * w - k]], g_emb[rng.choice(len(g_emb), k, replace=False)]]
                )
            else:
                cur = a_emb[idx[w : 2 * w]]
            t1 = time.process_time()
            m = stats.mmd_test(
                ref, cur, alpha=args.alpha, permutations=args.permutations, seed=trial
            )
            c = stats.classifier_test(ref, cur, alpha=args.alpha, seed=trial)
            test_cpu.append(time.process_time() - t1)
            counts[kind]["mmd"] += m.drift
            counts[kind]["classifier"] += c.drift
            counts[kind]["either"] += m.drift or c.drift  # a check's embedding verdict
            if peer is not None:
                import pandas as pd

                cols = [f"e{i}" for i in range(ref.shape[1])]
                _, drifted, _ = peer(
                    pd.DataFrame(cur, columns=cols), pd.DataFrame(ref, columns=cols)
                )
                counts[kind]["evidently"] += bool(drifted)
    n = args.trials
    # per 1,000 requests: embed 1,000 prompts + tests over 1000/window windows
    per_1000 = embed_cpu + float(np.mean(test_cpu)) * 1000 / w
    out = {
        "trials": n,
        "window": w,
        "shift": args.shift,
        "embedder": emb.name,
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "detection_rate": {t: counts["shift"][t] / n for t in counts["shift"]},
        "false_alarm_rate": {t: counts["stationary"][t] / n for t in counts["stationary"]},
        "evidently": "installed"
        if peer is not None
        else "not installed (pip install evidently 'pandas<3')",
        "embed_cpu_s_per_1000": round(embed_cpu, 2),
        "tests_cpu_s_per_window_pair": round(float(np.mean(test_cpu)), 3),
        "monitor_cpu_s_per_1000_requests": round(per_1000, 2),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"{n} trials each, windows of {w}, {args.shift:.0%} topic shift (Alpaca -> GSM8K), {emb.name}"
    )
    print(f"{'test':12} {'detection':>10} {'false alarms':>13}")
    for t in ("mmd", "classifier", "either", "evidently"):
        if t == "evidently" and peer is None:
            print(f"{t:12} {'-':>10} {'-':>13}  ({out['evidently']})")
            continue
        print(f"{t:12} {out['detection_rate'][t]:>10.0%} {out['false_alarm_rate'][t]:>13.0%}")
    print(
        f"CPU: embed {embed_cpu:.1f} s per 1,000 prompts, tests {np.mean(test_cpu):.2f} s per window "
        f"pair -> {per_1000:.1f} CPU-s per 1,000 requests (OMP_NUM_THREADS={out['omp_threads']})"
    )


if __name__ == "__main__":
    main()
