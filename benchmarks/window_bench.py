"""Sliding-window models in the engine: prompts batched (what the engine does, now with the
tokens each prompt gets alone) against one prompt at a time (the fallback a model whose
windows could not be batched correctly would need), in-process on SmolLM2-135M-Instruct
made a sliding-window model (its weights as ``MistralForCausalLM`` with ``sliding_window``,
default 128; Mistral is Llama with a window), on CPU with ``OMP_NUM_THREADS=1``. Not a
test: it prints its figures.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/window_bench.py [--prompts 8]
        [--new 64] [--window 128] [--every 6] [--only sliding|mixed] [--model-dir DIR]
        [--work DIR] [--json]

Runs, each on ``--prompts`` prompts of 150 to 400 random tokens generating ``--new``
greedy tokens (so every prompt is longer than the window, and generation goes on past it):

- ``batched``: all prompts admitted together (``max_running`` = prompts): one left-padded
  prefill, then one decode step for all rows; the batch cache keeps the last window - 1
  columns (every layer slides).
- ``uncut``: the same with that trimming off (every column kept): what trimming saves.
- ``alone``: one prompt at a time (``max_running=1``), the reference tokens.
- ``full``: the original SmolLM2 (full attention), batched: the path every other model
  takes, for scale.

It prints CPU and wall seconds per run, and how many rows of ``batched`` and ``uncut`` give
exactly the tokens of ``alone`` (with the largest difference of a generated token's logprob).

A second table (``--only mixed`` for it alone) runs the same prompts on SmolLM2 made a model
mixing local and global layers (as ``MinistralForCausalLM`` with per-layer types: every
``--every``-th layer global, the others sliding over ``--window``; Gemma 3's pattern):

- ``trimmed``: the engine, batched: local layers keep their last window - 1 columns.
- ``untrimmed``: the same with every column kept in every layer (the engine before).
- ``transformers``: ``generate`` of the left-padded batch on transformers' own cache.

with the peak bytes of the batch cache's storage (after a decode step; transformers' at its
end, its largest) and how many rows give exactly ``untrimmed``'s tokens; and the CPU s of
an engine's start-up on that model (a second start, loading included) as it starts, and
with the one-time trimming check that models not transformers' own get forced.

Results (``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/window_bench.py``, defaults; 2 CPU
cores shared with other jobs, so the wall clock is mostly theirs: read the CPU seconds)::

    SmolLM2-135M as Mistral, window 128: 8 prompts of 160-397 tokens, 64 new tokens each
    run        CPU s  wall s  rows as alone  max logprob diff
    batched    19.14   94.79            8/8           1.0e-04
    uncut      20.58  122.27            8/8           9.7e-05
    alone      45.05  150.91              -                 -
    full       21.61   58.97              -                 -
    batched takes x2.35 less CPU than one prompt at a time

* Batched, every row generates the tokens it generates alone (before the fix, rows that
  were left-padded read padding where their tokens were). One prompt at a time, the
  fallback a layout that could not be masked would need, takes 2.35x the CPU.
* Keeping only the window's columns (every layer of this model slides) saves 7% here;
  more the longer the sequences are past the window, since a step reads at most the window.
* The same model with full attention, batched, costs about the same: the sliding-window
  path costs nothing over the full-attention one. What it does not get is prefix sharing
  and the cached few-shot prefix (``benchmarks/prefix_share_bench.py``: 1.9x less CPU on
  MMLU-Redux scoring for full-attention models).

Mixed local and global layers (``--only mixed``, defaults, same machine)::

    SmolLM2-135M as Ministral, every 6th layer global, the others local over 128: 8 prompts
    of 160-397 tokens, 64 new tokens each
    run             CPU s  wall s  peak cache MiB  rows as untrimmed
    trimmed         17.59   94.96            64.5              8/8
    untrimmed       18.84  117.53           161.7              8/8
    transformers    18.57  124.42            64.5              8/8
    engine start-up CPU s: 0.55 (transformers' own model, trimmed unchecked) vs 1.90 with the one-time trimming check

* Trimming the 25 local layers holds 2.5x less cache (64.5 against 161.7 MiB: the 5 global
  layers' every column and the local layers' window), exactly what transformers' own cache
  holds, with the same tokens in every row; a step reads less, so 6% less CPU here, more
  the longer the sequences run past the window (the global layers still grow).
* transformers' own model starts with no trimming check: 0.55 CPU s against 1.90 with it,
  which grows with the window (two rows of window + 2 tokens prefilled; with ``--window
  1024``, 0.32 against 10.84, and Gemma 2's 4096 would be four times that again). Models
  not transformers' own are checked only up to a window of 254.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def windowed(folder: Path, window: int, work: Path, every: int = 0) -> Path:
    """A copy of ``folder`` (a Llama) whose config makes it a Mistral with ``window``, or
    with ``every`` > 0 a Ministral (Mistral with per-layer types) whose every ``every``-th
    layer is global and the others local (Gemma 3's pattern at 6)."""
    out = work / (f"{folder.name}-window{window}" + (f"-global{every}" if every else ""))
    if not (out / "config.json").exists():
        shutil.copytree(folder, out, dirs_exist_ok=True)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(model_type="mistral", architectures=["MistralForCausalLM"])
        cfg["sliding_window"] = window
        if every:
            cfg.update(model_type="ministral", architectures=["MinistralForCausalLM"])
            cfg["layer_types"] = [
                "full_attention" if (i + 1) % every == 0 else "sliding_attention"
                for i in range(cfg["num_hidden_layers"])
            ]
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def cache_bytes(cache: Any) -> int:
    """Bytes of the storages a KV cache's layers hold (a view counts its whole storage)."""
    storages = {}
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            if t is not None:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def run(folder: Path, prompts: list[list[int]], new: int, running: int, trim: bool) -> dict:
    """Generate for every prompt (queued together); tokens, logprobs, CPU and wall s, and
    the batch cache's peak bytes (after a decode step)."""
    from lmops.models.engine import Engine
    from lmops.models.types import Delta, GenRequest

    engine = Engine(folder, max_running=running, max_queue=len(prompts), device="cpu")
    engine.eos_ids = set()
    if not trim:  # every column in every layer: an all-sliding model's, a mixed one's
        engine._window = engine._local = None
        engine._prefiller.whole_cache = True
    peak = [0]
    step = engine._decode_step

    def measured() -> None:
        step()
        peak[0] = max(peak[0], cache_bytes(engine._cache))

    engine._decode_step = measured  # type: ignore[method-assign]

    async def main() -> list[tuple[list[int], list[float]]]:
        async def one(i: int, ids: list[int]) -> tuple[list[int], list[float]]:
            req = GenRequest(f"w{i}", prompt_ids=ids, max_tokens=new, temperature=0.0)
            req.logprobs = True
            toks: list[int] = []
            lps: list[float] = []
            async for ev in engine.generate(req):
                if isinstance(ev, Delta) and ev.token_id is not None:
                    toks.append(ev.token_id)
                    lps.append(float(ev.logprob or 0.0))
            return toks, lps

        with engine._cv:  # queued before the worker looks
            tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(prompts)]
            while engine.queued < len(prompts):
                await asyncio.sleep(0)
        return list(await asyncio.gather(*tasks))

    try:
        t0, w0 = time.process_time(), time.perf_counter()
        got = asyncio.run(main())
        cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    finally:
        engine.close()
    return {"cpu_s": cpu, "wall_s": wall, "out": got, "cache_bytes": peak[0]}


