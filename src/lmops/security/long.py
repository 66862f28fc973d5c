"""The guard on long texts, in bounded windows (issue #12: a 4 MB body held the GIL for seconds).

Every detector of the guard is a regex pass or a feature count over the whole text; on a
4 MB request single calls took up to 600 ms with the GIL held, so the worker thread that
guards a big request stalled the event loop (``/healthz`` for 2.5 s). Above
:data:`LONG_TEXT` characters the guard therefore works window by window (at most
:data:`WINDOW` characters per call, plus overlaps), giving the GIL away between windows, so
no single call holds it for more than a few tens of milliseconds. Texts up to
:data:`LONG_TEXT` take the ordinary path unchanged.

What stays exact, and why:

* PII: each window is read with :data:`PII_OVERLAP` characters of context on both sides,
  more than the longest finding (a PEM private-key block: 16,384 characters between its
  markers), and a finding is kept by the window whose core holds its start. So every
  finding of the whole text is found, with the same bounds.
* Terms and injection rules: the text is cut into chunks at blanks (a word is never cut),
  each chunk is read on its own, and each seam once more as the :data:`SEAM` characters on
  either side of it, more than twice the longest term and than any rule's match in
  practice. A term or rule crossing a seam is found there; categories and rules are the
  union. Term *counts* add the chunks' counts and the hits the seam adds over its two
  halves (exact but for normalisation that differs right at a seam).
* Decoded base64 payloads are looked for in the chunks and at the seams, then moderated
  and scored as on the ordinary path.
* The classifier: its statistics add up over chunks (:meth:`TextStats.add`), as they do
  over messages; n-grams across a seam are not counted. The category heads read the most
  harmful chunk.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from lmops.security import moderation
from lmops.security.injection import (
    _ENCODED_CUES,
    InjectionResult,
    _combine,
    _decoded_payloads,
    _score_plain,
)
from lmops.security.normalize import _nfkc, flat, normalize_text
from lmops.text.pii import PiiSpan, detect_pii, mask_pii

__all__ = [
    "LONG_TEXT",
    "PII_OVERLAP",
    "SEAM",
    "WINDOW",
    "LongScan",
    "chunk_bounds",
    "detect_pii_long",
    "mask_pii_long",
    "payload_rules",
    "scan_long",
]

WINDOW = 32_768
"""Characters per window (the core; overlaps come on top)."""
LONG_TEXT = 2 * WINDOW
"""Texts longer than this take the windowed path."""
PII_OVERLAP = 16_640
"""Context on each side of a PII window: > a PEM block's 16,384 characters plus markers."""
SEAM = 1_024
"""Characters on each side of a seam read again for terms and injection rules."""
_BLANK = re.compile(r"\s")
_SLACK = 256  # how far past a window's end a cut looks for a blank


def _yield() -> None:
    """Let other threads (the event loop) take the GIL between windows."""
    time.sleep(0)


def chunk_bounds(text: str, size: int = WINDOW) -> list[tuple[int, int]]:
    """``(start, end)`` of consecutive chunks of about ``size`` characters covering ``text``,
    each cut just after a blank within ``_SLACK`` characters (else at ``size``)."""
    bounds: list[tuple[int, int]] = []
    start, n = 0, len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            m = _BLANK.search(text, end, min(end + _SLACK, n))
            if m is not None:
                end = m.end()
        bounds.append((start, end))
        start = end
    return bounds


def detect_pii_long(
    text: str, types: Iterable[str] | None, *, window: int = WINDOW, overlap: int = PII_OVERLAP
) -> list[PiiSpan]:
    """:func:`lmops.text.pii.detect_pii` on a long text, one window at a time (see above)."""
    wanted = list(types) if types is not None else None
    out: list[PiiSpan] = []
    n = len(text)
    for core_lo in range(0, n, window):
        core_hi = min(core_lo + window, n)
        lo, hi = max(core_lo - overlap, 0), min(core_hi + overlap, n)
        for s in detect_pii(text[lo:hi], wanted):
            start = s.start + lo
            if not core_lo <= start < core_hi:
                continue
            if out and start < out[-1].end:  # the previous window's finding reaches here
                continue
            out.append(replace(s, start=start, end=s.end + lo))
        _yield()
    return out


