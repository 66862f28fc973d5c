"""A running sequence's state inside the engine (:class:`Seq`), the async iterator its
caller reads events from (:class:`Events`), and how admitted prompts are grouped for one
prefill pass (:func:`prefill_groups`). The engine's worker thread owns every ``Seq``; events
cross to the caller's event loop through ``emit`` / ``deliver``."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmops.models.types import Delta, Done, GenRequest

__all__ = [
    "PREFILL_TOKENS",
    "SHARE_MIN_SAVED",
    "Events",
    "PrefillGroup",
    "Seq",
    "deliver",
    "prefill_groups",
    "shared_prefixes",
]


@dataclass
class Seq:
    req: GenRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Delta | Done]
    generated: list[int] = field(default_factory=list)
    sent_chars: int = 0
    text_chars: int = 0  # length of the decoded generated text so far
    # Incremental detokenization (Engine._detokenize): `stable` is the text of
    # generated[:read], which ends on a whole character; `window` is the text of
    # generated[prefix:read], the context the next token is decoded with.
    stable: str = ""
    window: str = ""
    prefix: int = 0
    read: int = 0
    cancelled: bool = False
    eos: bool = False  # it ended by generating an end-of-sequence token
    done: str | None = None  # the finish reason once finished
    rng: random.Random | None = None  # the sequence's own sampling stream (seeded)
    logits_state: Any = None  # its logits processors' state (models/logits.py), made at first use
    # The engine's outbox: events wait there until the worker hands a whole step's events
    # to the event loop at once (Engine._flush). Without one, each event is sent alone.
    outbox: list[tuple[Seq, Delta | Done]] | None = None

    def emit(self, event: Delta | Done) -> None:
        if self.outbox is None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        else:
            self.outbox.append((self, event))


def deliver(events: list[tuple[Seq, Delta | Done]]) -> None:
    for s, ev in events:
        s.queue.put_nowait(ev)


class Events:
    """The event batches of one submitted sequence (an async iterator). Closing it, or
    dropping it unread, cancels the sequence and frees its slot, also when it was never
    iterated (an async generator that never started would not run its ``finally``)."""

    def __init__(self, cancel: Callable[[Seq], None], seq: Seq) -> None:
        self._cancel = cancel
        self._seq = seq
        self._over = False

    def __aiter__(self) -> Events:
        return self

    async def __anext__(self) -> list[Delta | Done]:
        if self._over:
            raise StopAsyncIteration
        seq = self._seq
        try:
            batch = [await seq.queue.get()]
        except BaseException:  # cancelled while waiting: the client left
            await self.aclose()
            raise
        while not seq.queue.empty():
            batch.append(seq.queue.get_nowait())
        if isinstance(batch[-1], Done):
            await self.aclose()
        return batch

    async def aclose(self) -> None:
        if not self._over:
            self._over = True
            self._cancel(self._seq)

    def __del__(self) -> None:
        if not self._over:
            self._seq.cancelled = True


# Prompts prefilled in one forward pass pad to the longest of them: a group takes prompts
# while its padded tokens stay within this many, and padding within a quarter of them.
PREFILL_TOKENS = 8192
# Prompts whose own logprobs are asked for (echo scoring) keep every position's logits,
# (padded tokens, vocabulary) floats: their groups stay within this many padded tokens.
SCORED_TOKENS = 2048
# Prompts that start with the same tokens (the choices of a multiple-choice question, the
# n choices of a request) share one pass over them when that saves at least this many
# tokens ((prompts - 1) x prefix): the group then takes two forward passes instead of one,
# and a pass costs about what 30 tokens cost besides its tokens (it reads every weight:
# SmolLM2-135M on one CPU thread, ~95 ms a pass and ~3.3 ms a token; sharing broke even
# at 24-36 tokens saved, 2 or 4 prompts; benchmarks/prefix_share_bench.py).
SHARE_MIN_SAVED = 32


@dataclass
class PrefillGroup:
    """Prompts to prefill together, and the length of the prefix each one shares with
    others of the group (0: none). Prompts sharing a prefix end up in the same group."""

    seqs: list[Seq]
    shared: list[int]


def _common(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of ``a`` and ``b`` (by halving: list
    comparison runs in C, so a long shared prompt costs little)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def shared_prefixes(prompts: list[list[int]], min_saved: int = SHARE_MIN_SAVED) -> list[int]:
    """For each prompt, the length of the prefix it shares with other prompts (0: none):
    prompts in clusters that each start with the same ``n`` tokens, ``n`` shorter than
    each of them (so each has a token of its own to go on from), chosen to save many tokens
    (a heuristic, not the optimum), each cluster saving at least ``min_saved`` ((members - 1) x ``n``).

    In sorted order, the prompts sharing a prefix are a run, and the prefix of a run is the
    shortest of its neighbours' common prefixes: a run is kept whole with that prefix, or
    split where it is shortest (two questions that both begin "Question: Which of the
    following" are two clusters with their own contexts, not one with that phrase),
    whichever saves more."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    # common[j]: what order[j] and order[j + 1] share, leaving each a token of its own
    common = [
        min(_common(prompts[a], prompts[b]), len(prompts[a]) - 1, len(prompts[b]) - 1)
        for a, b in itertools.pairwise(order)
    ]
    out = [0] * len(prompts)

    def best(lo: int, hi: int) -> tuple[int, list[tuple[int, int, int]]]:
        """The most order[lo:hi] can save, and its clusters (lo, hi, prefix)."""
        if hi - lo < 2:
            return 0, []
        n = min(common[lo : hi - 1])
        saved, start = 0, lo
        clusters: list[tuple[int, int, int]] = []
        for j in range(lo, hi):  # the runs between the places where the prefix is shortest
            if j == hi - 1 or common[j] == n:
                s, c = best(start, j + 1)
                saved, start = saved + s, j + 1
                clusters += c
        whole = (hi - lo - 1) * n
        if whole >= max(min_saved, 1) and whole > saved:
            return whole, [(lo, hi, n)]
        return saved, clusters

    if len(prompts) > 1:
        for lo, hi, n in best(0, len(prompts))[1]:
            for j in range(lo, hi):
                out[order[j]] = n
    return out


def prefill_groups(seqs: list[Seq], min_saved: int | None = SHARE_MIN_SAVED) -> list[PrefillGroup]:
    """``seqs`` in groups to prefill together, scored prompts apart from the others.

    Prompts sharing a prefix (:func:`shared_prefixes`; ``min_saved`` None: never) stay
    together, as one unit: the prefix runs once, then each prompt's rest. Units go longest
    first, a group taking them while its padded tokens stay within the budget and padding
    within a quarter of them. A group's padded tokens are those of its two passes: one
    row per prefix and per prompt that shares none, all padded to the longest, then one
    row per rest, padded to the longest rest. Without shared prefixes that is the one
    pass over the prompts padded to the longest, as before."""
    groups: list[PrefillGroup] = []
    for scored in (True, False):  # with every position's logits, or the last one's
        part = [s for s in seqs if (s.req.prompt_logprobs is not None) == scored]
        prompts = [s.req.prompt_ids or [] for s in part]
        shared = [0] * len(part) if min_saved is None else shared_prefixes(prompts, min_saved)
        budget = SCORED_TOKENS if scored else PREFILL_TOKENS
        # a cluster is one unit: one whose rests pass alone would exceed the budget is not
        # shared (its prompts are grouped whole, within the budget, as without sharing)
        clusters: dict[tuple[int, ...], list[int]] = {}
        for i, (ids, n) in enumerate(zip(prompts, shared, strict=True)):
            if n:
                clusters.setdefault(tuple(ids[:n]), []).append(i)
        for stem_ids, members in clusters.items():
            rests = [len(prompts[i]) - len(stem_ids) for i in members]
            if len(stem_ids) + len(rests) * max(rests) > budget:
                for i in members:
                    shared[i] = 0
        # units: (stem: a shared prefix or a whole prompt, its members, their rests)
        units: dict[Any, tuple[int, list[int], list[int]]] = {}
        for i, (ids, n) in enumerate(zip(prompts, shared, strict=True)):
            key = tuple(ids[:n]) if n else i
            stem, members, rests = units.setdefault(key, (n or len(ids), [], []))
            members.append(i)
            if n:
                rests.append(len(ids) - n)
        group: PrefillGroup | None = None
        # the current group's two passes: `rows` stems padded to the first (the longest),
        # `rested` rests padded to the longest rest; `real` tokens of them all
        top = rows = rested = longest_rest = real = 0
        for stem, members, rests in sorted(units.values(), key=lambda u: -u[0]):
            rest = max([longest_rest, *rests])
            padded = (rows + 1) * top + (rested + len(rests)) * rest
            added = stem + sum(rests)
            if group is not None and padded <= budget and 4 * (padded - real - added) <= padded:
                group.seqs += [part[i] for i in members]
                group.shared += [shared[i] for i in members]
                rows, rested, longest_rest, real = rows + 1, rested + len(rests), rest, real + added
                continue
            group = PrefillGroup([part[i] for i in members], [shared[i] for i in members])
            groups.append(group)
            top, rows, rested, longest_rest, real = (
                stem,
                1,
                len(rests),
                max(rests, default=0),
                added,
            )
    return groups
