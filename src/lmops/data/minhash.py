"""MinHash signatures and LSH banding for near-duplicate detection, usable on its own.

The pipeline, in stages a distributed executor can run one at a time::

    texts ──signatures()──▶ uint32[n, num_perm] ──LSHIndex.add()──▶ verified pairs
                                                                        │ union-find
                           {member: earliest of its component} ◀──roots()┘

Only the signatures (``num_perm × 4`` bytes per document, 448 bytes with the defaults),
the band keys and a union-find parent per document are kept; texts never are.

Shingles. A text is NFKC-normalised and lower-cased, then cut into tokens: a run of letters
or digits is one token (words in space-separated scripts), and every character of a script
written without spaces (Han, kana, Thai, Lao, Khmer, Myanmar) is a token of its own, so
Chinese is shingled as character n-grams whether or not it contains spaces. Punctuation and
whitespace separate tokens and are dropped. A shingle is ``ngram`` consecutive tokens; a
text with fewer tokens than ``ngram`` (but at least one) is a single shingle.

Hashing. Every token is hashed once with BLAKE2b (8 bytes, stable across processes and
machines, unlike the salted built-in ``hash``); the token hashes of a shingle are combined
position-wise and mixed (SplitMix64 finaliser) into a 32-bit shingle hash ``x``. Each of the
``num_perm`` permutations is ``h(x) = (a·x + b) mod p`` with the Mersenne prime
``p = 2**61 - 1`` and ``a ∈ [1, p)``, ``b ∈ [0, p)`` derived from the seed with BLAKE2b.
``a·x`` would need 93 bits, so it is computed exactly in uint64 by splitting ``a`` into
32-bit halves and folding with ``2**61 ≡ 1 (mod p)`` (see :func:`_permute`). A signature
entry is the minimum over the shingles, stored as its low 32 bits.

Banding and verification. The signature is cut into ``num_bands`` bands of
``rows_per_band`` rows; two documents are candidates when any band matches exactly
(probability ``1 - (1 - J**r)**b`` at Jaccard ``J``). With a ``threshold`` a candidate pair
counts only if the estimated Jaccard (fraction of agreeing signature entries) reaches it.

Clusters. Documents are numbered in the order given. Verified pairs are joined into
connected components (union-find, as datatrove's clustering stage does), so a chain of near
duplicates is one cluster even when its two ends are not near duplicates of each other (two
edited copies of one paragraph, say). A component's representative is its earliest
document, the one to keep. A later document can join two earlier components, so the
clusters are known only after the last document (:meth:`LSHIndex.roots`). Nothing depends on
how the input was split into shards, only on the order.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lmops.text.cjk import NO_SPACE

__all__ = [
    "MERSENNE_PRIME",
    "LSHIndex",
    "Match",
    "MinHasher",
    "clusters",
    "estimated_jaccard",
    "find_duplicate_pairs",
    "is_empty",
    "jaccard",
    "shingles",
    "tokenize",
]

U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]

MERSENNE_PRIME = (1 << 61) - 1
_P = np.uint64(MERSENNE_PRIME)
_LOW29 = np.uint64((1 << 29) - 1)
_LOW32 = np.uint64((1 << 32) - 1)

# Scripts written without spaces between words: one token per character.
_NO_SPACE_SCRIPTS = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
) + NO_SPACE  # and kana and Han (lmops.text.cjk)
_TOKEN_RE = re.compile(rf"[{_NO_SPACE_SCRIPTS}]|[^\W_{_NO_SPACE_SCRIPTS}]+")

# Shingles per permutation pass: 1024 × num_perm × 8 bytes = 0.9 MB per temporary at 112,
# small enough to stay in cache (measured: 1.8x faster than 16384).
_ROWS_PER_PASS = 1024
# Bound on the per-hasher token-hash cache (entries); it is cleared when full.
_TOKEN_CACHE_MAX = 1 << 20


def tokenize(text: str) -> list[str]:
    """Tokens of ``text`` as shingled by :class:`MinHasher` (see the module docstring)."""
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).lower())


def shingles(text: str, ngram: int = 5) -> set[tuple[str, ...]]:
    """The exact shingle set of ``text`` (for ground truth and tests; not hashed)."""
    toks = tokenize(text)
    if not toks:
        return set()
    if len(toks) < ngram:
        return {tuple(toks)}
    return {tuple(toks[i : i + ngram]) for i in range(len(toks) - ngram + 1)}


def jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    """Exact Jaccard similarity of two shingle sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def estimated_jaccard(sig_a: U32, sig_b: U32) -> float:
    """MinHash estimate of the Jaccard similarity: the fraction of agreeing entries."""
    return float(np.count_nonzero(sig_a == sig_b)) / sig_a.shape[-1]


