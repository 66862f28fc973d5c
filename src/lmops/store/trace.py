"""From a served answer back to the documents that trained its model.

A logged request is found by either id its client holds: the answer's ``id``
(``chatcmpl-…``, ``cmpl-…``, ``emb-…``; the request log's ``request_id``) or the response's
``x-request-id`` header (``x_request_id``), which a refused request (400, 429, 503: no
answer, so no ``id``) has too. Its row names the concrete model version that answered, or
would have (``model_ref``), and the registered prompt that wrapped it (``prompt_ref``);
a refusal's status, error and guardrail actions say why it got no answer.
:func:`trace_request` joins that row to the lineage graph: everything upstream of the model
(adapters, base models, datasets, the local files and folders jobs read) and of the
prompt, and the *sources*, the upstream versions nothing else was made from (raw files,
imported models, registered datasets).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from lmops.core.errors import NotFoundError, PermissionDenied, UserError
from lmops.store.types import LineageGraph

if TYPE_CHECKING:
    from lmops.store.store import Store

__all__ = ["RequestTrace", "Source", "trace_request"]


class Source(BaseModel):
    """An upstream version nothing else in the graph was made from."""

    ref: str
    kind: str
    path: str | None = None  # an external reference's local path
    # a local file or folder read again: what changed since it was used, or that it is gone
    # (None: it still holds what was recorded, or it is not a local path)
    changed: str | None = None


class RequestTrace(BaseModel):
    request_id: str  # the answer's id (a refused request's was made but never sent)
    x_request_id: str | None = None  # the response's x-request-id (None: logged before it was)
    time: datetime | None
    endpoint: str
    deployment: str | None
    key_name: str | None
    status: int
    prompt_tokens: int
    completion_tokens: int
    # the version that answered, or would have where the request was refused or failed
    # (an upstream's URL, a model folder's path; None: refused before one was picked)
    model_ref: str | None
    prompt_ref: str | None
    # a deployment over a list of replicas (model_ref names them all): the replica whose
    # reply, or failure, the request got (its URL, credentials masked)
    replica: str | None = None
    error: str | None = None  # why it got no answer (status >= 400): the error it was sent
    # what the guardrails did to it ({"type": "moderation_block", "category": ...,
    # "direction": "input"}, ...): the reason behind a content_filter refusal
    guardrails: list[dict[str, Any]] = Field(default_factory=list)
    # every try when there were several (retries, fallbacks: lmops.serve.fallbacks), in
    # order: deployment, model_ref, the replica where there are several, status, and reason
    # and error for one that failed (a replica the request went on from included)
    tries: list[dict[str, Any]] = Field(default_factory=list)
    model: LineageGraph | None = None  # upstream of model_ref
    prompt: LineageGraph | None = None
    sources: list[Source] = Field(default_factory=list)
    note: str | None = None  # why the trace stops where it does

    @property
    def answered(self) -> bool:
        return self.status < 400

    def guardrail_actions(self) -> list[str]:
        """One line per guardrail action: ``moderation_block input violence``."""
        out = []
        for a in self.guardrails:
            what = a.get("category") or a.get("pii_type") or a.get("rule") or ""
            out.append(" ".join(str(x) for x in (a.get("type"), a.get("direction"), what) if x))
        return out


def trace_request(
    store: Store,
    request_id: str | None = None,
    *,
    only_key: str | None = None,
    deployment: str | None = None,
    key: str | None = None,
) -> RequestTrace:
    """The trace of one logged request: by either id (the answer's ``id`` or the response's
    ``x-request-id``), or the newest one (``deployment``, ``key`` narrow it) when
    ``request_id`` is None. ``only_key``: the caller may see that key's requests only (a key
    that is not an admin); another key's is not found, as if absent."""
    if only_key is not None and key not in (None, only_key):
        raise PermissionDenied(f"key {only_key!r} may trace its own requests only, not {key!r}")
    if only_key is not None:
        key = only_key
    # another key's row is never read: the same answer as for an id never logged
    rec = (
        store.requests.get(request_id, key=only_key)
        if request_id is not None
        else store.requests.latest(deployment=deployment, key=key)
    )
    if rec is None and request_id is not None:
        mine = f" of your key {only_key}" if only_key is not None else ""
        raise NotFoundError(
            f"no logged request {request_id!r}{mine}: give the answer's id (chatcmpl-…, "
            "cmpl-…, emb-…) or the response's x-request-id header, or ask for the newest "
            "of a deployment"
        )
    if rec is None:
        latest = {"deployment": deployment, "key": key}
        where = ", ".join(f"{k} {v!r}" for k, v in latest.items() if v) or "any deployment"
        raise NotFoundError(f"no logged request of {where}; lmops serve logs each it answers")
    out = RequestTrace(
        request_id=rec.request_id,
        time=rec.time,
        endpoint=rec.endpoint,
        deployment=rec.deployment,
        key_name=rec.key_name,
        status=rec.status,
        prompt_tokens=rec.prompt_tokens,
        completion_tokens=rec.completion_tokens,
        model_ref=rec.model_ref,
        prompt_ref=rec.prompt_ref,
        replica=rec.replica,
        x_request_id=rec.x_request_id,
        error=rec.error,
        guardrails=list((rec.guardrails or {}).get("actions") or []),
        tries=list((rec.guardrails or {}).get("tries") or []),
    )
    graphs: list[LineageGraph] = []
    for ref, attr in ((rec.model_ref, "model"), (rec.prompt_ref, "prompt")):
        if not ref:
            continue
        try:
            g = store.assets.lineage(ref)
        except NotFoundError:
            out.note = f"{ref} is not in the store (an upstream model, or deleted since)"
            continue
        except UserError:  # not a ref at all: a model folder or package file by its path
            out.note = f"served from {ref}, outside the store: it has no lineage to follow"
            continue
        # the answer's past, not the version's later uses
        past = {g.root} | {e.parent for e in g.upstream}
        g.downstream = []
        g.nodes = {r: v for r, v in g.nodes.items() if r in past}
        g.runs = {r: run for r, run in g.runs.items() if r in past}
        setattr(out, attr, g)
        graphs.append(g)
    if rec.model_ref is None and out.note is None:
        out.note = "no model version was recorded (refused before one was picked)"
    if request_id is not None and request_id != rec.request_id:  # found by x-request-id
        n = store.requests.count(x_request_id=request_id, key=only_key)
        if n > 1:  # the client sent the same x-request-id again (a retry, say)
            shared = f"{n} logged requests carry x-request-id {request_id!r}; this is the newest"
            out.note = f"{out.note}; {shared}" if out.note else shared
    seen: set[str] = set()
    for g in graphs:
        parents = {e.child for e in g.upstream}  # versions made from something
        for ref, v in g.nodes.items():
            if ref in parents or ref in seen:
                continue
            seen.add(ref)
            path, changed = None, None
            if v.kind == "external":  # the trace is only as good as the file still is
                path = v.metadata.get("path")
                changed = next(iter(store.assets.verify(ref).get(ref) or []), None)
            out.sources.append(Source(ref=ref, kind=v.kind, path=path, changed=changed))
    return out
