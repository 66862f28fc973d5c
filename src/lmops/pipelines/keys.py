"""What a step's cache key is made of: its parameters as the step will see them, and every
input it reads pinned to what it is now.

- :func:`resolved_params`: the step type's typed parameters with every default filled in and
  nested jobs resolved (:meth:`~lmops.pipelines.steps.Params.key_params`: a recipe with its
  overrides and each operator's defaults, a train job with its preset and overrides), so
  writing a default out and leaving it out are the same step, and so is an override equal to
  the default; while any real change is a different key.
- :func:`pin_step`: each input and found input as an asset's version ref (``name:N``) or a
  local file's (or folder's) content digest.

A local path is written the one way in both (:func:`local_path`): relative to the pipeline's
folder when it is inside it (so a moved folder keeps its cache), else absolute; ``raw`` and
``/path/to/pipeline/raw`` are the same input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmops.core.errors import UserError

if TYPE_CHECKING:
    from lmops.pipelines.steps import Params, StepContext

__all__ = [
    "canonical",
    "digest_path",
    "local_path",
    "pin_inputs",
    "pin_step",
    "resolved_params",
]


def digest_path(path: Path) -> str:
    """sha256 over a file's bytes, or over a folder's (relative path, file digest) pairs."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(digest_path(f).encode())
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_json_default)


def local_path(ctx: StepContext, path: Path) -> str:
    """A local file as an input: relative to the pipeline's folder when inside it (so a
    moved folder keeps its cache), else absolute."""
    try:
        return path.relative_to(ctx.base_dir).as_posix()
    except ValueError:
        return str(path)


def _as_input(ctx: StepContext, ref: str) -> str:
    """``ref`` as an input is written in a key: a local path that exists as
    :func:`local_path` writes it, anything else (an asset ref, a glob) as it is."""
    path = ctx.path(ref)
    return local_path(ctx, path) if path.exists() else ref


def pin_step(ctx: StepContext, params: Params) -> tuple[dict[str, str], list[str]]:
    """A step's inputs and found inputs, pinned (:func:`pin_inputs`), and the found inputs
    themselves (``[]`` when reading the inputs failed: the step says so when it runs, and a
    pin ``(found inputs): unreadable: ...`` keeps it from being cached)."""
    pinned = pin_inputs(ctx, params.inputs())
    try:
        found = params.found_inputs(ctx)
    except UserError as e:
        return {**pinned, "(found inputs)": f"unreadable: {e}"}, []
    return pinned | pin_inputs(ctx, found), found


def pin_inputs(ctx: StepContext, refs: Iterable[str]) -> dict[str, str]:
    """Each input as what it is now: a file's content digest, or an asset's version ref."""
    out: dict[str, str] = {}
    for ref in refs:
        path = ctx.path(ref)
        if path.exists():
            out[local_path(ctx, path)] = "sha256:" + digest_path(path)
            continue
        try:
            out[ref] = ctx.store.assets.resolve(ref).ref
        except UserError:
            out[ref] = "unresolved"  # the step itself will say what is wrong
    return out


def resolved_params(ctx: StepContext, params: Params, found: Iterable[str] = ()) -> Any:
    """``params`` as the step will see them (:meth:`Params.key_params`), JSON-able, with
    every value that names one of its inputs (or ``found`` inputs) as a local path written
    as :func:`local_path` writes it. Where resolving fails (a recipe file that is not there
    yet), the parameters with their defaults: the step reports the problem when it runs."""
    try:
        resolved = params.key_params(ctx)
    except UserError:
        resolved = params.model_dump(mode="json")
    local = {ref: _as_input(ctx, ref) for ref in (*params.inputs(), *found)}
    return _rewrite(resolved, {k: v for k, v in local.items() if k != v})


def _rewrite(value: Any, names: dict[str, str]) -> Any:
    """``value`` with every string (mapping keys too: a mix's ratios) found in ``names``
    replaced by its entry there."""
    if not names:
        return value
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, dict):
        return {_rewrite(k, names): _rewrite(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, names) for v in value]
    return value
