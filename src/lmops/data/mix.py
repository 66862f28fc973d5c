"""Mix several datasets into one by target ratios, with seeded up- and down-sampling.

Ratios are relative weights (``{"web": 3, "code": 1}`` means 75 % / 25 %), measured in
documents (``by="documents"``) or tokens (``by="tokens"``). ``total`` is the size of the
mixture in the same unit. When it is ``None`` the mixture is **the largest one that
repeats nothing**: ``min(available[s] / ratio[s])`` over the sources, so the scarcest source
(relative to its ratio) is used exactly once and the others are down-sampled. Repeating data
changes what a model learns, so it only happens when asked for: pass a ``total`` above that
and the short sources are up-sampled.

Per source, with ``target = ratio * total``:

- down-sampling takes the first documents of a seeded permutation (a uniform sample without
  replacement);
- up-sampling takes ``k`` full passes, each in its own shuffled order, and then a sampled
  partial pass. Copy ``r >= 1`` of a document gets the id ``"<id>#r<r>"`` and
  ``metadata["repeat"] = r``, ``metadata["repeat_of"] = "<id>"``;
- by tokens, a partial pass takes documents in permuted order while they fit the target and
  then the next one if that lands closer to it, so each source misses its token target by
  at most half a document.

Every output document has ``metadata["source"] = <source name>``. Sources are interleaved in
a seeded uniform random order; the same inputs and seed give the same output. Each source's
sample depends only on the seed and its own name, so adding a source does not reshuffle the
others.

Sources are read twice: once to count documents and tokens, once to collect the chosen
documents (a list is indexed directly instead). The chosen documents are held in memory once
each, however often they are repeated.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from copy import deepcopy
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from lmops.core.errors import UserError
from lmops.data.document import Document
from lmops.text.cjk import CJK_TOKEN

__all__ = ["MixReport", "Source", "SourceMix", "count_tokens", "mix"]

Source = Sequence[Document] | Callable[[], Iterable[Document]]
By = Literal["documents", "tokens"]

# One token per CJK character (Han, kana, Hangul, CJK punctuation) - these scripts have no
# spaces - and one per run of other non-space characters.
_CJK = CJK_TOKEN
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


def count_tokens(text: str) -> int:
    """A tokenizer-free token estimate: whitespace words plus one per CJK character."""
    return len(_TOKEN_RE.findall(text))


@dataclass(frozen=True, slots=True)
class SourceMix:
    """One source's part of a mixture."""

    ratio: float  # requested share (ratios normalised to sum to 1)
    available_docs: int
    available_tokens: int
    taken_docs: int  # repeats included
    taken_tokens: int
    unique_docs: int  # distinct documents taken
    repeated_docs: int  # copies beyond the first (taken_docs - unique_docs)
    passes: int  # passes over the source started (1 = sampled once; 0 = none taken)
    epochs: float  # taken / available, in the `by` unit
    realised_ratio_docs: float
    realised_ratio_tokens: float


