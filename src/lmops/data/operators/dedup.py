"""Deduplication operators: exact, inside one document, near-duplicate (MinHash), C4 spans.

Which copy is kept. Every cross-document operator here keeps the copy that comes *first
in the order the documents are given* and drops the later ones, naming the kept
document's id in ``metadata["duplicate_of"]``. The executor feeds a global operator the
whole corpus in shard order, so the result depends on that order only, never on how the
corpus was cut into shards. Exact and span dedup decide in one pass; MinHash clusters are
connected components, known only once every document is indexed, so ``minhash_dedup``
reads the corpus once, holding the documents (in memory up to a budget, then in a
temporary file), and decides in a second pass over them.

Memory. Only fixed-size digests stay in memory: 8 bytes per distinct text (exact), per
3-sentence span (C4), and a 448-byte MinHash signature per document; texts never do. The
ids of kept documents are kept too, to fill in ``duplicate_of``.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import sys
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from functools import cache
from itertools import islice
from typing import IO, Literal, cast

import numpy as np
import numpy.typing as npt
from pydantic import Field

from lmops.data.document import Document
from lmops.data.minhash import LSHIndex, MinHasher
from lmops.data.ops import GlobalOp, Mapper, OpParams, register

__all__ = [
    "C4SpanDedup",
    "ExactDedup",
    "IntraDocDedup",
    "MinHashDedup",
    "normalize_for_dedup",
    "split_sentences",
]

# A sentence ends at a run of Chinese 。！？；, or at a run of English . ! ? followed by
# whitespace, a closing quote/bracket or the end of the text (so "3.14" and "example.com"
# are not cut). Closing quotes and brackets and the whitespace after the terminator belong
# to the sentence, so the pieces join back to the text.
_CLOSERS = "\"'”’」』）)\\]"
_SENTENCE_END = re.compile(rf"(?:[。！？；]+|[.!?]+(?=[\s{_CLOSERS}]|$))[{_CLOSERS}]*\s*")
_WS = re.compile(r"\s+")
_PARAGRAPH_BREAK = re.compile(r"(\n[ \t\r\f\v]*\n\s*)")


def split_sentences(text: str) -> list[str]:
    """Cut ``text`` into sentences, each with its trailing whitespace; they join back to it.

    Chinese ends a sentence on 。！？；, English on ``.``, ``!`` or ``?`` before whitespace,
    a closing quote or bracket, or the end of the text. Text after the last terminator is a
    final sentence.
    """
    pieces: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        pieces.append(text[start : m.end()])
        start = m.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


@cache
def _punctuation_table() -> dict[int, None]:
    # Built once (about 0.3 s): every code point of a Unicode punctuation category (P*).
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp))[0] == "P"}


def normalize_for_dedup(text: str) -> str:
    """NFKC, lower-case, punctuation (Unicode ``P*``) removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_punctuation_table())
    return " ".join(text.split())


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _unit_key(unit: str) -> str:
    return _WS.sub(" ", unit).strip()


@register("exact_dedup")
class ExactDedup(GlobalOp):
    """Drop documents whose (normalised) text equals an earlier document's.

    With ``normalize`` (the default) texts are compared after NFKC, lower-casing, removing
    punctuation and collapsing whitespace, so ``"Hello,  World!"`` duplicates
    ``"hello world"``; without it, byte-for-byte. Texts are compared by an 8-byte BLAKE2b
    digest (a false match needs a 64-bit collision). The first document in the given order
    is kept; later ones are dropped with reason ``exact_duplicate`` and
    ``metadata["duplicate_of"]`` set to the kept id. All texts that normalise to the empty
    string count as one text.
    """

    class Params(OpParams):
        normalize: bool = True

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        p = cast(ExactDedup.Params, self.params)
        seen: dict[bytes, str] = {}
        for doc in docs:
            key = _digest(normalize_for_dedup(doc.text) if p.normalize else doc.text)
            kept = seen.get(key)
            if kept is None:
                seen[key] = doc.id
                yield doc
            else:
                doc.metadata["duplicate_of"] = kept
                self.drop(doc, "exact_duplicate")


def _split_units(text: str, unit: str) -> list[str]:
    """Pieces of ``text`` that join back to it; each unit's separator is attached to it."""
    if unit == "line":
        return text.splitlines(keepends=True)
    if unit == "paragraph":
        parts = _PARAGRAPH_BREAK.split(text)
        # [para, break, para, break, ..., para] -> each paragraph with the break after it.
        return [
            parts[i] + (parts[i + 1] if i + 1 < len(parts) else "") for i in range(0, len(parts), 2)
        ]
    return split_sentences(text)


