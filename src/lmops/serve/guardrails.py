"""Guardrails for the serving gateway: PII masking, moderation, prompt-injection heuristics.

A library with three seams, all driven by one :class:`GuardrailConfig` per deployment::

    g = Guardrails(GuardrailConfig())            # or GuardrailConfig.from_name("strict")
    d = g.check_input(messages)                  # before the model: allow/block, masked messages
    o = g.check_output(text)                     # a complete reply: masked text or a refusal
    s = g.stream_guard()                         # a streamed reply, delta by delta:
    safe, stop = s.feed(delta)                   #   emit ``safe``; on ``stop`` end the stream
    tail = s.finish()                            #   with finish_reason "content_filter"

Which messages are checked (OpenAI chat roles; a message's ``content`` is a string or a list
of parts, of which only ``{"type": "text"}`` parts are read and rewritten): in a gateway the
API caller writes every message, ``system`` and ``assistant`` included (a forged assistant
turn, "Sure, here is how to ...", is a prefill attack), so by default every role is checked:

* PII (``pii_input``) and moderation (``moderation_input``) in every message. Moderation
  reads each message and all of them joined (a term split across two messages, "how to
  make a" / "bomb", is caught).
* ``trusted_roles`` opts roles out of both, for an operator who puts their own system
  prompt behind the gateway (``trusted_roles: [system, developer]``: a system prompt that
  *names* what the model must refuse is then not refused itself).
* Prompt injection (``injection``) in ``user``, ``tool`` and ``function`` messages
  (indirect injection arrives through tool results): instructions in the system prompt
  cannot be injected into the system prompt, whoever wrote it.

Moderation terms are bilingual phrase lists, one file per category in ``resources/``
(see its README.txt), plus an optional ``extra_terms_file`` in the same format. Text and
terms go through the same :func:`normalize_text` (NFKC, lower-case, zero-width characters
dropped, traditional -> simplified Chinese via OpenCC, spaces and separators between
Chinese characters removed), so "自 殺", "ＫＩＬＬ ＭＹＳＥＬＦ" and "ki<U+200B>ll myself" are
found by the entries "自杀" and "kill myself".

The classifier (``classifier``, default ``"builtin"``: the bilingual harmful-vs-benign model
of :mod:`lmops.serve.moderation`, shipped in ``resources/moderation/`` and retrained with
``lmops guard train``; or a path to your own ``.npz``; or ``"package.module:callable"``;
``"off"``/None for none) complements the term lists: it reads paraphrases, role-play
framing and obfuscations (spaced or dotted letters, homoglyphs, leet, pinyin) that exact
terms miss. It is asked only where the term lists found nothing (where they found a
category, that is the category). Its threshold is the model's own (stored in the file,
chosen by a stated rule on out-of-fold scores when it was trained, see
:mod:`lmops.serve.moderation`) unless ``classifier_threshold`` is set. With several
messages, each is scored (the built-in model keeps a message's features, so a repeated
system prompt or earlier turn costs a lookup) and so is all of them together, from the
messages' features added up. Term lists are also matched on the classifier's de-obfuscated
form of the text (:func:`lmops.serve.moderation.deobfuscate`), and across line breaks.

Matching: terms compile to regular expressions whose alternation is the *trie* of the terms
("how to (?:kill|make) ..."), so the C regex engine walks all of them in one left-to-right
pass, sharing prefixes (10x faster than a flat alternation); English terms are anchored at
ASCII word boundaries. One pass over all categories answers "anything at all?" (10-20
million characters a second on one core, for English and Chinese text alike); the
per-category passes run only on a hit. pyahocorasick is not a dependency, and would still
need word boundaries checked in Python for every hit; a pure-Python automaton is slower
than the regex engine.

Prompt injection is scored, not decided: each rule that fires has a weight, the score is
``1 - prod(1 - weight)`` and ``injection_threshold`` decides. A rule's regex runs only where
one of the strings that all its matches contain is found (read from the rule's parse tree,
see ``_required_strings``), so an ordinary message costs one scan for all rules.
Base64-looking blocks that decode to text are decoded and checked as well (rule
``encoded_instructions``), and their decoded text is moderated like the message itself.

Decisions carry ``actions`` (``{"type", "pii_type" | "category" | "rule", "count"}``, e.g.
``{"type": "pii_mask", "pii_type": "PHONE", "count": 2}``) for logs, and every action is
added to :attr:`Guardrails.counters`, keyed ``(direction, type, name)``, ready to export as
a Prometheus counter with three labels. Types: ``pii_mask``, ``pii_block``,
``moderation_flag``, ``moderation_block`` (classifier hits add ``"source": "classifier"``
and ``"score"``), ``injection_flag``, ``injection_block`` (one per rule) and
``classifier_error``.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import logging
import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmops.core.errors import UserError
from lmops.data.pii import PII_TYPES, PiiSpan, detect_pii, normalize_pii_types
from lmops.serve import moderation

__all__ = [
    "Classifier",
    "GuardrailConfig",
    "Guardrails",
    "InjectionResult",
    "InputDecision",
    "OutputDecision",
    "StreamGuard",
    "TermMatcher",
    "builtin_categories",
    "load_term_file",
    "normalize_text",
    "score_injection",
]

log = logging.getLogger(__name__)

Classifier = Callable[[str], Mapping[str, float]]
"""A pluggable moderation model: text -> score in [0, 1] per category."""

# IP addresses are left out of the default: answers about networking are full of them
# ("listen on 127.0.0.1:8000") and masking them breaks the answer.
DEFAULT_PII_TYPES: tuple[str, ...] = tuple(t for t in PII_TYPES if t != "IP")

_INJECTION_ROLES = frozenset({"user", "tool", "function"})

CONTENT_FILTER = "content_filter"


# ============================================================================ config
class GuardrailConfig(BaseModel):
    """Guardrails of one deployment. Every check can be switched off on its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pii_input: Literal["off", "mask", "block"] = "mask"
    pii_output: Literal["off", "mask"] = "mask"
    # Names from lmops.data.pii.PII_TYPES; None = all of them (IP included).
    pii_types: list[str] | None = Field(default_factory=lambda: list(DEFAULT_PII_TYPES))
    pii_placeholder: str = "<{type}>"
    moderation_input: Literal["off", "flag", "block"] = "block"
    moderation_output: Literal["off", "flag", "block"] = "block"
    # Built-in categories to use; None = all. The extra file's categories are always used.
    categories: list[str] | None = None
    extra_terms_file: Path | None = None
    injection: Literal["off", "flag", "block"] = "flag"
    injection_threshold: float = Field(0.5, ge=0.0, le=1.0)
    # Characters of streamed output held back at least. A stream always holds what may
    # still turn into a blocked term or PII (see StreamGuard), so 0 adds no latency;
    # raise it to let the classifier judge text before it is sent.
    stream_window_chars: int = Field(0, ge=0, le=4096)
    # "builtin" (the shipped moderation model), a path to a model trained with `lmops guard
    # train` (*.npz), "package.module:callable" (see Classifier), or "off"/None.
    classifier: str | None = "builtin"
    # None: the model's own threshold (the built-in's is chosen on held-out templates, see
    # lmops.serve.moderation), 0.5 for a callable.
    classifier_threshold: float | None = Field(None, ge=0.0, le=1.0)
    # Roles whose messages are not checked for PII or moderated (e.g. ["system"] when the
    # operator, not the API caller, writes the system prompt).
    trusted_roles: list[str] = Field(default_factory=list)
    # Replaces the built-in refusal text (English or Chinese, following the user).
    refusal_message: str | None = None

    @field_validator("pii_types")
    @classmethod
    def _known_pii_types(cls, v: list[str] | None) -> list[str] | None:
        try:
            norm = normalize_pii_types(v)
        except UserError as e:
            raise ValueError(str(e)) from None
        return None if norm is None else [t for t in PII_TYPES if t in norm]

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        known = builtin_categories()
        unknown = [c for c in v if c not in known]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; use some of: {', '.join(known)}")
        return list(dict.fromkeys(v))

    @field_validator("pii_placeholder")
    @classmethod
    def _placeholder_formats(cls, v: str) -> str:
        try:
            v.format(type="PHONE")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"pii_placeholder {v!r} must format with only {{type}}: {e}") from None
        return v

    @field_validator("classifier")
    @classmethod
    def _classifier_ref(cls, v: str | None) -> str | None:
        if v is None or v == "off":
            return None
        if v == "builtin" or v.endswith(".npz") or re.fullmatch(r"[\w.]+:[\w.]+", v):
            return v
        raise ValueError(
            f"classifier {v!r}: use 'builtin', 'off', a model file (*.npz) or "
            "'package.module:function'"
        )

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GuardrailConfig:
        """A named preset (``default``, ``strict``, ``permissive``, ``off``) with overrides."""
        if name not in _PRESETS:
            raise UserError(f"unknown guardrail preset {name!r}; use one of: {', '.join(_PRESETS)}")
        return cls.model_validate({**_PRESETS[name], **overrides})


