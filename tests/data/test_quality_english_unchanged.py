"""English is judged exactly as before the Chinese fixes: same scores, same decisions.

``quality_english_golden.json`` holds every score and decision of the word-based quality
filters on a fixed sample -- English pages under ``lang: auto`` (some with a few Chinese
words, under the 30 % CJK that switches to the Chinese rules) and Chinese pages forced to
``lang: en`` (datatrove's behaviour). It was written by the operators as they were before
Chinese got its own units (commit 2f356db), so any change to how English is judged fails
here, score by score. Only a deliberate change to English may rewrite it::

    PYTHONPATH=src python tests/data/test_quality_english_unchanged.py --write
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

from lmops.data.document import Document
from lmops.data.ops import Filter, build_op

GOLDEN = Path(__file__).with_name("quality_english_golden.json")
OPS = ("gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality", "length_filter")

SENTENCES = [
    "The museum reopened on Monday after two years of repairs.",
    "Most of the paintings had been kept in storage while the roof was rebuilt.",
    "I don't think we'll see prices like that again, said Mr. Jones.",
    "It's a well-known fact that the U.S. economy grew by 3.5% last year.",
    "Read more at https://example.com/news/2024/budget?ref=home.",
    "Dr. Smith's team (see below) found that e-mail use fell sharply.",
    "Cost: $1,200 per unit -- or about 10km of cable -- which isn't cheap!",
    "“Quoted text” and ‘single quotes’ are common in edited prose.",
    "The recipe calls for 2 cups of flour, 1 egg and 250 ml of milk.",
    "Call 555-0100 between 9:30 and 17:00 (Mon.-Fri.) for tickets.",
    "Why would anyone want to live there? Nobody could say.",
    "The dish 麻婆豆腐 (mapo tofu) comes from Sichuan province.",
    "She said 你好 (hello) to everyone in the room.",
    "Farmers waited for a dry day to bring in the hay before the storm.",
    "The river rose above its banks near the old mill and flooded the road.",
    "Children stayed indoors and read books by the fire all afternoon.",
    "On Sunday the clouds finally broke over the hills to the west.",
    "Local schools have asked to use the reading rooms for homework clubs.",
    "The council agreed to fund two more positions for one year.",
    "Several residents spoke in favour of longer opening hours at the library.",
    "The library board will meet with the head teachers next month.",
    "Everyone went outside to enjoy the warm sun and the quiet streets.",
    "A new bridge will connect the two halves of the town by next summer.",
    "Critics praised the film for its careful writing and its patient pace.",
    "The team lost the first game but won the next three in a row.",
]
ODD = [
    "#breaking #news Storm warning for the coast...",
    "- Free shipping on all orders",
    "• Best prices guaranteed",
    "Home | About | Contact",
    "Copyright 2024. All rights reserved.",
    "def main(): return {k: v for k, v in items()}",
    "1. 2. 3. 4. 5. 6. 7. 8. 9. 10.",
    "Click here to subscribe...",
]
CHINESE = [
    "国务院总理在政府工作报告中指出，今年经济增长预期目标为百分之五左右。"
    "城镇新增就业一千二百万人以上，居民消费价格涨幅保持在百分之三左右。",
    "划分北美和南美的经线是巴拿马运河的线。这条经线穿过巴拿马地峡，将南美洲与中美洲分开。"
    "它全长约800公里（500英里），于1914年完工。",
    "首页 | 新闻 | 体育 | 娱乐 | 财经 | 联系我们\n" * 5,
]


def sample() -> list[tuple[str, str]]:
    """``(lang, text)``: literal edge cases, then seeded mixtures of the lines above."""
    docs = [("auto", t) for t in ("", "Too short.", " ".join(SENTENCES), "\n".join(SENTENCES))]
    docs += [("auto", "\n\n".join(SENTENCES)), ("auto", "\n".join(ODD * 3))]
    docs += [("auto", " ".join(SENTENCES[:3] * 5)), ("auto", " ".join(["the cat sat."] * 40))]
    docs += [("en", text) for text in CHINESE]
    rng = random.Random(20250101)
    for _ in range(40):
        pieces = rng.sample(SENTENCES, rng.randint(3, len(SENTENCES)))
        if rng.random() < 0.2:
            pieces += rng.sample(ODD, rng.randint(1, 4))
        if rng.random() < 0.2:
            pieces += pieces[: rng.randint(1, len(pieces))]
        rng.shuffle(pieces)
        docs.append(("auto", rng.choice(["\n", "\n\n", " "]).join(pieces)))
    return docs


def judge(lang: str, text: str) -> dict[str, Any]:
    """Every op's reason (None: kept) and scores for ``text``."""
    out: dict[str, Any] = {}
    for name in OPS:
        op = build_op(name, lang=lang)
        assert isinstance(op, Filter)
        doc = Document(text=text, id="d")
        kept = op.keep(doc)
        out[name] = {
            "reason": None if kept else doc.metadata["drop_reason"].split(":", 1)[1],
            "scores": doc.scores(name),
        }
    return out


def _key(lang: str, text: str) -> str:
    return lang + ":" + hashlib.sha256(text.encode()).hexdigest()[:16]


def test_english_scores_and_decisions_are_unchanged() -> None:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    docs = sample()
    assert [_key(lang, text) for lang, text in docs] == [g["doc"] for g in golden]
    changed = [
        (i, name, g["ops"][name], now[name])
        for i, ((lang, text), g) in enumerate(zip(docs, golden, strict=True))
        for now in [judge(lang, text)]
        for name in OPS
        if now[name] != g["ops"][name]
    ]
    assert not changed, changed[:3]
    # The sample exercises more than one outcome of each filter.
    for name in OPS:
        assert len({g["ops"][name]["reason"] for g in golden}) >= 2, name


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    rows = [{"doc": _key(lang, text), "ops": judge(lang, text)} for lang, text in sample()]
    lines = ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    GOLDEN.write_text(f"[\n{lines}\n]\n", encoding="utf-8")
    print(f"wrote {len(rows)} documents to {GOLDEN}")
