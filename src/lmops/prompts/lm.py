"""The one seam between the prompt stage and a model: chat messages in, text out; and,
where the model takes one, a plain-text prompt in (``/v1/completions``), text out.

:class:`OpenAIChat` talks to any OpenAI-compatible endpoint (an ``lmops serve`` gateway,
vLLM, llama.cpp...) with the official ``openai`` client; :class:`ScriptedChat` answers
with a function, for tests and dry runs. Both count their calls (``calls``), which is how
the optimiser's budget and the benchmark's "same number of LM calls" are measured.

What an endpoint is (an ``lmops serve`` deployment, the prompt it binds, the endpoints it
serves) is read from its ``/v1/models`` card (:meth:`OpenAIChat._card`). The card's answer
is kept for the model's life, and so is a refusal that is the server's verdict (a 4xx such
as 401, 403, 404 or 405: not lmops, or not for this key); a moment's failure is tried once
more (:func:`lmops.core.card.read_card`, which the eval stage reads cards with too), and if
that fails too the endpoint is treated as not lmops (a warning says so) for
:data:`CARD_FORGET_S`, then asked again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from lmops.core.card import CARD_TIMEOUT_S, read_card
from lmops.core.errors import UserError

__all__ = ["ChatModel", "EndpointError", "OpenAIChat", "ScriptedChat", "TextModel"]

Messages = list[dict[str, str]]
log = logging.getLogger("lmops.prompts")

# seconds a card that could not be read is not asked for again (a card that keeps failing
# would otherwise cost two tries and a pause on every request of a command)
CARD_FORGET_S = 60.0
_now = time.monotonic  # (tests replace it)
# what a server without /v1/completions for this model answers there: no route (404, 405,
# 501), or a refusal of the request's shape (400, 422: "a chat model")
_NO_COMPLETIONS = (400, 404, 405, 422, 501)


class EndpointError(UserError):
    """The model endpoint failed (unreachable, 5xx after retries, a refused request)."""


class ChatModel(Protocol):
    calls: int

    def complete(self, messages: Messages, **params: Any) -> str: ...


class TextModel(ChatModel, Protocol):
    """A chat model that may also take a plain-text prompt, as ``/v1/completions`` does
    (what an eval task's ``doc_to_text`` and a bound text prompt are sent as)."""

    def takes_text(self) -> tuple[bool, str]:
        """Whether :meth:`complete_text` works here, and why it is thought so."""
        ...

    def complete_text(self, prompt: str, **params: Any) -> str: ...


class OpenAIChat:
    """A served model: ``model`` is the deployment (or served model) name at ``base_url``
    (``http://host:port/v1``). ``api_key`` defaults to ``$LMOPS_API_KEY``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        from openai import OpenAI

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.calls = 0
        # the card's lmops part; False: not lmops (the server said so); None: not known yet
        self._lmops: dict[str, Any] | bool | None = None
        self._card_failed_at: float | None = None  # when the card last could not be read
        self.card_error = ""  # why, in one line
        self._card_timeout_s = min(timeout_s, CARD_TIMEOUT_S)
        key = api_key or os.environ.get("LMOPS_API_KEY")
        self._key = key
        self._keyless = not key
        self._client: Any = OpenAI(
            base_url=self.base_url,
            api_key=key or "none",
            timeout=timeout_s,
            max_retries=max_retries,
        )

    def _card(self) -> dict[str, Any] | None:
        """The ``lmops`` part of ``model``'s ``/v1/models`` card: ``None`` when the endpoint
        is not an ``lmops serve`` gateway or cannot say. A card, or a 4xx that is the
        server's answer, is kept; a moment's failure is asked once more and, failing
        again, is "cannot say" for this call only (the module docstring)."""
        failed_lately = (
            self._card_failed_at is not None and _now() - self._card_failed_at < CARD_FORGET_S
        )
        if self._lmops is None and not failed_lately:
            found = read_card(
                self.base_url, self.model, api_key=self._key, timeout_s=self._card_timeout_s
            )
            if found.unknown:
                self._card_failed_at = _now()
                self.card_error = found.error
                log.warning(
                    "%s (%s): its /v1/models card could not be read twice (%s); for %.0f s "
                    "it is treated as an endpoint that is not lmops, then asked again",
                    self.base_url,
                    self.model,
                    found.error,
                    CARD_FORGET_S,
                )
            else:  # a card, or a 4xx that is the server's answer (401, 403, 404, 405...)
                part = found.lmops  # an empty part ({}) is still an lmops deployment's
                self._lmops = part if part is not None else False
        return self._lmops if isinstance(self._lmops, dict) else None

    @property
    def card_unknown(self) -> bool:
        """Whether the ``/v1/models`` card could not be read (a moment's failure, twice):
        whether ``model`` is lmops, and what it binds, is not known."""
        self._card()
        return self._lmops is None

    @property
    def renders_prompts(self) -> bool:
        """Whether ``model`` is an ``lmops serve`` deployment (its ``/v1/models`` card
        carries an ``lmops`` part), which renders a registered prompt picked by ref. Any
        other endpoint (vLLM, OpenAI...), or one that cannot say, is sent rendered
        messages."""
        return self._card() is not None

    @property
    def bound_prompt(self) -> str | None:
        """The prompt the ``lmops serve`` deployment ``model`` binds (it wraps every request
        that picks none), as its card names it; ``None`` when it binds none or the endpoint
        cannot say."""
        bound = (self._card() or {}).get("prompt")
        return bound if isinstance(bound, str) and bound else None

    def _error(self, e: Exception) -> EndpointError:
        import openai

        hint = ""
        if self._keyless and isinstance(e, openai.AuthenticationError):
            hint = " (no API key was given: pass --api-key or set LMOPS_API_KEY; lmops keys create)"
        return EndpointError(f"{self.base_url} ({self.model}): {type(e).__name__}: {e}{hint}")

    def complete(self, messages: Messages, **params: Any) -> str:
        import openai

        self.calls += 1
        try:
            out = self._client.chat.completions.create(
                model=self.model, messages=messages, **params
            )
        except openai.OpenAIError as e:
            raise self._error(e) from None
        return out.choices[0].message.content or ""

    def takes_text(self) -> tuple[bool, str]:
        """Whether ``model`` takes a plain-text prompt on ``/v1/completions``: as an lmops
        deployment's card lists its endpoints; elsewhere (vLLM, llama.cpp, a hosted API, an
        lmops upstream or fake deployment, whose cards do not list them), as a one-token
        request there is answered (not counted in ``calls``). A server without that
        endpoint for the model says so with 400, 404, 405, 422 or 501; any other failure
        (a wrong key, the endpoint down) is an :class:`EndpointError`, since the choice
        must not follow a moment's failure."""
        import openai

        card = self._card()
        if card is not None and isinstance(card.get("endpoints"), list):
            served = [str(e) for e in card["endpoints"]]
            return "completion" in served, f"its /v1/models card lists {', '.join(served)}"
        try:  # one try, with the card's short timeout: a probe, not the work
            self._client.with_options(
                max_retries=0, timeout=self._card_timeout_s
            ).completions.create(model=self.model, prompt="Hello", max_tokens=1, temperature=0.0)
        except openai.APIStatusError as e:
            if e.status_code in _NO_COMPLETIONS:
                body = e.body if isinstance(e.body, dict) else {}  # OpenAI's error object
                said = " ".join(str(body.get("message") or e.message).split())[:120]
                return False, f"/v1/completions answered {e.status_code}: {said}"
            raise self._error(e) from None
        except openai.OpenAIError as e:
            raise self._error(e) from None
        return True, "it answered a one-token /v1/completions request"

    def complete_text(self, prompt: str, **params: Any) -> str:
        """The reply to a plain-text ``prompt`` on ``/v1/completions``."""
        import openai

        self.calls += 1
        try:
            out = self._client.completions.create(model=self.model, prompt=prompt, **params)
        except openai.OpenAIError as e:
            raise self._error(e) from None
        return out.choices[0].text or ""

    def stream(self, messages: Messages, **params: Any) -> Iterator[str]:
        """The reply's text as it arrives."""
        import openai

        self.calls += 1
        try:
            chunks = self._client.chat.completions.create(
                model=self.model, messages=messages, stream=True, **params
            )
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except openai.OpenAIError as e:
            raise self._error(e) from None


class ScriptedChat:
    """Answers with ``reply(messages)``, and a plain-text prompt with ``text(prompt)`` where
    that is given (else it takes chat messages only); counts calls."""

    def __init__(
        self, reply: Callable[[Messages], str], text: Callable[[str], str] | None = None
    ) -> None:
        self.reply = reply
        self.text = text
        self.calls = 0

    def complete(self, messages: Messages, **params: Any) -> str:
        self.calls += 1
        return self.reply(messages)

    def takes_text(self) -> tuple[bool, str]:
        if self.text is None:
            return False, "a scripted model given no text function"
        return True, "a scripted model given a text function"

    def complete_text(self, prompt: str, **params: Any) -> str:
        if self.text is None:
            raise EndpointError("this scripted model takes chat messages only")
        self.calls += 1
        return self.text(prompt)

    def stream(self, messages: Messages, **params: Any) -> Iterator[str]:
        yield self.complete(messages, **params)