_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "strict": {"pii_input": "block", "injection": "block", "pii_types": None},
    "permissive": {
        "moderation_input": "flag",
        "moderation_output": "flag",
        "injection": "flag",
    },
    "off": {
        "pii_input": "off",
        "pii_output": "off",
        "moderation_input": "off",
        "moderation_output": "off",
        "injection": "off",
    },
}


# ============================================================================ normalisation
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Invisible characters used to split words past filters: zero-width space/joiners, word
# joiner and friends, BOM, soft hyphen, Mongolian vowel separator, combining grapheme joiner.
_INVISIBLE = dict.fromkeys(
    [*range(0x200B, 0x2010), *range(0x2060, 0x2065), 0xFEFF, 0x00AD, 0x180E, 0x034F]
)
_QUOTES = {0x2018: "'", 0x2019: "'", 0x02BC: "'", 0x201C: '"', 0x201D: '"'}
_DROP = str.maketrans({**_INVISIBLE, **_QUOTES})
# Finds what _DROP would change: translating a non-ASCII string is slower than searching it.
_DROP_ANY = re.compile("[" + "".join(map(chr, sorted({**_INVISIBLE, **_QUOTES}))) + "]")
# Runs of whitespace but newlines -> " ", and " \n   " -> "\n". Written to match only what
# they change (not a lone " " or "\n"), which spares the rebuilding of unchanged text.
_HSPACE = re.compile(r" [^\S\n]+|[^\S\n ][^\S\n]*")
_NEWLINES = re.compile(r" \n\s*|\n\s+")
# Spaces and ASCII separators between two Chinese characters ("自 杀", "自*杀", "自-杀").
# The lookbehind comes after the first separator, so that the regex engine skips straight
# to separators instead of trying every position.
_GAP = r"[\s*_.\-·・~|/\\+#^=]"
_CJK_GAP = re.compile(rf"{_GAP}(?<=[{_CJK}]{_GAP}){_GAP}*(?=[{_CJK}])")
# "self-harm", "al_qaeda" -> "self harm", "al qaeda".
_LATIN_JOIN = re.compile(r"(?<=[a-z])[-_](?=[a-z])")
_SURROGATES = re.compile("[\ud800-\udfff]")
_HAN = re.compile("[\u3400-\ufaff]")  # what may need traditional -> simplified
# Whitespace that _HSPACE changes, with "  ": anything but a lone space (most text has none).
_ODD_SPACE = re.compile(r"[^\S\n ]")
# Full-width ASCII and the ideographic space, mapped to their NFKD forms (one character with
# no combining class each), so NFKC(text) == NFKC(text folded): Chinese text is then
# usually NFKC already, and the full normalisation (~50x slower) is skipped.
_WIDE_RUN = re.compile("[\uff01-\uff5e\u3000]+")
_FOLD = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def _nfkc(text: str) -> str:
    """``unicodedata.normalize("NFKC", text)``, cheaply for text that is (almost) NFKC."""
    if unicodedata.is_normalized("NFKC", text):  # a quick check, far cheaper than NFKC
        return text
    text = _WIDE_RUN.sub(lambda m: m.group().translate(_FOLD), text)
    if unicodedata.is_normalized("NFKC", text):
        return text
    return unicodedata.normalize("NFKC", text)


@cache
def _t2s() -> Callable[[str], str] | None:
    try:
        import opencc
    except ImportError:  # pragma: no cover - opencc is a dependency
        log.warning("opencc is not installed: traditional Chinese is matched as written")
        return None
    return cast(Callable[[str], str], opencc.OpenCC("t2s").convert)


def normalize_text(text: str) -> str:
    """The form that moderation terms and injection rules are matched against.

    Lossy and for matching only: offsets do not map back to ``text``.
    """
    # Each step runs only where it can change something: on ASCII text NFKC, _DROP, OpenCC
    # and _CJK_GAP never do, and the substitutions are skipped when their characters are
    # missing (most text has single spaces only, and no "-" or "_").
    if text.isascii():  # O(1) in CPython
        t = text.lower()
        han = False
    else:
        t = _nfkc(text)
        if _DROP_ANY.search(t) is not None:
            t = t.translate(_DROP)
        t = t.lower()
        han = _HAN.search(t) is not None  # without it there is no Chinese for OpenCC/_CJK_GAP
        convert = _t2s()
        if convert is not None and han:
            # OpenCC takes UTF-8, which cannot carry lone surrogates.
            convert_in = _SURROGATES.sub("\ufffd", t)
            t = convert(convert_in)
    # isprintable(): no whitespace but " " (the others are "Separator" or "Other"), in C.
    if "  " in t or (not t.isprintable() and _ODD_SPACE.search(t) is not None):
        t = _HSPACE.sub(" ", t)
    if "\n" in t:
        t = _NEWLINES.sub("\n", t)
    if han:
        t = _CJK_GAP.sub("", t)
    if "-" in t or "_" in t:
        t = _LATIN_JOIN.sub(" ", t)
    return t


# ============================================================================ term lists
_CATEGORY_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def load_term_file(text: str, source: str, default_category: str | None) -> dict[str, list[str]]:
    """Parse a term file: one term a line, ``#`` comments, ``[category]`` section headers.

    Terms before any header belong to ``default_category``; with ``None`` such a term is
    an error. Terms are returned normalised with :func:`normalize_text`. Errors name
    ``source:line``.
    """
    out: dict[str, list[str]] = {}
    category = default_category
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
            if not _CATEGORY_NAME.fullmatch(name):
                raise UserError(
                    f"{source}:{lineno}: bad category {name!r}; use lower-case letters, "
                    "digits and '_'"
                )
            category = name
            continue
        if category is None:
            raise UserError(f"{source}:{lineno}: term {line!r} before any [category] line")
        term = normalize_text(line).strip()
        if term:
            out.setdefault(category, []).append(term)
    return out


