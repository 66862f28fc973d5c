"""Data-stage benchmark: lmops vs datatrove on the Gopher quality + repetition filters, and
MinHash dedup quality and speed. Not a test: it prints its figures.

    python benchmarks/data_bench.py [--docs 20000] [--seed 0] [--skip-minhash]

The corpus is generated (seeded): English prose of varied length built from a vocabulary
with realistic sentence and paragraph structure, plus the kinds of junk the Gopher rules
exist for — too short, list-like (bullets), ellipsis-ended lines, symbol-heavy, no stop
words, long tokens, repeated lines/paragraphs, repeated n-grams. When
``../shared/datasets/tinyshakespeare`` (or ``$LMOPS_SHARED_DATASETS``) exists, real
passages of Shakespeare are mixed in too.

Figures: docs/s per core for each implementation (documents / CPU seconds of the one
process doing the filtering), the speed ratio, and keep/drop agreement per filter and for
the two filters chained (the fraction of documents given the same decision).
Targets from the issue: ≥ 2× datatrove's docs/s per core at ≥ 99 % agreement. MinHash
(via benchmarks/minhash_bench.py): recall ≥ 0.95 of planted pairs with Jaccard ≥ 0.8 and
precision ≥ 0.99, and its docs/s.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lmops.data.document import Document
from lmops.data.ops import Filter, build_op

STOP = ["the", "be", "to", "of", "and", "that", "have", "with", "a", "in", "is", "it", "for", "on"]
WORDS = (
    "time person year way day thing man world life hand part child eye woman place work week "
    "case point government company number group problem fact water history market river city "
    "system program question night story money family table student research morning "
    "make take come give look think know want tell ask work seem feel try leave call find "
    "good new first last long great little own other old right big high different small large "
    "quickly slowly rarely often always never suddenly carefully almost together"
).split()


def sentence(rng: random.Random) -> str:
    n = rng.randint(6, 22)
    words = [rng.choice(STOP) if rng.random() < 0.4 else rng.choice(WORDS) for _ in range(n)]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", ".", ".", "?", "!"])


def prose(rng: random.Random, paragraphs: int) -> str:
    return "\n\n".join(
        " ".join(sentence(rng) for _ in range(rng.randint(2, 7))) for _ in range(paragraphs)
    )


def junk(rng: random.Random, kind: int) -> str:
    if kind == 0:  # too short
        return sentence(rng)
    if kind == 1:  # bullet list
        return "\n".join(
            "• " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(30)
        )
    if kind == 2:  # ellipsis lines
        return "\n".join(sentence(rng)[:-1] + "..." for _ in range(20))
    if kind == 3:  # symbols
        return " ".join(rng.choice(WORDS) + " #" + rng.choice(WORDS) + " #tag" for _ in range(40))
    if kind == 4:  # no stop words
        return " ".join(rng.choice(WORDS[:40]) for _ in range(120))
    if kind == 5:  # repeated lines
        line = sentence(rng)
        return "\n".join([line] * 12 + [sentence(rng) for _ in range(8)])
    if kind == 6:  # repeated paragraphs
        para = prose(rng, 1)
        return "\n\n".join([para] * 5 + [prose(rng, 1) for _ in range(3)])
    if kind == 7:  # repeated n-grams
        gram = " ".join(rng.choice(WORDS) for _ in range(3))
        return " ".join([gram] * 60) + " " + prose(rng, 1)
    if kind == 8:  # long words
        return (
            " ".join(
                "".join(rng.choice("abcdefghij") for _ in range(rng.randint(12, 20)))
                for _ in range(80)
            )
            + " the and of"
        )
    return "\n".join(
        f"{rng.randint(1000, 99999)} {rng.randint(1, 9)}.{rng.randint(0, 99)}" for _ in range(60)
    )  # numbers


def shakespeare_passages() -> list[str]:
    root = Path(
        os.environ.get("LMOPS_SHARED_DATASETS")
        or Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
    f = root / "tinyshakespeare" / "input.txt"
    if not f.exists():
        return []
    blocks = f.read_text(encoding="utf-8").split("\n\n")
    return ["\n\n".join(blocks[i : i + 6]) for i in range(0, len(blocks) - 6, 6)]


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    real = shakespeare_passages()
    docs = []
    for i in range(n):
        r = rng.random()
        if real and r < 0.15:
            docs.append(real[i % len(real)])
        elif r < 0.65:
            docs.append(prose(rng, rng.randint(1, 12)))
        else:
            docs.append(junk(rng, rng.randint(0, 9)))
    return docs


def run_lmops(texts: list[str], op_name: str) -> tuple[list[bool], float]:
    op = build_op(op_name)
    assert isinstance(op, Filter)
    docs = [Document(t, str(i)) for i, t in enumerate(texts)]
    t0 = time.process_time()
    keep = [op.keep(d) for d in docs]
    return keep, time.process_time() - t0


def run_datatrove(texts: list[str], factory: Callable[[], object]) -> tuple[list[bool], float]:
    from datatrove.data import Document as DTDoc

    f = factory()
    docs = [DTDoc(text=t, id=str(i)) for i, t in enumerate(texts)]
    t0 = time.process_time()
    keep = []
    for d in docs:
        res = f.filter(d)  # type: ignore[attr-defined]
        keep.append(res if isinstance(res, bool) else bool(res[0]))
    return keep, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-minhash", action="store_true")
    args = ap.parse_args()

    texts = corpus(args.docs, args.seed)
    print(f"corpus: {len(texts):,} documents, {sum(map(len, texts)) / 1e6:.1f} M chars")
    try:
        from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    except ImportError:
        GopherQualityFilter = GopherRepetitionFilter = None  # type: ignore[assignment,misc]
        print("datatrove not installed: lmops figures only (pip install datatrove)")

    results = {}
    for name, dt_cls in (
        ("gopher_quality", GopherQualityFilter),
        ("gopher_repetition", GopherRepetitionFilter),
    ):
        keep, cpu = run_lmops(texts, name)
        line = f"{name:<18} lmops {len(texts) / cpu:>9,.0f} docs/s/core  kept {sum(keep):,}"
        if dt_cls is not None:
            dkeep, dcpu = run_datatrove(texts, dt_cls)
            agree = sum(a == b for a, b in zip(keep, dkeep, strict=True)) / len(texts)
            line += (
                f" | datatrove {len(texts) / dcpu:>9,.0f} docs/s/core  kept {sum(dkeep):,}"
                f" | speed-up {dcpu / cpu:.2f}x  agreement {100 * agree:.2f} %"
            )
            results[name] = (keep, dkeep, cpu, dcpu)
        print(line)
    if len(results) == 2:
        both = [
            a and b
            for a, b in zip(
                results["gopher_quality"][0], results["gopher_repetition"][0], strict=True
            )
        ]
        dboth = [
            a and b
            for a, b in zip(
                results["gopher_quality"][1], results["gopher_repetition"][1], strict=True
            )
        ]
        cpu = results["gopher_quality"][2] + results["gopher_repetition"][2]
        dcpu = results["gopher_quality"][3] + results["gopher_repetition"][3]
        agree = sum(a == b for a, b in zip(both, dboth, strict=True)) / len(texts)
        print(
            f"{'quality+repetition':<18} lmops {len(texts) / cpu:>9,.0f} docs/s/core | datatrove "
            f"{len(texts) / dcpu:>9,.0f} docs/s/core | speed-up {dcpu / cpu:.2f}x  agreement {100 * agree:.2f} %"
        )
    if not args.skip_minhash:
        print("minhash (benchmarks/minhash_bench.py):", flush=True)
        subprocess.run(
            [sys.executable, str(Path(__file__).with_name("minhash_bench.py"))], check=True
        )


if __name__ == "__main__":
    main()
