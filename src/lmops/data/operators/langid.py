"""Offline language identification: annotate each document's language, keep some.

The model is py3langid's (a naive Bayes classifier over byte n-grams, about 140 language
labels, a few MB), shipped inside that package's wheel: nothing is downloaded, so it
works with ``HF_HUB_OFFLINE=1`` and no network. It is loaded on first use, once per
process (about half a second).
"""

from __future__ import annotations

from typing import Annotated, Any, cast

from pydantic import Field

from lmops.data.document import Document
from lmops.data.ops import Filter, OneOrMany, OpParams, register

__all__ = ["LanguageId", "rank_languages"]

_identifier: Any = None


def _model() -> Any:
    global _identifier
    if _identifier is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _identifier


def rank_languages(text: str, merge: dict[str, str] | None = None) -> list[tuple[str, float]]:
    """Languages of ``text`` with their probabilities, most likely first.

    ``merge`` maps a code to another whose probability absorbs it (``{"wuu": "zh"}``).
    Text without any letter-like feature ranks ``und`` first with probability 0.
    """
    if not text.strip():
        return [("und", 0.0)]
    probs: dict[str, float] = {}
    for lang, prob in _model().rank(text):
        code = merge.get(lang, lang) if merge else lang
        probs[code] = probs.get(code, 0.0) + prob
    ranked = sorted(probs.items(), key=lambda kv: kv[1], reverse=True)
    if ranked[0][0] == "zxx":  # py3langid's "no linguistic content" class
        return [("und", 0.0)]
    return ranked


@register("language_id")
class LanguageId(Filter):
    """Identify each document's language; keep those in ``languages`` (default: any).

    Sets ``metadata["lang"]`` (ISO 639-1 code where one exists, e.g. ``en``, ``zh``,
    ``ja``, ``fr``, ``de``) and ``metadata["lang_score"]`` (its probability, 0-1). A
    document is kept when one of ``languages`` has probability at least ``min_score``
    (0.65, FineWeb's threshold); with ``languages`` unset, when its most likely language
    does. Reasons: ``lang_not_allowed`` (the most likely language is not one of
    ``languages``), ``lang_low_score`` (it is, or any is allowed, but not confidently).
    Text with no letters at all is ``und`` with score 0.

    Only the first ``max_chars`` (2000) characters are read: enough for a confident
    answer, and it bounds the cost on very long documents. ``merge`` folds varieties into
    one code before picking: by default Wu (``wuu``) and Cantonese (``yue``) into ``zh``,
    because the model spreads standard written Chinese over the three (a plain Mandarin
    news sentence scores about 0.7 ``zh``, 0.25 ``wuu``).

    Scores: ``lang_score`` and ``prob_<code>`` for the three most likely languages and
    for each of ``languages``.
    """

    class Params(OpParams):
        languages: Annotated[list[str] | None, OneOrMany] = None
        min_score: float = Field(0.65, ge=0, le=1)
        max_chars: int = Field(2000, gt=0)
        merge: dict[str, str] = Field(default_factory=lambda: {"wuu": "zh", "yue": "zh"})

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.p = cast(LanguageId.Params, self.params)

    def score(self, doc: Document) -> dict[str, float]:
        ranked = rank_languages(doc.text[: self.p.max_chars], self.p.merge)
        lang, prob = ranked[0]
        doc.metadata["lang"] = lang
        doc.metadata["lang_score"] = prob
        probs = dict(ranked)
        scores = {"lang_score": prob}
        for code, p in ranked[:3]:
            scores[f"prob_{code}"] = p
        for code in self.p.languages or ():
            scores[f"prob_{code}"] = probs.get(code, 0.0)
        return scores

    def decide(self, scores: dict[str, float]) -> str | None:
        min_score = self.p.min_score
        if not self.p.languages:
            return None if scores["lang_score"] >= min_score else "lang_low_score"
        if any(scores.get(f"prob_{code}", 0.0) >= min_score for code in self.p.languages):
            return None
        # The most likely language is the best stored probability.
        _, best = max((v, k) for k, v in scores.items() if k.startswith("prob_"))
        return "lang_low_score" if best[5:] in self.p.languages else "lang_not_allowed"