@cache
def _builtin_terms() -> dict[str, tuple[str, ...]]:
    root = resources.files("lmops.serve").joinpath("resources")
    out: dict[str, tuple[str, ...]] = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".txt") or entry.name == "README.txt":
            continue
        category = entry.name[: -len(".txt")]
        parsed = load_term_file(entry.read_text(encoding="utf-8"), entry.name, category)
        for cat, terms in parsed.items():
            out[cat] = tuple(dict.fromkeys(out.get(cat, ()) + tuple(terms)))
    return out


def builtin_categories() -> tuple[str, ...]:
    """Names of the shipped moderation categories."""
    return tuple(_builtin_terms())


def _is_word_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "_")


def _trie_body(terms: Iterable[str], *, words: bool = True) -> str:
    """One alternation sharing prefixes: {"kill you", "kill yourself"} -> kill you(?:rself)?.

    With ``words`` a term ending in a Latin letter or digit ends at an (ASCII) word
    boundary; without, the regex is for *finding* any of the strings, so where one ends its
    longer forms are left out ({"kill you", "kill yourself"} -> kill you).
    """
    trie: dict[str, Any] = {}
    for term in terms:
        node = trie
        for ch in term:
            node = node.setdefault(ch, {})
        node[""] = {}  # a term ends here

    def emit(node: dict[str, Any], last: str) -> str:
        if not words and "" in node:
            return ""
        branches = [re.escape(ch) + emit(child, ch) for ch, child in sorted(node.items()) if ch]
        if "" in node:
            # Tried after the longer terms (branches), so the longest term wins.
            branches.append(r"\b" if _is_word_char(last) else "")
        if len(branches) == 1:
            return branches[0]
        return "(?:" + "|".join(branches) + ")"

    return emit(trie, "")


