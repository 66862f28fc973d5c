"""What the guardrails computed of a text, remembered by the text itself: a chat request
sends the same system prompt and earlier turns again with every turn."""

from __future__ import annotations

import threading
from typing import Any


class TextCache(dict[str, Any]):
    """A dict from texts, bounded in entries and in characters held (one 60,000-character
    message must not pin a gigabyte); cleared whole when full, like an LRU cache without
    the bookkeeping. Reads are the dict's own; :meth:`put` takes a lock, so the bounds
    hold under threads."""

    def __init__(self, max_items: int = 4096, max_chars: int = 4_000_000) -> None:
        super().__init__()
        self.max_items, self.max_chars = max_items, max_chars
        self.chars = 0
        self._lock = threading.Lock()

    def put(self, text: str, value: Any) -> None:
        """Remember ``value`` for ``text`` (a text over 1/16 of ``max_chars``: not kept)."""
        if len(text) > self.max_chars // 16:
            return
        with self._lock:
            if text in self:
                return
            if len(self) >= self.max_items or self.chars + len(text) > self.max_chars:
                self.clear()
                self.chars = 0
            self[text] = value
            self.chars += len(text)
