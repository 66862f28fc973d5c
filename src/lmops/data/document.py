"""The unit that flows through the data stage, and the user's record it came from.

A :class:`Document` is what operators see: a text, an id and lmops's annotations
(``metadata``). When it was read from a row, ``record`` keeps that row as the user wrote it,
so the writer puts every field back unchanged except the ones the recipe processes.

Several fields. A recipe may process several fields of a record (``fields: [instruction,
input, output]``) or the messages of a chat (``fields: messages``): each string field, and
each message's string ``content``, is a *part*. Mappers (cleaning, masking) rewrite each part;
``text`` is then the parts joined by a blank line, which filters score and dedup compares,
unless a step names one ``field`` to look at. With a single string field there are no parts:
``text`` is that field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmops.core.errors import UserError
from lmops.core.jsonl import RawMembers

__all__ = ["PART_JOINER", "Document", "Record"]

PART_JOINER = "\n\n"


@dataclass(slots=True)
class Record:
    """The row a document was read from, without lmops's ``_lmops`` annotations."""

    values: dict[str, Any]
    raw: RawMembers | None  # JSON sources: each member's JSON text as read
    fields: tuple[str, ...]  # the fields the recipe processes
    id_field: str  # the field holding the id (it may be absent from the row)
    text_field: str | None = None  # one string field: it holds Document.text
    # part name -> (field, message index or None), e.g. "messages[1].content" -> ("messages", 1)
    paths: dict[str, tuple[str, int | None]] = field(default_factory=dict)

    def original(self, part: str) -> Any:
        """The part's text as read."""
        name, index = self.paths[part]
        value = self.values[name]
        return value if index is None else value[index]["content"]


@dataclass(slots=True)
class Document:
    """One document: its text, a stable id kept through every step, and metadata.

    ``metadata`` holds lmops's own annotations, written under the row's ``_lmops`` key:
    operators put their scores under ``metadata["scores"][<op name>]`` (a flat
    ``{str: float}`` per operator) so thresholds can be re-applied without recomputing.
    The user's fields are in ``record`` and never here.
    """

    text: str
    id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    record: Record | None = None
    parts: dict[str, str] | None = None  # several fields: part name -> current text
    _focus: tuple[str, str] | None = None  # (field, joined text) while one field is in view

    def scores(self, op: str) -> dict[str, float]:
        """The score dict for ``op``, created empty on first use."""
        all_scores: dict[str, dict[str, float]] = self.metadata.setdefault("scores", {})
        return all_scores.setdefault(op, {})

    # -- several fields ---------------------------------------------------------------------------
    def _in(self, part: str, name: str) -> bool:
        assert self.record is not None
        return self.record.paths[part][0] == name

    def joined(self) -> str:
        """The parts joined by a blank line (empty parts left out)."""
        assert self.parts is not None
        return PART_JOINER.join(t for t in self.parts.values() if t)

    def field_text(self, name: str) -> str:
        """The text of one field: its parts joined (a chat's messages), or ``text``."""
        if self.parts is None:
            return self.text
        return PART_JOINER.join(t for p, t in self.parts.items() if t and self._in(p, name))

    def map_parts(self, fn: Callable[[Document], Document], name: str | None = None) -> Document:
        """Apply a mapper to each part (of field ``name`` only, when given), then rejoin."""
        if self.parts is None:
            return fn(self)
        for part in list(self.parts):
            if name is None or self._in(part, name):
                self.text = self.parts[part]
                # A mapper rewrites the document it is given and returns it.
                self.parts[part] = fn(self).text
        self.text = self.joined()
        return self

    def focus(self, name: str) -> None:
        """Put field ``name`` in ``text`` (for a step with ``field:``); :meth:`unfocus`
        puts the joined text back, taking a rewritten field's text into its part."""
        if self.parts is not None:
            self._focus = (name, self.text)
            self.text = self.field_text(name)

    def unfocus(self, op: str) -> None:
        if self._focus is None:
            return
        name, joined = self._focus
        self._focus = None
        if self.text == self.field_text(name):
            self.text = joined
            return
        parts = [p for p in self.parts or {} if self._in(p, name)]
        if len(parts) != 1:
            raise UserError(
                f"{op} rewrote field {name!r} of {self.id}, which holds {len(parts)} texts "
                "(a chat's messages); it can only rewrite a field holding one string"
            )
        assert self.parts is not None
        self.parts[parts[0]] = self.text
        self.text = self.joined()
