"""Test-set contamination: n-gram overlap between evaluation items and training data.

The rule, as in the GPT-3 and lm-evaluation-harness decontamination studies: an item is
contaminated when one of its n-grams (default n = 13) also occurs in the training data.

- Text is NFKC-normalised and lowercased and punctuation is dropped before tokenising, so
  changes of case, punctuation, full-width forms and spacing do not hide a copy.
- ``tokenizer="word"``: runs of letters/digits are tokens and every CJK character is its own
  token (Chinese has no spaces; 13 characters is about 6-8 words). ``"char"``: every
  non-space, non-punctuation character is a token.
- **Short texts**: an item with fewer than n tokens is one n-gram made of all its k tokens;
  a training document with fewer than n tokens is stored the same way. So a short item is
  found when it occurs as a whole, short training record (a test question pasted into a data
  set as its own row), but not inside a longer document: to catch that, build the index with
  a smaller n.
- N-grams are stored as 64-bit hashes (blake2b of each token, combined as a
  polynomial over the n tokens with the length mixed in; never Python's ``hash()``, which
  changes per process), in one sorted numpy ``uint64`` array: 8 bytes per distinct n-gram
  (building briefly needs about three times that while it merges a chunk; it reads about
  2M tokens a second on one core).
  A false match needs a 64-bit collision, about 1 in 10^19 per pair.

Scores and decisions are separate (``overlap_ratio`` is kept; ``min_ratio`` decides), so a
threshold can be retuned without rebuilding.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lmops.core.errors import UserError
from lmops.eval.metrics import word_tokens

__all__ = [
    "TOKENIZERS",
    "ContaminationReport",
    "ContaminationResult",
    "NgramIndex",
    "contamination_report",
    "tokenize",
]

TOKENIZERS = ("word", "char")
_FORMAT_VERSION = 1
_MULT = np.uint64(0x100000001B3)  # odd multiplier of the polynomial (the FNV-1a prime)
_FLUSH_AT = 1 << 22  # buffered hashes before deduplicating (32 MiB of uint64)


def tokenize(text: str, tokenizer: str = "word") -> list[str]:
    """The tokens contamination works on (normalised, lowercased, punctuation dropped)."""
    if tokenizer == "word":
        return word_tokens(text)
    if tokenizer == "char":
        return [ch for tok in word_tokens(text) for ch in tok]
    raise UserError(
        f"unknown contamination tokenizer {tokenizer!r}; use one of {', '.join(TOKENIZERS)}"
    )


def _token_hash(tok: str, cache: dict[str, int]) -> int:
    h = cache.get(tok)
    if h is None:
        h = int.from_bytes(hashlib.blake2b(tok.encode("utf-8"), digest_size=8).digest(), "little")
        if len(cache) < 1_000_000:  # bound the cache: ~100 MB at worst
            cache[tok] = h
    return h


def _token_hashes(tokens: Sequence[str], cache: dict[str, int]) -> np.ndarray:
    return np.array([_token_hash(t, cache) for t in tokens], dtype=np.uint64)


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values (numpy's hash-based ``unique`` is slower for uint64 here)."""
    x = np.sort(np.asarray(x, dtype=np.uint64))
    if len(x) < 2:
        return x
    keep = np.empty(len(x), dtype=bool)
    keep[0] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: spreads the polynomial's low-entropy bits over all 64.
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _ngram_hashes(token_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every n-gram (uint64, one per start position); one hash if shorter than n."""
    k = min(n, len(token_hashes))
    if k == 0:
        return np.empty(0, dtype=np.uint64)
    count = len(token_hashes) - k + 1
    h = np.zeros(count, dtype=np.uint64)
    for i in range(k):  # uint64 arithmetic wraps modulo 2^64, which is what we want
        h = h * _MULT + token_hashes[i : i + count]
    return _mix(h + np.uint64(k))


class ContaminationResult(NamedTuple):
    contaminated: bool
    overlap_ratio: float  # matched n-gram positions / all n-gram positions of the item
    matched_ngrams: list[str]  # distinct matched n-grams, tokens joined by spaces, in order


class NgramIndex:
    """The set of hashed n-grams of a training corpus; build once, check many items."""

    def __init__(self, hashes: np.ndarray, *, n: int, tokenizer: str, documents: int = 0) -> None:
        if n < 1:
            raise UserError(f"n-gram index: n must be at least 1, got {n}")
        tokenize("", tokenizer)  # validates the name
        hashes = np.asarray(hashes, dtype=np.uint64)
        if len(hashes) > 1 and not bool(np.all(hashes[1:] > hashes[:-1])):
            hashes = _sorted_unique(hashes)
        self.hashes = hashes  # sorted, distinct
        self.n = n
        self.tokenizer = tokenizer
        self.documents = documents
        self._cache: dict[str, int] = {}

    @classmethod
    def build(cls, texts: Iterable[str], n: int = 13, tokenizer: str = "word") -> NgramIndex:
        """Index every n-gram of ``texts`` (a generator is fine: one document is held at once)."""
        if n < 1:
            raise UserError(f"n-gram index: n must be at least 1, got {n}")
        tokenize("", tokenizer)
        cache: dict[str, int] = {}
        stored = np.empty(0, dtype=np.uint64)
        buffer: list[np.ndarray] = []
        buffered = documents = 0
        for text in texts:
            documents += 1
            hashes = _ngram_hashes(_token_hashes(tokenize(text, tokenizer), cache), n)
            buffer.append(hashes)
            buffered += len(hashes)
            if buffered >= _FLUSH_AT:
                stored = _sorted_unique(np.concatenate([stored, *buffer]))
                buffer, buffered = [], 0
        if buffer:
            stored = _sorted_unique(np.concatenate([stored, *buffer]))
        index = cls(stored, n=n, tokenizer=tokenizer, documents=documents)
        index._cache = cache
        return index

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def nbytes(self) -> int:
        return int(self.hashes.nbytes)

    def _contains(self, hashes: np.ndarray) -> np.ndarray:
        if len(self.hashes) == 0 or len(hashes) == 0:
            return np.zeros(len(hashes), dtype=bool)
        pos = np.searchsorted(self.hashes, hashes)
        pos[pos == len(self.hashes)] = 0
        return np.asarray(self.hashes[pos] == hashes)

    def check(self, item_text: str, *, min_ratio: float = 0.0) -> ContaminationResult:
        """Whether ``item_text`` overlaps the training data, and by how much.

        ``contaminated`` is True when at least one n-gram matches and the matched fraction of
        the item's n-grams is at least ``min_ratio`` (0 = any match, the GPT-3 rule).
        """
        if not 0 <= min_ratio <= 1:
            raise UserError(f"contamination: min_ratio must be between 0 and 1, got {min_ratio}")
        tokens = tokenize(item_text, self.tokenizer)
        hashes = _ngram_hashes(_token_hashes(tokens, self._cache), self.n)
        if len(hashes) == 0:
            return ContaminationResult(False, 0.0, [])
        found = self._contains(hashes)
        k = min(self.n, len(tokens))
        matched = list(dict.fromkeys(" ".join(tokens[i : i + k]) for i in np.flatnonzero(found)))
        ratio = float(found.mean())
        return ContaminationResult(bool(found.any()) and ratio >= min_ratio, ratio, matched)

    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` (numpy ``.npz``), via a temporary file and a rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    hashes=self.hashes,
                    n=np.int64(self.n),
                    tokenizer=np.str_(self.tokenizer),
                    documents=np.int64(self.documents),
                    format_version=np.int64(_FORMAT_VERSION),
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> NgramIndex:
        """Read an index written by ``save``."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"n-gram index {path} does not exist; build it with NgramIndex.build")
        try:
            with np.load(path, allow_pickle=False) as data:
                version = int(data["format_version"])
                if version != _FORMAT_VERSION:
                    raise UserError(
                        f"n-gram index {path} has format {version}, this lmops reads "
                        f"{_FORMAT_VERSION}; rebuild it"
                    )
                return cls(
                    data["hashes"],
                    n=int(data["n"]),
                    tokenizer=str(data["tokenizer"]),
                    documents=int(data["documents"]),
                )
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"n-gram index {path} cannot be read ({e}); rebuild it") from e


@dataclass(frozen=True)
class ContaminationReport:
    flags: list[bool]  # one per item, in order
    overlap_ratios: list[float]
    contaminated_fraction: float
    n: int  # the n-gram size used

    def to_dict(self) -> dict[str, Any]:
        return {
            "flags": self.flags,
            "overlap_ratios": self.overlap_ratios,
            "contaminated_fraction": self.contaminated_fraction,
            "contaminated": sum(self.flags),
            "items": len(self.flags),
            "n": self.n,
        }


def contamination_report(
    items: Sequence[str], index: NgramIndex, *, min_ratio: float = 0.0
) -> ContaminationReport:
    """Check every item against ``index``; the flags and the contaminated fraction."""
    if len(items) == 0:
        raise UserError("contamination report: no items to check")
    results = [index.check(item, min_ratio=min_ratio) for item in items]
    flags = [r.contaminated for r in results]
    return ContaminationReport(
        flags=flags,
        overlap_ratios=[r.overlap_ratio for r in results],
        contaminated_fraction=sum(flags) / len(flags),
        n=index.n,
    )
