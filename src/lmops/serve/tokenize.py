"""vLLM's tokenizer routes on the gateway: ``POST /tokenize``, ``POST /detokenize`` and
``GET /tokenizer_info`` (also under ``/v1``), with vLLM's request and response shapes.

A client counts a prompt's tokens, or turns token ids back into text, with the tokenizer of
the model a deployment serves, without having that tokenizer itself. lm-evaluation-harness's
``local-completions`` probes for these routes by default (``tokenizer_backend=auto``) and
then needs no local copy of the tokenizer (``auth_token=<key>`` in its ``model_args``).

What is counted is what the gateway's engine reads:

- ``prompt``: the text as ``/v1/completions`` encodes it (no special tokens added; special
  token strings in the text are read as such; an empty prompt is the model's start), or
  for an embeddings deployment as ``/v1/embeddings`` does (with them, lower-cased where
  the model's config says; cut where it says only with ``embeddings_truncate: true``, else
  counted whole: ``count`` over ``max_model_len`` is an input ``/v1/embeddings`` refuses);
  ``add_special_tokens`` overrides the special tokens.
- ``messages``: the chat as ``/v1/chat/completions`` encodes it, through the model's chat
  template with ``tools`` and the deployment's ``control_tokens`` policy (a special token
  string inside a message is plain text, or a 400 where the deployment refuses them).

Two things a request to the generation routes has that these counts leave out: a prompt
the deployment binds (it may be confidential: neither its tokens nor its length are
shown), and what the input guardrails change (PII masked before the model reads it).

``model`` is optional, as in vLLM, which serves one model: without it the deployment is the
one the key may call, or any of several whose models share one tokenizer; otherwise a 400
lists them (so lm-eval, which never names one, wants a key scoped to the deployment it
evaluates). Keys and their deployment scopes apply, and ``/tokenize`` and ``/detokenize``
count as requests against the key's ``rpm`` (shared with the generation routes, with their
``x-ratelimit-*-requests`` headers and the key's 429 past it), never against its tokens nor
the deployment's limits (the model does not run). The request is counted first, before its
body is read (a key over its limit costs no parsing, whatever it sends); an answered request
is not logged (no model runs), a refused one is, as the generation routes' 429s are
(request log, ``lmops_requests_total``, ``lmops_rate_limited_total``; endpoint ``tokenize``
or ``detokenize``; never its body), under the deployment the key reaches where it reaches
exactly one; a key that reaches several has its 429 counted under the route
(``lmops_rate_limited_total{deployment="/tokenize"}``) and not logged, as the deployment
its body would name is not read. A text longer than the model's context could ever hold is
refused before it is read, as the generation routes refuse it. Upstream and fake
deployments have no tokenizer here.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import Field

from lmops.models.encoder import encode_for_embedding
from lmops.monitor.accesslog import ensure_request_id
from lmops.serve.backends import INLINE_TOKENIZE_CHARS, _text_parts_only, _vocab, encode_messages
from lmops.serve.protocol import ChatRequest, OpenAIError, _Open, parse, read_json

__all__ = ["tokenizer_router"]


class TokenizeRequest(_Open):
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool | None = None  # None: as the route that reads it
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False


class DetokenizeRequest(_Open):
    model: str | None = None
    tokens: list[int] = Field(max_length=1_000_000)


def _bad(message: str, param: str | None, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def fingerprint(engine: Any) -> str:
    """What makes two tokenizers read text alike: vocabulary, merges, normalisation,
    special tokens and chat template (cached on the engine: a vocabulary's JSON is big)."""
    done = getattr(engine, "_lmops_tokenizer_fingerprint", None)
    if done is not None:
        return str(done)
    tok = engine.tokenizer
    h = hashlib.sha256(type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow tokenizer: its vocabulary
        h.update(repr(sorted(tok.get_vocab().items())).encode())
    h.update(repr(sorted(map(str, tok.all_special_tokens))).encode())
    h.update(str(getattr(tok, "chat_template", "") or "").encode())
    digest = engine._lmops_tokenizer_fingerprint = h.hexdigest()
    return digest


def _engine_of(dep: Any) -> Any:
    """The engine whose tokenizer reads ``dep``'s requests; a 400 where there is none
    here, or where an A/B split's models read text differently."""
    if dep.upstream is not None or dep.spec.fake is not None or not dep.targets:
        what = "an upstream" if dep.upstream is not None else "a fake model"
        raise _bad(
            f"deployment {dep.name!r} is {what}: the gateway holds no tokenizer for it; "
            "tokenize with a deployment of a model the gateway runs",
            "model",
            "unsupported_endpoint",
        )
    first = dep.pick() if len(dep.targets) == 1 else dep.targets[0][0]
    if len({fingerprint(t.engine) for t, _ in dep.targets}) > 1:
        raise _bad(
            f"deployment {dep.name!r} splits traffic between models with different "
            f"tokenizers ({', '.join(str(t.version) for t, _ in dep.targets)}); tokenize "
            "with a deployment of one of them",
            "model",
        )
    return first.engine


def _resolve(gw: Any, key: Any, name: str | None) -> tuple[str, Any]:
    """The deployment named, or the one this key reaches (see the module docstring)."""
    if name is not None:
        dep = gw.deployment(key, name)
        return name, _engine_of(dep)
    names = [n for n in sorted(gw.registry.deployments) if key.scopes is None or n in key.scopes]
    usable: dict[str, Any] = {}
    for n in names:
        dep = gw.registry.deployments[n]
        try:
            usable[n] = _engine_of(dep)
        except OpenAIError:
            continue
    if not usable:
        raise _bad(
            "model: no deployment this key may call has a tokenizer in the gateway "
            f"(it may call: {', '.join(names) or 'none'})",
            "model",
        )
    reads = {
        (fingerprint(e), _is_encoder(e), gw.registry.deployments[n].spec.control_tokens)
        for n, e in usable.items()
    }
    if len(reads) > 1:
        raise _bad(
            "model: required, as the deployments this key may call read text differently "
            f"(tokenizers, embeddings or chat, control_tokens); name one of: {', '.join(usable)}",
            "model",
        )
    first = next(iter(usable))
    return first, usable[first]


def _is_encoder(engine: Any) -> bool:
    from lmops.models.encoder import Encoder

    return isinstance(engine, Encoder)


def _tokenize(
    engine: Any,
    req: TokenizeRequest,
    body: dict[str, Any],
    name: str,
    control_tokens: str,
    truncate: bool = False,
) -> list[int]:
    """The ids of ``req``'s prompt or messages (blocking; see the module docstring)."""
    tok = engine.tokenizer
    if req.prompt is not None:
        if _is_encoder(engine):  # as /v1/embeddings reads it: special tokens, case, and
            # cut where the deployment cuts (else counted whole, as it refuses it whole)
            special = True if req.add_special_tokens is None else req.add_special_tokens
            cut = _max_len(engine) if truncate else None
            return encode_for_embedding(tok, req.prompt, engine.pooling, cut, special=special)
        if req.add_special_tokens is None:  # as /v1/completions: an empty prompt is EOS
            return engine.encode(req.prompt) or [tok.eos_token_id or 0]
        return list(tok(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"])
    if _is_encoder(engine):
        raise _bad(
            f"messages: deployment {name!r} serves embeddings, which have no chat template; "
            "send prompt instead",
            "messages",
        )
    from lmops.models.engine import ControlTokenError
    from lmops.serve import tools

    chat: ChatRequest = parse(ChatRequest, {**body, "model": name})
    messages = [m.model_dump(exclude_none=True) for m in chat.messages]
    _text_parts_only(messages)
    try:
        ids = encode_messages(
            engine,
            messages,
            tools.plan_request(chat),
            control_tokens,
            add_generation_prompt=req.add_generation_prompt,
        )
    except ControlTokenError as e:
        raise _bad(str(e), e.param, "control_tokens") from None
    return ids


def _max_len(engine: Any) -> int:
    """The most tokens a request to ``engine`` is read with (an encoder's embeddings are
    cut shorter where its config says)."""
    if _is_encoder(engine):
        from lmops.models.encoder import embedding_tokens

        return embedding_tokens(engine.pooling, engine.max_context)
    return int(engine.max_context)


def _answer(
    engine: Any,
    req: TokenizeRequest,
    body: dict[str, Any],
    name: str,
    control_tokens: str,
    truncate: bool,
) -> dict[str, Any]:
    ids = _tokenize(engine, req, body, name, control_tokens, truncate)
    return {
        "count": len(ids),
        "max_model_len": _max_len(engine),
        "tokens": ids,
        "token_strs": engine.tokenizer.convert_ids_to_tokens(ids)
        if req.return_token_strs
        else None,
    }


async def _off_loop(fn: Any, chars: int, *args: Any) -> Any:
    """``fn(*args)``, on a worker thread for a big text (as the generation path does)."""
    return await asyncio.to_thread(fn, *args) if chars > INLINE_TOKENIZE_CHARS else fn(*args)


def _count(gw: Any, request: Request, response: Response, key: Any, route: str) -> None:
    """Count the request against the key's RPM first, before its body is read (a key over
    its limit gets its 429 however large or malformed the body): its ``x-ratelimit-*``
    headers on ``response``, or the key's 429. That 429 is logged under the deployment the
    key reaches where it reaches exactly one (the body that would name one is not read),
    as the generation routes log theirs; else it is counted under ``route`` only."""
    names = [n for n in gw.registry.deployments if key.scopes is None or n in key.scopes]
    response.headers.update(
        gw.hooks.count_request(
            key,
            route,
            dep=gw.registry.deployments[names[0]] if len(names) == 1 else None,
            kind=route.strip("/"),
            # no body, even where the deployment logs them: a text to count is no request
            # to the model (an answered one keeps nothing), and it must not reach the
            # traffic the monitor reads as prompts
            body=None,
            x_request_id=ensure_request_id(request.scope),
            state=request.state,
        )
    )


def tokenizer_router(gw: Any, *, max_body_bytes: int, prefix: str = "") -> APIRouter:
    """The three routes under ``prefix`` ('' or '/v1'), over gateway ``gw``'s keys and
    deployments."""
    from lmops.serve.openai_api import _RequestIdRoute

    router = APIRouter(prefix=prefix, route_class=_RequestIdRoute)

    @router.post("/tokenize")
    async def tokenize(request: Request, response: Response) -> dict[str, Any]:
        key = gw.authenticate(request)
        _count(gw, request, response, key, "/tokenize")
        raw = await read_json(request, max_bytes=max_body_bytes)
        req: TokenizeRequest = parse(TokenizeRequest, raw)
        if (req.prompt is None) == (req.messages is None):
            raise _bad("send prompt (a string) or messages (a chat), not both or neither", None)
        if req.continue_final_message:
            raise _bad(
                "continue_final_message: not supported; the gateway's chat requests always "
                "end with a generation prompt",
                "continue_final_message",
                "unsupported_value",
            )
        if req.messages is not None and req.add_special_tokens:
            raise _bad(
                "add_special_tokens: with messages the chat template places the model's "
                "special tokens, as chat requests are read; leave it out",
                "add_special_tokens",
                "unsupported_value",
            )
        name, engine = _resolve(gw, key, req.model)
        spec = gw.registry.deployments[name].spec
        policy, truncate = spec.control_tokens, spec.embeddings_truncate
        chars = len(req.prompt) if req.prompt is not None else len(str(req.messages))
        if not _is_encoder(engine) and engine.surely_too_long(chars):
            raise OpenAIError(  # as the generation routes refuse it, before any work
                400,
                f"This model's maximum context length is {engine.max_context} tokens; your "
                "prompt is longer",
                param="messages" if req.prompt is None else "prompt",
                code="context_length_exceeded",
            )
        out: dict[str, Any] = await _off_loop(
            _answer, chars, engine, req, raw, name, policy, truncate
        )
        return out

    @router.post("/detokenize")
    async def detokenize(request: Request, response: Response) -> dict[str, Any]:
        key = gw.authenticate(request)
        _count(gw, request, response, key, "/detokenize")
        raw = await read_json(request, max_bytes=max_body_bytes)
        req: DetokenizeRequest = parse(DetokenizeRequest, raw)
        _, engine = _resolve(gw, key, req.model)
        vocab = _vocab(engine)  # the ids /v1/completions takes
        bad = next((i for i, t in enumerate(req.tokens) if not 0 <= t < vocab), None)
        if bad is not None:
            raise _bad(
                f"tokens[{bad}]: token id {req.tokens[bad]} is not in this model's vocabulary "
                f"(token ids 0 to {vocab - 1})",
                "tokens",
            )
        text = await _off_loop(
            lambda: engine.tokenizer.decode(req.tokens, skip_special_tokens=False),
            len(req.tokens) * 4,
        )
        return {"prompt": text}

    @router.get("/tokenizer_info")
    async def tokenizer_info(request: Request, model: str | None = None) -> dict[str, Any]:
        key = gw.authenticate(request)
        _, engine = _resolve(gw, key, model)
        tok = engine.tokenizer

        def special(name: str) -> str | None:
            value = getattr(tok, name, None)
            return None if value is None else str(value)

        return {
            "tokenizer_class": type(tok).__name__,
            "bos_token": special("bos_token"),
            "eos_token": special("eos_token"),
            "pad_token": special("pad_token"),
            "unk_token": special("unk_token"),
            "chat_template": getattr(tok, "chat_template", None)
            if not _is_encoder(engine)
            else None,
            "model_max_length": _max_len(engine),
            "vocab_size": len(tok),
        }

    return router
