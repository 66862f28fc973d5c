"""Same keep/drop decisions and reasons as datatrove's filters, on English documents.

Needs datatrove and spaCy (datatrove tokenises English with spaCy); skipped otherwise:
``pip install datatrove spacy`` runs it.
"""

from __future__ import annotations

import random

import pytest

from lmops.data.document import Document
from lmops.data.ops import Filter, build_op
from lmops.data.text import en_words

pytest.importorskip("spacy", reason="datatrove parity needs spaCy: pip install spacy")
dt_filters = pytest.importorskip(
    "datatrove.pipeline.filters", reason="datatrove parity needs datatrove: pip install datatrove"
)
from datatrove.data import Document as DtDocument  # noqa: E402
from datatrove.utils.text import split_into_words  # noqa: E402

SENTENCES = [
    "The museum reopened on Monday after two years of repairs.",
    "Most of the paintings had been kept in storage while the roof was rebuilt.",
    "The new wing is bright and quiet, and the staff seem proud of it.",
    "Schools have already booked visits for the rest of the term.",
    "Local shops expect the crowds to bring more trade to the old town.",
    "The city council will review the ticket prices again in the spring.",
    "Visitors queued outside before the doors opened at nine o'clock.",
    "I don't think we'll see prices like that again, said Mr. Jones.",
    "It's a well-known fact that the U.S. economy grew by 3.5% last year.",
    "Read more at https://example.com/news/2024/budget?ref=home.",
    "Dr. Smith's team (see below) found that e-mail use fell sharply.",
    "They've promised a decision by 5pm on Friday, e.g. before the vote.",
    "Cost: $1,200 per unit -- or about 10km of cable -- which isn't cheap!",
    "Why would anyone want to live there? Nobody could say.",
    "“Quoted text” and ‘single quotes’ are common in edited prose.",
]
ODD = [
    "#breaking #news Storm warning for the coast...",
    "Wait... what happened next… nobody knows...",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "Please enable JavaScript to continue using this site.",
    "Use the {name} placeholder in your template, then save.",
    "Call 555-0100 or 555-0199 between 9:30 and 17:00 (Mon.-Fri.).",
    "the of and to in is it that was for on are with as be at",
    "Telecommunications infrastructure internationalisation notwithstanding.",
    "- Free shipping on all orders",
    "• Best prices guaranteed",
    "Home | About | Contact",
    "Click here to subscribe...",
    "Copyright 2024. All rights reserved.",
]


def _documents() -> list[str]:
    """~40 documents: literal edge cases, then seeded mixtures of the sentences above."""
    docs = [
        "",
        "Too short.",
        " ".join(SENTENCES),
        "\n".join(SENTENCES),
        "\n\n".join(SENTENCES),
        "\n".join(ODD * 3),
        "\n".join(s + "..." for s in SENTENCES),
        " ".join(SENTENCES[:3] * 5),
        "\n\n".join([SENTENCES[0], SENTENCES[1], SENTENCES[0], SENTENCES[2]]),
        " ".join(["the cat sat."] * 40),
        " ".join(["I am in it to do so as we go on up and the."] * 8),
        " ".join(ODD[:1] * 20),
        " ".join(str(n) for n in range(200)),
    ]
    rng = random.Random(20240601)
    for _ in range(30):
        odd = rng.choice([0.0, 0.1, 0.3])
        pieces = [
            rng.choice(ODD if rng.random() < odd else SENTENCES) for _ in range(rng.randint(3, 40))
        ]
        if rng.random() < 0.3:
            pieces += pieces[: rng.randint(1, len(pieces))]
        docs.append(rng.choice(["\n", "\n\n", " "]).join(pieces))
    return docs


DOCS = _documents()
PAIRS = {
    "gopher_quality": "GopherQualityFilter",
    "gopher_repetition": "GopherRepetitionFilter",
    "fineweb_quality": "FineWebQualityFilter",
    "c4_quality": "C4QualityFilter",
}


def _datatrove_verdict(name: str, text: str) -> tuple[str | None, str]:
    doc = DtDocument(text=text, id="d")
    result = getattr(dt_filters, PAIRS[name])().filter(doc)
    if result is True:
        return None, doc.text
    return (result[1] if isinstance(result, tuple) else "dropped"), doc.text


@pytest.mark.parametrize("name", list(PAIRS))
def test_same_decisions_as_datatrove(name: str) -> None:
    op = build_op(name, lang="en")
    assert isinstance(op, Filter)
    mismatches = []
    for i, text in enumerate(DOCS):
        if name == "fineweb_quality" and not text.strip("\n "):
            continue  # datatrove divides by zero on a text with no words
        theirs, their_text = _datatrove_verdict(name, text)
        doc = Document(text=text, id=str(i))
        ours = None if op.keep(doc) else doc.metadata["drop_reason"].split(":", 1)[1]
        if ours != theirs or (ours is None and doc.text != their_text):
            mismatches.append((i, ours, theirs))
    assert not mismatches
    # The documents exercise more than one outcome.
    assert len({_datatrove_verdict(name, t)[0] for t in DOCS[1:]}) >= 3


def test_same_words_as_datatrove() -> None:
    for text in DOCS:
        assert list(en_words(text)) == split_into_words(text)