def _digest64(data: bytes, person: bytes = b"") -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "little")


class _TokenHashes(dict[str, int]):
    """Token -> 64-bit BLAKE2b hash, computed on first lookup."""

    def __missing__(self, token: str) -> int:
        h = self[token] = _digest64(token.encode())
        return h


def _mix64(z: U64) -> U64:
    """SplitMix64 finaliser, in place; uint64 multiplication wraps, which is intended."""
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def _permute(x: U64, a_lo: U64, a_hi: U64, b: U64) -> U64:
    """``(a·x + b) mod (2**61 - 1)`` exactly, for ``x < 2**32`` and ``a, b < 2**61 - 1``.

    Shapes: ``x`` is ``(n, 1)``, the coefficients ``(num_perm,)``; the result is
    ``(n, num_perm)``. With ``a = a_hi·2**32 + a_lo``::

        a·x = a_lo·x            (< 2**64: fits)
            + a_hi·x · 2**32    (a_hi·x = t < 2**61; t = t_hi·2**29 + t_lo, and
                                 t·2**32 = t_hi·2**61 + t_lo·2**32 ≡ t_hi + t_lo·2**32)

    and ``lo = lo_hi·2**61 + lo_lo ≡ lo_hi + lo_lo``. The five folded terms sum to less
    than ``3·2**61 + 2**33 < 2**63``, so nothing overflows; two more folds bring the sum
    below ``p``.
    """
    lo = x * a_lo
    t = x * a_hi
    r = lo & _P
    lo >>= np.uint64(61)
    r += lo
    np.bitwise_and(t, _LOW29, out=lo)
    lo <<= np.uint64(32)
    r += lo
    t >>= np.uint64(29)
    r += t
    r += b
    # r < 2**63: fold once to r < 2**61 + 4, then map [p, p + 4) to [0, 4).
    np.right_shift(r, np.uint64(61), out=t)
    r &= _P
    r += t
    np.add(r, np.uint64(1), out=t)
    t >>= np.uint64(61)  # 1 where r >= p, else 0
    r += t
    r &= _P
    return r