@dataclass(frozen=True, slots=True)
class MixReport:
    """Requested versus realised composition of a mixture."""

    by: str
    seed: int
    total: int  # the target size, in the `by` unit
    total_rule: str  # "given" or "largest without up-sampling"
    total_docs: int
    total_tokens: int
    sources: dict[str, SourceMix]

    def realised(self, name: str) -> float:
        """Realised share of ``name`` in the ``by`` unit."""
        s = self.sources[name]
        return s.realised_ratio_docs if self.by == "documents" else s.realised_ratio_tokens

    @property
    def max_ratio_error(self) -> float:
        """Largest absolute gap between a requested and a realised share (``by`` unit)."""
        return max((abs(self.realised(n) - s.ratio) for n, s in self.sources.items()), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["max_ratio_error"] = self.max_ratio_error
        return d


def mix(
    sources: Mapping[str, Source],
    ratios: Mapping[str, float],
    *,
    by: By = "documents",
    total: int | None = None,
    seed: int = 0,
    token_counter: Callable[[str], int] = count_tokens,
) -> tuple[Iterator[Document], MixReport]:
    """Mix ``sources`` by ``ratios``; returns the documents (an iterator) and the report.

    ``sources`` maps a name to a list of documents or to a zero-argument callable that
    returns a fresh iterable of them each time it is called (it is called twice).
    ``ratios`` must name exactly the same sources, with non-negative weights that do not all
    vanish; a source with weight 0 contributes nothing. ``total`` is the mixture size in the
    ``by`` unit (documents or tokens counted with ``token_counter``); ``None`` means the
    largest mixture that repeats no document (see the module docstring). The report is
    complete on return; the iterator only copies the chosen documents out.
    """
    if by not in ("documents", "tokens"):
        raise UserError(f"unknown mix unit by={by!r}; choose 'documents' or 'tokens'")
    if set(sources) != set(ratios):
        missing = sorted(set(sources) - set(ratios))
        extra = sorted(set(ratios) - set(sources))
        raise UserError(f"ratios must name exactly the sources: missing {missing}, unknown {extra}")
    if not sources:
        raise UserError("no sources to mix")
    for name, r in ratios.items():
        if not (isinstance(r, int | float) and math.isfinite(r) and r >= 0):
            raise UserError(f"ratio of source {name!r} must be a finite number >= 0, got {r!r}")
    weight = sum(ratios.values())
    if weight <= 0:
        raise UserError("all ratios are 0; give at least one source a positive ratio")
    if total is not None and total < 1:
        raise UserError(f"total must be >= 1, got {total}")
    names = list(sources)
    share = {n: ratios[n] / weight for n in names}

    # Pass 1: token count of every document, per source.
    lengths = {n: _lengths(n, sources[n], token_counter) for n in names}
    avail = {n: (len(ln) if by == "documents" else int(ln.sum())) for n, ln in lengths.items()}
    for n in names:
        if share[n] > 0 and avail[n] == 0:
            raise UserError(f"source {n!r} has no {by} but ratio {ratios[n]}; drop it or fill it")
    active = [n for n in names if share[n] > 0]
    total_rule = "given"
    if total is None:
        total_rule = "largest without up-sampling"
        # A hair of slack so 300 * (1/3) / (1/3) does not floor to 299.
        total = max(1, math.floor(min(avail[n] / share[n] for n in active) * (1 + 1e-12)))

    # Plan: per source, the (document index, repeat number) pairs to emit, in order.
    if by == "documents":
        counts = _apportion({n: share[n] for n in active}, total)
        plans = {n: _plan_docs(len(lengths[n]), counts[n], _rng_for(seed, n)) for n in active}
    else:
        plans = {n: _plan_tokens(lengths[n], share[n] * total, _rng_for(seed, n)) for n in active}

    # Pass 2: fetch the chosen documents, once each.
    chosen = {n: _fetch(n, sources[n], {i for i, _ in plans[n]}, len(lengths[n])) for n in active}

    report = _report(by, seed, total, total_rule, names, share, lengths, plans)
    order = np.repeat(np.arange(len(active)), [len(plans[n]) for n in active])
    np.random.default_rng([seed, 0x6D6978]).shuffle(order)  # uniform interleaving
    return _emit(active, plans, chosen, order), report


# -- planning --------------------------------------------------------------------------------------
def _rng_for(seed: int, name: str) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process.
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def _apportion(shares: dict[str, float], total: int) -> dict[str, int]:
    """Integer counts summing to ``total``, by largest remainder."""
    exact = {n: s * total for n, s in shares.items()}
    counts = {n: math.floor(v) for n, v in exact.items()}
    left = total - sum(counts.values())
    for n in sorted(exact, key=lambda n: (counts[n] - exact[n], n))[:left]:
        counts[n] += 1
    return counts


def _plan_docs(n: int, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    full, rest = divmod(count, n)
    plan: list[tuple[int, int]] = []
    for r in range(full):
        plan.extend((int(i), r) for i in rng.permutation(n))
    if rest:
        plan.extend((int(i), full) for i in rng.permutation(n)[:rest])
    return plan


def _plan_tokens(
    lengths: npt.NDArray[np.int64], target: float, rng: np.random.Generator
) -> list[tuple[int, int]]:
    size = int(lengths.sum())
    n = len(lengths)
    full = int(target // size)
    rest = target - full * size
    plan: list[tuple[int, int]] = []
    for r in range(full):
        plan.extend((int(i), r) for i in rng.permutation(n))
    taken = 0
    for i in rng.permutation(n):
        ln = int(lengths[i])
        if taken + ln > rest:
            if taken + ln - rest < rest - taken:  # overshooting lands closer than stopping
                plan.append((int(i), full))
            break
        plan.append((int(i), full))
        taken += ln
    return plan


# -- reading ---------------------------------------------------------------------------------------
def _iterate(name: str, source: Source) -> Iterable[Document]:
    if callable(source):
        return source()
    if isinstance(source, Sequence):
        return source
    raise UserError(
        f"source {name!r} must be a list of documents or a callable returning them, "
        f"got {type(source).__name__}"
    )


def _lengths(name: str, source: Source, counter: Callable[[str], int]) -> npt.NDArray[np.int64]:
    out: list[int] = []
    for doc in _iterate(name, source):
        if not isinstance(doc, Document):
            raise UserError(
                f"source {name!r} item #{len(out) + 1} has type {type(doc).__name__}; expected a Document"
            )
        out.append(counter(doc.text))
    return np.asarray(out, dtype=np.int64)


def _fetch(name: str, source: Source, wanted: set[int], expected: int) -> dict[int, Document]:
    if not callable(source) and isinstance(source, Sequence):
        return {i: source[i] for i in wanted}
    got: dict[int, Document] = {}
    n = 0
    for n, doc in enumerate(_iterate(name, source), 1):
        if n - 1 in wanted:
            got[n - 1] = doc
    if n != expected:
        raise UserError(
            f"source {name!r} gave {expected} documents on the first read and {n} on the "
            "second; its callable must return the same documents every time"
        )
    return got


def _emit(
    active: list[str],
    plans: dict[str, list[tuple[int, int]]],
    chosen: dict[str, dict[int, Document]],
    order: npt.NDArray[np.int64],
) -> Iterator[Document]:
    cursor = dict.fromkeys(active, 0)
    for k in order:
        name = active[k]
        i, r = plans[name][cursor[name]]
        cursor[name] += 1
        doc = chosen[name][i]
        if r == 0:
            meta = dict(doc.metadata)
            doc_id = doc.id
        else:
            # Copies must not share nested dicts (scores) with each other.
            meta = deepcopy(doc.metadata)
            meta["repeat"] = r
            meta["repeat_of"] = doc.id
            doc_id = f"{doc.id}#r{r}"
        meta["source"] = name
        # The user's row rides along unchanged (a copy shares it; its parts are its own).
        parts = dict(doc.parts) if doc.parts is not None else None
        yield Document(doc.text, doc_id, meta, doc.record, parts)


def _report(
    by: str,
    seed: int,
    total: int,
    total_rule: str,
    names: list[str],
    share: dict[str, float],
    lengths: dict[str, npt.NDArray[np.int64]],
    plans: dict[str, list[tuple[int, int]]],
) -> MixReport:
    taken_docs = {n: len(plans.get(n, ())) for n in names}
    taken_tokens = {n: sum(int(lengths[n][i]) for i, _ in plans.get(n, ())) for n in names}
    all_docs = sum(taken_docs.values())
    all_tokens = sum(taken_tokens.values())
    out: dict[str, SourceMix] = {}
    for n in names:
        plan = plans.get(n, [])
        unique = len({i for i, _ in plan})
        avail_docs = len(lengths[n])
        avail_tokens = int(lengths[n].sum())
        if by == "documents":
            epochs = taken_docs[n] / avail_docs if avail_docs else 0.0
        else:
            epochs = taken_tokens[n] / avail_tokens if avail_tokens else 0.0
        out[n] = SourceMix(
            ratio=share[n],
            available_docs=avail_docs,
            available_tokens=avail_tokens,
            taken_docs=taken_docs[n],
            taken_tokens=taken_tokens[n],
            unique_docs=unique,
            repeated_docs=taken_docs[n] - unique,
            passes=(max(r for _, r in plan) + 1) if plan else 0,
            epochs=epochs,
            realised_ratio_docs=taken_docs[n] / all_docs if all_docs else 0.0,
            realised_ratio_tokens=taken_tokens[n] / all_tokens if all_tokens else 0.0,
        )
    return MixReport(
        by=by,
        seed=seed,
        total=total,
        total_rule=total_rule,
        total_docs=all_docs,
        total_tokens=all_tokens,
        sources=out,
    )
