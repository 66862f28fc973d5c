"""Typed YAML configs: load a file into a pydantic model, with dotted overrides and errors
that name the file, line and field.

    cfg = load_config(Path("recipe.yaml"), Recipe, overrides=["executor.workers=4"])

A validation failure raises ``UserError("recipe.yaml:12: process[2].treshold: extra field
not permitted")`` instead of pydantic's multi-line report. A model validator that checks one
field against another raises :class:`FieldError` with that field's place, so the error
names its line and field rather than the top of the file.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from lmops.core.errors import UserError, first_line

__all__ = [
    "FieldError",
    "apply_overrides",
    "deep_merge",
    "error_loc",
    "error_message",
    "format_loc",
    "line_of",
    "load_config",
    "node_line",
    "read_yaml",
    "validate_config",
    "with_presets",
]

M = TypeVar("M", bound=BaseModel)


class FieldError(ValueError):
    """A model validator's error about one field: ``loc`` is the field's place below the
    model the validator belongs to (``("preference", "loss_type")``)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def error_loc(err: Mapping[str, Any]) -> tuple[Any, ...]:
    """Where an error is: pydantic's place, and below it a :class:`FieldError`'s."""
    cause = (err.get("ctx") or {}).get("error")
    return tuple(err["loc"]) + (cause.loc if isinstance(cause, FieldError) else ())


def error_message(err: Mapping[str, Any]) -> str:
    """One pydantic error's message as lmops prints it: an unknown field says so, and a
    validator's own message loses pydantic's "Value error, " prefix."""
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling)"
    return str(err["msg"]).removeprefix("Value error, ")


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if nxt is None:
                # an extra key: point at the key itself if present
                key = next((k for k, _ in node.value if getattr(k, "value", None) == part), None)
                return key.start_mark.line + 1 if key is not None else line
            node = nxt
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def node_line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` in an already composed document."""
    return _line_of(node, loc)


def line_of(path: Path, loc: tuple[Any, ...]) -> int | None:
    """The line of the YAML node at ``loc`` in ``path`` (for errors found after loading)."""
    try:
        return _line_of(yaml.compose(path.read_text(encoding="utf-8")), loc)
    except (OSError, yaml.YAMLError):
        return None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with ``a.b.c=value`` overrides applied (values parsed as YAML: numbers,
    bools, lists), on a copy: ``data``'s nested mappings may be a preset's, shared by every
    later job of the process."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected key.path=value")
        parts = key.lstrip("-").split(".")
        cur: Any = data
        for p in parts[:-1]:
            if isinstance(cur, list) and p.isdigit():
                cur = cur[int(p)]
                continue
            if not isinstance(cur, dict):
                raise UserError(f"override {item!r}: {p!r} is not a mapping")
            cur = cur.setdefault(p, {})
        last = parts[-1]
        value = yaml.safe_load(raw) if raw != "" else ""
        if isinstance(cur, list) and last.isdigit():
            cur[int(last)] = value
        elif isinstance(cur, dict):
            cur[last] = value
        else:
            raise UserError(f"override {item!r}: cannot set {last!r}")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s keys on top; nested mappings merge, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def with_presets(
    data: dict[str, Any],
    presets: dict[str, dict[str, Any]],
    overrides: list[str] | None = None,
    *,
    source: str,
) -> dict[str, Any]:
    """A job's mapping with its ``preset: NAME`` (if any) merged under it (the job's keys
    win) and dotted ``overrides`` applied on top, as every typed job spec takes it."""
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in presets:
            raise UserError(f"{source}: preset {preset!r} unknown; presets: {', '.join(presets)}")
        data = deep_merge(presets[preset], data)
    if overrides:
        data = apply_overrides(data, overrides)
    return data


def validate_config(
    data: Any,
    model: type[M],
    *,
    source: str = "config",
    node: yaml.Node | None = None,
    overrides: list[str] | None = None,
) -> M:
    """``data`` as ``model``; its first error as one line naming the file's line, or the
    command-line override (``overrides``: ``key.path=value``) that set the field."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = error_loc(err)
        dotted = ".".join(str(p) for p in loc)
        keys = [(o, o.partition("=")[0]) for o in overrides or []]
        given = [  # the field, a field inside it, or a new mapping the override made
            o for o, k in keys
            if dotted == k or dotted.startswith(k + ".") or k.startswith(dotted + ".")
        ]  # fmt: skip
        line = None if given else _line_of(node, loc)
        where = f"{source}:{line}" if line else source
        if given:
            where += f": override {given[-1]!r}"
        raise UserError(f"{where}: {format_loc(loc)}: {error_message(err)}") from None


def read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """The document in ``path`` and its composed node tree (for error lines); one-line
    errors for a missing file, bad encoding or invalid YAML (with its line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid UTF-8") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise UserError(f"{path}{line}: invalid YAML ({problem})") from None
    return data, node


def load_config(path: Path, model: type[M], overrides: list[str] | None = None) -> M:
    data, node = read_yaml(path)
    if data is None:
        raise UserError(f"{path}: empty file")
    if overrides:
        data = apply_overrides(data, overrides)
    return validate_config(data, model, source=str(path), node=node, overrides=overrides)