class MinHasher:
    """Computes MinHash signatures and LSH band keys; see the module docstring.

    Instances are cheap and deterministic: two hashers with the same parameters give the
    same signatures in any process.
    """

    def __init__(
        self, *, num_bands: int = 14, rows_per_band: int = 8, ngram: int = 5, seed: int = 1
    ) -> None:
        if min(num_bands, rows_per_band, ngram) < 1:
            raise ValueError("num_bands, rows_per_band and ngram must be at least 1")
        self.num_bands = num_bands
        self.rows_per_band = rows_per_band
        self.ngram = ngram
        self.seed = seed
        self.num_perm = num_bands * rows_per_band
        a = [
            _digest64(f"{seed}:{i}".encode(), b"minhash-a") % (MERSENNE_PRIME - 1) + 1
            for i in range(self.num_perm)
        ]
        b = [
            _digest64(f"{seed}:{i}".encode(), b"minhash-b") % MERSENNE_PRIME
            for i in range(self.num_perm)
        ]
        a_arr = np.array(a, dtype=np.uint64)
        self._a_lo = a_arr & _LOW32
        self._a_hi = a_arr >> np.uint64(32)
        self._b = np.array(b, dtype=np.uint64)
        # Odd per-position multipliers: the shingle hash depends on token order.
        self._pos = np.array(
            [_digest64(f"{i}".encode(), b"shingle-pos") | 1 for i in range(ngram)], dtype=np.uint64
        )
        self._token_cache = _TokenHashes()

    def _token_hashes(self, text: str) -> list[int]:
        cache = self._token_cache
        if len(cache) > _TOKEN_CACHE_MAX:
            cache.clear()
        return [cache[tok] for tok in tokenize(text)]

    def shingle_hashes(self, texts: Sequence[str]) -> tuple[U64, npt.NDArray[np.intp]]:
        """32-bit shingle hashes of ``texts`` (as uint64) and the text index of each.

        The index array is non-decreasing; a text without tokens contributes nothing.
        """
        n = self.ngram
        flat: list[int] = []
        bases: list[int] = []
        counts: list[int] = []
        pad = [0] * (n - 1)
        for text in texts:
            toks = self._token_hashes(text)
            bases.append(len(flat))
            # Windows start at every position leaving n tokens; a short text has one window,
            # padded with the zeros that separate it from the next text.
            counts.append(max(len(toks) - n + 1, 1) if toks else 0)
            flat.extend(toks)
            flat.extend(pad)
        tok = np.array(flat, dtype=np.uint64)
        width = len(flat) - n + 1
        if width <= 0 or sum(counts) == 0:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.intp)
        acc = tok[:width] * self._pos[0]
        for j in range(1, n):
            acc += tok[j : j + width] * self._pos[j]
        count_arr = np.array(counts, dtype=np.intp)
        text_of = np.repeat(np.arange(len(texts), dtype=np.intp), count_arr)
        first = np.cumsum(count_arr) - count_arr  # index of each text's first window
        starts = (
            np.arange(text_of.size, dtype=np.intp)
            + (np.array(bases, dtype=np.intp) - first)[text_of]
        )
        x = _mix64(acc[starts]) >> np.uint64(32)
        return x, text_of

    def signatures(self, texts: Sequence[str]) -> U32:
        """MinHash signatures, shape ``(len(texts), num_perm)``, dtype uint32.

        A text without tokens gets the all-``0xFFFFFFFF`` signature, which
        :meth:`band_keys` and :class:`LSHIndex` treat as "never a duplicate".
        """
        x, text_of = self.shingle_hashes(texts)
        sig = np.full((len(texts), self.num_perm), MERSENNE_PRIME, dtype=np.uint64)
        for s in range(0, x.size, _ROWS_PER_PASS):
            xs = x[s : s + _ROWS_PER_PASS, None]
            ds = text_of[s : s + _ROWS_PER_PASS]
            h = _permute(xs, self._a_lo, self._a_hi, self._b)
            seg = np.flatnonzero(np.r_[True, ds[1:] != ds[:-1]])
            rows = ds[seg]
            # A text can straddle two passes: keep the smaller of the two minima.
            sig[rows] = np.minimum(sig[rows], np.minimum.reduceat(h, seg, axis=0))
        out = (sig & _LOW32).astype(np.uint32)
        out[sig[:, 0] == MERSENNE_PRIME] = np.uint32(0xFFFFFFFF)
        return out

    def band_keys(self, sig: U32) -> list[bytes]:
        """One 8-byte key per band of a single signature (empty for an empty text).

        Keys of different bands live in different tables: compare key ``i`` only with
        key ``i`` of other signatures.
        """
        if is_empty(sig):
            return []
        step = self.rows_per_band * 4
        raw = sig.astype("<u4", copy=False).tobytes()
        blake2b = hashlib.blake2b
        return [
            blake2b(raw[i : i + step], digest_size=8).digest()
            for i in range(0, self.num_bands * step, step)
        ]


def is_empty(sig: U32) -> bool:
    """Whether ``sig`` is the signature of a text without tokens."""
    # The first entry alone settles it for all but one text in 2**32.
    return int(sig[0]) == 0xFFFFFFFF and bool(np.all(sig == np.uint32(0xFFFFFFFF)))


@dataclass(frozen=True, slots=True)
class Match:
    """An earlier document that a new one duplicates, with the estimated Jaccard."""

    index: int
    similarity: float


