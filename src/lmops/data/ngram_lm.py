"""A small n-gram language model for perplexity filtering: numpy only, one file on disk.

CCNet scores web text with a KenLM model trained on Wikipedia and keeps what reads like
Wikipedia; this module is the dependency-free version of that reference model.

The model
    Interpolated modified Kneser-Ney (Chen & Goodman 1998): the highest order uses raw
    counts, lower orders use continuation counts (how many distinct words precede an
    n-gram), except n-grams that start at a line start, which keep raw counts (as in
    KenLM); three discounts per order (for counts 1, 2 and 3+) are estimated from the
    count-of-counts. The lowest order interpolates with a uniform distribution over the
    vocabulary plus one unknown symbol, so every text gets a finite perplexity.

Units
    ``char`` (the default) models Unicode code points, so Chinese and English work alike
    with no segmenter; ``word`` models lower-cased words (runs of letters/digits, each
    punctuation mark, each CJK character on its own). Each non-empty line is a sentence:
    ``order - 1`` start symbols, the line, an end symbol; the end symbol is predicted
    too. Before modelling, whitespace runs inside a line become one space and ASCII
    digits become ``0`` (as in CCNet), so numbers do not look like rare text.

Speed
    N-grams are never strings: each is a 64-bit hash, computed for every position and
    every order at once with numpy (a rolling hash with a SplitMix64 finaliser per step,
    so it is stable across processes and platforms, unlike Python's salted ``hash``).
    Each order's table is an ordered open-addressing hash table of 16-byte records (key,
    probability, back-off weight), so a look-up is about one cache miss, and scoring a
    batch of documents is a few dozen vectorised operations: about 3,000 1 KB documents
    per second on one core. Two distinct n-grams colliding in 64 bits is vanishingly
    unlikely (about ``n**2 / 2**65`` for ``n`` n-grams).

File format
    One ``.ngram`` file: an uncompressed numpy ``.npz`` (a zip of ``.npy`` arrays, read with
    ``allow_pickle=False``) holding a JSON header and, per order, the sorted n-gram keys
    with their discounted probabilities and back-off weights; the hash tables are built
    from them on load.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from lmops.core.atomic import write_atomic
from lmops.core.errors import UserError
from lmops.text.words import WORD_RE, word_id

__all__ = [
    "NGRAM_SUFFIX",
    "NgramLM",
    "Unit",
    "is_ngram_file",
    "mix64",
    "ngram_hashes",
    "normalize_lines",
    "text_symbols",
    "train_reference_lm",
]

Unit = Literal["char", "word"]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

NGRAM_SUFFIX = ".ngram"
FORMAT = "lmops-ngram"
FORMAT_VERSION = 1

# Sentence markers. Code points 2 and 3 (STX/ETX) are removed from the text first, so
# they cannot be confused with a character; word ids have their top bit set.
BOS = 2
EOS = 3

# SplitMix64 (Steele et al. 2014) constants; _P is the golden-ratio multiplier.
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_P = np.uint64(0x9E3779B97F4A7C15)
_SEED = np.uint64(0x5851F42D4C957F2D)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_ONE = np.uint64(1)


def mix64(z: U64) -> U64:
    """SplitMix64's finaliser, element-wise: a fixed bijection of ``uint64`` that spreads
    every input bit over every output bit (arithmetic wraps modulo 2**64)."""
    z = z ^ (z >> _S30)
    z = z * _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def ngram_hashes(symbols: U64, order: int, seed: int = 0) -> list[U64]:
    """Hashes of every n-gram of ``symbols`` for n = 1..``order``.

    ``result[n - 1][i]`` is the hash of ``symbols[i - n + 1 : i + 1]`` (the n-gram ending
    at ``i``); entries with ``i < n - 1`` are 0 and meaningless. The hash of a sequence
    extends the hash of its prefix, ``h(g + [x]) = mix64(h(g) * P + x)``, so the
    (n-1)-gram ending at ``i - 1`` is the context of the n-gram ending at ``i``.
    ``seed`` gives an independent family of hashes. Hashes are odd (the low bit is set),
    so 0 can mark an empty slot.
    """
    start = mix64(np.array([seed], dtype=np.uint64) + _SEED) * _P
    out = [mix64(symbols + start) | _ONE]
    for n in range(2, order + 1):
        h = np.zeros_like(symbols)
        h[n - 1 :] = mix64(out[-1][n - 2 : -1] * _P + symbols[n - 1 :]) | _ONE
        out.append(h)
    return out


# --- text to symbols ---------------------------------------------------------------------

_NORMALIZE = str.maketrans({**{d: "0" for d in "123456789"}, "\x02": " ", "\x03": " "})


def normalize_lines(text: str) -> list[str]:
    """Normalised non-empty lines: digits to 0, whitespace runs to one space."""
    out = []
    for line in text.translate(_NORMALIZE).split("\n"):
        words = line.split()
        if words:
            out.append(" ".join(words))
    return out


def text_symbols(text: str, order: int, unit: Unit) -> U64:
    """The symbol sequence the model sees for ``text``: per line ``order - 1`` BOS, the
    line's symbols, EOS. Empty when ``text`` has no non-space character."""
    lines = normalize_lines(text)
    if not lines:
        return np.zeros(0, dtype=np.uint64)
    if unit == "char":
        pad = "\x02" * (order - 1)
        joined = "".join(f"{pad}{line}\x03" for line in lines)
        codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        return codes.astype(np.uint64)
    ids: list[int] = []
    pads = [BOS] * (order - 1)
    for line in lines:
        ids += pads
        ids += map(word_id, WORD_RE.findall(line.lower()))
        ids.append(EOS)
    return np.array(ids, dtype=np.uint64)


