"""An endpoint's ``/v1/models/{model}`` card, read so that a blip is never taken for an answer.

What a model behind an OpenAI-compatible endpoint is (an ``lmops serve`` deployment, the
prompt it binds, the model versions it serves) is read from its card: the prompt stage asks
it before sending a prompt, the eval stage to link a report to the versions it scored. A
card (any 200) or a refusal that is the server's verdict (a 4xx such as 401, 403, 404 or
405: not there, or not for this key) is an answer; a moment's failure (a timeout, a
connection refused or reset, a 408, 409, 429, 500 or 502-504) is tried once more after
:data:`CARD_BACKOFF_S`, and failing again is "cannot say" (:attr:`CardReading.unknown`),
which the caller reports, never takes for "not lmops".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

__all__ = ["CARD_BACKOFF_S", "CARD_TIMEOUT_S", "CardReading", "read_card"]

# seconds before the one retry of a card that failed for a moment, and the longest a card
# request may take (a card is a cheap answer; a hung one must not hold a command for a
# generation's timeout)
CARD_BACKOFF_S = 0.5
CARD_TIMEOUT_S = 10.0
# statuses that are a moment's failure, not the server's answer (the openai client's own
# retry rule): asked again, never kept. 501 and 505 are the server's answer.
MOMENTARY = frozenset({408, 409, 429, 500, 502, 503, 504})
_sleep = time.sleep  # (tests replace it)


@dataclass(frozen=True)
class CardReading:
    """What asking for a card found: ``status`` the server's answer (200: ``card`` is its
    JSON object; a 4xx: a refusal), or None when it could not say twice (``error``, one
    line, says why)."""

    status: int | None
    card: dict[str, Any] | None = None
    error: str = ""

    @property
    def unknown(self) -> bool:
        """Whether the endpoint could not be asked (a moment's failure, twice)."""
        return self.status is None

    @property
    def lmops(self) -> dict[str, Any] | None:
        """The card's ``lmops`` part (an ``lmops serve`` deployment's), else None."""
        part = (self.card or {}).get("lmops")
        return part if isinstance(part, dict) else None


def _one_line(text: str, limit: int = 160) -> str:
    return " ".join(text.split())[:limit]


def read_card(
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    timeout_s: float = CARD_TIMEOUT_S,
) -> CardReading:
    """``GET {base_url}/models/{model}`` (``base_url`` ends in ``/v1``), with
    ``Authorization: Bearer api_key`` when one is given: tried twice at most (the module
    docstring). A 200 whose body is not a JSON object is an answer without a card."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = f"{base_url.rstrip('/')}/models/{quote(model, safe='/:@')}"
    error = ""
    with httpx.Client(headers=headers, timeout=timeout_s) as client:
        for attempt in range(2):
            if attempt:
                _sleep(CARD_BACKOFF_S)
            try:
                r = client.get(url)
            except httpx.HTTPError as e:  # a timeout, a refused or reset connection
                error = _one_line(f"{type(e).__name__}: {e}")
                continue
            if r.status_code in MOMENTARY:
                error = _one_line(f"HTTP {r.status_code} {r.text}")
                continue
            try:
                body = r.json() if r.status_code == 200 else None
            except ValueError:  # an answer that is not a card
                body = None
            return CardReading(r.status_code, body if isinstance(body, dict) else None)
    return CardReading(None, error=error or "no answer")