@register("intra_doc_dedup")
class IntraDocDedup(Mapper):
    """Remove repeated lines, paragraphs or sentences inside each document.

    ``unit`` picks the unit: ``"line"`` (split on line breaks), ``"paragraph"`` (split on
    blank lines) or ``"sentence"`` (see :func:`split_sentences`: Chinese on 。！？；,
    English on .!?). Units are compared with whitespace collapsed and case kept; the first
    occurrence stays, later ones are removed together with their trailing separator.
    Units shorter than ``min_chars`` characters (after stripping) are never removed, so
    blank lines, ``-----`` rules and short list items survive. The number removed is
    recorded as ``metadata["intra_doc_dedup"]["removed_<unit>s"]``.
    """

    class Params(OpParams):
        unit: Literal["line", "paragraph", "sentence"] = "line"
        min_chars: int = Field(10, ge=0)

    def apply(self, doc: Document) -> Document:
        p = cast(IntraDocDedup.Params, self.params)
        seen: set[str] = set()
        kept: list[str] = []
        removed = 0
        for piece in _split_units(doc.text, p.unit):
            key = _unit_key(piece)
            if len(key) < p.min_chars or key not in seen:
                seen.add(key)
                kept.append(piece)
            else:
                removed += 1
        stats: dict[str, int] = doc.metadata.setdefault("intra_doc_dedup", {})
        field = f"removed_{p.unit}s"
        stats[field] = stats.get(field, 0) + removed
        if removed:
            text = "".join(kept)
            # A removed last unit leaves the previous unit's separator dangling.
            doc.text = text.rstrip() if not doc.text[-1:].isspace() else text
        return doc


def _batched(docs: Iterable[Document], n: int) -> Iterator[list[Document]]:
    it = iter(docs)
    while batch := list(islice(it, n)):
        yield batch


