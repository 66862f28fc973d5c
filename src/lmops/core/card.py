"""An endpoint's ``/v1/models/{model}`` card, read so that a blip is never taken for an answer.

What a model behind an OpenAI-compatible endpoint is (an ``lmops serve`` deployment, the
prompt it binds, the model versions it serves) is read from its card: the prompt stage asks
it before sending a prompt, the eval stage to link a report to the versions it scored. A
card (a 200) or a refusal that is the server's verdict (a 4xx such as 401, 403, 404 or 405:
not there, or not for this key) is an answer; anything else is a moment's failure (a
timeout, a connection refused or reset, a 408, 409 or 429, any 5xx, a 2xx other than 200,
a 3xx left after following redirects), tried once more after :data:`CARD_BACKOFF_S`, and
failing again is "cannot say" (:attr:`CardReading.unknown`), which the caller reports,
never takes for "not lmops".

A 404 for the card is checked in the list, ``GET /v1/models`` (read the same way), by the
entries' ``id``: a server without per-model cards (vLLM's), or an lmops gateway from before
deployment names with a slash (``org/m``) had one, still names the model there.
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
# 4xx statuses that are a moment's failure, not the server's answer (the openai client's
# own retry rule): asked again, never kept. Only a 200 and the other 4xx are answers.
MOMENTARY_4XX = frozenset({408, 409, 429})
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


def _is_answer(status: int) -> bool:
    """Whether an HTTP status is the server's answer to a card request (the module
    docstring): a 200, or a 4xx that is not a moment's failure."""
    return status == 200 or (400 <= status < 500 and status not in MOMENTARY_4XX)


def _one_line(text: str, limit: int = 160) -> str:
    return " ".join(text.split())[:limit]


def _get(client: Any, url: str) -> Any:
    """The answer to ``GET url`` (an ``httpx.Response`` whose status is an answer),
    asked twice at most; or, as a one-line ``str``, why none came."""
    import httpx

    error = "no answer"
    for attempt in range(2):
        if attempt:
            _sleep(CARD_BACKOFF_S)
        try:
            r = client.get(url)
        except httpx.HTTPError as e:  # a timeout, a refused or reset connection, a loop
            error = _one_line(f"{type(e).__name__}: {e}")
            continue
        if _is_answer(r.status_code):
            return r
        error = _one_line(f"HTTP {r.status_code} {r.text}")
    return error


def _json_object(r: Any) -> dict[str, Any] | None:
    """A 200's body when it is a JSON object, else None (an answer that is not a card)."""
    try:
        body = r.json() if r.status_code == 200 else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def read_card(
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    timeout_s: float = CARD_TIMEOUT_S,
) -> CardReading:
    """``GET {base_url}/models/{model}`` (``base_url`` ends in ``/v1``), with
    ``Authorization: Bearer api_key`` when one is given, redirects followed: each request
    tried twice at most, and a 404 checked in ``GET {base_url}/models`` (the module
    docstring). A 200 whose body is not a JSON object is an answer without a card."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = base_url.rstrip("/")
    with httpx.Client(headers=headers, timeout=timeout_s, follow_redirects=True) as client:
        r = _get(client, f"{base}/models/{quote(model, safe='/:@')}")
        if isinstance(r, str):
            return CardReading(None, error=r)
        if r.status_code != 404:
            return CardReading(r.status_code, _json_object(r))
        listed = _get(client, f"{base}/models")
        if isinstance(listed, str):
            return CardReading(None, error=f"HTTP 404 for its card, and the list: {listed}")
    entries = (_json_object(listed) or {}).get("data")
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("id") == model:
            return CardReading(200, entry)
    return CardReading(404)  # not in the list either (or no list): the server's answer
