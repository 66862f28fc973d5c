"""Batches that fit in memory: a batch that runs out of memory is split and tried again.

:class:`Batches` runs items ``size`` at a time through a function that answers a batch with one
result per item. A batch that runs out of memory (:func:`is_out_of_memory`) is tried again
with half as many items, and the smaller size stays for the rest of the items (``splits``
says where, so a caller whose items shrink can keep it for items as big only): every item is
answered exactly once, in the items' order, since only a batch that answered moves the run on.
An item that runs out of memory alone raises :class:`ItemFailed` naming it (the caller turns
its index into the task and document); any other error is raised at once, never split, since
a smaller batch would fail the same way.

Generation runs on the serving engine, whose batch is the sequences decoding together
(``max_running``): there a sequence that ran out of memory ends with that error
(:func:`says_out_of_memory`), and ``eval.lm`` generates the ones that did again with half as
many decoding together, keeping the others' replies, down to one, as above.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from lmops.core.errors import UserError

__all__ = [
    "CHANGE_ITEM_OR_SERVER",
    "Batches",
    "ItemFailed",
    "ItemNamed",
    "is_out_of_memory",
    "naming_items",
    "says_out_of_memory",
]

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("lmops.eval")

# What allocators say when memory runs out, where the error is a plain RuntimeError: CUDA
# outside the allocator, Apple's MPS, and the CPU allocator.
_OOM_WORDS = ("out of memory", "can't allocate memory")


class ItemFailed(UserError):
    """One item failed in a batch of its own: ``index`` is its request's place in the model
    call, ``reason`` why, in one line."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"request {index}: {reason}")
        self.index = index
        self.reason = reason


# What must change before a prompt the server refused can pass (said after its error)
CHANGE_ITEM_OR_SERVER = (
    "shorten or drop the item, or raise the server's limit (its context length, its request size)"
)


class ItemNamed(UserError):
    """An item that failed alone, named by its id (and where it came from): the error says
    what must change (the item, the server, the memory) before it can pass, so running the
    same command unchanged would fail the same way."""


@contextmanager
def naming_items(name: Callable[[int], str]) -> Iterator[None]:
    """An item that failed alone (``ItemFailed``: a prompt the server refused, one that ran
    out of memory alone) as one error naming it: ``name(index)`` is its id and where it
    came from (``item q7 (set.jsonl:7)``), not its place in the model call."""
    try:
        yield
    except ItemFailed as e:
        raise ItemNamed(f"{name(e.index)}: {e.reason}") from None


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says that a device ran out of memory (torch's ``OutOfMemoryError``, or
    a ``RuntimeError`` saying so), the one failure a smaller batch can cure."""
    if type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, torch.cuda's
        return True
    if isinstance(e, MemoryError):  # Python's, where an allocation on the host failed
        return True
    return isinstance(e, RuntimeError) and any(w in str(e) for w in _OOM_WORDS)


def says_out_of_memory(error: str) -> bool:
    """Whether an error given as its one line, ``"TypeName: message"`` (what the serving
    engine ends a sequence with), is :func:`is_out_of_memory`'s kind."""
    name, _, message = error.partition(": ")
    if name in ("OutOfMemoryError", "MemoryError"):
        return True
    return name == "RuntimeError" and any(w in message for w in _OOM_WORDS)


def _free_cached_memory() -> None:
    """Hand the blocks the failed batch left cached back to the device (CUDA)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Batches:
    """Items ``size`` at a time, smaller after running out of memory (the module
    docstring). ``used``: the sizes that answered, in the order first used; ``splits``:
    (the first item of a batch that ran out of memory, the size it was tried again at)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.used: list[int] = []
        self.splits: list[tuple[Any, int]] = []

    def run(
        self,
        items: Sequence[T],
        answer: Callable[[Sequence[T]], Sequence[R]],
        index_of: Callable[[T], int],
    ) -> list[R]:
        """``answer(batch)`` over consecutive batches of ``items``: the results of every
        item, in the items' order. ``index_of(item)`` names an item that fails alone."""
        out: list[R] = []
        at = 0
        while at < len(items):
            batch = items[at : at + self.size]
            failure: str | None = None
            try:
                got = answer(batch)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                failure = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            if failure is not None:
                # out of the except block: its traceback (and the failed batch's tensors,
                # held by its frames) is gone before the cached blocks are handed back
                _free_cached_memory()
                if len(batch) == 1:
                    raise ItemFailed(
                        index_of(batch[0]),
                        f"out of memory in a batch of 1 ({failure}); lower --max-length or "
                        "use a device with more memory",
                    )
                self.size = (len(batch) + 1) // 2
                self.splits.append((batch[0], self.size))
                log.warning(
                    "a batch of %d ran out of memory: trying it again %d at a time", len(batch),
                    self.size,
                )  # fmt: skip
                continue  # the same items again, fewer at a time
            if len(got) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} answered {len(got)} results")
            if self.size not in self.used:
                self.used.append(self.size)
            out += got
            at += len(batch)
        return out
