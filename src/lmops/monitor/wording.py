"""How the monitor's messages (CLI, console, reports) count things: "1 canary failing",
"2 canaries failing", never "1 canaries"."""

from __future__ import annotations

__all__ = ["counted", "noun_for"]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``plural`` when the noun's plural is
    not ``noun + "s"`` (``counted(2, "canary", "canaries")``); in a phrase, the first word
    is the one that counts (``counted(1, "prompt text")``)."""
    return f"{n} {noun_for(n, noun, plural)}"


def noun_for(n: int, noun: str, plural: str | None = None) -> str:
    """``noun`` as it agrees with ``n`` things, where the number is not written (a list of
    names follows: "canary capital", "canaries capital, json")."""
    return noun if n == 1 else plural if plural is not None else noun + "s"
