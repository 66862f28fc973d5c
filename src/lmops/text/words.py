"""Words of a text as the hashed-feature models read them (the n-gram LM, the quality and
moderation classifiers): runs of letters/digits, each CJK character, each symbol, with a
stable 64-bit id per word."""

from __future__ import annotations

import hashlib
import re

from lmops.text.cjk import NO_SPACE

__all__ = ["WORD_RE", "word_id"]

WORD_RE = re.compile(rf"[{NO_SPACE}]|[^\W{NO_SPACE}]+|[^\w\s]")
"""Words: runs of letters/digits, each kana or Han character (:data:`lmops.text.cjk.NO_SPACE`),
each symbol."""
_WORD_IDS: dict[str, int] = {}
_WORD_IDS_LIMIT = 1 << 20


def word_id(word: str) -> int:
    """A stable 64-bit id for ``word`` (BLAKE2b; top bit set so it is never BOS/EOS)."""
    wid = _WORD_IDS.get(word)
    if wid is None:
        if len(_WORD_IDS) >= _WORD_IDS_LIMIT:
            _WORD_IDS.clear()
        digest = hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        wid = _WORD_IDS[word] = int.from_bytes(digest, "little") | (1 << 63)
    return wid