# --- the model ---------------------------------------------------------------------------


_RECORD = np.dtype([("key", "<u8"), ("prob", "<f4"), ("gamma", "<f4")])
_PROBES = 3  # table probes before the few queries left fall back to a binary search


class _Table:
    """An ordered open-addressing hash table over uniformly distributed 64-bit keys.

    A key's home slot is its top bits; keys are placed in increasing order, each at its
    home slot or the first free slot after the previous key, so occupied slots hold
    increasing keys and a look-up scans from the home slot until it meets the key, a
    bigger key or an empty slot (key 0). Key, probability and back-off weight share one
    16-byte record, so a probe is one cache miss. At the load factor used (at most 0.7)
    almost every look-up ends within ``_PROBES`` probes; the rest (long runs) use a
    binary search over the sorted arrays, so no look-up costs a long Python loop.
    """

    def __init__(self, keys: U64, probs: npt.NDArray[Any], gammas: npt.NDArray[Any]) -> None:
        self.keys, self.probs = keys, probs
        self.gammas = gammas if gammas.size else np.ones(keys.size, dtype=np.float32)
        bits = max(1, math.ceil(math.log2(max(2.0, keys.size / 0.7))))
        self.shift = np.uint64(64 - bits)
        home = (keys >> self.shift).astype(np.intp)
        # slot_i = max(home_i, slot_(i-1) + 1), as a running maximum.
        rank = np.arange(keys.size, dtype=np.intp)
        slot = np.maximum.accumulate(home - rank) + rank if keys.size else rank
        size = max(1 << bits, int(slot[-1]) + 1 if keys.size else 0) + 1  # + an empty slot
        self.records = np.zeros(size, dtype=_RECORD)
        self.records["key"][slot] = keys
        self.records["prob"][slot] = probs
        self.records["gamma"][slot] = self.gammas

    def find(self, queries: U64) -> tuple[npt.NDArray[np.intp], F64, F64]:
        """(positions in ``queries`` that were found, their probabilities, back-off
        weights), the positions in no particular order."""
        slot = (queries >> self.shift).astype(np.intp)
        found: list[npt.NDArray[np.intp]] = []
        probs: list[npt.NDArray[Any]] = []
        gammas: list[npt.NDArray[Any]] = []
        active = np.arange(queries.size)
        for probe in range(_PROBES + 1):
            q = queries[active]
            if probe == _PROBES:
                i = np.minimum(np.searchsorted(self.keys, q), max(0, self.keys.size - 1))
                hit = self.keys[i] == q if self.keys.size else np.zeros(q.size, dtype=bool)
                found.append(active[hit])
                probs.append(self.probs[i[hit]])
                gammas.append(self.gammas[i[hit]])
                break
            rec = self.records[slot[active] + probe]
            key = rec["key"]
            hit = key == q
            found.append(active[hit])
            probs.append(rec["prob"][hit])
            gammas.append(rec["gamma"][hit])
            # Go on while the slot holds a smaller key (an empty slot holds 0).
            active = active[~hit & (key < q) & (key != 0)]
            if not active.size:
                break
        return (
            np.concatenate(found),
            np.concatenate(probs).astype(np.float64),
            np.concatenate(gammas).astype(np.float64),
        )


