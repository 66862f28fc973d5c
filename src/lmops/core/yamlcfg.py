"""Typed YAML configs: load a file into a pydantic model, with dotted overrides and errors
that name the file, line and field.

    cfg = load_config(Path("recipe.yaml"), Recipe, overrides=["executor.workers=4"])

A validation failure raises ``UserError("recipe.yaml:12: process[2].treshold: unknown field
(did you mean 'threshold'?)")`` instead of pydantic's report: one line per problem, top to
bottom of the file, each naming its line and field. A model validator that checks one
field against another raises :class:`FieldError` with that field's place, so the error
names its line and field rather than the top of the file.
"""

from __future__ import annotations

import copy
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails

from lmops.core.errors import UserError, first_line, name_hint

__all__ = [
    "MAX_SHOWN",
    "FieldError",
    "apply_overrides",
    "deep_merge",
    "error_loc",
    "error_message",
    "format_loc",
    "line_of",
    "load_config",
    "nested_error",
    "node_line",
    "read_yaml",
    "shown_error",
    "shown_errors",
    "user_loc",
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
    return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


# The names pydantic puts in an error's location that are not the user's: which member of a
# union failed (``list[str]``, ``literal['all-linear']``, ``str``, a model's class name) or
# which validator (``function-after[...]``), and ``[key]``.
_TAG = re.compile(
    r"[\w-]*\[.*\]|[A-Z]\w*|str|int|float|bool|bytes|none|list|dict|set|tuple|constrained-\w+"
)


def user_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """``loc`` in the user's terms: the keys and indexes into ``data`` (what was validated),
    without the names pydantic adds for a union's members or a validator. A part found in
    ``data`` is the user's (a mapping key, whatever it reads like) and is always kept, and
    so is a field that is not there (a missing one). Without ``data``, ``loc`` as it is."""
    if data is None:
        return loc
    return _walk(loc, data)[0]


def _walk(
    loc: tuple[Any, ...], data: Any
) -> tuple[tuple[Any, ...], tuple[tuple[Any, ...], str] | None]:
    """(``loc`` in the user's terms, the first union member named in it as (the union's
    place in the user's terms, the member's name), or None)."""
    out: list[Any] = []
    site: tuple[tuple[Any, ...], str] | None = None
    cur: Any = data
    for part in loc:
        in_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        if in_list or (isinstance(cur, dict) and part in cur):
            cur = cur[part]
        elif isinstance(part, str) and _TAG.fullmatch(part):
            site = site or (tuple(out), part)
            continue  # a union member's or a validator's name: it reads no data
        else:
            cur = None
        out.append(part)
    return tuple(out), site


def shown_error(
    e: ValidationError, data: Any = None, model: type[BaseModel] | None = None
) -> tuple[tuple[Any, ...], str]:
    """The one error of ``e`` to show, as (location, message) in the user's terms, for
    ``data`` validated as ``model``: an unknown field before a required one missing beside
    it (most often that one misspelt), with a did-you-mean; for a value no member of a union
    took, the member its shape matched (the deeper error), else one message for them all."""
    errs = e.errors()
    loc, message, _ = _shown(errs, [user_loc(error_loc(x), data) for x in errs], model)
    return loc, message


def shown_errors(
    e: ValidationError, data: Any = None, model: type[BaseModel] | None = None
) -> list[tuple[tuple[Any, ...], str]]:
    """Every problem of ``e``, each as :func:`shown_error` shows one, in the order pydantic
    found them (the fields' order): the errors one shown error accounts for (a union's
    members, the required field an unknown one misspells) are not repeated."""
    errs = e.errors()
    locs = [user_loc(error_loc(x), data) for x in errs]
    sites = [_walk(error_loc(x), data)[1] for x in errs]
    out: list[tuple[tuple[Any, ...], str]] = []
    while errs:
        loc, message, used = _shown(errs, locs, model)
        out.append((loc, message))
        # the other members of a union whose member was shown: that value is said
        for j in list(used):
            if sites[j] is not None:
                at, member = sites[j]  # type: ignore[misc]
                used |= {
                    k
                    for k, s in enumerate(sites)
                    if s is not None and s[0] == at and s[1] != member
                }
        errs = [x for j, x in enumerate(errs) if j not in used]
        locs = [lc for j, lc in enumerate(locs) if j not in used]
        sites = [s for j, s in enumerate(sites) if j not in used]
    return out


def _shown(
    errs: list[Any], locs: list[tuple[Any, ...]], model: type[BaseModel] | None
) -> tuple[tuple[Any, ...], str, set[int]]:
    """:func:`shown_error` over ``errs`` (at the user's ``locs``), with the indexes of the
    errors it accounts for."""
    missing = [
        (j, lc[:-1], lc[-1])
        for j, (x, lc) in enumerate(zip(errs, locs, strict=True))
        if x["type"] == "missing"
    ]
    i = next(
        (
            j
            for j, (x, lc) in enumerate(zip(errs, locs, strict=True))
            if x["type"] == "extra_forbidden" and any(p == lc[:-1] for _, p, _ in missing)
        ),
        0,
    )
    err, loc = errs[i], locs[i]
    if err["type"] == "extra_forbidden" and loc:
        beside = [(j, str(n)) for j, p, n in missing if p == loc[:-1]]
        known = [n for _, n in beside]
        known += _fields_at(model, loc[:-1]) if model is not None else []
        # a close one only: "lr" is not a misspelt "lora" (it belongs in train:)
        hint = name_hint(str(loc[-1]), known, "", cutoff=0.75)
        if hint.startswith("did you mean"):
            # the missing field it misspells is said by this error
            meant = {j for j, n in beside if hint == name_hint(str(loc[-1]), [n], "", cutoff=0.75)}
            return loc, f"unknown field ({hint})", {i, *meant}
        return loc, error_message(err), {i}
    if loc == error_loc(err):
        return loc, error_message(err), {i}
    # a union's members, each reported at the same place (a tag dropped from each)
    members = [
        (j, lc, x)
        for j, (x, lc) in enumerate(zip(errs, locs, strict=True))
        if lc[: len(loc)] == loc
    ]
    used = {j for j, _, _ in members}
    _, deepest, deepest_err = max(members, key=lambda m: len(m[1]))
    if len(deepest) > len(loc):  # the member whose shape it has, failing inside
        return deepest, error_message(deepest_err), used
    said = [error_message(x) for _, lc, x in members if lc == loc]
    head = "Input should be "
    if all(m.startswith(head) for m in said):
        message = head + " or ".join(dict.fromkeys(m.removeprefix(head) for m in said))
        return loc, message, used
    return loc, "; or ".join(dict.fromkeys(said)), used


def nested_error(e: ValidationError, *loc: Any) -> ValidationError:
    """``e`` (a nested config's validation, done by a validator itself) as the errors of
    the field at ``loc``, so that they keep their own locations; a validator may raise it."""
    return ValidationError.from_exception_data(
        e.title,
        [
            InitErrorDetails(
                type=x["type"], loc=(*loc, *x["loc"]), input=x["input"], ctx=x.get("ctx", {})
            )
            for x in e.errors()
        ],
    )


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the pydantic models found at ``loc`` inside ``model`` (none once
    the path leaves typed models, e.g. through a ``dict[str, Any]``)."""
    found = [model]
    for part in loc:
        found = [inner for tp in found for inner in _inside(tp, part)]
    return [
        f.alias or name
        for tp in found
        for m in _members(tp)
        if isinstance(m, type) and issubclass(m, BaseModel)
        for name, f in m.model_fields.items()
    ]


def _members(tp: Any) -> list[Any]:
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [m for a in get_args(tp) for m in _members(a)]
    return [tp]


def _inside(tp: Any, part: Any) -> list[Any]:
    """The types at ``part`` inside ``tp``: a model's field, a list's items, a dict's values."""
    out: list[Any] = []
    for m in _members(tp):
        origin, args = get_origin(m), get_args(m)
        if isinstance(m, type) and issubclass(m, BaseModel):
            f = next((f for n, f in m.model_fields.items() if part in (n, f.alias)), None)
            out += [f.annotation] if f is not None else []
        elif origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
            out.append(args[0])
        elif origin is dict and len(args) == 2:
            out.append(args[1])
    return out


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...], key: bool = False) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing parent); with
    ``key``, of the last part's key (an unknown field's own line, not its value's)."""
    line = node.start_mark.line + 1 if node is not None else None
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if nxt is None or (key and i == len(loc) - 1):
                # an extra key: point at the key itself if present
                at = next((k for k, _ in node.value if getattr(k, "value", None) == part), None)
                return at.start_mark.line + 1 if at is not None else line
            node = nxt
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def node_line(node: yaml.Node | None, loc: tuple[Any, ...], key: bool = False) -> int | None:
    """1-based line of the YAML node at ``loc`` in an already composed document (with
    ``key``, of its last part's key)."""
    return _line_of(node, loc, key)


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
    """``data`` as ``model``; its errors, one line each (at most :data:`MAX_SHOWN`, then
    how many more), naming the file's line or the command-line override (``overrides``:
    ``key.path=value``) that set the field."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        shown = [
            _error_line(loc, m, source, node, overrides) for loc, m in shown_errors(e, data, model)
        ]
        shown.sort(key=lambda x: x[0])  # top to bottom of the file (stable: a line's in order)
        lines = [text for _, text in shown[:MAX_SHOWN]]
        if len(shown) > MAX_SHOWN:
            lines.append(f"{source}: and {len(shown) - MAX_SHOWN} more errors")
        raise UserError("\n".join(lines)) from None


# the most errors of one config that are shown (the rest are counted)
MAX_SHOWN = 10


def _error_line(
    loc: tuple[Any, ...],
    message: str,
    source: str,
    node: yaml.Node | None,
    overrides: list[str] | None,
) -> tuple[int, str]:
    """(line or 0, the error's line of text)."""
    dotted = ".".join(str(p) for p in loc)
    keys = [(o, o.partition("=")[0]) for o in overrides or []]
    given = [  # the field, a field inside it, or a new mapping the override made
        o for o, k in keys
        if dotted == k or dotted.startswith(k + ".") or k.startswith(dotted + ".")
    ]  # fmt: skip
    line = None if given else _line_of(node, loc, key=message.startswith("unknown field"))
    where = f"{source}:{line}" if line else source
    if given:
        where += f": override {given[-1]!r}"
    return line or 0, f"{where}: {format_loc(loc)}: {message}"


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
