"""The prompt registry: each version of a ``prompt`` asset is one small YAML file
(:class:`~lmops.prompts.template.PromptSpec`), immutable like every asset version; labels
(``production``, ``staging``, any) are the store's aliases and move.

    v = create(store, "qa", "Answer: {{question}}", message="first cut")   # qa:1
    label(store, "qa:1", "production")
    get("qa@production", store=store).render(question="2+2?")

:func:`get` keeps parsed prompts in a small cache: a pinned ref (``qa:3``) forever (a
version never changes), a label or bare name for ``max_age_s`` seconds (5 by default;
moving a label through :func:`label` in this process drops its entries at once).

This module imports ``lmops.core``, ``lmops.store`` and :mod:`lmops.prompts.template`
only, so that the gateway (``serve``) may use it.
"""

from __future__ import annotations

import difflib
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lmops.core.errors import NotFoundError, UserError
from lmops.core.yamlcfg import error_message, format_loc
from lmops.prompts.template import CompiledPrompt, PromptSpec, check_config
from lmops.store import Asset, Store, Version, parse_ref

__all__ = [
    "FILE_NAME",
    "Prompt",
    "create",
    "diff",
    "get",
    "label",
    "list_prompts",
    "load",
    "load_spec_file",
    "spec_from_yaml",
]

KIND = "prompt"
FILE_NAME = "prompt.yaml"


class Prompt:
    """One registered prompt version, parsed: ``ref`` is ``name:N``."""

    __slots__ = ("compiled", "ref", "spec", "version")

    def __init__(self, version: Version, spec: PromptSpec) -> None:
        self.version = version
        self.ref = version.ref
        self.spec = spec
        self.compiled = CompiledPrompt(spec)

    @property
    def variables(self) -> tuple[str, ...]:
        return self.compiled.variables

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.spec.config)

    def to_dict(self) -> dict[str, Any]:
        """The version as JSON-ready data: what ``prompts show --json`` prints and
        ``/api/prompts`` answers."""
        v = self.version
        return {
            "ref": v.ref,
            "labels": v.aliases,
            "type": self.spec.type,
            "variables": list(self.variables),
            "config": self.spec.config,
            "message": self.spec.message,
            "template": self.spec.model_dump(mode="json")["template"],
            "metadata": v.metadata,
            "run_id": v.run_id,
            "created_at": v.created_at,
            "created_by": v.created_by,
        }

    def render(self, **values: Any) -> str | list[dict[str, str]]:
        """The text (a text prompt) or the messages (a chat prompt), every variable given."""
        if self.spec.type == "chat":
            return self.compiled.render_messages(values, what=self.ref)
        return self.compiled.render_text(values, what=self.ref)

    def messages(self, **values: Any) -> list[dict[str, str]]:
        """Chat messages for any prompt (a text prompt is one user message)."""
        return self.compiled.render_messages(values, what=self.ref)

    def __repr__(self) -> str:
        return f"Prompt({self.ref!r}, type={self.spec.type!r}, variables={self.variables})"


def spec_from_yaml(text: str, source: str) -> PromptSpec:
    """Parse a prompt YAML/JSON file's text; one-line errors naming ``source``."""
    from lmops.core.yamlcfg import validate_config

    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise UserError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping with template (and type, config, message)")
    spec = validate_config(data, PromptSpec, source=source, node=node)
    _check_parses(spec, source)
    return spec


def _check_parses(spec: PromptSpec, source: str) -> None:
    try:
        spec.compiled()
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def load_spec_file(path: Path) -> PromptSpec:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    return spec_from_yaml(text, str(path))


