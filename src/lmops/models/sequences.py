"""A running sequence's state inside the engine (:class:`Seq`), the async iterator its
caller reads events from (:class:`Events`), and how admitted prompts are grouped for one
prefill pass (:func:`prefill_groups`). The engine's worker thread owns every ``Seq``; events
cross to the caller's event loop through ``emit`` / ``deliver``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmops.models.types import Delta, Done, GenRequest

__all__ = ["PREFILL_TOKENS", "Events", "Seq", "deliver", "prefill_groups"]


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


def prefill_groups(seqs: list[Seq]) -> list[list[Seq]]:
    """``seqs`` in groups to prefill together: longest prompts first, each group of
    prompts close enough in length that padding them to the longest wastes little."""
    groups: list[list[Seq]] = []
    real = 0  # the current group's prompt tokens
    for s in sorted(seqs, key=lambda s: len(s.req.prompt_ids or []), reverse=True):
        n = len(s.req.prompt_ids or [])
        scored = s.req.prompt_logprobs is not None  # with every position's logits
        if groups and (groups[-1][0].req.prompt_logprobs is not None) == scored:
            group = groups[-1]
            padded = len(group[0].req.prompt_ids or []) * (len(group) + 1)
            budget = SCORED_TOKENS if scored else PREFILL_TOKENS
            if padded <= budget and 4 * (padded - real - n) <= padded:
                group.append(s)
                real += n
                continue
        groups.append([s])
        real = n
    return groups
