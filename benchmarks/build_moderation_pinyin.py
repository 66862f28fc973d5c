"""Build the pinyin index the moderation classifier reads pinyin back into Chinese with (build
time only): ``src/lmops/security/resources/moderation/pinyin.tsv.gz``.

    pip install 'lmops[build]'      # pypinyin
    python benchmarks/build_moderation_pinyin.py [--words 60000]

Pinyin hides Chinese from a classifier that learned Chinese characters ("zha dan" for 炸弹,
"wei xin" for 微信). The gateway reads a run of pinyin back into the likeliest Chinese
words (:mod:`lmops.security.moderation.pinyin`, a dynamic programme over word frequencies,
as a pinyin input method does), so the characters' n-grams and the words' embeddings apply
to it as to the characters themselves.

The index: the ``--words`` most frequent words of jieba's dictionary (a core dependency,
MIT; simplified Chinese, single characters included), each under its toneless pinyin
(``pypinyin``, the reading in context: 银行 -> "yinhang"; "ü" as "u", as the gateway folds
it), syllables joined. Where several words share a pinyin, the most frequent one is kept.
One line per key, ``syllables<TAB>word<TAB>log-probability`` ("zha dan<TAB>炸弹<TAB>-10.759"),
then one line ``!en<TAB>word`` for each English word that reads as pinyin ("man", "china",
"banana", "bake"): a run of such words alone is left as it is. English words: the static
embeddings' vocabulary and SCOWL's lists (``apt-get install wamerican wbritish-large``;
Copyright 2000-2011 by Kevin Atkinson, permissive: see ``resources/README.txt``).
"""

from __future__ import annotations

import argparse
import gzip
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src/lmops/security/resources/moderation/pinyin.tsv.gz"
INTERJECTIONS = {"n", "m", "ng", "hm", "hng"}
# SCOWL's word lists as Debian ships them (wamerican, wbritish-large; see resources/README.txt)
ENGLISH_LISTS = [
    Path("/usr/share/dict/american-english"),
    Path("/usr/share/dict/british-english-large"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--words", type=int, default=60_000)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--english-lists", type=Path, nargs="*", default=ENGLISH_LISTS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    from distill_moderation_embeddings import jieba_counts  # this folder
    from pypinyin import Style, lazy_pinyin

    from lmops.security.moderation.pinyin import split_syllables

    counts = jieba_counts()
    words = sorted(counts, key=lambda w: -counts[w])[: args.words]
    total = sum(counts[w] for w in words)
    with np.load(OUT.parent / "embeddings.npz", allow_pickle=False) as z:
        english = {w for w in z["words"].tobytes().decode().split("\n") if w.isascii()}
    for path in args.english_lists:
        if not path.is_file():
            raise SystemExit(
                f"{path}: no such word list (apt-get install wamerican wbritish-large)"
            )
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            w = line.strip().lower()
            if re.fullmatch(r"[a-z]+", w):
                english.add(w)
    index: dict[str, tuple[str, float]] = {}
    syllables: set[str] = set()
    for w in words:
        sylls = [s.replace("v", "u") for s in lazy_pinyin(w, style=Style.NORMAL, errors="ignore")]
        if len(sylls) != len(w) or not all(re.fullmatch(r"[a-z]+", s) for s in sylls):
            continue
        if INTERJECTIONS.intersection(sylls):  # 嗯 "n", 呣 "m": they would split "yann"
            continue
        syllables.update(sylls)
        index.setdefault(" ".join(sylls), (w, math.log(counts[w] / total)))  # most frequent

    # English words that read as pinyin ("man", "china", "banana"): alone, never converted.
    also_english = sorted(w for w in english if split_syllables(w, syllables) is not None)
    lines = [f"{k}\t{w}\t{lp:.3f}" for k, (w, lp) in sorted(index.items())]
    lines += [f"!en\t{w}" for w in also_english]
    body = ("\n".join(lines) + "\n").encode()
    tmp = args.out.with_suffix(".tmp")
    with tmp.open("wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
        gz.write(body)
    tmp.replace(args.out)
    print(f"{args.out}: {len(index)} pinyin keys from {len(words)} words, "
          f"{len(also_english)} English words that read as pinyin, "
          f"{args.out.stat().st_size} bytes")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
