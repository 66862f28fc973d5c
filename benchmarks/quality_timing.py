"""Docs/s of gopher_quality + gopher_repetition, ours against datatrove's, on one core.

    python benchmarks/quality_timing.py [N_DOCS] [SEED]

Generates N_DOCS (default 3000) English documents -- seeded sentences from a small
vocabulary with contractions, abbreviations, numbers and URLs, some pages with repeated
lines, bullets or hashes -- and runs both pipelines the way a recipe does: quality first,
repetition only on the documents quality kept. Prints docs/s for each, the speed-up and
the share of documents on which the two agree (kept or dropped, and the reason). Needs
``datatrove`` and ``spacy`` for the comparison; without them only our speed is printed.
"""

from __future__ import annotations

import random
import sys
import time

from lmops.data.document import Document
from lmops.data.ops import Filter, build_op

VOCAB = (
    "the of and to a in is it that was for on are with as his they be at one have this "
    "from or had by word but what some we can out other were all there when up use your how "
    "said an each she which do their time if will way about many then them write would like "
    "so these her long make thing see him two has look more day could go come did number "
    "sound no most people my over know water than call first who may down side been now "
    "find any new work part take get place made live where after back little only round man "
    "year came show every good me give our under name very through just form sentence great "
    "think say help low line differ turn cause much mean before move right boy old too same "
    "tell does set three want air well also play small end put home read hand port large "
    "spell add even land here must big high such follow act why ask men change went light "
    "kind off need house picture try us again animal point mother world near build earth"
).split()
EXTRA = (
    "don't can't it's I'm we're they've you'll won't isn't John's U.S. e.g. Mr. Dr. etc. "
    "3.5% $100 10km 2pm 1,000 well-known e-mail http://example.com/a/b www.site.org #tag "
    '(see below) "quoted" “curly” — … and/or COVID-19 9:30 ABC. a.m. Co. cannot gonna'
).split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    """``n`` seeded English pages of 1-12 paragraphs; about one in five is junky."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        paragraphs = []
        for _ in range(rng.randint(1, 12)):
            sentences = []
            for _ in range(rng.randint(1, 8)):
                extra = rng.choice((0.02, 0.05, 0.15))
                words = [
                    rng.choice(EXTRA) if rng.random() < extra else rng.choice(VOCAB)
                    for _ in range(rng.randint(4, 25))
                ]
                words[0] = words[0].capitalize()
                if rng.random() < 0.4:
                    words[rng.randrange(len(words))] += ","
                sentences.append(" ".join(words) + rng.choice(".....?!:"))
            paragraphs.append(" ".join(sentences))
        kind = rng.random()
        if kind < 0.08:
            paragraphs += paragraphs[: rng.randint(1, len(paragraphs))]
        elif kind < 0.13:
            paragraphs = ["- " + p for p in paragraphs]
        elif kind < 0.18:
            paragraphs = [p + " #" * rng.randint(0, 6) for p in paragraphs]
        docs.append(rng.choice(("\n\n", "\n")).join(paragraphs))
    return docs


def run_ours(docs: list[str]) -> tuple[float, list[str | None]]:
    quality, repetition = build_op("gopher_quality"), build_op("gopher_repetition")
    assert isinstance(quality, Filter) and isinstance(repetition, Filter)
    quality.keep(Document("warm up", "w"))
    verdicts: list[str | None] = []
    start = time.perf_counter()
    for i, text in enumerate(docs):
        doc = Document(text, str(i))
        kept = quality.keep(doc) and repetition.keep(doc)
        verdicts.append(None if kept else doc.metadata["drop_reason"].split(":", 1)[1])
    return time.perf_counter() - start, verdicts


def run_datatrove(docs: list[str]) -> tuple[float, list[str | None]]:
    from datatrove.data import Document as DtDocument
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

    quality, repetition = GopherQualityFilter(), GopherRepetitionFilter()
    quality.filter(DtDocument(text="warm up", id="w"))  # loads spaCy
    verdicts: list[str | None] = []
    start = time.perf_counter()
    for i, text in enumerate(docs):
        doc = DtDocument(text=text, id=str(i))
        result = quality.filter(doc)
        if result is True:
            result = repetition.filter(doc)
        verdicts.append(None if result is True else result[1])
    return time.perf_counter() - start, verdicts


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    docs = make_docs(n, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    words = sum(len(d.split()) for d in docs) / n
    ours, our_verdicts = run_ours(docs)
    print(f"{n} docs, {words:.0f} words/doc")
    print(f"lmops:     {n / ours:8.0f} docs/s  ({sum(v is None for v in our_verdicts)} kept)")
    try:
        theirs, their_verdicts = run_datatrove(docs)
    except ImportError as e:
        print(f"datatrove: not run ({e})")
        return
    agree = sum(a == b for a, b in zip(our_verdicts, their_verdicts, strict=True))
    print(f"datatrove: {n / theirs:8.0f} docs/s  ({sum(v is None for v in their_verdicts)} kept)")
    print(f"speed-up {theirs / ours:.1f}x, agreement {agree / n:.2%}")


if __name__ == "__main__":
    main()