class _Held:
    """Documents held between two passes: in memory up to ``budget`` characters of text,
    the rest pickled a batch at a time into an anonymous temporary file (under
    ``$TMPDIR``), so memory stays bounded whatever the corpus size. Read back in order."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._mem: list[list[Document]] = []
        self._used = 0
        self._file: IO[bytes] | None = None

    def add(self, batch: list[Document]) -> None:
        size = sum(len(doc.text) for doc in batch)
        if self._file is None and self._used + size <= self.budget:
            self._mem.append(batch)
            self._used += size
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="lmops-minhash-")  # noqa: SIM115
        pickle.dump(batch, self._file, protocol=pickle.HIGHEST_PROTOCOL)

    def __iter__(self) -> Iterator[Document]:
        for batch in self._mem:
            yield from batch
        self._mem = []
        if self._file is None:
            return
        self._file.seek(0)
        while True:
            try:
                spilled: list[Document] = pickle.load(self._file)  # our own file, written above
            except EOFError:
                return
            yield from spilled

    def close(self) -> None:
        self._mem = []
        if self._file is not None:
            self._file.close()


_SIZE_BINS = ((2, 2), (3, 4), (5, 9), (10, 99), (100, None))


def cluster_counters(roots: npt.NDArray[np.int64]) -> Counter[str]:
    """Cluster sizes for the report: ``clusters`` (components of two or more documents),
    ``clustered_docs``, ``largest_cluster`` and ``cluster_size_<lo>-<hi>`` per size bin."""
    sizes = np.bincount(roots, minlength=len(roots))[np.unique(roots)]
    sizes = sizes[sizes > 1]
    out: Counter[str] = Counter()
    out["clusters"] = len(sizes)
    out["clustered_docs"] = int(sizes.sum())
    out["largest_cluster"] = int(sizes.max()) if len(sizes) else 0
    for lo, hi in _SIZE_BINS:
        n = int(np.count_nonzero((sizes >= lo) & (sizes <= (hi or sizes.max(initial=lo)))))
        if n:
            span = str(lo) if lo == hi else f"{lo}+" if hi is None else f"{lo}-{hi}"
            out[f"cluster_size_{span}"] = n
    return out


@register("minhash_dedup")
class MinHashDedup(GlobalOp):
    """Drop near-duplicates found with MinHash-LSH (engine: :mod:`lmops.data.minhash`).

    Shingles are ``ngram`` consecutive words; text without spaces (Chinese, Japanese,
    Thai...) is cut per character, so Chinese uses character 5-grams. Signatures have
    ``num_bands × rows_per_band`` permutations (14 × 8 = 112 by default). Documents that
    share a band are candidates; a candidate is a duplicate when its estimated Jaccard
    (fraction of equal signature entries) is at least ``threshold``, or, with
    ``threshold: null``, on any band collision.

    Default ``threshold = 0.75``, chosen with ``benchmarks/minhash_bench.py``: the estimate
    from 112 permutations has a standard error of about 0.035-0.04 near J = 0.8, so verifying
    at 0.8 loses about half of the pairs at exactly 0.8. On the planted pairs, 0.75 finds 0.99
    of the pairs with true Jaccard ≥ 0.8 and flags one of 500 pairs at 0.5-0.7 (precision
    0.998, as at 0.77, which finds 0.974); on clusters of edited copies (each at J ≥ 0.83 to
    its original) it collapses 0.989 of the clusters (0.77: 0.980). Without verification
    (``threshold: null``), 14 × 8 bands flag about half of the pairs at J = 0.7 (precision
    ≈ 0.8).

    Duplicates form clusters: the connected components of the duplicate pairs, so two
    edited copies of one paragraph are one cluster with it even when they are not near
    duplicates of each other, whichever comes first. Each cluster keeps its first document
    in the given order; the others are dropped (reason ``minhash_duplicate``) with
    ``metadata["duplicate_of"]`` its id and ``scores["minhash_dedup"]["similarity"]`` the
    highest estimated Jaccard of their matches. A kept document with duplicates gets
    ``scores["minhash_dedup"]["cluster_size"]``, and the report counts clusters by size
    (:func:`cluster_counters`). Documents without a single word are never dropped here
    (``exact_dedup`` handles them).
    """

    class Params(OpParams):
        ngram: int = Field(5, ge=1)
        num_bands: int = Field(14, ge=1)
        rows_per_band: int = Field(8, ge=1)
        seed: int = 1
        threshold: float | None = Field(0.75, gt=0.0, le=1.0)

    # Documents per signature batch: amortises numpy calls; holds this many texts at once.
    batch_size: int = 256
    # Characters of text held in memory between the two passes; the rest waits on disk.
    memory_chars: int = 64 << 20

    def index(self) -> LSHIndex:
        p = cast(MinHashDedup.Params, self.params)
        hasher = MinHasher(
            num_bands=p.num_bands, rows_per_band=p.rows_per_band, ngram=p.ngram, seed=p.seed
        )
        return LSHIndex(hasher, p.threshold)

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        index = self.index()
        best: dict[int, float] = {}  # document -> highest estimated Jaccard of its matches
        held = _Held(self.memory_chars)
        try:
            for batch in _batched(docs, self.batch_size):
                for sig in index.hasher.signatures([doc.text for doc in batch]):
                    i, matches = index.add(sig)
                    for m in matches:
                        best[i] = max(best.get(i, 0.0), m.similarity)
                        best[m.index] = max(best.get(m.index, 0.0), m.similarity)
                held.add(batch)
            roots = index.roots()
            sizes = np.bincount(roots, minlength=len(roots))
            self.counters.update(cluster_counters(roots))
            kept_ids: dict[int, str] = {}  # representatives of clusters, by index
            for i, doc in enumerate(held):
                root = int(roots[i])
                if root == i:
                    if sizes[i] > 1:
                        kept_ids[i] = doc.id
                        doc.scores(self.name)["cluster_size"] = float(sizes[i])
                    yield doc
                    continue
                doc.metadata["duplicate_of"] = kept_ids[root]
                doc.scores(self.name)["similarity"] = best[i]
                self.drop(doc, "minhash_duplicate")
        finally:
            held.close()


@register("c4_span_dedup")
class C4SpanDedup(GlobalOp):
    """C4-style: remove every ``span``-sentence span already seen in an earlier document.

    Each document is split into sentences (:func:`split_sentences`); every window of
    ``span`` consecutive sentences (compared lower-cased, whitespace collapsed) that
    occurred in an earlier document has its sentences removed. Spans repeated inside one
    document are left alone (that is ``intra_doc_dedup``'s job). A document left without
    text is dropped with reason ``c4_span_duplicate``; otherwise the number of removed
    sentences is recorded as ``metadata["c4_span_dedup"]["removed_sentences"]``. Documents
    with fewer than ``span`` sentences pass unchanged.
    """

    class Params(OpParams):
        span: int = Field(3, ge=1)

    rewrites_text = True

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        n = cast(C4SpanDedup.Params, self.params).span
        seen: set[bytes] = set()
        for doc in docs:
            pieces = split_sentences(doc.text)
            keys = [_unit_key(s).casefold() for s in pieces]
            spans = [_digest("\n".join(keys[i : i + n])) for i in range(len(keys) - n + 1)]
            remove = [False] * len(pieces)
            for i, span in enumerate(spans):
                if span in seen:
                    remove[i : i + n] = [True] * n
            seen.update(spans)
            removed = sum(remove)
            if not removed:
                yield doc
                continue
            text = "".join(s for s, r in zip(pieces, remove, strict=True) if not r).strip()
            if not text:  # dropped as it came: the report's example shows what was repeated
                self.drop(doc, "c4_span_duplicate")
                continue
            doc.text = text
            doc.metadata["c4_span_dedup"] = {"removed_sentences": removed}
            yield doc