def mask_pii_long(text: str, types: Iterable[str] | None = None) -> str:
    """:func:`lmops.text.pii.mask_pii` of any text (``<TYPE>`` placeholders), window by
    window above :data:`LONG_TEXT` characters: the same result, without holding the GIL for
    the whole text (the request log masks logged bodies on its writer thread)."""
    if len(text) <= LONG_TEXT:
        return mask_pii(text, types)[0]
    parts: list[str] = []
    pos = 0
    for s in detect_pii_long(text, types):
        parts += (text[pos : s.start], f"<{s.type}>")
        pos = s.end
    parts.append(text[pos:])
    return "".join(parts)


@dataclass
class LongScan:
    """What the windowed pass found in one long text (see the module docstring)."""

    terms: Counter[str] = field(default_factory=Counter)
    rules: dict[str, float] = field(default_factory=dict)
    payloads: list[str] = field(default_factory=list)
    stats: moderation.TextStats = moderation.EMPTY_STATS
    best_prob: float = 0.0  # the classifier's P(harmful) of the most harmful chunk
    best_stats: moderation.TextStats = moderation.EMPTY_STATS  # that chunk's statistics
    best_deep: str | None = None  # that chunk, de-obfuscated
    encoded_cue: bool = False  # words announcing an encoded payload (``_ENCODED_CUES``)

    def injection(self) -> InjectionResult:
        return InjectionResult(round(_combine(self.rules.values()), 4), tuple(sorted(self.rules)))


def scan_long(
    text: str,
    terms: Callable[[str, str], dict[str, int]] | None,
    *,
    model: moderation.ModerationModel | None = None,
    injection: bool = False,
    payloads: bool = True,
) -> LongScan:
    """One windowed pass over ``text``: term hits (``terms(flat, deep)``, the guard's
    :meth:`~lmops.security.guard.Guardrails._terms`; None: no moderation), the classifier's
    summed statistics (``model``), injection rules (``injection``) and decoded payloads."""
    out = LongScan()
    seen_payloads: set[str] = set()

    def read(piece: str) -> tuple[dict[str, int], str]:
        norm = normalize_text(piece)
        one_line = flat(norm)
        deep = moderation.deobfuscate(one_line)
        found = terms(one_line, deep) if terms is not None else {}
        if injection:
            out.rules.update(_score_plain(norm))
            out.encoded_cue = out.encoded_cue or _ENCODED_CUES.search(norm) is not None
        if payloads:
            for p in _decoded_payloads(_nfkc(piece)):
                if p not in seen_payloads:
                    seen_payloads.add(p)
                    out.payloads.append(p)
        return found, deep

    bounds = chunk_bounds(text)
    for lo, hi in bounds:
        found, deep = read(text[lo:hi])
        out.terms.update(found)
        if model is not None:
            stats = model.stats(deep)
            out.stats = out.stats.add(stats)
            prob = model.prob_stats(stats)
            if out.best_deep is None or prob > out.best_prob:
                out.best_prob, out.best_stats, out.best_deep = prob, stats, deep
        _yield()
    for _, seam in bounds[:-1]:
        left, right = text[max(seam - SEAM, 0) : seam], text[seam : seam + SEAM]
        both, _ = read(left + right)
        if terms is not None and both:
            halves = Counter(read(left)[0]) + Counter(read(right)[0])
            for c, k in both.items():
                if k > halves[c]:
                    out.terms[c] += k - halves[c]
        _yield()
    return out


def payload_rules(scan: LongScan, normalized_payloads: str) -> None:
    """Add the rules that decoded payloads fire, as :func:`~lmops.security.injection._score_injection`
    does for a short text."""
    if not scan.payloads:
        return
    inner = _combine(_score_plain(normalized_payloads).values())
    if inner >= 0.5:
        scan.rules["encoded_instructions"] = 0.8
    elif scan.encoded_cue:
        scan.rules["encoded_payload"] = 0.5
