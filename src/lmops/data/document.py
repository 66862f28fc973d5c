"""The unit that flows through the data stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Document:
    """One document: its text, a stable id kept through every step, and metadata.

    Operators put their scores under ``metadata["scores"][<op name>]`` (a flat
    ``{str: float}`` per operator) so thresholds can be re-applied without recomputing.
    """

    text: str
    id: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def scores(self, op: str) -> dict[str, float]:
        """The score dict for ``op``, created empty on first use."""
        all_scores: dict[str, dict[str, float]] = self.metadata.setdefault("scores", {})
        return all_scores.setdefault(op, {})
