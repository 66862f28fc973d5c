"""Shared prefixes in the engine's prefill: prompts admitted together that start with the
same tokens run them once (``models/prefill.py``), against every prompt run whole
(``Engine(share_prefixes=False)``), in-process on SmolLM2-135M-Instruct on CPU with
``OMP_NUM_THREADS=1``. Not a test: it prints its figures.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prefix_share_bench.py [--docs 50]
        [--reps 3] [--data-dir DIR] [--model-dir DIR] [--work DIR] [--no-sweep] [--json]

Two parts:

- ``sweep``: the threshold. ``k`` prompts (2 or 4) of a shared prefix of ``n`` tokens and
  rests of 4 to 10 tokens, scored (echo, ``max_tokens`` 0), with sharing forced on (any
  saving) and off: milliseconds of CPU per group, and the saving ((k - 1) x n tokens) at
  which sharing starts to pay, which ``SHARE_MIN_SAVED`` (``models/sequences.py``) is set
  from.
- ``mmlu``: ``--docs`` MMLU-Redux questions as ``lmops eval`` and lm-eval score them
  (``Question: ...\\nAnswer:`` and each choice, one prompt per choice), eight prompts at a
  time (two questions: the batches ``lmops eval --endpoint`` sends), with the engine's
  defaults and with sharing off: CPU seconds, tokens the model was fed, and the largest
  difference between the two runs' per-choice log-likelihoods and predictions.

CPU time is the process's (the engine's worker thread does the work), the least of
``--reps`` runs: other jobs on the machine slow the wall clock, not this.

Results (2026-12-08 UTC, ``OMP_NUM_THREADS=1 .venv/bin/python
benchmarks/prefix_share_bench.py``, defaults; 2 CPU cores shared with other jobs, load
average about 5)::

    sweep: k scored prompts sharing an n-token prefix, CPU ms per group (least of reps)
     k      n saved   shared    whole  ratio
     2      4     4      232      149   0.64
     2      8     8      232      169   0.73
     2     16    16      257      243   0.95
     2     24    24      297      295   0.99
     2     32    32      324      339   1.05
     2     64    64      440      548   1.24
     4      4    12      351      283   0.81
     4      8    24      400      335   0.84
     4     12    36      354      391   1.10
     4     16    48      359      431   1.20
     4     32    96      426      644   1.51
     4     64   192      565     1103   1.95
    mmlu: 50 MMLU-Redux questions, 200 prompts in batches of 8: shared 26.63 CPU s (4329
    tokens fed), whole 50.19 CPU s (12000 tokens fed), x1.88; largest token logprob
    difference 3.5e-05

* A pass costs about 95 ms besides its tokens (~3.3 ms each): it reads every weight. The
  second pass pays for itself from about 30 tokens saved, with 2 prompts or 4: hence
  ``SHARE_MIN_SAVED = 32``.
* MMLU-Redux's contexts are 9 to 303 tokens (median 27), its choices 1 to 47 (mean 9):
  sharing feeds the model 2.8x fewer tokens and takes 1.9x less CPU; what is left is the
  second pass of each group and the padding of the rests to the longest choice. The
  logprobs are those of the whole prompts within 3.5e-05.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def model_folder(work: Path, explicit: str | None) -> Path:
    from endpoint_eval_bench import model_folder as folder

    return folder(work, explicit)


def score(engine: Any, prompts: list[list[int]]) -> tuple[list[list[float]], float]:
    """Each prompt's token logprobs, all prompts admitted (and prefilled) together; and the
    process CPU seconds it took."""
    from lmops.models.types import Delta, GenRequest

    async def main() -> list[list[float]]:
        async def one(i: int, ids: list[int]) -> list[float]:
            req = GenRequest(f"b{i}", prompt_ids=ids, max_tokens=0, prompt_logprobs=0)
            out: list[float] = []
            async for ev in engine.generate(req):
                if isinstance(ev, Delta) and ev.prompt_logprobs is not None:
                    out = [e.logprob for e in ev.prompt_logprobs]
            return out

        with engine._cv:  # queued before the worker looks: admitted together
            tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(prompts)]
            while engine.queued < len(prompts):
                await asyncio.sleep(0)
        return list(await asyncio.gather(*tasks))

    t0 = time.process_time()
    got = asyncio.run(main())
    return got, time.process_time() - t0


def fed_tokens(engine: Any) -> list[int]:
    """A counter of the real (unpadded) tokens the model is fed, from now on."""
    count = [0]
    forward = engine.model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        mask = kwargs.get("attention_mask")
        ids = kwargs["input_ids"]
        count[0] += int(mask[:, -ids.shape[1] :].sum()) if mask is not None else ids.numel()
        return forward(*args, **kwargs)

    engine.model.forward = counting
    return count


def sweep(engine: Any, reps: int) -> list[dict[str, Any]]:
    rng = random.Random(0)
    vocab = int(engine.model.config.vocab_size)
    rows = []
    for k in (2, 4):
        for n in (4, 8, 12, 16, 24, 32, 48, 64):
            prefix = [rng.randrange(100, vocab) for _ in range(n)]
            prompts = [
                prefix + [rng.randrange(100, vocab) for _ in range(4 + 2 * j)] for j in range(k)
            ]
            ms = {}
            for label, min_saved in (("shared", 1), ("whole", None)):
                engine.share_min_saved = min_saved
                ms[label] = 1000 * min(score(engine, prompts)[1] for _ in range(reps))
            rows.append({"choices": k, "prefix": n, "saved": (k - 1) * n, **ms})
    return rows


def mmlu_prompts(engine: Any, data_dir: Path, docs: int) -> list[list[list[int]]]:
    """Batches of eight prompts (two questions of four choices), contexts together."""
    rows = [json.loads(line) for line in (data_dir / "mmlu_redux.jsonl").open(encoding="utf-8")]
    kept = [r for r in rows if r.get("error_type") == "ok"]
    sample = random.Random(0).sample(kept, docs)  # endpoint_eval_bench.py's documents
    items = [
        (f"Question: {d['question'].strip()}\nAnswer:", " " + str(c))
        for d in sample
        for c in d["choices"]
    ]
    items.sort(key=lambda x: (-len(x[0]), x[0], -len(x[1])))  # lmops eval's order
    prompts = [engine.encode(c + x) for c, x in items]
    return [prompts[i : i + 8] for i in range(0, len(prompts), 8)]


def mmlu(engine: Any, batches: list[list[list[int]]], reps: int) -> dict[str, Any]:
    from lmops.models.sequences import SHARE_MIN_SAVED

    counter = fed_tokens(engine)
    out: dict[str, Any] = {"prompts": sum(map(len, batches))}
    scores = {}
    for label, min_saved in (("shared", SHARE_MIN_SAVED), ("whole", None)):
        engine.share_min_saved = min_saved
        best = math.inf
        for _ in range(reps):
            counter[0] = 0
            got, cpu = [], 0.0
            for batch in batches:
                lps, s = score(engine, batch)
                got += lps
                cpu += s
            best = min(best, cpu)
        scores[label] = got
        out[label] = {"cpu_s": round(best, 2), "tokens_fed": counter[0]}
    diffs = [
        abs(a - b)
        for x, y in zip(scores["shared"], scores["whole"], strict=True)
        for a, b in zip(x[1:], y[1:], strict=True)
    ]
    out["max_abs_token_logprob_diff"] = max(diffs)
    out["speedup"] = round(out["whole"]["cpu_s"] / out["shared"]["cpu_s"], 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=50)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--data-dir", default=None, help="default: $LMOPS_SHARED_DATASETS")
    p.add_argument("--model-dir", default=None, help="an HF folder instead of SmolLM2")
    p.add_argument("--work", default=None, help="keep the de-quantised model here")
    p.add_argument("--no-sweep", action="store_true", help="the MMLU part only")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    from endpoint_eval_bench import shared_datasets

    from lmops.models.engine import Engine

    work = Path(args.work or tempfile.mkdtemp(prefix="prefix-share-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    engine = Engine(model_folder(work, args.model_dir), device="cpu", max_running=8)
    try:
        report: dict[str, Any] = {}
        if not args.no_sweep:
            report["sweep"] = sweep(engine, args.reps)
        batches = mmlu_prompts(engine, shared_datasets(args.data_dir), args.docs)
        report["mmlu"] = mmlu(engine, batches, args.reps)
    finally:
        engine.close()
    if args.json:
        print(json.dumps(report, indent=1))
        return
    if "sweep" in report:
        print("sweep: k scored prompts sharing an n-token prefix, CPU ms per group (least of reps)")
        print(f"{'k':>2} {'n':>3} {'saved':>5} {'shared':>8} {'whole':>8} {'ratio':>6}")
        for r in report["sweep"]:
            print(
                f"{r['choices']:>2} {r['prefix']:>3} {r['saved']:>5} {r['shared']:>8.1f} "
                f"{r['whole']:>8.1f} {r['whole'] / r['shared']:>6.2f}"
            )
    m = report["mmlu"]
    print(
        f"mmlu: {args.docs} MMLU-Redux questions, {m['prompts']} prompts in batches of 8: "
        f"shared {m['shared']['cpu_s']} CPU s ({m['shared']['tokens_fed']} tokens fed), "
        f"whole {m['whole']['cpu_s']} CPU s ({m['whole']['tokens_fed']} tokens fed), "
        f"x{m['speedup']}; largest token logprob difference {m['max_abs_token_logprob_diff']:.1e}"
    )


if __name__ == "__main__":
    main()