def startup(folder: Path) -> dict:
    """CPU s of an engine's start-up on ``folder`` (loading included; a second start, the
    imports done), as it starts now (transformers' own model: its local layers trimmed
    unchecked) and with the one-time check that other models get
    (``lmops.models.attention.trims_exactly``) forced."""
    from lmops.models import attention
    from lmops.models.engine import Engine

    def cpu() -> float:
        Engine(folder, max_running=8, device="cpu").close()  # imports, first load
        t0 = time.process_time()
        Engine(folder, max_running=8, device="cpu").close()
        return round(time.process_time() - t0, 2)

    trusted = attention.masks_local_layers_from_cache
    now = cpu()
    attention.masks_local_layers_from_cache = lambda model: False  # type: ignore[assignment]
    try:
        checked = cpu()
    finally:
        attention.masks_local_layers_from_cache = trusted
    return {"unchecked": now, "checked": checked}


def hf_run(folder: Path, prompts: list[list[int]], new: int) -> dict:
    """transformers' own ``generate`` of the left-padded batch, on its own cache (local
    layers keep their window): tokens, CPU and wall s, and the cache's bytes at the end
    (its largest: only global layers grow)."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from lmops.models.compat import cache_arg

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    t = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    cache = DynamicCache(config=model.config)
    t0, w0 = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            **{cache_arg(model): cache},
            max_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    toks = [(row[t:].tolist(), []) for row in out]
    return {"cpu_s": cpu, "wall_s": wall, "out": toks, "cache_bytes": cache_bytes(cache)}


def mixed(full: Path, prompts: list[list[int]], args: argparse.Namespace, work: Path) -> dict:
    """The mixed-layer table: trimmed (local layers keep their window) against untrimmed
    and transformers' own cache."""
    folder = windowed(full, args.window, work, every=args.every)
    runs = {
        "trimmed": run(folder, prompts, args.new, len(prompts), trim=True),
        "untrimmed": run(folder, prompts, args.new, len(prompts), trim=False),
        "transformers": hf_run(folder, prompts, args.new),
    }
    ref = runs["untrimmed"]["out"]
    table = {}
    for name, r in runs.items():
        table[name] = {
            "cpu_s": round(r["cpu_s"], 2),
            "wall_s": round(r["wall_s"], 2),
            "cache_mib": round(r["cache_bytes"] / 2**20, 1),
            "rows_as_untrimmed": sum(a[0] == b[0] for a, b in zip(r["out"], ref, strict=True)),
        }
    table["startup_cpu_s"] = startup(folder)
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--model-dir")
    ap.add_argument("--work")
    ap.add_argument("--every", type=int, default=6, help="mixed model: every n-th layer global")
    ap.add_argument("--only", choices=["sliding", "mixed"], help="one of the two tables")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from endpoint_eval_bench import model_folder

    work = Path(args.work or tempfile.mkdtemp(prefix="window-bench-"))
    full = model_folder(work, args.model_dir)
    folder = windowed(full, args.window, work)
    rng = random.Random(0)
    lengths = [rng.randrange(150, 401) for _ in range(args.prompts)]
    prompts = [[rng.randrange(100, 49000) for _ in range(n)] for n in lengths]
    n = len(prompts)
    if args.only == "mixed":
        return print_mixed(mixed(full, prompts, args, work), args, lengths)
    runs = {
        "batched": run(folder, prompts, args.new, n, trim=True),
        "uncut": run(folder, prompts, args.new, n, trim=False),
        "alone": run(folder, prompts, args.new, 1, trim=True),
        "full": run(full, prompts, args.new, n, trim=True),
    }
    ref = runs["alone"]["out"]
    report: dict[str, Any] = {"window": args.window, "prompts": lengths, "new": args.new}
    for name, r in runs.items():
        row = {"cpu_s": round(r["cpu_s"], 2), "wall_s": round(r["wall_s"], 2)}
        if name in ("batched", "uncut"):
            row["rows_as_alone"] = sum(a[0] == b[0] for a, b in zip(r["out"], ref, strict=True))
            row["max_logprob_diff"] = max(
                abs(x - y)
                for a, b in zip(r["out"], ref, strict=True)
                if a[0] == b[0]
                for x, y in zip(a[1], b[1], strict=True)
            )
        report[name] = row
    table = mixed(full, prompts, args, work) if args.only is None else None
    if args.json:
        print(json.dumps({**report, "mixed": table, "every": args.every}))
        return
    print(
        f"SmolLM2-135M as Mistral, window {args.window}: {n} prompts of "
        f"{min(lengths)}-{max(lengths)} tokens, {args.new} new tokens each"
    )
    print(f"{'run':8} {'CPU s':>7} {'wall s':>7}  rows as alone  max logprob diff")
    for name in runs:
        r = report[name]
        same = f"{r['rows_as_alone']}/{n}" if "rows_as_alone" in r else "-"
        diff = f"{r['max_logprob_diff']:.1e}" if "max_logprob_diff" in r else "-"
        print(f"{name:8} {r['cpu_s']:7.2f} {r['wall_s']:7.2f}  {same:>13}  {diff:>16}")
    speed = report["alone"]["cpu_s"] / report["batched"]["cpu_s"]
    print(f"batched takes x{speed:.2f} less CPU than one prompt at a time")
    if table is not None:
        print()
        print_mixed(table, args, lengths)


def print_mixed(table: dict, args: argparse.Namespace, lengths: list[int]) -> None:
    if args.json:
        print(json.dumps({"mixed": table, "window": args.window, "every": args.every}))
        return
    n = len(lengths)
    print(
        f"SmolLM2-135M as Ministral, every {args.every}th layer global, the others local "
        f"over {args.window}: {n} prompts of {min(lengths)}-{max(lengths)} tokens, "
        f"{args.new} new tokens each"
    )
    print(f"{'run':13} {'CPU s':>7} {'wall s':>7}  {'peak cache MiB':>14}  rows as untrimmed")
    for name, r in table.items():
        if name != "startup_cpu_s":
            print(
                f"{name:13} {r['cpu_s']:7.2f} {r['wall_s']:7.2f}  {r['cache_mib']:14.1f}  "
                f"{r['rows_as_untrimmed']:>13}/{n}"
            )
    up = table["startup_cpu_s"]
    print(
        f"engine start-up CPU s: {up['unchecked']:.2f} (transformers' own model, trimmed "
        f"unchecked) vs {up['checked']:.2f} with the one-time trimming check"
    )


if __name__ == "__main__":
    main()
