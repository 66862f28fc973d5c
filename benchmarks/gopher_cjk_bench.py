"""Chinese against English drop rates of ``gopher_quality`` + ``gopher_repetition`` on
parallel instruction data: the same content should be kept about as often in both languages.

Not a test: it prints its figures. Run::

    python benchmarks/gopher_cjk_bench.py                  # $LMOPS_SHARED_DATASETS or ../shared/datasets
    python benchmarks/gopher_cjk_bench.py --datasets DIR --examples 5

**Control.** ``alpaca_zh_en/part_{0,1,2}.json`` holds 3,000 Alpaca rows, each with its
Chinese translation beside the English original. A translation carries the same content,
so a filter that judges both languages alike keeps a pair's two sides about as often; the
gap between the two drop rates is the bias.

**Documents.** A side's text is its ``instruction``, ``input`` and ``output`` joined by a
blank line (empty fields left out), what a recipe with ``fields: [instruction, input,
output]`` hands a filter. Only pairs with at least 50 words on both sides are kept, so the
length rule is not what is measured. The selection is frozen: words are the tokens with a
non-punctuation character, by plain jieba (precise mode) for a text that is at least 30 %
CJK and by :func:`lmops.data.text.en_words` otherwise, as ``gopher_quality`` counted them
when the bias was reported, so every version of the operators is measured on the same
1,130 pairs.

**Pipeline.** As a recipe runs them: ``gopher_quality``, then ``gopher_repetition`` on
what it kept, published defaults, ``lang: auto``. Figures, per language:

- kept and dropped, and the drop rate;
- drops per reason (the first failing rule, as the report counts them);
- agreement: pairs kept on both sides, dropped on both, dropped only on one side;
- the scores of ``--show`` (``part_0.json[29]``, ordinary prose the bias dropped);
- ``stutter``: the same pairs with their output's first sentence said four times more
  in a row (a generator stuck in a loop), the share each language's repetition rule
  drops -- repetition must still be caught in both;
- a digest of every English score and decision, to show English is judged unchanged;
- the peer, on the same pairs in the same run: datatrove's ``GopherQualityFilter`` then
  ``GopherRepetitionFilter`` with ``language`` set per side (skipped, saying so, where
  datatrove is not installed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

from lmops.data.document import Document
from lmops.data.ops import Filter, build_op
from lmops.data.text import PUNCTUATION, en_words, resolve_lang

FIELDS = ("instruction", "input", "output")
MIN_WORDS = 50
# End of the first sentence: a Chinese full stop, or an English one before a space.
_FIRST_SENTENCE = {"zh": re.compile(r"^.+?[。！？]"), "en": re.compile(r"^.+?[.!?](?=\s|$)")}


def _datasets(arg: str | None) -> Path:
    root = Path(
        arg
        or os.environ.get("LMOPS_SHARED_DATASETS")
        or Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
    if not (root / "alpaca_zh_en").is_dir():
        sys.exit(f"{root}/alpaca_zh_en not found; pass --datasets or set LMOPS_SHARED_DATASETS")
    return root / "alpaca_zh_en"


def _side(row: dict[str, str], prefix: str) -> str:
    return "\n\n".join(row[prefix + f] for f in FIELDS if row.get(prefix + f))


def _frozen_words(text: str) -> int:
    """Words as gopher_quality counted them when the bias was reported (see the docstring)."""
    if resolve_lang(text, "auto") == "en":  # a "Chinese" side that is mostly code or numbers
        tokens: list[str] = list(en_words(text))
    else:
        import jieba

        jieba.setLogLevel(60)
        tokens = [t.strip() for t in jieba.lcut(text)]
    return sum(1 for t in tokens if t and not PUNCTUATION.issuperset(t))


def load_pairs(folder: Path) -> list[tuple[str, dict[str, str]]]:
    """``(name, {"zh": text, "en": text})`` for the pairs with enough words on both sides."""
    pairs = []
    for path in sorted(folder.glob("part_*.json")):
        for i, row in enumerate(json.loads(path.read_text(encoding="utf-8"))):
            texts = {"zh": _side(row, ""), "en": _side(row, "en_")}
            if all(_frozen_words(t) >= MIN_WORDS for t in texts.values()):
                pairs.append((f"{path.name}[{i}]", texts))
    return pairs


def _stutter(text: str, lang: str) -> str:
    """``text`` with its last paragraph's first sentence said four more times in a row."""
    head, _, last = text.rpartition("\n\n")
    m = _FIRST_SENTENCE[lang].match(last)
    if m is None:
        return text
    sep = "" if lang == "zh" else " "
    sentence = m.group(0)
    return (head + "\n\n" if head else "") + sep.join([sentence] * 5) + last[len(sentence) :]


def _repetition(op: Filter, text: str) -> str | None:
    return op.decide(op.score(Document(text=text, id="d")))


class Pipeline:
    """gopher_quality then gopher_repetition, with defaults; remembers every score."""

    def __init__(self) -> None:
        self.ops = [build_op("gopher_quality"), build_op("gopher_repetition")]

    def run(self, text: str) -> tuple[str | None, dict[str, dict[str, float]]]:
        doc = Document(text=text, id="d")
        for op in self.ops:
            assert isinstance(op, Filter)
            if not op.keep(doc):
                return doc.metadata["drop_reason"], doc.metadata["scores"]
        return None, doc.metadata["scores"]


