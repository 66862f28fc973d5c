"""The Responses API's state: ``store``, ``previous_response_id``, and the routes that read
stored responses back (``GET``/``DELETE /v1/responses/{id}``, ``GET
/v1/responses/{id}/input_items``).

A response is stored (``store.responses``, one row a response) when the request did not say
``store: false`` and the deployment it named keeps responses (``responses_store``, on by
default, as OpenAI's ``store`` is); the reply's ``store`` says which. What is stored is
PII-masked exactly as request-log bodies are (:func:`~lmops.serve.policy.mask_body`: every
string, every PII type, whatever the deployment's guardrails), because a stored
conversation is data at rest that the request log would only keep with ``log_bodies``;
so the history a later turn carries has ``<EMAIL>`` where the client wrote an address.
Rows expire ``responses_ttl_days`` (30) after a conversation's last turn and ``lmops gc``
deletes them.

``previous_response_id`` puts the stored chain's items (each response's input items, then
its output items) before this request's ``input``, as OpenAI does; ``instructions`` are
this request's only, never carried. The carried items are sent to the model again, so they
count as input tokens toward the key's limits and usage, and they pass the input
guardrails again. Only the key that created a response, or an admin key, may continue,
read or delete it: to any other key it does not exist (a 400
``previous_response_not_found`` to continue, a 404 to read).

A streamed response is stored when it completes (or ends ``incomplete``), before the event
that ends the stream is sent, so a client may continue it at once; one the client left or
that failed is not stored. ``conversation`` and ``background`` stay refused
(:func:`lmops.serve.responses.chat_body`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from lmops.monitor.accesslog import ensure_request_id
from lmops.serve import responses
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


def _history(chain: list[Any]) -> list[dict[str, Any]]:
    """The input items a conversation carries: each stored response's input items, then
    its output items (a message or a function call, fed back as OpenAI feeds them)."""
    out: list[dict[str, Any]] = []
    for r in chain:
        out += r.input
        out += [o for o in r.response.get("output") or [] if isinstance(o, dict)]
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
        ensure_request_id(request.scope)
        key = self.gw.authenticate(request)
        raw = await read_json(request, max_bytes=self.handlers.max_body_bytes)
        if not isinstance(raw, dict):
            responses.chat_body(raw)  # the 400 for a body that is not an object
        prev = raw.get("previous_response_id")
        carried: list[dict[str, Any]] = []
        if prev is not None:
            carried = await self._carried(prev, key)
        body = {k: v for k, v in raw.items() if k != "previous_response_id"}
        own = raw.get("input")
        if carried and isinstance(own, str | list):  # else chat_body names what is wrong
            body["input"] = carried + (
                [{"role": "user", "content": own}] if isinstance(own, str) else own
            )
        chat = responses.chat_body(body)
        store = raw.get("store", True)
        if not isinstance(store, bool):
            raise OpenAIError(400, "store: give true or false", param="store")
        name = raw.get("model")
        dep = self.gw.registry.deployments.get(name) if isinstance(name, str) else None
        keep = bool(store and self.keeps and dep and dep.spec.responses_store)
        echo = {**raw, "store": keep, "previous_response_id": prev}
        try:
            reply = await self.handlers.generate(request, "chat", key=key, body=chat)
        except OpenAIError as e:  # said in the Responses API's field names
            wrapped = raw.get("prompt") is not None or bool(dep and dep.spec.prompt)
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

    async def _carried(self, prev: Any, key: Any) -> list[dict[str, Any]]:
        """The items a request continuing ``prev`` carries (OpenAI's 400 when there is no
        such response this key may continue)."""
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
        return _history(chain)

    def _put(self, response: dict[str, Any], raw: dict[str, Any], key: Any, dep: Any) -> bool:
        """Keep ``response`` (masked, on a worker thread); False when it could not be kept
        (the reply then says ``store: false``: a client must not count on it)."""
        from lmops.serve.policy import mask_body
        from lmops.store._time import utcnow
        from lmops.store.types import StoredResponse

        now = utcnow()
        try:
            self.responses.put(
                StoredResponse(
                    id=response["id"],
                    key_name=key.name,
                    deployment=dep.name,
                    previous_id=raw.get("previous_response_id"),
                    created_at=now,
                    expires_at=now + timedelta(days=dep.spec.responses_ttl_days),
                    input=mask_body(input_items(raw.get("input"), response["id"])),
                    response=mask_body(response),
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
        """``GET /v1/responses/{id}``: the stored response, as it was answered (masked)."""
        found, headers = await self._stored(request, rid, "/v1/responses/{id}")
        return JSONResponse(found.response, headers=headers)

    async def delete(self, request: Request, rid: str) -> Response:
        """``DELETE /v1/responses/{id}``: OpenAI's deletion object; later responses that
        continued it stay, and no longer carry it."""
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
        if not limit_s.isdigit() or not 1 <= int(limit_s) <= MAX_PAGE:
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
