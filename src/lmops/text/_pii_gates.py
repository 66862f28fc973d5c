"""The gates of PII detectors (see :mod:`lmops.text.pii`): cheap checks on a whole text that
decide whether a detector's regex runs on it at all. Each is a literal scan, or a few; their
``words`` are what every text a gate passes contains, from which ``pii`` builds one
search that skips the detectors needing fewer than seven digits on most texts."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


class _Needles:
    """Gate: the text contains one of ``words`` (one C-level scan).

    ``ignore_case`` compares with the lower-cased text, which is cheaper than a
    case-insensitive regex; it differs from one only on non-ASCII case variants ("ſ" for
    "s"), which the patterns behind these gates (re.ASCII) do not match either.
    """

    def __init__(self, *words: str, ignore_case: bool = False) -> None:
        self.words = words
        self._lower = ignore_case
        source = "|".join(re.escape(w.lower() if ignore_case else w) for w in words)
        self._search = re.compile(source).search

    def __call__(self, text: str) -> bool:
        return self._search(text.lower() if self._lower else text) is not None


class _Colons(_Needles):
    """Gate of IPv6 addresses: "::" or at least six colons (seven, or six before an embedded
    IPv4 part), so prose with a few colons never runs the regex. ``words`` (":") is what
    every text it passes contains."""

    def __init__(self) -> None:
        super().__init__(":")

    def __call__(self, text: str) -> bool:
        return "::" in text or text.count(":") >= 6


class _Probe(_Needles):
    """Gate: one of ``probes`` (a literal word, then a pattern) is in the text. A search that
    starts from a literal is a fast scan, so text without the shape ("-45-" of an SSN,
    ".0100" of a dotted phone) never runs the detector's regex, which starts at every digit.
    ``words`` (the literals) are what every text it passes contains."""

    def __init__(self, *probes: tuple[str, str]) -> None:
        super().__init__(*(word for word, _ in probes))
        self._probes = [re.compile(re.escape(w) + p, re.ASCII).search for w, p in probes]

    def __call__(self, text: str) -> bool:
        return any(probe(text) is not None for probe in self._probes)


def _trie(words: Iterable[str]) -> str:
    """One alternation sharing prefixes, which the regex engine walks faster than a flat one."""
    trie: dict[str, Any] = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        if "" in node:  # a needle ends here: its longer forms add nothing to a search
            return ""
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items())]
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return emit(trie)