def datatrove_drops(
    pairs: list[tuple[str, dict[str, str]]],
) -> dict[str, Counter[str]] | str:
    """Per language, datatrove's Gopher filters' drops by reason (its own defaults,
    ``language`` zh or en), or why it could not run."""
    try:
        from datatrove.data import Document
        from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    except ImportError as e:
        return f"skipped ({e.name} is not installed: pip install datatrove)"
    out: dict[str, Counter[str]] = {}
    for lang in ("zh", "en"):
        quality = GopherQualityFilter(language=lang)
        repetition = GopherRepetitionFilter(language=lang)
        out[lang] = Counter()
        for name, texts in pairs:
            doc = Document(text=texts[lang], id=name)
            verdict = quality.filter(doc)
            if verdict is True:
                verdict = repetition.filter(doc)
            if verdict is not True:  # (False, reason)
                out[lang][verdict[1] if isinstance(verdict, tuple) else "dropped"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", help="the shared datasets folder")
    ap.add_argument("--show", default="part_0.json[29]", help="pair whose scores to print")
    ap.add_argument("--examples", type=int, default=3, help="zh-only drops to print per reason")
    args = ap.parse_args()

    t0 = time.perf_counter()
    pairs = load_pairs(_datasets(args.datasets))
    pipe = Pipeline()
    reasons: dict[str, Counter[str]] = {"zh": Counter(), "en": Counter()}
    dropped: dict[str, set[str]] = {"zh": set(), "en": set()}
    examples: dict[str, list[str]] = {}
    digest = hashlib.sha256()
    shown = {}
    for name, texts in pairs:
        verdicts = {lang: pipe.run(text) for lang, text in texts.items()}
        for lang, (reason, scores) in verdicts.items():
            if reason is not None:
                reasons[lang][reason] += 1
                dropped[lang].add(name)
            if name == args.show:
                shown[lang] = (reason, scores)
        en_reason, en_scores = verdicts["en"]
        digest.update(json.dumps([en_reason, en_scores], sort_keys=True).encode())
        zh_reason = verdicts["zh"][0]
        if zh_reason is not None and en_reason is None:
            examples.setdefault(zh_reason, []).append(name)

    n = len(pairs)
    print(f"pairs with >= {MIN_WORDS} words on both sides: {n:,}")
    for lang in ("zh", "en"):
        k = n - len(dropped[lang])
        print(
            f"  {lang}: kept {k:,}/{n:,}, dropped {len(dropped[lang]):,} ({len(dropped[lang]) / n:.1%})"
        )
    print("\ndrops by reason            zh     en")
    for reason in sorted(
        set(reasons["zh"]) | set(reasons["en"]), key=lambda r: -reasons["zh"][r] - reasons["en"][r]
    ):
        print(f"  {reason:<40} {reasons['zh'][reason]:>5}  {reasons['en'][reason]:>5}")
    both = len(dropped["zh"] & dropped["en"])
    print(
        f"\nagreement: kept on both sides {n - len(dropped['zh'] | dropped['en']):,}, dropped on both"
        f" {both}, only zh dropped {len(dropped['zh'] - dropped['en'])}, only en dropped"
        f" {len(dropped['en'] - dropped['zh'])}"
    )
    for lang, (reason, scores) in sorted(shown.items(), reverse=True):
        print(f"\n{args.show} {lang}: {reason or 'kept'}")
        for op, values in scores.items():
            picked = {k: round(v, 3) for k, v in values.items() if k in _SHOWN}
            print(f"  {op}: {picked}")
    if args.examples:
        print("\nzh dropped, en kept (first few per reason):")
        for reason, names in sorted(examples.items(), key=lambda kv: -len(kv[1])):
            print(f"  {reason} ({len(names)}): {', '.join(names[: args.examples])}")

    rep = build_op("gopher_repetition")
    assert isinstance(rep, Filter)
    stutter = {}
    for lang in ("zh", "en"):
        caught = total = 0
        for _, texts in pairs:
            stuttered = _stutter(texts[lang], lang)
            if stuttered == texts[lang] or _repetition(rep, texts[lang]) is not None:
                continue  # no sentence to repeat, or dropped already
            total += 1
            caught += _repetition(rep, stuttered) is not None
        stutter[lang] = (caught, total)
    print(
        "\nstutter: of the sides gopher_repetition keeps, dropped once the output's first"
        " sentence is said 5 times: "
        + ", ".join(f"{lang} {c}/{m} ({c / m:.1%})" for lang, (c, m) in stutter.items())
    )
    print(f"\nEnglish scores and decisions, sha256: {digest.hexdigest()[:16]}")
    peer = datatrove_drops(pairs)
    if isinstance(peer, str):
        print(f"\ndatatrove: {peer}")
    else:
        print("\nside by side, dropped of the same pairs     zh        en")
        print(f"  {'lmops':<40} {len(dropped['zh']) / n:>6.1%}   {len(dropped['en']) / n:>6.1%}")
        zh, en = (sum(peer[lang].values()) for lang in ("zh", "en"))
        print(f"  {'datatrove (its defaults, language set)':<40} {zh / n:>6.1%}   {en / n:>6.1%}")
        for lang in ("zh", "en"):
            top = ", ".join(f"{r} {c}" for r, c in peer[lang].most_common(3))
            print(f"    datatrove {lang}: {top or 'none'}")
    print(f"{time.perf_counter() - t0:.1f} s")


_SHOWN = {
    "words",
    "tokens",
    "alpha_words_ratio",
    "avg_word_length",
    "stop_words",
    "top_2_gram",
    "top_3_gram",
    "top_4_gram",
    "duplicated_5_n_grams",
    "duplicated_10_n_grams",
}


if __name__ == "__main__":
    main()
