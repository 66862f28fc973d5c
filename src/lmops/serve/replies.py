"""What the gateway's handlers send back, and how they notice a client that left.

* :class:`EventStream`: the ``text/event-stream`` response of every streamed reply
  (:class:`Final` marks the piece that ends its body);
* :class:`Hangup`: watches a request whose body was read for the client hanging up while
  a full (non-streamed) reply is being made, and cancels the handler's task, as
  :class:`EventStream` does for streams: the generation is aborted (engine sequences
  freed, an upstream call closed), a retry's backoff wait ends, the request is logged as
  a 499 and its rate-limit lease is released at once. :class:`Gone` is the reply to
  nobody: it sends nothing (the access log writes 499, ``disconnected``);
* :class:`LogprobRelease`: which token logprobs go out with which text, once output
  guardrails may hold text back, mask it or cut the reply;
* :func:`internal_error`: the one answer to an exception no handler expected: an
  OpenAI-shaped 500 naming the exception's type only, the traceback in the server log.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import Response

from lmops.models.types import TokenLogprob
from lmops.serve import tools
from lmops.serve.protocol import OpenAIError, sse

__all__ = [
    "EventStream",
    "Final",
    "Gone",
    "Hangup",
    "LogprobRelease",
    "chat_logprobs",
    "completion_logprobs",
    "error_event",
    "internal_error",
]

# the server's log (uvicorn's error logger, as serve/http.py writes to)
log = logging.getLogger("uvicorn.error")


def internal_error(e: BaseException, request_id: str) -> OpenAIError:
    """The 500 for an exception no handler expected, logged with its traceback (call it
    while ``e`` is handled). The client is told its type and the request id that finds
    the traceback, never its text (which may quote a prompt, a path or a secret)."""
    log.error("unexpected error answering request %s", request_id, exc_info=e)
    return OpenAIError(
        500,
        f"The server had an error while processing your request ({type(e).__name__}); "
        f"its log has the details under request id {request_id}.",
        type_="server_error",
        code="internal_error",
    )


def error_event(message: str, code: str) -> str:
    """An error sent inside a stream that already began (its status was 200)."""
    return sse({"error": {"message": message, "type": "server_error", "param": None, "code": code}})


class Final(str):
    """The last piece of an event stream's body: it goes out in the same write as the end
    of the chunked body (one write per response less). The generator must yield nothing
    after it; it is still run to its end, so its ``finally`` sees a normal finish."""


class Hangup:
    """Watches the request of the running task for ``http.disconnect`` (read its body
    first: every message is consumed). On a hangup the task is cancelled: the handler sees
    ``CancelledError`` at its ``await`` and calls :meth:`absorb`, which says whether the
    cancellation was the hangup's and, if so, takes it back so the handler can record the
    request and return :class:`Gone`. :meth:`stop` before returning a reply (an
    :class:`EventStream` watches on its own)."""

    def __init__(self, receive: Callable[[], Any]) -> None:
        self.gone = False
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Callable[[], Any]) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server that cannot tell: nothing to watch
            return
        self.gone = True
        self._task.cancel()

    def stop(self) -> None:
        self._watcher.cancel()

    def absorb(self) -> bool:
        """True when the ``CancelledError`` being handled came from the client hanging up
        (it is then taken back); False for any other cancellation (re-raise it)."""
        if not self.gone:
            return False
        self._task.uncancel()
        return True


class Gone(Response):
    """The reply to a client that hung up: nothing is sent (there is nobody to send it
    to; the access log writes 499 with ``disconnected``)."""

    def __init__(self) -> None:
        self.status_code = 499
        self.background = None
        self.init_headers({})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        return None


class LogprobRelease:
    """Hands out one choice's token logprobs only once their text went out verbatim.

    Output guardrails may hold text back, mask it or cut the reply; a token's logprob
    entry names the token, so it is released only when the text up to the token's end
    (``TokenLogprob.text_end``) was sent exactly as the model wrote it. After the first
    rewritten character no later entry is released. At the end of a choice
    (``final``), the entries of a character that a max_tokens cut left unfinished (the
    engine drops its U+FFFD) are released too when all the text before them went out
    verbatim: their bytes are all the client gets of them.

    A stream (:meth:`chunk`) also cuts the text it sends at token boundaries, as OpenAI's
    and vLLM's streams do: each chunk's content is exactly its tokens' text. Text the
    guard released that ends inside a token waits until the token is whole (only ever
    more than the guard holds back, so nothing blocked is partly sent)."""

    def __init__(self) -> None:
        self.raw = ""  # what the model produced
        self.out = ""  # what the guard released to be sent
        self.aligned = 0  # length of their common prefix
        self.diverged = False
        self.pending: list[TokenLogprob] = []
        self.shipped = 0  # characters of ``out`` sent in chunks (streams)
        self.hidden = 0  # characters of tool calls taken out (:meth:`hide`)

    def produced(self, text: str, entries: list[TokenLogprob] | TokenLogprob | None) -> None:
        self.raw += text
        new = [entries] if isinstance(entries, TokenLogprob) else entries or []
        self.pending.extend(tools.shifted(new, self.hidden) if self.hidden else new)

    def hide(self, spans: list[tuple[int, int]]) -> None:
        """Take the ``spans`` of tool calls' text (``tools.ToolStream.hidden``) out of what
        the model produced, with their tokens' entries, so the rest lines up with the
        content sent."""
        self.raw, self.pending = tools.without_spans(self.raw, self.pending, spans)
        self.hidden += sum(end - start for start, end in spans)

    def _take(self, text: str, final: bool) -> int:
        """Add ``text`` to what is sent; how many pending entries are released."""
        self.out += text
        limit = min(len(self.raw), len(self.out))
        while not self.diverged and self.aligned < limit:
            if self.raw[self.aligned] != self.out[self.aligned]:
                self.diverged = True
                break
            self.aligned += 1
        n = 0
        while n < len(self.pending) and self.pending[n].text_end <= self.aligned:
            n += 1
        if final and self.whole():
            n = len(self.pending)
        return n

    def whole(self) -> bool:
        """Everything the model produced went out, verbatim."""
        return not self.diverged and self.aligned == len(self.raw) == len(self.out)

    def sent(self, text: str, final: bool = False) -> list[TokenLogprob]:
        """``text`` went out as it is (a full reply): the entries it releases."""
        n = self._take(text, final)
        released, self.pending = self.pending[:n], self.pending[n:]
        return released

    def chunk(self, text: str, final: bool = False) -> tuple[str, list[TokenLogprob]]:
        """For a stream: the guard released ``text``; what to send now, cut after the last
        whole token, and the entries of exactly that text. Once the text was rewritten
        (no entry is released any more) the text goes on as it comes; at the end
        (``final``) whatever is left goes."""
        n = self._take(text, final)
        if not final:
            # tokens that hold only some bytes of a character go out together with the
            # token that completes it (every release ends on a whole character, so each
            # one's bytes decode on their own); the engine's spans cannot say it, since
            # a character's first byte token gets its one-character span
            while n and not _whole_utf8(self.pending[:n]):
                n -= 1
        released, self.pending = self.pending[:n], self.pending[n:]
        if final or self.diverged:
            end = len(self.out)
        else:
            end = max(self.shipped, released[-1].text_end) if released else self.shipped
        piece, self.shipped = self.out[self.shipped : end], end
        return piece, released


def _whole_utf8(entries: list[TokenLogprob]) -> bool:
    """Whether the entries' bytes, one after the other, are whole UTF-8 characters."""
    try:
        bytes(b for e in entries for b in e.bytes).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [e.to_openai() for e in entries]}


