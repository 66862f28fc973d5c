"""``/api/prompts``: the prompt registry over HTTP, the same functions as ``lmops prompts``.

Reads (any key): ``GET /api/prompts`` (every prompt, newest version and labels),
``GET /api/prompts/{ref}`` (one version: template, variables, config, labels, message),
``GET /api/prompts/{a}/diff/{b}``, ``POST /api/prompts/{ref}/render`` (``{"variables"}``:
text or messages). Changes (admin keys, audited with the key's name): ``POST /api/prompts``
(a new version: ``name``, ``template`` text or messages, ``config``, ``message``, optional
``label``) and ``PUT /api/prompts/{ref}/labels/{label}`` (point a label at a version).
Bad input is the CLI's one-line error as HTTP 400 (404 for what does not exist).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from lmops.api.deps import Admin, Reader

router = APIRouter(prefix="/api/prompts", tags=["prompts"])


class CreatePrompt(BaseModel):
    name: str
    template: str | list[dict[str, str]]
    config: dict[str, Any] = Field(default_factory=dict)
    message: str = ""
    label: str | None = None


class RenderRequest(BaseModel):
    variables: dict[str, Any] = Field(default_factory=dict)


@router.get("")
def list_prompts(store: Reader) -> Any:
    from lmops.prompts import registry

    return registry.list_prompts(store)


@router.post("", status_code=201)
def create(body: CreatePrompt, store: Admin) -> Any:
    from lmops.prompts import registry

    v = registry.create(
        store, body.name, body.template, config=body.config or None, message=body.message
    )
    if body.label:
        v = registry.label(store, v.ref, body.label)
    return registry.load(store, v.ref).to_dict()


@router.get("/{ref}")
def show(ref: str, store: Reader) -> Any:
    from lmops.prompts import registry

    return registry.load(store, ref).to_dict()


@router.get("/{a}/diff/{b}")
def diff(a: str, b: str, store: Reader) -> Any:
    from lmops.prompts import registry

    return {"a": a, "b": b, "diff": registry.diff(store, a, b)}


@router.post("/{ref}/render")
def render(ref: str, body: RenderRequest, store: Reader) -> Any:
    from lmops.prompts import registry

    p = registry.load(store, ref)
    return {"ref": p.ref, "rendered": p.render(**body.variables)}


@router.put("/{ref}/labels/{label}")
def set_label(ref: str, label: str, store: Admin) -> Any:
    from lmops.prompts import registry

    v = registry.label(store, ref, label)
    return {"label": label, "ref": v.ref}