@dataclass
class NgramLM:
    """An interpolated modified Kneser-Ney n-gram model over hashed n-grams.

    Build one with :meth:`train` (or :func:`train_reference_lm`, which also calibrates
    the perplexity filter's automatic threshold), keep it with :meth:`save` and
    :meth:`load`, and score with :meth:`perplexity` or :meth:`nll_many`.

    One table per order ``n`` (index ``n - 1``): ``keys`` the sorted hashes of the
    n-grams seen, either as an n-gram or as the context of an (n+1)-gram; ``probs`` the
    discounted probability ``(c - D(c)) / c(context)`` (0 for a pure context); ``gammas``
    the back-off weight ``sum(D) / c(.)`` of the n-gram as a context (1 where it is none;
    empty for the highest order). With ``h'`` the context ``h`` minus its first symbol,
    ``P_n(w | h) = probs_n(hw) + gammas_(n-1)(h) * P_(n-1)(w | h')``, ``P_n = P_(n-1)``
    for an unseen context, and ``P_0`` is uniform over ``vocab_size`` symbols.
    """

    order: int
    unit: Unit
    keys: list[U64]
    probs: list[npt.NDArray[np.float32]]
    gammas: list[npt.NDArray[np.float32]]
    unigram_gamma: float
    vocab_size: int
    discounts: list[tuple[float, float, float]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._tables = [
            _Table(k, p, g) for k, p, g in zip(self.keys, self.probs, self.gammas, strict=True)
        ]

    # --- training ------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        order: int = 5,
        unit: Unit = "char",
        *,
        chunk_symbols: int = 1 << 22,
    ) -> NgramLM:
        """Count the n-grams of ``texts`` and build the smoothed model.

        ``order`` 5 suits characters (about a word of context), 3 suits words. Memory is
        about 40 bytes per distinct n-gram while counting; ``chunk_symbols`` bounds the
        working set of one counting pass. Raises :class:`UserError` on an empty corpus.
        """
        if unit not in ("char", "word"):
            raise UserError(f"n-gram unit {unit!r}: use 'char' or 'word'")
        if not 1 <= order <= 10:
            raise UserError(f"n-gram order {order}: use an order from 1 to 10")
        counter = _Counter(order)
        buf: list[U64] = []
        size = docs = 0
        for text in texts:
            sym = text_symbols(text, order, unit)
            if sym.size:
                buf.append(sym)
                size += sym.size
                docs += 1
            if size >= chunk_symbols:
                counter.add(np.concatenate(buf))
                buf, size = [], 0
        if buf:
            counter.add(np.concatenate(buf))
        if counter.tokens == 0:
            raise UserError(
                "cannot train an n-gram model on an empty corpus: give texts with content"
            )
        model = _build(counter.tables(), order, unit)
        model.meta.update(docs=docs, tokens=counter.tokens)
        return model

    # --- scoring -------------------------------------------------------------------------

    def _log_probs(self, sym: U64) -> F64:
        """Natural-log probability of every predicted (non-BOS) symbol of ``sym``."""
        pos = np.flatnonzero(sym != BOS)
        if pos.size == 0:
            return np.zeros(0)
        hashes = ngram_hashes(sym, self.order)
        # One look-up per order and position gives both the n-gram's probability (when
        # it is predicted) and its back-off weight (when it is the next order's context).
        # An n-gram is in its table only if its (n-1)-gram suffix is in the one below, so
        # each order looks up only the positions the order below found.
        parts: list[F64] = []
        gammas: list[F64] = []
        alive = np.arange(sym.size)
        for n in range(1, self.order + 1):
            found, prob, gamma = self._tables[n - 1].find(hashes[n - 1][alive])
            alive = alive[found]
            part = np.zeros(sym.size)
            part[alive] = prob
            parts.append(part)
            if n < self.order:
                weight = np.ones(sym.size)
                weight[alive] = gamma
                gammas.append(weight)
        p = parts[0][pos] + self.unigram_gamma / self.vocab_size
        before = pos - 1
        for n in range(2, self.order + 1):
            p = parts[n - 1][pos] + gammas[n - 2][before] * p
        return np.log(p)

    def nll_many(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """(total negative log-likelihood in nats, predicted symbols) per text, scored in
        one vectorised pass. A text with no content gives ``(0.0, 0)``."""
        syms = [text_symbols(t, self.order, self.unit) for t in texts]
        if not syms:
            return []
        lp = self._log_probs(np.concatenate(syms))
        counts = [int(np.count_nonzero(s != BOS)) for s in syms]
        # Per-text sums with reduceat over the non-empty texts' starts: each text's sum
        # is the same whatever else is in the batch.
        starts = np.cumsum([0, *counts[:-1]])
        nonempty = [i for i, c in enumerate(counts) if c]
        sums = np.add.reduceat(lp, starts[nonempty]) if nonempty else np.zeros(0)
        out = [(0.0, 0)] * len(texts)
        for i, total in zip(nonempty, sums.tolist(), strict=True):
            out[i] = (-total, counts[i])
        return out

    def perplexity(self, text: str) -> float:
        """``exp(mean negative log-probability)`` per symbol (characters or words, plus one
        end-of-line symbol per line); ``nan`` for a text with no content."""
        nll, n = self.nll_many([text])[0]
        return math.exp(nll / n) if n else math.nan

    # --- files ---------------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "order": self.order,
            "unit": self.unit,
            "vocab_size": self.vocab_size,
            "unigram_gamma": self.unigram_gamma,
            "discounts": [list(d) for d in self.discounts],
            "ngrams": [int(k.size) for k in self.keys],
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to ``path`` (one file, written to a temp file then renamed)."""
        target = Path(path)
        arrays: dict[str, npt.NDArray[Any]] = {
            "header": np.frombuffer(json.dumps(self.header()).encode(), dtype=np.uint8)
        }
        for n in range(1, self.order + 1):
            arrays[f"keys{n}"] = self.keys[n - 1]
            arrays[f"probs{n}"] = self.probs[n - 1]
            arrays[f"gammas{n}"] = self.gammas[n - 1]
        write_atomic(target, lambda fh: np.savez(fh, allow_pickle=False, **arrays))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NgramLM:
        """Read a model written by :meth:`save`; :class:`UserError` if it is not one."""
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                head = _read_header(z, p)
                n_max = int(head["order"])
                arrays = {name: z[name] for name in z.files}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise UserError(f"{p}: not a readable lmops n-gram model ({e})") from None
        return cls(
            order=n_max,
            unit=head["unit"],
            keys=[arrays[f"keys{n}"] for n in range(1, n_max + 1)],
            probs=[arrays[f"probs{n}"] for n in range(1, n_max + 1)],
            gammas=[arrays[f"gammas{n}"] for n in range(1, n_max + 1)],
            unigram_gamma=float(head["unigram_gamma"]),
            vocab_size=int(head["vocab_size"]),
            discounts=[(d[0], d[1], d[2]) for d in head["discounts"]],
            meta=dict(head.get("meta", {})),
        )


def _read_header(z: Any, path: Path) -> dict[str, Any]:
    if "header" not in z.files:
        raise UserError(f"{path}: not an lmops n-gram model (no header)")
    head: dict[str, Any] = json.loads(z["header"].tobytes())
    if head.get("format") != FORMAT:
        raise UserError(f"{path}: not an lmops n-gram model (format {head.get('format')!r})")
    if head.get("version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: n-gram model format version {head.get('version')}, this lmops reads "
            f"{FORMAT_VERSION}; retrain it with train_reference_lm"
        )
    return head


def is_ngram_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file holding an :class:`NgramLM` (checks the header only)."""
    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    try:
        with np.load(p, allow_pickle=False) as z:
            _read_header(z, p)
    except (UserError, OSError, ValueError, zipfile.BadZipFile):
        return False
    return True


# --- counting ----------------------------------------------------------------------------


@dataclass
class _Counts:
    """Distinct n-grams of one order with, per n-gram: its count, the hash of its
    (n-1)-gram suffix (for continuation counts), of its context, and whether it starts
    with BOS. Sorted by key."""

    keys: U64
    counts: npt.NDArray[np.int64]
    suffix: U64
    ctx: U64
    bos: npt.NDArray[np.bool_]


def _merge(tables: Sequence[_Counts]) -> _Counts:
    keys = np.concatenate([t.keys for t in tables])
    uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    counts = np.bincount(inv, weights=np.concatenate([t.counts for t in tables]))
    return _Counts(
        uniq,
        counts.astype(np.int64),
        np.concatenate([t.suffix for t in tables])[first],
        np.concatenate([t.ctx for t in tables])[first],
        np.concatenate([t.bos for t in tables])[first],
    )


class _Counter:
    """Counts hashed n-grams chunk by chunk. Each order keeps a stack of sorted runs,
    merged when a run is no bigger than the one after it (as a log-structured merge), so
    total merge work grows as ``n log(chunks)``, not ``n * chunks``."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.runs: list[list[_Counts]] = [[] for _ in range(order)]
        self.tokens = 0

    def add(self, sym: U64) -> None:
        hashes = ngram_hashes(sym, self.order)
        pos = np.flatnonzero(sym != BOS)
        self.tokens += int(pos.size)
        zeros = np.zeros(pos.size, dtype=np.uint64)
        for n in range(1, self.order + 1):
            if n == 1:
                suffix, ctx, bos = zeros, zeros, np.zeros(pos.size, dtype=bool)
            else:
                suffix = hashes[n - 2][pos]
                ctx = hashes[n - 2][pos - 1]
                bos = sym[pos - n + 1] == BOS
            run = _merge(
                [_Counts(hashes[n - 1][pos], np.ones(pos.size, np.int64), suffix, ctx, bos)]
            )
            stack = self.runs[n - 1]
            stack.append(run)
            while len(stack) >= 2 and stack[-2].keys.size <= 2 * stack[-1].keys.size:
                last = stack.pop()
                stack[-1] = _merge([stack[-1], last])

    def tables(self) -> list[_Counts]:
        return [_merge(stack) if len(stack) > 1 else stack[0] for stack in self.runs]


def _discounts(adjusted: npt.NDArray[np.int64]) -> tuple[float, float, float]:
    """Chen & Goodman's modified Kneser-Ney discounts D1, D2, D3+ from count-of-counts;
    falls back to one discount ``n1 / (n1 + 2 n2)`` (clamped to [0.1, 0.9]) where the
    estimates are undefined or out of range, as happens on tiny corpora."""
    n1, n2, n3, n4 = (int(np.count_nonzero(adjusted == k)) for k in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
    if min(n1, n2, n3, n4) > 0:
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        if all(0 < dk < k for k, dk in enumerate(d, start=1)):
            return d
    single = min(max(y, 0.1), 0.9)
    return (single, single, single)


def _build(tables: list[_Counts], order: int, unit: Unit) -> NgramLM:
    keys: list[U64] = []
    probs: list[F64] = []
    gammas: list[F64] = []
    discounts: list[tuple[float, float, float]] = []
    unigram_gamma = 0.0
    contexts: list[tuple[U64, F64]] = []  # per order n >= 2: (context keys, back-off weight)
    for n in range(1, order + 1):
        t = tables[n - 1]
        if n == order:
            adjusted = t.counts
        else:
            # Continuation count: distinct (n+1)-grams that end with this n-gram.
            suf, cont = np.unique(tables[n].suffix, return_counts=True)
            i = np.minimum(np.searchsorted(suf, t.keys), suf.size - 1)
            follow = np.where(suf[i] == t.keys, cont[i], 0)
            adjusted = np.where(t.bos | (follow == 0), t.counts, follow)
        d = _discounts(adjusted)
        discounts.append(d)
        disc = np.where(adjusted == 1, d[0], np.where(adjusted == 2, d[1], d[2]))
        num = adjusted - disc
        if n == 1:
            total = float(adjusted.sum())
            probs.append(num / total)
            unigram_gamma = float(disc.sum()) / total
        else:
            ctx, inv = np.unique(t.ctx, return_inverse=True)
            ctx_total = np.bincount(inv, weights=adjusted)
            probs.append(num / ctx_total[inv])
            contexts.append((ctx, np.bincount(inv, weights=disc) / ctx_total))
        keys.append(t.keys)
    # Fold each order's contexts into the table one order down (a context of order n is
    # an (n-1)-gram), adding the contexts that are never predicted (those made of BOS).
    for n in range(1, order):
        ctx, weight = contexts[n - 1]
        merged = np.union1d(keys[n - 1], ctx)
        prob = np.zeros(merged.size)
        prob[np.searchsorted(merged, keys[n - 1])] = probs[n - 1]
        gamma = np.ones(merged.size)
        gamma[np.searchsorted(merged, ctx)] = weight
        keys[n - 1], probs[n - 1] = merged, prob
        gammas.append(gamma)
    gammas.append(np.zeros(0))
    return NgramLM(
        order=order,
        unit=unit,
        keys=keys,
        probs=[p.astype(np.float32) for p in probs],
        gammas=[g.astype(np.float32) for g in gammas],
        unigram_gamma=unigram_gamma,
        # Symbols seen plus one for everything unseen (BOS is never predicted).
        vocab_size=int(np.count_nonzero(probs[0])) + 1,
        discounts=discounts,
    )


# --- reference models --------------------------------------------------------------------

CALIBRATION_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
MIN_CALIBRATION_DOCS = 20


def _iter_texts(
    paths_or_texts: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> Iterable[str]:
    from lmops.data.io import ReadOptions, TextUnit, detect_format, read_documents

    items: Iterable[str | os.PathLike[str]] = (
        [paths_or_texts] if isinstance(paths_or_texts, str | os.PathLike) else paths_or_texts
    )
    for item in items:
        # A string is a path only if it names an existing file; otherwise it is a text.
        is_path = isinstance(item, os.PathLike) or (
            len(item) < 4096 and "\n" not in item and os.path.isfile(item)
        )
        if not is_path:
            yield str(item)
            continue
        path = Path(item)
        if not path.exists():
            raise UserError(f"{path}: no such file for the reference corpus")
        unit: TextUnit = "paragraph" if detect_format(path) == "text" else "file"
        for doc in read_documents(path, ReadOptions(text_unit=unit)):
            yield doc.text


def train_reference_lm(
    paths_or_texts: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out_file: str | os.PathLike[str],
    order: int = 5,
    unit: Unit = "char",
    *,
    holdout_every: int = 50,
    max_holdout: int = 2000,
) -> NgramLM:
    """Train a reference n-gram model (on Wikipedia-like text) and save it to ``out_file``.

    ``paths_or_texts``: one path, or an iterable of paths (``Path`` objects, or strings
    naming an existing file) and texts (any other string). Files are read with the
    data stage's readers: JSONL/Parquet/HF datasets give one document per row, ``.txt``
    one per blank-line-separated paragraph.

    Every ``holdout_every``-th document (up to ``max_holdout``) is held out of training
    and scored; with at least 20 held out, the quantiles of their perplexity are stored
    in the model (``meta["calibration"]``) and give the perplexity filter its ``auto``
    thresholds. ``out_file`` gets the ``.ngram`` suffix if it has none.
    """
    held: list[str] = []

    def training_texts() -> Iterable[str]:
        for i, text in enumerate(_iter_texts(paths_or_texts)):
            if holdout_every and i % holdout_every == holdout_every - 1 and len(held) < max_holdout:
                held.append(text)
            else:
                yield text

    model = NgramLM.train(training_texts(), order=order, unit=unit)
    scored = [(nll, n) for nll, n in model.nll_many(held) if n] if held else []
    if len(scored) >= MIN_CALIBRATION_DOCS:
        log_ppl = np.array([nll / n for nll, n in scored])
        model.meta["calibration"] = {
            "docs": len(scored),
            "log_perplexity_quantiles": {
                f"{q:g}": float(v)
                for q, v in zip(
                    CALIBRATION_QUANTILES, np.quantile(log_ppl, CALIBRATION_QUANTILES), strict=True
                )
            },
        }
    target = Path(out_file)
    if not target.name.endswith(NGRAM_SUFFIX):
        target = target.with_name(target.name + NGRAM_SUFFIX)
    model.save(target)
    return model