class LSHIndex:
    """LSH index: add signatures in order, get their verified earlier matches back.

    Each band has a table ``key -> earlier document(s)``. A new document is compared with
    the members of every bucket it falls into; a member matches when ``threshold`` is
    ``None`` (any band collision is a duplicate) or the estimated Jaccard reaches it. Every
    match is merged into a union-find whose roots are the earliest documents.

    Which documents a bucket keeps, so that the work stays linear on floods of copies while
    no match is lost that the clusters need:

    - without a threshold, only its first document: any later member collides with it too,
      so it stands for them exactly;
    - with a threshold, every document, except one that matched a member of the bucket at
      ``stand_in`` (0.95) or more, which that member stands for: Jaccard distance is a
      metric, so whatever reaches the new document at J reaches the member at J - 0.05 or
      more; and except, once the bucket holds ``max_bucket`` (64) documents, any that
      matched one of them (a bucket that large is one big cluster already).
    """

    def __init__(
        self,
        hasher: MinHasher,
        threshold: float | None = None,
        *,
        stand_in: float = 0.95,
        max_bucket: int = 64,
    ) -> None:
        self.hasher = hasher
        self.threshold = threshold
        self.stand_in = stand_in
        self.max_bucket = max_bucket
        self._tables: list[dict[bytes, int | list[int]]] = [{} for _ in range(hasher.num_bands)]
        self._sigs = np.zeros((1024, hasher.num_perm), dtype=np.uint32)
        self._parent: list[int] = []

    def __len__(self) -> int:
        return len(self._parent)

    def find(self, i: int) -> int:
        """The representative (earliest document) of ``i``'s cluster so far."""
        parent = self._parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    def _union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self._parent[max(ri, rj)] = min(ri, rj)

    def add(self, sig: U32) -> tuple[int, list[Match]]:
        """Index ``sig`` as the next document; return its index and its earlier matches.

        The matches are sorted by index and already merged into the union-find:
        ``find(index)`` is the representative so far, :meth:`roots` the final one once every
        document is added.
        """
        i = len(self._parent)
        if i == self._sigs.shape[0]:
            grown = np.zeros((2 * i, self._sigs.shape[1]), dtype=np.uint32)
            grown[:i] = self._sigs
            self._sigs = grown
        self._sigs[i] = sig
        self._parent.append(i)
        keys = self.hasher.band_keys(sig)
        if not keys:  # a text without tokens is nobody's duplicate
            return i, []
        buckets: list[list[int]] = []
        for table, key in zip(self._tables, keys, strict=True):
            members = table.get(key)
            buckets.append(
                [] if members is None else [members] if isinstance(members, int) else members
            )
        candidates = sorted({m for bucket in buckets for m in bucket})
        if not candidates:
            for table, key in zip(self._tables, keys, strict=True):
                table[key] = i
            return i, []
        agree = np.count_nonzero(self._sigs[candidates] == sig, axis=1) / sig.shape[0]
        sim = dict(zip(candidates, agree.tolist(), strict=True))
        t = self.threshold
        matched: set[int] = set()
        for table, key, bucket in zip(self._tables, keys, buckets, strict=True):
            if not bucket:
                table[key] = i
                continue
            hits = [m for m in bucket if t is None or sim[m] >= t]
            matched.update(hits)
            if t is None or (hits and len(bucket) >= self.max_bucket):
                continue  # a member stands for i (see the class docstring)
            if hits and max(sim[m] for m in hits) >= self.stand_in:
                continue
            bucket.append(i)
            table[key] = bucket
        for m in matched:
            self._union(m, i)
        return i, [Match(m, sim[m]) for m in sorted(matched)]

    def roots(self) -> npt.NDArray[np.int64]:
        """Every document's cluster representative (its component's earliest document).

        Parents always point to earlier documents, so pointer jumping settles in
        ``log2(depth)`` vectorised rounds.
        """
        parent = np.asarray(self._parent, dtype=np.int64)
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                return parent
            parent = up


def find_duplicate_pairs(
    sigs: U32 | Iterable[U32], hasher: MinHasher, threshold: float | None = None
) -> list[tuple[int, int]]:
    """All ``(earlier, later)`` duplicate pairs among signatures given in document order."""
    index = LSHIndex(hasher, threshold)
    pairs: list[tuple[int, int]] = []
    for sig in sigs:
        i, matches = index.add(sig)
        pairs.extend((m.index, i) for m in matches)
    return pairs


def clusters(pairs: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Map every duplicate document to its representative; documents not in it are kept.

    The pairs (in any order) are joined into connected components; each component keeps its
    earliest document, and every other member maps to it, as :class:`LSHIndex` decides.
    """
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        root = i
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(i, i) != root:
            parent[i], i = root, parent[i]
        return root

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {i: root for i in parent if (root := find(i)) != i}