def completion_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, alternatives as {token: logprob}."""
    return {
        "tokens": [e.token for e in entries],
        # an echoed prompt's first token has no logprob (NaN inside): null, as OpenAI's
        "token_logprobs": [e.logprob if math.isfinite(e.logprob) else None for e in entries],
        "top_logprobs": [
            {t.token: t.logprob for t in e.top_logprobs} if math.isfinite(e.logprob) else None
            for e in entries
        ],
        "text_offset": [e.text_offset for e in entries],
    }


class EventStream(Response):
    """A ``text/event-stream`` response for the gateway's streams, leaner than Starlette's
    ``StreamingResponse`` (which runs an anyio task group per response under uvicorn):

    * a disconnect is watched by one plain task, which cancels the streaming task while it
      waits for the next chunk: the body generator sees ``CancelledError`` at its ``await``
      (a 499; engine slots are freed);
    * the body generator is always closed before the response is over, also when the
      client left, so its ``finally`` (metering, freeing slots, the figures the access log
      reads) runs now rather than whenever the garbage collector gets to it;
    * a :class:`Final` chunk is sent together with the end of the body."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[str], headers: dict[str, str] | None = None) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"complete": False, "gone": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["complete"]:  # (a finished response also reads as a disconnect)
                state["gone"] = True
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for piece in self.body_iterator:
                final = isinstance(piece, Final)
                if final:
                    state["complete"] = True
                await send(
                    {"type": "http.response.body", "body": piece.encode(), "more_body": not final}
                )
            if not state["complete"]:
                state["complete"] = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            task.uncancel()  # the client left: a normal end for this response
        finally:
            watcher.cancel()
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
