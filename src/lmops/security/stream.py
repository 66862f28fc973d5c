"""The streaming guard: checks a reply delta by delta, holding back only what may still change."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from lmops.security import moderation
from lmops.security.config import CONTENT_FILTER
from lmops.security.guard import _apply_masks
from lmops.security.moderation.encoder import Deferred
from lmops.security.normalize import _CJK, _GAP, flat, normalize_text
from lmops.security.terms import _is_word_char
from lmops.text.pii import PiiSpan, detect_pii

if TYPE_CHECKING:
    from lmops.security.guard import Guardrails


# ============================================================================ streaming
# What a PII finding is made of (see lmops.text.pii): ASCII letters and digits, the
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
_IBAN_GROUP = re.compile("[A-Z0-9]{4}")  # one of an IBAN's groups of four ("GB82", "WEST")
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


def _iban_group(word: str) -> bool:
    """Whether ``word`` may be a group of an IBAN written in groups: four upper-case
    letters or digits (a word after it may go on with the same number)."""
    return _IBAN_GROUP.fullmatch(word) is not None


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
        # passport's letters ("E 1234 5678", "E X1234567"); an area code in parentheses
        # after a country code ("1 (415)", "+1 (415)"); an IBAN's groups of four ("GB82
        # WEST", "2345 MTLC AST0"); or the parts of a spelled-out e-mail ("john at
        # example", "john [at]example", "john@ example").
        if word[0].isdecimal():
            grouped = (
                left[-1].isdecimal() or left[-1] in ")+" or _short_word(left) or _iban_group(left)
            )
        elif word[0] == "(":
            grouped = left[-1].isdecimal() and word[1:2] in ("", *"0123456789")
        else:
            grouped = (word[0].isalpha() and _short_word(left) and left[-1] in "Ee") or (
                "A" <= word[0] <= "Z" and _iban_group(left)
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
    t = flat(normalized)
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
        before = (self._pending, self._total, len(self._text), self._judged)
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
                    try:
                        if self._classified(window):
                            return "", True
                    except Deferred:  # fed again on a thread: as if this one never came
                        self._pending, self._total, kept, self._judged = before
                        del self._text[kept:]
                        raise
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
            try:
                whole = "".join(self._text)
                if self._classify and self._total and self._classified(whole, remember=True):
                    return ""
            except Deferred:  # finished again on a thread
                self._finished = False
                raise
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

    def _classified(self, text: str, *, remember: bool = False) -> bool:
        """Classifier verdict on ``text``; True when the stream must stop. ``remember``: the
        whole reply's reading is kept (see :meth:`Guardrails.classify`)."""
        scores = self._g.classify(text, "output", remember=remember)
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
