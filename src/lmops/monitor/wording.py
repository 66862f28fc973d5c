"""How the monitor's messages (CLI, console, reports) count things: "1 canary failing",
"2 canaries failing", never "1 canaries"."""

from __future__ import annotations

__all__ = ["counted"]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``plural`` when the noun's plural is
    not ``noun + "s"`` (``counted(2, "canary", "canaries")``); in a phrase, the first word
    is the one that counts (``counted(1, "prompt text")``)."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {plural if plural is not None else noun + 's'}"
