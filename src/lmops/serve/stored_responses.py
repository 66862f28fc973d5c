"""The Responses API's state: ``store``, ``previous_response_id``, ``truncation``, and the
routes that read stored responses back (``GET``/``DELETE /v1/responses/{id}``, ``GET
/v1/responses/{id}/input_items``).

A response is stored (``store.responses``, one row a response) when the request did not say
``store: false`` and the deployment it named keeps responses (``responses_store``, on by
default, as OpenAI's ``store`` is); the reply's ``store`` says which. What is stored is what
the model saw and said (``responses_mask: guardrails``, the default): the input items after
the deployment's own PII input guardrail (its ``pii_input: mask``, ``pii_types``,
``pii_placeholder`` and ``trusted_roles``, on message text, tool call arguments and tool
results alike) and the response as it was answered (after its output guardrail), so a
later turn carries the very text the model read before, and a deployment whose guardrails
are off keeps text as it was sent. ``responses_mask: all`` masks every PII type in every
string of both instead, as request-log bodies are (:func:`~lmops.serve.policy.mask_body`):
data at rest that keeps no address, at the price of a history that differs from what the
model saw. Rows expire ``responses_ttl_days`` (30) after a conversation's last turn and
``lmops gc`` deletes them.

``previous_response_id`` puts the stored chain's items (each response's input items, then
its output items) before this request's ``input``, as OpenAI does; ``instructions`` are
this request's only, never carried. The key's request is counted against its requests per
minute before the chain is read (a key over its limit gets its 429 and reads nothing; the
429 is logged, under the deployment the request names, as admission's are), and once only:
admission then charges it the tokens. The carried items are sent to the model
again, so they count as input tokens toward the key's limits and usage, and they pass the
input guardrails again. ``truncation: "auto"`` drops the oldest carried turns (whole
turns: a function call is never parted from its output) until the prompt fits the model's
context, as the engine counts it (:func:`~lmops.serve.backends.fit_context`); with
``"disabled"`` (the default) a prompt that does not fit is OpenAI's 400
``context_length_exceeded``, saying how many of its tokens were carried. Only the
conversation carried is dropped, never the request's own input; a deployment whose
prompt is wrapped by a registered prompt, or an upstream (whose tokenizer the gateway does
not have), is not truncated here. Only the key that created a response, or an admin key,
may continue, read or delete it: to any other key it does not exist (a 400
``previous_response_not_found`` to continue, a 404 to read).

Deleting a response deletes its input and output; a later response that continued it
still carries the turns before it (and not the deleted one), as if the client had left that
turn out; the gateway's log says so (INFO). A streamed response is stored when it completes
(or ends ``incomplete``), before the event that ends the stream is sent, so a client may
continue it at once; one the client left or that failed is not stored. ``conversation`` and
``background`` stay refused (:func:`lmops.serve.responses.chat_body`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from lmops.monitor.accesslog import ensure_request_id
from lmops.serve import responses
from lmops.serve.backends import History
from lmops.serve.protocol import OpenAIError, read_json
from lmops.serve.replies import EventStream

__all__ = ["ResponsesEndpoint", "input_items"]

log = logging.getLogger(__name__)

# GET /v1/responses/{id}/input_items: items a page, as OpenAI's (1..100, 20 by default)
MAX_PAGE = 100
DEFAULT_PAGE = 20


def input_items(value: Any, rid: str) -> list[dict[str, Any]]:
    """A request's ``input`` as the list of items it stands for (a string is one user
    message), each with an ``id`` (kept when the client gave one) for the input items
    list. Items are otherwise as sent: the chat translation has read them already."""
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    items = []
    hexid = rid.removeprefix("resp_")
    for i, item in enumerate(value if isinstance(value, list) else []):
        if not isinstance(item, dict):
            continue
        item = {"type": "message", **item} if "type" not in item else dict(item)
        if item["type"] == "message" and isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        if not isinstance(item.get("id"), str):
            item["id"] = f"{'msg' if item['type'] == 'message' else 'item'}_{hexid}_{i}"
        items.append(item)
    return items


def _history(chain: list[Any]) -> tuple[list[dict[str, Any]], list[int]]:
    """The input items a conversation carries: each stored response's input items, then
    its output items (a message or a function call, fed back as OpenAI feeds them); and
    where each turn after the first begins among them. A deleted link carries nothing."""
    out: list[dict[str, Any]] = []
    turns: list[int] = []
    for r in chain:
        if r.deleted:
            continue
        if out:
            turns.append(len(out))
        out += r.input
        out += [o for o in r.response.get("output") or [] if isinstance(o, dict)]
    return out, turns


def _calls(messages: list[dict[str, Any]]) -> set[str]:
    """The tool call ids that ``messages`` make or answer."""
    ids = {m["tool_call_id"] for m in messages if isinstance(m.get("tool_call_id"), str)}
    for m in messages:
        ids |= {c["id"] for c in m.get("tool_calls") or [] if isinstance(c.get("id"), str)}
    return ids


_NOTE = (
    "{tokens} of these tokens are the conversation carried from previous_response_id; "
    'send truncation: "auto" to drop its oldest turns until the rest fits.'
)


def history_of(
    chat: dict[str, Any], body: dict[str, Any], carried: int, turns: list[int], auto: bool
) -> History:
    """Where the ``carried`` first input items of ``body`` (its turns beginning at item
    ``turns``) are among the messages of ``chat`` (what :func:`responses.chat_body` made of
    ``body``), and where they may be cut: before a turn, or after them all, where no tool
    call is on both sides."""
    messages = chat["messages"]
    firsts = responses.message_items(body.get("input"), body.get("instructions"))
    start = next((i for i, f in enumerate(firsts) if f is not None), len(messages))

    def at(item: int) -> int:  # the first message of input item ``item`` or after
        return next((i for i, f in enumerate(firsts) if f is not None and f >= item), len(messages))

    end = at(carried)
    cuts = sorted({at(t) for t in [*turns, carried]} - {start})
    cuts = [c for c in cuts if not _calls(messages[start:c]) & _calls(messages[c:])]
    return History(start, end, tuple(cuts), truncate=auto, note=_NOTE)


def _mask_with(cfg: Any) -> Callable[[str], str]:
    """A text with PII masked as the input guardrail of ``cfg`` masks it."""
    from lmops.security import long
    from lmops.text.pii import mask_pii

    types, placeholder = cfg.pii_types, cfg.pii_placeholder

    def mask(text: str) -> str:
        if len(text) <= long.LONG_TEXT:
            return mask_pii(text, types, placeholder)[0]
        out: list[str] = []
        pos = 0
        for span in long.detect_pii_long(text, types):
            out += (text[pos : span.start], placeholder.format(type=span.type))
            pos = span.end
        return "".join([*out, text[pos:]])

    return mask


def _texts(value: Any, mask: Callable[[str], str]) -> Any:
    """A content (a string or a list of parts) with the text of each part masked."""
    if isinstance(value, str):
        return mask(value)
    if not isinstance(value, list):
        return value
    out = []
    for part in value:
        if isinstance(part, dict):
            part = {k: mask(v) if k in ("text", "refusal") and isinstance(v, str) else v
                    for k, v in part.items()}  # fmt: skip
        out.append(part)
    return out


def as_seen(items: list[dict[str, Any]], cfg: Any) -> list[dict[str, Any]]:
    """Input ``items`` as a deployment with guardrails ``cfg`` gave them to the model: with
    ``pii_input: mask``, the text of every role it does not trust masked (a message's
    content, a function call's arguments as the assistant's, a function call's output as
    a tool's, a reasoning item's text, which the model does not read, as a user's); as
    they are with ``off`` (and with ``block``: one with PII never got this far)."""
    if cfg.pii_input != "mask":
        return items
    mask, trusted = _mask_with(cfg), set(cfg.trusted_roles)
    out = []
    for item in items:
        kind, role = item.get("type", "message"), item.get("role")
        if kind == "message" and ("system" if role == "developer" else role) not in trusted:
            item = {**item, "content": _texts(item.get("content"), mask)}
        elif kind == "function_call" and "assistant" not in trusted:
            item = {**item, "arguments": _texts(item.get("arguments"), mask)}
        elif kind == "function_call_output" and "tool" not in trusted:
            item = {**item, "output": _texts(item.get("output"), mask)}
        elif kind == "reasoning" and "user" not in trusted:
            item = {k: _texts(v, mask) if k in ("summary", "content") else v
                    for k, v in item.items()}  # fmt: skip
        out.append(item)
    return out


class _NoResponses:
    """``store.responses`` where the gateway has no store: nothing is kept or found."""

    def chain(self, rid: str, *, key: str | None = None) -> list[Any]:
        return []

    def get(self, rid: str, *, key: str | None = None) -> None:
        return None

    def delete(self, rid: str, *, key: str | None = None) -> bool:
        return False


def _not_found(rid: str) -> OpenAIError:
    return OpenAIError(404, f"Response with id '{rid}' not found.")


class ResponsesEndpoint:
    """``/v1/responses`` and its stored responses, over the chat path's handlers."""

    def __init__(self, handlers: Any, gw: Any, policy: Any) -> None:
        self.handlers = handlers
        self.gw = gw
        self.policy = policy
        # no store behind the gateway: nothing is kept, every reply says store: false
        self.keeps = getattr(gw.store, "responses", None) is not None
        self.responses: Any = gw.store.responses if self.keeps else _NoResponses()

    @staticmethod
    def _owner(key: Any) -> str | None:
        """Whose responses ``key`` reaches: its own, or every key's for an admin."""
        return None if key.role == "admin" else key.name

    # -------------------------------------------------------------------------------- create
    async def create(self, request: Request) -> Response:
        """``POST /v1/responses``: the chat request it means, with the conversation it
        continues, answered by the chat handler and translated back; stored when asked."""
        xid = ensure_request_id(request.scope)
        key = self.gw.authenticate(request)
        raw = await read_json(request, max_bytes=self.handlers.max_body_bytes)
        if not isinstance(raw, dict):
            responses.chat_body(raw)  # the 400 for a body that is not an object
        store = True if raw.get("store") is None else raw["store"]
        if not isinstance(store, bool):
            raise OpenAIError(400, "store: give true or false", param="store")
        truncation = raw.get("truncation")
        if truncation not in (None, "auto", "disabled"):
            raise OpenAIError(400, "truncation: give auto or disabled", param="truncation")
        prev = raw.get("previous_response_id")
        carried: list[dict[str, Any]] = []
        turns: list[int] = []
        counted: dict[str, str] | None = None
        if prev is not None:
            # counted first: a key over its rpm reads nothing (admission then counts its
            # tokens only); its 429 is logged as admission's are, under the deployment
            counted = self.policy.count_request(
                key,
                "/v1/responses",
                dep=self._named(key, raw.get("model")),
                kind="chat",
                body=raw,
                x_request_id=xid,
                state=request.state,
            )
            carried, turns = await self._carried(prev, key)
        body = {k: v for k, v in raw.items() if k != "previous_response_id"}
        own = raw.get("input")
        if carried and isinstance(own, str | list):  # else chat_body names what is wrong
            body["input"] = carried + (
                [{"role": "user", "content": own}] if isinstance(own, str) else own
            )
        chat = responses.chat_body(body)
        name = raw.get("model")
        dep = self.gw.registry.deployments.get(name) if isinstance(name, str) else None
        keep = bool(store and self.keeps and dep and dep.spec.responses_store)
        echo = {**raw, "store": keep, "previous_response_id": prev}
        wrapped = raw.get("prompt") is not None or bool(dep and dep.spec.prompt)
        history = None
        if carried and not wrapped:  # a prompt's messages around them: indices unknown
            history = history_of(chat, body, len(carried), turns, truncation == "auto")
        try:
            reply = await self.handlers.generate(
                request, "chat", key=key, body=chat, counted=counted, history=history
            )
        except OpenAIError as e:  # said in the Responses API's field names
            raise responses.as_responses_error(
                e,
                body,
                wrapped=wrapped,
                carried=len(carried),
                text_input=isinstance(raw.get("input"), str),
            ) from None

        async def save(response: dict[str, Any]) -> None:
            if keep and not await asyncio.to_thread(self._put, response, raw, key, dep):
                response["store"] = False

        if isinstance(reply, EventStream):
            reply.body_iterator = responses.to_stream(reply.body_iterator, echo, save)
            return reply
        if not isinstance(reply, JSONResponse):  # the client hung up (Gone): nothing to send
            return reply
        out = responses.to_response(json.loads(bytes(reply.body)), echo)
        await save(out)
        headers = {k: v for k, v in reply.headers.items() if k.startswith("x-")}
        return JSONResponse(out, headers=headers)

    def _named(self, key: Any, name: Any) -> Any:
        """The deployment ``name`` when the key may call it, else None (a request naming
        none is not logged, and the chat path says what is wrong with it)."""
        if not isinstance(name, str):
            return None
        try:
            return self.gw.deployment(key, name)
        except OpenAIError:
            return None

    async def _carried(self, prev: Any, key: Any) -> tuple[list[dict[str, Any]], list[int]]:
        """The items a request continuing ``prev`` carries and where its turns begin
        (OpenAI's 400 when there is no such response this key may continue)."""
        if not isinstance(prev, str):
            raise OpenAIError(
                400, "previous_response_id: give a response's id", param="previous_response_id"
            )
        chain = await asyncio.to_thread(self.responses.chain, prev, key=self._owner(key))
        if not chain:
            raise OpenAIError(
                400,
                f"Previous response with id '{prev}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        gaps = [r.id for r in chain if r.deleted]
        if gaps:
            log.info("response %s continues deleted responses %s: not carried", prev, gaps)
        return _history(chain)

    def _put(self, response: dict[str, Any], raw: dict[str, Any], key: Any, dep: Any) -> bool:
        """Keep ``response`` (as the deployment keeps them, on a worker thread); False when
        it could not be kept (the reply then says ``store: false``: a client must not count
        on it)."""
        from lmops.serve.policy import mask_body
        from lmops.store._time import utcnow
        from lmops.store.types import StoredResponse

        now = utcnow()
        try:
            items = input_items(raw.get("input"), response["id"])
            if dep.spec.responses_mask == "all":
                items, response = mask_body(items), mask_body(response)
            else:  # what the model saw: its input guardrail's masking (output's: done)
                cfg = dep.spec.guardrail_config()
                items = as_seen(items, cfg)
                if isinstance(response.get("instructions"), str):
                    seen = as_seen([{"role": "system", "content": response["instructions"]}], cfg)
                    response = {**response, "instructions": seen[0]["content"]}
            self.responses.put(
                StoredResponse(
                    id=response["id"],
                    key_name=key.name,
                    deployment=dep.name,
                    previous_id=raw.get("previous_response_id"),
                    created_at=now,
                    expires_at=now + timedelta(days=dep.spec.responses_ttl_days),
                    input=items,
                    response=response,
                )
            )
        except Exception:
            log.exception("response %s could not be stored", response.get("id"))
            return False
        return True

    # ---------------------------------------------------------------------------------- read
    async def _stored(self, request: Request, rid: str, route: str) -> tuple[Any, dict[str, str]]:
        """Response ``rid`` as the caller's key may read it, and the key's rate headers: a
        database read runs no model, but counts against the key's rpm, as /tokenize does."""
        key = self.gw.authenticate(request)
        headers = self.policy.count_request(key, route)
        found = await asyncio.to_thread(self.responses.get, rid, key=self._owner(key))
        if found is None:
            raise _not_found(rid)
        return found, headers

    async def retrieve(self, request: Request, rid: str) -> Response:
        """``GET /v1/responses/{id}``: the stored response, as it was answered (as kept:
        ``responses_mask``)."""
        found, headers = await self._stored(request, rid, "/v1/responses/{id}")
        return JSONResponse(found.response, headers=headers)

    async def delete(self, request: Request, rid: str) -> Response:
        """``DELETE /v1/responses/{id}``: OpenAI's deletion object; later responses that
        continued it stay, and carry the turns before it without it."""
        key = self.gw.authenticate(request)
        headers = self.policy.count_request(key, "/v1/responses/{id}")
        if not await asyncio.to_thread(self.responses.delete, rid, key=self._owner(key)):
            raise _not_found(rid)
        return JSONResponse({"id": rid, "object": "response", "deleted": True}, headers=headers)

    async def input_items(self, request: Request, rid: str) -> Response:
        """``GET /v1/responses/{id}/input_items``: the items this response's request sent
        in ``input`` (not those carried from its previous response), in OpenAI's list
        shape, paged by ``limit``, ``order`` (``desc`` first by default) and ``after``."""
        q = request.query_params
        limit_s, order, after = (
            q.get("limit", str(DEFAULT_PAGE)),
            q.get("order", "desc"),
            q.get("after"),
        )
        # isascii: "²".isdigit() is true, and int() refuses it
        if not (limit_s.isascii() and limit_s.isdigit()) or not 1 <= int(limit_s) <= MAX_PAGE:
            raise OpenAIError(400, f"limit: give 1 to {MAX_PAGE}", param="limit")
        if order not in ("asc", "desc"):
            raise OpenAIError(400, "order: give asc or desc", param="order")
        found, headers = await self._stored(request, rid, "/v1/responses/{id}/input_items")
        items = list(found.input)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [i.get("id") for i in items]
            if after not in ids:
                raise OpenAIError(
                    400, f"after: no input item of {rid} has the id {after!r}", param="after"
                )
            items = items[ids.index(after) + 1 :]
        page = items[: int(limit_s)]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > len(page),
            },
            headers=headers,
        )