def _compile_terms(terms: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """Two regexes: terms starting with a Latin letter or digit, and all the others.

    The first is anchored at an ASCII word boundary, so the engine tries only word starts
    (re.ASCII: a Chinese character next to "kill" is a boundary, where Unicode ``\\b`` would
    see none); the second starts with literal characters, so the engine skips straight to
    the positions where one of them occurs. Together they are ~10x faster than one
    alternation mixing both.
    """
    terms = list(terms)
    latin = [t for t in terms if _is_word_char(t[0])]
    other = [t for t in terms if not _is_word_char(t[0])]
    out = []
    if latin:
        out.append(re.compile(r"\b" + _trie_body(latin), re.ASCII))
    if other:
        out.append(re.compile(_trie_body(other), re.ASCII))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class TermHit:
    category: str
    term: str
    start: int  # offsets in the *normalised* text
    end: int


class TermMatcher:
    """Finds the terms of several categories in normalised text (see :func:`normalize_text`).

    One pass of two regexes over all terms answers the usual question, "anything at all?";
    only when it finds something do the per-category regexes run, so that a term of one
    category cannot hide an overlapping term of another.
    """

    def __init__(self, terms: Mapping[str, Iterable[str]]) -> None:
        self.terms: dict[str, tuple[str, ...]] = {
            cat: tuple(dict.fromkeys(t for t in ts if t)) for cat, ts in terms.items()
        }
        self._any = _compile_terms({t for ts in self.terms.values() for t in ts})
        self._by_category = {cat: _compile_terms(ts) for cat, ts in self.terms.items() if ts}
        self.longest = max((len(t) for ts in self.terms.values() for t in ts), default=0)
        self._prefix_set: tuple[frozenset[str], re.Pattern[str]] | None = None  # term_start

    def find(self, normalized: str) -> list[TermHit]:
        """Every hit: per category left to right, non-overlapping within a category."""
        if not _found(self._any, normalized):
            return []
        hits: list[TermHit] = []
        for cat, patterns in self._by_category.items():
            for p in patterns:
                hits.extend(
                    TermHit(cat, m.group(), m.start(), m.end()) for m in p.finditer(normalized)
                )
        return hits

    def term_start(self, normalized: str) -> int:
        """Where the longest suffix of ``normalized`` that begins some term starts (a term
        found in ``normalized + more`` cannot start before it); ``len(normalized)`` when no
        suffix does. A whole term counts (it may still grow into a longer word), and a
        term that starts with a Latin letter or digit only begins at a word start.
        Read-only; used by :class:`StreamGuard` to hold back as little as possible.
        """
        prefixes, starts = self._prefixes()
        n = len(normalized)
        for m in starts.finditer(normalized, max(n - self.longest, 0)):
            if normalized[m.start() :] in prefixes:
                return m.start()
        return n

    def _prefixes(self) -> tuple[frozenset[str], re.Pattern[str]]:
        """Every beginning of every term, and a regex finding where one may begin (a term's
        first character; a Latin letter or digit only at a word start)."""
        if self._prefix_set is None:  # built on first use: only streams need it
            terms = [t for ts in self.terms.values() for t in ts]
            firsts = {t[0] for t in terms}
            word = "".join(re.escape(c) for c in sorted(firsts) if _is_word_char(c))
            other = "".join(re.escape(c) for c in sorted(firsts) if not _is_word_char(c))
            alternatives = [rf"\b[{word}]" if word else "", f"[{other}]" if other else ""]
            self._prefix_set = (
                frozenset(t[:i] for t in terms for i in range(1, len(t) + 1)),
                re.compile("|".join(a for a in alternatives if a) or "(?!)", re.ASCII),
            )
        return self._prefix_set


# ============================================================================ injection
_Cue = tuple[str, bool]  # a string, and whether it starts a word (an ASCII \b before it)


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    weight: float
    pattern: re.Pattern[str]
    # Strings one of which every match of ``pattern`` contains, and a regex finding them;
    # None: none known.
    cues: frozenset[_Cue] | None
    cues_re: tuple[re.Pattern[str], ...] | None


_W = r"(?:[\w'-]+ ){0,3}?"  # up to three filler words (English, normalised text)


def _rule(name: str, weight: float, *alternatives: str) -> _Rule:
    # ASCII: \b and \w are ASCII-only, so "请ignore all previous instructions" has a word
    # boundary between 请 and i; the Chinese alternatives are literals and unaffected.
    pattern = re.compile("|".join(f"(?:{a})" for a in alternatives), re.ASCII)
    cues = _required_strings(pattern)
    return _Rule(name, weight, pattern, cues, None if cues is None else _compile_cues(cues))


def _compile_cues(cues: Iterable[_Cue]) -> tuple[re.Pattern[str], ...]:
    """Regexes finding any of ``cues``: word starts anchored at \b, as in _compile_terms."""
    cues = set(cues)
    words = {s for s, at_word in cues if at_word}
    others = {s for s, at_word in cues if not at_word}
    out = []
    if words:
        out.append(re.compile(r"\b" + _trie_body(words, words=False), re.ASCII))
    if others:
        out.append(re.compile(_trie_body(others, words=False), re.ASCII))
    return tuple(out)


def _required_strings(pattern: re.Pattern[str]) -> frozenset[_Cue] | None:
    """Strings one of which every match of ``pattern`` contains; None when none are known.

    Read from the parse tree of the standard library's (private) regex parser: a run of
    literals is one string, an alternation needs one of its branches' strings, a group or a
    repeat of at least once its content's, and a sequence the strings of any one of its
    parts; the rarest-looking of those is kept (see ``_cue_weight``). Anything else
    (classes, assertions, optional parts, case-insensitive groups) requires nothing. A
    string that begins with an ASCII letter or digit right after a ``\b``, a non-word
    literal or an optional run ending in one is marked as starting a word, so that its
    regex tries word starts only.

    Only ever used to skip a regex that cannot match, so an unknown parser means None.
    """
    try:
        parser: Any = importlib.import_module("re._parser")
        ops: Any = importlib.import_module("re._constants")
        tree = parser.parse(pattern.pattern, pattern.flags)
        if tree.state.flags & re.IGNORECASE or not tree.state.flags & re.ASCII:
            return None
        return _required_in(tree, ops, False)[0]
    except Exception:  # pragma: no cover - a Python whose re internals differ
        return None


def _cue_weight(cues: frozenset[_Cue]) -> tuple[bool, int, int]:
    # Strings the regex engine can skip to cheaply first (not a space or an ASCII letter
    # or digit in mid-word, where it would stop all the time), then longer and less common
    # characters (a space counts nothing, an ASCII letter or digit 1, a Chinese character
    # 2, punctuation 3), then fewer strings.
    def weight(s: str) -> int:
        return sum(0 if c == " " else (1 if c.isascii() else 2) if c.isalnum() else 3 for c in s)

    cheap = all(at_word or not (s[0] == " " or _is_word_char(s[0])) for s, at_word in cues)
    return cheap, min(weight(s) for s, _ in cues), -len(cues)


def _required_in(items: Any, ops: Any, word_start: bool) -> tuple[frozenset[_Cue] | None, bool]:
    """(required strings, word start at the end) of a parsed sequence.

    ``word_start``: a word character at this point starts a word (the character before it,
    if any, is not a word character).
    """
    best: frozenset[_Cue] | None = None
    run: list[str] = []  # literal characters in a row
    run_at_word = False

    def consider(cues: frozenset[_Cue] | None) -> None:
        nonlocal best
        if cues and (best is None or _cue_weight(cues) > _cue_weight(best)):
            best = cues

    for op, av in items:
        if op is ops.LITERAL:
            c = chr(av)
            if not run:
                run_at_word = word_start and _is_word_char(c)
            run.append(c)
            word_start = not _is_word_char(c)
            continue
        if run:
            consider(frozenset({("".join(run), run_at_word)}))
            run = []
        cues: frozenset[_Cue] | None = None
        if op is ops.AT:
            word_start = av in (ops.AT_BOUNDARY, ops.AT_BEGINNING, ops.AT_BEGINNING_STRING)
        elif op in (ops.ASSERT, ops.ASSERT_NOT):
            pass  # zero-width: neither requires nor moves
        elif op is ops.SUBPATTERN:
            _group, add_flags, _del_flags, sub = av
            cues, word_start = _required_in(sub, ops, word_start)
            if add_flags & re.IGNORECASE:
                cues = None
        elif op is ops.ATOMIC_GROUP:
            cues, word_start = _required_in(av, ops, word_start)
        elif op is ops.BRANCH:
            results = [_required_in(b, ops, word_start) for b in av[1]]
            branch_cues = [c for c, _ in results]
            if all(c is not None for c in branch_cues):
                cues = frozenset().union(*cast(list[frozenset[_Cue]], branch_cues))
            word_start = all(end for _, end in results)
        elif op in (ops.MAX_REPEAT, ops.MIN_REPEAT, ops.POSSESSIVE_REPEAT):
            least, most, sub = av
            first, end = _required_in(sub, ops, word_start)
            if least >= 1:
                cues = first
            if most != 1:  # a later repetition starts where the one before it ended
                end = end and _required_in(sub, ops, False)[1]
            word_start = end and (least >= 1 or word_start)
        else:  # a class, any character, a back reference: may be a word character
            word_start = False
        consider(cues)
    if run:
        consider(frozenset({("".join(run), run_at_word)}))
    return best, word_start


_INJECTION_RULES: tuple[_Rule, ...] = (
    _rule(
        "ignore_instructions",
        0.8,
        r"\b(?:ignore|disregard|forget|skip|override|bypass|stop following|do not follow"
        r"|don't follow|no longer follow) " + _W + r"(?:all|any|every|previous|prior|above"
        r"|earlier|preceding|initial|original|system|developer|safety|your) "
        + _W
        + r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails"
        r"|constraints|restrictions|programming|polic(?:y|ies))\b",
        r"(?:忽略|无视|忘记|忘掉|忘了|不要理会|别管|跳过|抛弃|放弃|绕过|覆盖|不再遵守|不要遵守"
        r"|停止遵守)[^。！？\n]{0,8}?(?:之前|以前|先前|此前|前面|上面|以上|上述|原来|原有|原先|最初"
        r"|所有|全部|一切|你的|系统)[^。！？\n]{0,8}?(?:指令|指示|规则|提示词|系统提示|设定|命令"
        r"|限制|约束|安全策略)",
    ),
    _rule(
        "reveal_system_prompt",
        0.7,
        r"\b(?:reveal|show|print|output|repeat|display|leak|dump|recite|share|write out"
        r"|tell|give) (?:me |us )?" + _W + r"(?:your|the) " + _W + r"(?:system|initial"
        r"|original|hidden|secret|developer|internal) (?:prompt|instructions?|message|rules)\b",
        r"\bwhat(?:'s| is| are| were) your (?:system|initial|original|hidden|secret)"
        r" (?:prompt|instructions?|rules)\b",
        r"\brepeat " + _W + r"(?:words|text|everything) above\b",
        r"(?:输出|显示|告诉我|打印|重复|泄露|透露|给我看|展示|说出|复述|公开|发给我)[^。！？\n]{0,6}?"
        r"(?:系统|初始|原始|隐藏|内部|预设)(?:提示词|提示|指令|设定|消息|prompt)",
        r"你的(?:系统|初始|原始|隐藏)(?:提示词|提示|指令|设定)是什么",
        r"重复(?:一下|一遍)?(?:上面|以上|前面)的?(?:所有|全部)?(?:内容|文字)",
    ),
    _rule(
        "persona_override",
        0.7,
        r"\byou are (?:now|no longer)\b.{0,40}?\b(?:dan|jailbroken|unrestricted|unfiltered"
        r"|uncensored|evil|free from|without (?:any )?(?:rules|restrictions|limits|filters))",
        r"\bdo anything now\b",
        r"\b(?:enable|activate|enter|switch to) (?:the )?(?:dan|jailbreak|god) mode\b",
        r"\b(?:dan|jailbreak|god) mode (?:enabled|activated|on)\b",
        r"\b(?:pretend|act|behave|roleplay|role play)\b.{0,40}?\b(?:no|without|free of|free from"
        r"|not bound by|ignoring) (?:any )?(?:[a-z]+ )?(?:rules|restrictions|limits|limitations"
        r"|filters|guidelines|censorship|ethics|morals|policies)\b",
        r"你现在是[^。！？\n]{0,10}?(?:dan|不受(?:任何)?限制|没有(?:任何)?限制|无限制|越狱|邪恶)",
        r"(?:越狱|上帝|dan)模式(?:已)?(?:开启|启动|激活|启用)",
        r"(?:进入|开启|启动|激活|启用)了?(?:越狱|上帝|dan)模式",
        r"(?:扮演|假装|假设你是|充当)[^。！？\n]{0,20}?(?:没有|不受|无视|不遵守|不用遵守)(?:任何)?"
        r"[^。！？\n]{0,4}?(?:限制|规则|道德|约束|审查|过滤)",
    ),
    _rule(
        "chat_template_tokens",
        0.8,
        # Normalised text reads "_" between letters as a space: "im_start" is "im start".
        (
            r"<\|(?:im_start|im_end|im_sep|system|user|assistant|endoftext|eot_id"
            r"|start_header_id|end_header_id|begin_of_text|end_of_text)\|>"
        ).replace("_", "[_ ]"),
        r"\[/?inst\]|<</?sys>>|<(?:start|end)[_ ]of[_ ]turn>",
    ),
    _rule(
        "developer_mode",
        0.4,
        r"\bdeveloper mode (?:enabled|activated|on)\b",
        r"开发者模式(?:已)?(?:开启|启动|激活|启用)",
    ),
    _rule(
        "fake_role_header",
        0.4,
        r"(?:^|\n)(?:#{2,} ?)?(?:system|assistant) ?: ",
        r"(?:^|\n)(?:#{2,} ?)?(?:系统|助手)[:：]",
    ),
    _rule(
        "new_instructions",
        0.4,
        r"\b(?:new|updated|real|actual|true) (?:system )?instructions? ?:",
        r"\bsystem override\b",
        r"\bfrom now on,? you (?:will|must|shall|are)\b",
        r"(?:新的|最新的?|真正的)(?:系统)?(?:指令|指示)[:：]",
        r"从现在(?:开始|起)[,，]?你(?:必须|要|将|只能|不再)",
    ),
    _rule(
        "restriction_bypass",
        0.3,
        r"\b(?:without|no|ignore|bypass|disable) (?:any |your |all )?(?:content |safety "
        r"|ethical |moral )?(?:filters?|censorship|restrictions|guardrails|safety guidelines"
        r"|ethical guidelines|moral constraints)\b",
        r"(?:不受|没有|无视|绕过|解除|突破)(?:任何)?(?:道德|伦理|内容|安全)?(?:限制|审查|过滤|约束)",
    ),
)

# One scan that finds no cue of any rule rules them all out (most messages).
_ANY_RULE_CUE = (
    None
    if any(r.cues is None for r in _INJECTION_RULES)
    else _compile_cues(c for r in _INJECTION_RULES for c in r.cues or ())
)
_ENCODED_CUES = re.compile(
    r"\b(?:decode|decoded|base64|execute|follow|run)\b|解码|执行|按照|照做", re.ASCII
)
_BASE64 = re.compile(
    r"(?<![A-Za-z0-9+/])(?:[A-Za-z0-9+/]{4}){10,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
)


def _decoded_payloads(text: str) -> list[str]:
    """Base64 blocks of >= 40 characters in ``text`` that decode to printable UTF-8."""
    out = []
    for m in _BASE64.finditer(text):
        try:
            decoded = base64.b64decode(m.group(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        printable = sum(c.isprintable() or c.isspace() for c in decoded)
        if len(decoded) >= 12 and printable >= 0.95 * len(decoded):
            out.append(decoded)
    return out


@dataclass(frozen=True, slots=True)
class InjectionResult:
    """``score`` in [0, 1] and the names of the rules that fired (sorted)."""

    score: float
    rules: tuple[str, ...]


def _combine(weights: Iterable[float]) -> float:
    return 1.0 - math.prod(1.0 - w for w in weights)


def _found(patterns: Iterable[re.Pattern[str]], text: str) -> bool:
    """Whether one of ``patterns`` is found in ``text``."""
    # A loop, not any(<generator>): it runs for each streamed token, where setting up the
    # generator costs about as much as the searches.
    for p in patterns:  # noqa: SIM110
        if p.search(text) is not None:
            return True
    return False


def _score_plain(normalized: str) -> dict[str, float]:
    if _ANY_RULE_CUE is not None and not _found(_ANY_RULE_CUE, normalized):
        return {}
    fired: dict[str, float] = {}
    for r in _INJECTION_RULES:
        if r.cues_re is not None and not _found(r.cues_re, normalized):
            continue
        if r.pattern.search(normalized) is not None:
            fired[r.name] = r.weight
    return fired


def score_injection(text: str) -> InjectionResult:
    """Score ``text`` for prompt-injection markers; the caller compares with a threshold."""
    return _score_injection(text)


def _score_injection(
    text: str, normalized: str | None = None, payloads: list[str] | None = None
) -> InjectionResult:
    """:func:`score_injection`, given ``normalize_text(text)`` and ``text``'s decoded payloads
    where the caller has them already."""
    if normalized is None:
        normalized = normalize_text(text)
    fired = _score_plain(normalized)
    if payloads is None:
        payloads = _decoded_payloads(_nfkc(text))
    if payloads:
        inner = _combine(_score_plain(normalize_text("\n".join(payloads))).values())
        if inner >= 0.5:
            fired["encoded_instructions"] = 0.8
        elif _ENCODED_CUES.search(normalized):
            fired["encoded_payload"] = 0.5
    return InjectionResult(round(_combine(fired.values()), 4), tuple(sorted(fired)))


# ============================================================================ decisions
@dataclass(frozen=True)
class InputDecision:
    """What to do with a request. ``messages`` are always the masked copy."""

    action: Literal["allow", "block"]
    messages: list[dict[str, Any]]
    actions: list[dict[str, Any]] = field(default_factory=list)
    refusal: str | None = None  # user-facing text when blocked
    flagged: tuple[str, ...] = ()  # moderation categories that were hit (flag or block)
    injection: InjectionResult = InjectionResult(0.0, ())

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
    cjk = sum(1 for c in text if "\u3400" <= c <= "\u9fff")
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
        # Classifier categories that are built-in ones but not selected are dropped.
        self._dropped = (
            frozenset(builtin) - set(wanted) if cfg.categories is not None else frozenset()
        )
        self._trusted = frozenset(cfg.trusted_roles)
        self._stats_cache: dict[str, _Scored] = {}  # see _message_stats
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
        flat = normalized.replace("\n", " ") if "\n" in normalized else normalized
        return self._terms(flat, moderation.deobfuscate(flat))

    def _terms(self, flat: str, deep: str) -> dict[str, int]:
        """:meth:`_moderate_deep` given both forms (``deep`` is ``deobfuscate(flat)``; the
        second pass runs only where it differs, which ordinary text never does)."""
        found = self._moderate(flat)
        if deep != flat:
            for c, n in self._moderate(deep).items():
                found[c] = max(n, found.get(c, 0))
        return found

    def classify(self, text: str, direction: str = "output") -> dict[str, float]:
        """Classifier scores at or over ``classifier_threshold``; ``{}`` without a classifier.

        A classifier that raises is logged and counted (``classifier_error``), and its
        verdict is treated as empty: the term lists still apply.
        """
        if self._model is not None and text:
            return self._guarded(direction, lambda m: m.score_normalized(normalize_text(text)))
        return self._classify(text, direction)

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
        """The built-in model's stats and P(harmful) of one input message (``deep``: its
        de-obfuscated form where the caller has it), remembered (the same system prompt
        and earlier turns come back with every request)."""
        hit = self._stats_cache.get(text)
        if hit is None:
            if deep is None:
                deep = moderation.deobfuscate(normalize_text(text))
            stats = model.stats(deep)
            hit = _Scored(stats, model.prob_stats(stats))
            if len(self._stats_cache) >= 4096:
                self._stats_cache.clear()
            self._stats_cache[text] = hit
        return hit

    def _model_scores(
        self,
        model: moderation.ModerationModel,
        text: str,
        deep: str,
        parts: Sequence[str],
        direction: str,
    ) -> dict[str, float]:
        """The built-in model on ``text`` (de-obfuscated: ``deep``) and on each of the
        messages ``parts`` it joins: each message's stats come from the cache and add up
        to the stats of all of them, so ``text`` itself is read again only when it holds
        more than the messages (decoded payloads). The most harmful reading counts."""

        def score(m: moderation.ModerationModel) -> Mapping[str, float]:
            if not parts:  # one message, or a reply
                if direction == "input":
                    return m.verdict(self._message_stats(m, text, deep).stats, deep)
                return m.verdict(m.stats(deep), deep)
            scored = [self._message_stats(m, part) for part in parts]
            joined = moderation.EMPTY_STATS
            for one in scored:
                joined = joined.add(one.stats)
            best, best_text = m.prob_stats(joined), deep
            if len(text) > sum(map(len, parts)) + len(parts):  # payloads were appended
                full = m.stats(deep)
                if m.prob_stats(full) > best:
                    best, joined = m.prob_stats(full), full
            for one, part in zip(scored, parts, strict=True):
                if one.prob > best:
                    best, joined = one.prob, one.stats
                    best_text = moderation.deobfuscate(normalize_text(part))
            return m.verdict(joined, best_text) if best >= 0.5 * m.threshold else {}

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
        flat = norm.replace("\n", " ") if "\n" in norm else norm
        deep = moderation.deobfuscate(flat)
        terms = self._terms(flat, deep)
        scores: dict[str, float] = {}
        if not terms and self._model is not None:
            scores = self._model_scores(self._model, text, deep, parts, direction)
        elif not terms and self.classifier is not None:
            scores = self._classify(text, direction)
            for part in parts:
                for c, s in self._classify(part, direction).items():
                    scores[c] = max(s, scores.get(c, 0.0))
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

    def _count(self, direction: str, actions: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            for a in actions:
                name = a.get("pii_type") or a.get("category") or a.get("rule") or ""
                self.counters[(direction, a["type"], name)] += int(a.get("count", 1))

    def _mask(self, text: str, counts: Counter[str]) -> str:
        spans = detect_pii(text, self.config.pii_types)
        if not spans:
            return text
        return _apply_masks(text, spans, 0, self.config.pii_placeholder, counts)

    def _refusal(self, text: str, kind: str, **fmt: str) -> str:
        if self.config.refusal_message is not None:
            return self.config.refusal_message
        return _REFUSALS[_language(text)][kind].format(**fmt)

    # ------------------------------------------------------------------ input
    def check_input(self, messages: list[dict[str, Any]]) -> InputDecision:
        """Check a chat request before it reaches the model."""
        cfg = self.config
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
                msg = {**msg, "content": _map_content(content, lambda t: self._mask(t, pii))}
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
        if cfg.moderation_input != "off" and user_text:
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
            if injectable == moderated:
                injection = _score_injection(user_text, normalized, payloads)
            else:
                injection = _score_injection("\n".join(injectable))
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
        if cfg.moderation_output != "off":
            actions, flagged = self._moderation(text, "output", cfg.moderation_output)
            if flagged and cfg.moderation_output == "block":
                self._count("output", actions)
                kind = "self_harm" if "self_harm" in flagged else "default"
                return OutputDecision("block", self._refusal(text, kind), actions, flagged)
        if cfg.pii_output == "mask":
            pii: Counter[str] = Counter()
            text = self._mask(text, pii)
            actions += [
                {"type": "pii_mask", "pii_type": t, "count": n} for t, n in sorted(pii.items())
            ]
        self._count("output", actions)
        return OutputDecision("allow", text, actions, flagged)

    def stream_guard(self) -> StreamGuard:
        """A guard for one streamed reply (not shared between streams)."""
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


# ============================================================================ streaming
# What a PII finding is made of (see lmops.data.pii): ASCII letters and digits, the
# punctuation of e-mails, keys and grouped numbers, the brackets of "[at]"-spelled e-mails,
# full-width forms, digits of any script (\d) and the invisible characters that detection
# skips. A run of them that reaches the end of the text may still grow into (or out of) a
# finding, so it is held, up to _MAX_HOLD characters.
_INVISIBLE_CLASS = (
    "\u00ad\u034f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\u20e3"
    "\ufe00-\ufe0f\ufeff\U000e0000-\U000e007f"
)
_STICKY_CLASS = (
    r"A-Za-z\d@._%+\-/=:()\[\]{}<>~"
    # full-width forms but the sentence punctuation of Chinese text (！＂＇，：；？)
    "\uff03-\uff06\uff08-\uff0b\uff0d-\uff19\uff1c-\uff1e\uff20-\uff5e" + _INVISIBLE_CLASS
)
_INVISIBLE_RE = re.compile(f"[{_INVISIBLE_CLASS}]+")
_INVISIBLE_ONE = re.compile(f"[{_INVISIBLE_CLASS}]")
_ASCII_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_STICKY_REV = re.compile(f"[{_STICKY_CLASS}]*")  # matched on the reversed text
_STICKY_ONE = re.compile(f"[{_STICKY_CLASS}]")
# Blanks that may separate digit groups or surround "at"/"@" inside one finding.
_BLANKS = frozenset(" \t\u00a0\u1680\u202f\u205f\u3000" + "".join(map(chr, range(0x2000, 0x200B))))
# Spelled-out e-mail connectors ("john at example dot com", "john [at] example.com").
_CONNECTORS = ("at", "dot", "@", "[at]", "(at)", "{at}", "<at>", "[dot]", "(dot)", "{dot}", "<dot>")
_CONNECTORS_GLUED = ("@", "\uff20", *_CONNECTORS[3:])  # those that need no blank around them
_MAX_HOLD = 1024
# An open private-key block ("-----BEGIN ... PRIVATE KEY-----" with no END yet) is held
# whole, up to the length the detector reads (16 KiB of body).
_PEM_HOLD = 16_500
# Emitted text kept to the left of the held text: PII detection looks back at most 65
# characters beyond a token (an e-mail's local part, read backwards from "@", may be 64
# long), and the context is extended to the start of the token it ends in.
_LEFT_CONTEXT = 128
# With a classifier, a stream is judged each time this many characters came in, on its
# last _CLASSIFY_WINDOW characters (so the cost stays linear in the reply's length), and
# as a whole at its end.
_CLASSIFY_EVERY = 256
_CLASSIFY_WINDOW = 1024


def _is_connector(word: str, at_end: bool) -> bool:
    """Whether ``word`` is an e-mail connector, or (``at_end``) may still become one."""
    if len(word) > 5:  # longer than any connector (most words: decided at once)
        return False
    w = word.lower() if word.isascii() else unicodedata.normalize("NFKC", word).lower()
    return w in _CONNECTORS or (at_end and any(c.startswith(w) for c in _CONNECTORS))


def _short_word(word: str) -> bool:
    """Whether ``word`` ends with a word of one ASCII letter, or two starting with "E" (a
    passport number's "E", "G", "EA" or "E X" may be written apart from its digits)."""
    letters = word[len(word.rstrip(_ASCII_LETTERS)) :]
    if not (len(letters) == 1 or (len(letters) == 2 and letters[0] in "Ee")):
        return False
    return not word[: -len(letters)][-1:].isalnum()


def _sticky_start(text: str, limit: int) -> int:
    """Start of the PII-like run that ends ``text`` (``len(text)`` when there is none).

    The run: words of _STICKY_CLASS characters, joined by up to three blanks before a
    word that starts with a digit when the word before ends with one, a ")" or "+", or is
    a passport's letters ("138 1234 5678", "(010) 1234", "+86 138", "E 1234 5678"), or
    before a word that starts with a letter after an "E" ("E X1234567"); or by up to two
    around an e-mail connector ("john at example dot com", "john @ example.com", "john
    [at]example"); and up to three blanks at the very end after such a word (a gap or a
    connector may follow). A word at the very end that begins a connector ("john a")
    counts as one. Invisible characters are skipped (detection does not see them). At
    most ``limit`` characters long.
    """
    n = len(text)
    if not n or (text[-1] not in _BLANKS and _STICKY_ONE.match(text, n - 1) is None):
        return n  # ends in something no finding is made of (most text, at once)
    floor = max(n - limit, 0)
    rev = text[::-1]

    def word_start(end: int) -> int:
        m = _STICKY_REV.match(rev, n - end)
        return max(end - (m.end() - (n - end)) if m else end, floor)

    def blanks_before(end: int, most: int) -> int:
        # Invisible characters are not there for detection: skipped, not counted.
        g, blanks = end, 0
        while g > floor:
            if text[g - 1] in _BLANKS:
                if blanks == most:
                    break
                blanks += 1
            elif _INVISIBLE_ONE.match(text, g - 1) is None:
                break
            g -= 1
        return g

    end = blanks_before(n, 3)
    if end < n and (end == 0 or _STICKY_ONE.match(text, end - 1) is None):
        return n  # blanks after something that cannot be part of a finding
    while True:
        start = word_start(end)
        if start == end:
            return end
        gap = blanks_before(start, 3)
        if gap == start or gap <= floor or _STICKY_ONE.match(text, gap - 1) is None:
            return start
        word = _INVISIBLE_RE.sub("", text[start:end])
        left = _INVISIBLE_RE.sub("", text[word_start(gap) : gap])
        # Digit groups ("138 1234"), after a prefix ("+86 138", "(010) 1234") or a
        # passport's letters ("E 1234 5678", "E X1234567"); or the parts of a spelled-out
        # e-mail ("john at example", "john [at]example", "john@ example").
        grouped = (
            left[-1].isdecimal() or left[-1] in ")+" or _short_word(left)
            if word[0].isdecimal()
            else word[0].isalpha() and _short_word(left) and left[-1] in "Ee"
        )
        if not grouped and (
            sum(c in _BLANKS for c in text[gap:start]) > 2
            or not (
                _is_connector(word, end == n)
                or _is_connector(left, False)
                or word.lower().startswith(_CONNECTORS_GLUED)
                or left.lower().endswith(_CONNECTORS_GLUED)
            )
        ):
            return start
        end = gap


_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")


def _pem_start(text: str) -> int:
    """Start of a private-key block that is still open at the end of ``text`` (its header
    incomplete, or no END marker yet); ``len(text)`` when there is none."""
    i = text.rfind("-----BEGIN ")
    if i < 0 or len(text) - i > _PEM_HOLD:
        return len(text)
    rest = text[i + 11 :]
    head = rest.find("-----")
    if head < 0:
        return i if len(rest) <= 60 else len(text)
    if "PRIVATE KEY" not in rest[:head] or _PEM_END.search(rest, head + 5) is not None:
        return len(text)
    return i


_SETTLE_CJK = re.compile(rf"(?<=[{_CJK}]){_GAP}+\Z")
_SETTLE_LATIN = re.compile(r"(?<=[a-z])[-_]\Z")


def _settled(normalized: str) -> str:
    """``normalized`` as more text may still turn its end into: separators after a Chinese
    character vanish when another one follows ("自 " + "杀"), a "-" or "_" after a Latin
    letter is read as a space ("self-" + "harm"), and line breaks as spaces (terms are
    matched across them)."""
    t = normalized.replace("\n", " ") if "\n" in normalized else normalized
    if t and not t[-1].isalnum():
        t = _SETTLE_CJK.sub("", t)
        t = _SETTLE_LATIN.sub(" ", t)
    return t


def _plain_form(text: str) -> str:
    return _settled(normalize_text(text))


def _deep_form(text: str) -> str:
    return moderation.deobfuscate(_settled(normalize_text(text)))


# De-obfuscation reads a spelling only once enough of it is there ("b.o" is not joined
# before "b.o.m"; "b0" is read as "bo" only before another letter; "zha4d" is leet until
# "zha4dan4" is pinyin), so where the text ends like one may be under way the guard also
# reads it as it may go on: with ".x.x" or "xx" appended (those two characters taken off
# again when they were read as part of it), and with the tone or leet digits of its last
# word dropped.
_SPECULATE = re.compile(
    r"(?:(?<![a-z0-9@$])[a-z0-9@$][ .\-_*·|/+~,:;'\"`^]{0,3}|[a-z0-9@$!|]*[a-z][0-9@$!|]+"
    r"|[a-z0-9@$!|]*[0-9@$!|][a-z]+)\Z"
)
_LAST_WORD_LEET = re.compile(r"[0-9@$!|](?=[a-z0-9@$!|]*\Z)")


def _appended(more: str, text: str) -> str:
    read = moderation.deobfuscate(_settled(normalize_text(text)) + more)
    return read[:-2] if read.endswith("xx") else ""


def _undigited(text: str) -> str:
    return moderation.deobfuscate(_LAST_WORD_LEET.sub("", _settled(normalize_text(text))))


_SPECULATIONS: tuple[Callable[[str], str], ...] = (
    partial(_appended, ".x.x"),
    partial(_appended, "xx"),
    _undigited,
)


class StreamGuard:
    """Checks a streamed reply delta by delta, holding back only what may still change.

    Contract: the concatenation of everything :meth:`feed` and :meth:`finish` return equals
    ``Guardrails.check_output(full_text).text`` for a reply that was not stopped (PII masked
    exactly as in the complete text; a number split across deltas is emitted masked, never
    half). After ``stop`` (or :attr:`stopped` after :meth:`finish`) the caller ends the
    stream with ``finish_reason="content_filter"``.

    Held back is the shortest tail such that no blocked term and no PII finding can start
    before it, whatever text comes next; the rest is released with each delta, so prose
    flows as soon as its words end and nothing is added to the time to first token but
    (at most) the wait for the end of the first word:

    * terms: the longest suffix of the normalised text, and of its de-obfuscated form, that
      begins some term (:meth:`TermMatcher.term_start`), mapped back to the raw text. A
      whole term at the end is held too, for one more character: "kill myself" may still
      become "kill myselfie".
    * PII: the PII-like run at the end (see ``_sticky_start``: a word of letters, digits
      and the punctuation of numbers, e-mails and keys, digit groups with blanks between
      them, "at"/"dot"-spelled e-mails, digits of any script, invisible characters), any
      finding that reaches into it, and a private-key block with no END marker yet.
    * at least ``Guardrails.stream_window`` characters (``stream_window_chars``, 0 by
      default).

    So a blocked term is never partly sent: no character from the start of a term's
    occurrence in the full reply on is emitted before the term is complete and the stream
    is stopped (in flag mode the occurrence is flagged and emitted). PII is emitted
    masked or not at all.

    The classifier (:meth:`Guardrails.classify`) does not hold text back, which would put
    generation time into the time to first token: each time ``_CLASSIFY_EVERY`` characters
    came in, it judges the last ``_CLASSIFY_WINDOW`` characters of the stream (what was
    emitted and what is held), and at :meth:`finish` the whole reply. When it fires the
    stream stops, but what was emitted before cannot be taken back: the guarantee above
    is the term lists' and the PII masking's, not the classifier's. Its categories count
    where the term lists found none, as in :meth:`Guardrails.check_output`. A stream
    counts each flagged category once.
    """

    def __init__(self, guardrails: Guardrails) -> None:
        self._g = guardrails
        cfg = guardrails.config
        self._window = guardrails.stream_window
        self._mask = cfg.pii_output == "mask"
        self._moderate = cfg.moderation_output != "off"
        self._passthrough = not (self._mask or self._moderate)
        self._classify = self._moderate and guardrails.classifier is not None
        self._pii_types = cfg.pii_types
        self._placeholder = cfg.pii_placeholder
        self._context = ""  # the last emitted raw text, kept for boundaries and split terms
        self._pending = ""  # raw text not yet emitted
        # The normalised forms of the last moderated window, each with the function that
        # makes it from raw text (see _term_hold) and whether it is a speculative reading.
        self._forms: list[tuple[str, Callable[[str], str], bool]] = []
        # Emitted characters moderated with the held text: the word boundary before a term,
        # and room for a spelling that de-obfuscation read only once it went on.
        self._term_context = 2 * guardrails.matcher.longest + 8
        self._text: list[str] = []  # the whole reply so far (with a classifier only)
        self._total = 0  # characters fed
        self._judged = 0  # ... when the classifier last judged
        self._seen: set[str] = set()
        self._term_flags = False
        self._pii: Counter[str] = Counter()
        self.released = 0  # characters of the raw reply emitted (masked) so far
        self.actions: list[dict[str, Any]] = []
        self.flagged: list[str] = []
        self.stopped = False
        self._finished = False

    @property
    def finish_reason(self) -> str | None:
        return CONTENT_FILTER if self.stopped else None

    def feed(self, delta: str) -> tuple[str, bool]:
        """Take the next delta; return the text that is safe to emit now and whether to stop."""
        if self.stopped or self._finished:
            return "", self.stopped
        if self._passthrough:
            return delta, False
        self._pending += delta
        self._total += len(delta)
        if self._moderate:
            if self._terms(final=False):
                return "", True
            if self._classify:
                self._text.append(delta)
                if self._total - self._judged >= _CLASSIFY_EVERY:
                    self._judged = self._total
                    window = "".join(self._text)[-_CLASSIFY_WINDOW:]
                    if self._classified(window):
                        return "", True
        return self._release(final=False), False

    def finish(self) -> str:
        """The held tail, checked and masked; ``""`` when it was blocked (see :attr:`stopped`)."""
        if self._finished or self.stopped:
            self._finished = True
            return ""
        self._finished = True
        if self._passthrough:
            return ""
        if self._moderate:
            if self._terms(final=True):
                return ""
            if self._classify and self._total and self._classified("".join(self._text)):
                return ""
        out = self._release(final=True)
        if self._pii:
            actions = [
                {"type": "pii_mask", "pii_type": t, "count": n}
                for t, n in sorted(self._pii.items())
            ]
            self.actions += actions
            self._g._count("output", actions)
        return out

    # ------------------------------------------------------------------ moderation
    def _terms(self, *, final: bool) -> bool:
        """Term lists on the held text (with a little emitted context for the word boundary
        before a term), as check_output reads them: normalised, across line breaks and
        de-obfuscated. Records new categories; True when the stream must stop."""
        # A term of the normalised text cannot start in the emitted text (it is held until
        # it is complete); the context is there for the word boundary before it, and for a
        # spelling that de-obfuscation read only once it went on (then the stream stops,
        # though some of it was sent).
        window = self._context[-self._term_context :] + self._pending
        plain = _plain_form(window)
        self._forms = [(plain, _plain_form, False)]
        deep = moderation.deobfuscate(plain)
        if deep != plain:
            self._forms.append((deep, _deep_form, False))
        hits: set[str] = set()
        for form, _, _ in self._forms:
            found = self._g.matcher.find(form)
            if found:
                # "kill myself" at the very end may still become "kill myselfie": wait for
                # the next character unless this is the end of the reply.
                open_end = not final and _is_word_char(form[-1])
                hits |= {h.category for h in found if not open_end or h.end < len(form)}
        if hits:
            self._term_flags = True
        elif not final and _SPECULATE.search(plain, max(len(plain) - 16, 0)) is not None:
            for fn in _SPECULATIONS:
                read = fn(window)
                if read and read != plain and read != deep:
                    self._forms.append((read, fn, True))
        return self._record({c: None for c in hits})

    def _classified(self, text: str) -> bool:
        """Classifier verdict on ``text``; True when the stream must stop."""
        scores = self._g.classify(text, "output")
        if not scores or self._term_flags:  # the term lists name the category
            return False
        return self._record(dict(scores))

    def _record(self, hits: Mapping[str, float | None]) -> bool:
        new = sorted(set(hits) - self._seen)
        if not new:  # nothing new (nearly always: nothing at all)
            return False
        cfg = self._g.config
        self._seen |= set(new)
        self.flagged += new
        verb = f"moderation_{cfg.moderation_output}"
        actions: list[dict[str, Any]] = []
        for c in new:
            score = hits[c]
            action: dict[str, Any] = {"type": verb, "category": c, "count": 1}
            if score is not None:
                action |= {"source": "classifier", "score": score}
            actions.append(action)
        self.actions += actions
        self._g._count("output", actions)
        if cfg.moderation_output == "block":
            self.stopped = True
            self._pending = ""
            return True
        return False

    def _term_hold(self) -> int:
        """Where in the held text a term could still begin (``len`` when nowhere)."""
        pending = self._pending
        hold = len(pending)
        matcher = self._g.matcher
        for form, fn, speculative in self._forms:
            start = matcher.term_start(form)
            if speculative:  # a term it reads near the end is held whole
                ends = len(form) - 8
                start = min([start, *(h.start for h in matcher.find(form) if h.end > ends)])
            if start == len(form):
                continue
            suffix = form[start:]
            # The raw tail whose normalised form ends with that suffix: normalisation is
            # local, so it is found a few characters from where the lengths match.
            i = min(max(len(pending) - len(suffix) + 1, 0), len(pending))
            while i > 0 and not fn(pending[i:]).endswith(suffix):
                i -= 1
            hold = min(hold, i)
        return hold

    # ------------------------------------------------------------------ release
    def _release(self, *, final: bool) -> str:
        pending = self._pending
        cut = len(pending)
        if not final:
            cut -= self._window
            if self._moderate:
                cut = min(cut, self._term_hold())
            if self._mask:
                # Never cut a PII-like run that may still grow at the end of the text.
                cut = min(cut, _sticky_start(pending, _MAX_HOLD), _pem_start(pending))
        if cut <= 0:
            return ""
        spans: list[PiiSpan] = []
        off = len(self._context)
        if self._mask:
            spans = detect_pii(self._context + pending, self._pii_types)
            if spans:
                if not final:
                    for s in spans:  # never cut inside a finding: hold it whole
                        if s.start < off + cut < s.end:
                            cut = max(s.start - off, 0)
                spans = [s for s in spans if s.end > off and s.start < off + cut]
        if cut <= 0:
            return ""
        piece = pending[:cut]
        out = _apply_masks(piece, spans, off, self._placeholder, self._pii) if spans else piece
        context = self._context + piece
        # Keep the whole PII-like run that the context ends in (up to _MAX_HOLD): findings
        # in the held text may depend on how far that run reaches back.
        keep = len(context) - _LEFT_CONTEXT
        if keep > 0:
            keep = min(keep, _sticky_start(context[:keep], _MAX_HOLD))
        self._context = context[max(keep, 0) :]
        self._pending = pending[cut:]
        self.released += cut
        return out
