"""Plain objects that cross the seam between the HTTP layer and a backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenRequest:
    request_id: str
    prompt_ids: list[int] | None = None  # engine backends: already templated and tokenized
    messages: list[dict[str, Any]] | None = None  # upstream backends: passed through
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Delta:
    """New text of one sequence (may be empty when only a token was held back)."""

    text: str
    token_id: int | None = None
    logprob: float | None = None


@dataclass
class Done:
    finish_reason: str  # stop | length | content_filter | cancelled | error
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