def create(
    store: Store,
    name: str,
    template: str | list[dict[str, str]] | PromptSpec,
    *,
    config: dict[str, Any] | None = None,
    message: str = "",
    inputs: Iterable[str | tuple[str, str]] = (),
    run_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    tags: Iterable[str] = (),
) -> Version:
    """Register ``template`` as the next version of prompt ``name``. Nothing is registered
    if the template does not parse. ``inputs``/``run_id`` are its lineage (the
    optimisation run, its eval evidence); ``metadata`` is kept on the version (metrics)."""
    if isinstance(template, PromptSpec):
        spec = template
        if config is not None or message:
            spec = spec.model_copy(
                update={
                    **({"config": config} if config is not None else {}),
                    **({"message": message} if message else {}),
                }
            )
    else:
        try:
            spec = PromptSpec.model_validate(
                {"template": template, "config": config or {}, "message": message}
            )
        except ValidationError as e:
            err = e.errors()[0]  # worded as a prompt file's errors are (core.yamlcfg)
            raise UserError(
                f"prompt {name!r}: {format_loc(tuple(err['loc']))}: {error_message(err)}"
            ) from None
    _check_parses(spec, f"prompt {name!r}")
    check_config(spec.config, f"prompt {name!r}")
    compiled = CompiledPrompt(spec)
    text = yaml.safe_dump(
        spec.model_dump(mode="json", exclude_defaults=False), sort_keys=False, allow_unicode=True
    )
    meta = {
        "type": spec.type,
        "variables": list(compiled.variables),
        "message": spec.message,
        "config": spec.config,
        **(metadata or {}),
    }
    with tempfile.TemporaryDirectory(prefix="lmops-prompt-") as tmp:
        path = Path(tmp) / FILE_NAME
        path.write_text(text, encoding="utf-8")
        return store.assets.register(
            KIND,
            name,
            path,
            metadata=meta,
            description=spec.message,
            inputs=inputs,
            run_id=run_id,
            tags=list(tags),
        )


def load(store: Store, ref: str) -> Prompt:
    """The prompt version ``ref`` names (``name``, ``name:N``, ``name@label``), uncached."""
    try:
        v = store.assets.resolve(ref)
    except NotFoundError as e:
        if not Exception.__str__(e).startswith("asset "):
            raise  # a version or label of a prompt that exists: its own message says which
        raise NotFoundError(
            f"prompt {parse_ref(ref).name!r} not found",
            cli="see `lmops prompts list`",
            api="GET /api/prompts lists them",
        ) from None
    if v.kind != KIND:
        raise UserError(
            f"{ref} is a {v.kind}, not a prompt",
            cli="see `lmops prompts list`",
            api="GET /api/prompts lists them",
        )
    path = store.assets.path(v.ref)
    return Prompt(v, spec_from_yaml(path.read_text(encoding="utf-8"), v.ref))


# -- the cache of get() ----------------------------------------------------------------------------
_CACHE: OrderedDict[tuple[str, str], tuple[float, Prompt]] = OrderedDict()
_CACHE_SIZE = 256
_LOCK = threading.Lock()
_DEFAULT: dict[str, Store] = {}


def _default_store() -> Store:
    from lmops.core.config import Settings

    url = Settings.from_env().database_url
    store = _DEFAULT.get(url)
    if store is None:
        store = _DEFAULT[url] = Store(origin="lib")
    return store


def get(ref: str, *, store: Store | None = None, max_age_s: float = 5.0) -> Prompt:
    """The prompt ``ref`` names, from a small cache (see the module docstring)."""
    store = store or _default_store()
    key = (store.settings.database_url, ref)
    now = time.monotonic()
    hit = _CACHE.get(key)
    if hit is not None and (hit[0] < 0 or now - hit[0] < max_age_s):
        return hit[1]
    prompt = load(store, ref)
    pinned = parse_ref(ref).version is not None
    with _LOCK:
        _CACHE[key] = (-1.0 if pinned else now, prompt)
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return prompt


def _forget(name: str) -> None:
    with _LOCK:
        for key in [k for k in _CACHE if parse_ref(k[1]).name == name]:
            del _CACHE[key]


def label(store: Store, ref: str, name: str) -> Version:
    """Point label ``name`` of the prompt at version ``ref`` (moving it if set)."""
    try:
        v = store.assets.get(ref)
    except NotFoundError:
        raise NotFoundError(
            f"{ref}: no such prompt version; nothing was labelled "
            f"(see `lmops prompts show {parse_ref(ref).name}`)"
        ) from None
    if v.kind != KIND:
        raise UserError(f"{ref} is a {v.kind}, not a prompt")
    out = store.assets.alias(ref, name)
    _forget(out.asset)
    return out


def list_prompts(store: Store) -> list[Asset]:
    return store.assets.list(kind=KIND)


def diff(store: Store, a: str, b: str) -> str:
    """A unified diff of two versions' files (template, config, message)."""
    pa, pb = load(store, a), load(store, b)

    def lines(p: Prompt) -> list[str]:
        dumped = yaml.safe_dump(
            p.spec.model_dump(mode="json", exclude={"metadata"}),
            sort_keys=False,
            allow_unicode=True,
        )
        return dumped.splitlines(keepends=True)

    return "".join(difflib.unified_diff(lines(pa), lines(pb), fromfile=pa.ref, tofile=pb.ref))
