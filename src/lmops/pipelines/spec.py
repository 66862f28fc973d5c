"""Pipeline YAML: named steps with ``needs:`` and references to earlier steps' outputs.

```yaml
name: chat-release
vars: {base: qwen-0.5b@production}
steps:
  clean:
    type: data
    recipe: recipes/clean.yaml           # paths are relative to this file
    output: chat-clean
  sft:
    type: train
    spec: {preset: sft-lora, model: "${vars.base}", dataset: "${steps.clean.output}",
           output: chat-sft}
  eval:
    type: eval
    model: ${steps.sft.output}
    task_files: [tasks/support.yaml]
  gate:
    type: gate
    candidates: ["${steps.eval.output}"]
    metric: support/exact_match
    threshold: 0.6
    alias: production
```

References: ``${steps.NAME.output}`` (the step's main output, a pinned ``name:N``),
``${steps.NAME.outputs.KEY}``, ``${steps.NAME.result.KEY}`` (a value the step reported),
``${vars.NAME}``, ``${env.NAME}``, ``${pipeline.dir}`` and ``${pipeline.name}``. A value that
is exactly one reference keeps the referenced value's type; references inside a longer
string are interpolated. ``$${`` writes a literal ``${``. A step depends on every step it
names in ``needs:`` or refers to.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmops.core.errors import UserError, name_hint
from lmops.core.yamlcfg import (
    apply_overrides,
    format_loc,
    node_line,
    read_yaml,
    shown_error,
    validate_config,
)

__all__ = [
    "Pipeline",
    "PipelineSpec",
    "StepSpec",
    "load_pipeline",
    "param_error",
    "pipeline_from_dict",
    "references",
    "substitute",
]

_REF = re.compile(r"(?<!\$)\$\{\s*([^{}]*?)\s*\}")
_STEP_REF = re.compile(r"^steps\.([A-Za-z0-9_-]+)\.(output|outputs\.[\w.-]+|result\.[\w.-]+)$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")


class StepSpec(BaseModel):
    """One step: ``type`` picks the step type, every other key is one of its parameters."""

    model_config = ConfigDict(extra="allow")
    type: str
    needs: list[str] = Field(default_factory=list)
    cache: bool = True
    description: str = ""

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    vars: dict[str, Any] = Field(default_factory=dict)
    steps: dict[str, StepSpec] = Field(min_length=1)


@dataclass
class Pipeline:
    """A validated pipeline: its spec, where it came from, and the order to run it in."""

    spec: PipelineSpec
    source: str  # file path (or "pipeline") for messages
    base_dir: Path  # relative paths in steps are resolved against this folder
    order: list[str]  # topological, ties kept in file order
    deps: dict[str, list[str]]  # step -> steps it depends on (needs + references)
    node: yaml.Node | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def where(self, *loc: Any, key: bool = False) -> str:
        """``file:line`` of the YAML node at ``loc`` (with ``key``, of its last part's key:
        an unknown field's line) for messages, else the source."""
        line = node_line(self.node, loc, key) if self.node is not None else None
        return f"{self.source}:{line}" if line else self.source


def references(value: Any) -> list[str]:
    """Every ``${...}`` expression inside ``value`` (strings, lists, mappings: their keys
    too, as in a mix step's ``ratios: {"${steps.clean.output}": 0.7}``)."""
    if isinstance(value, str):
        return [m.group(1) for m in _REF.finditer(value)]
    if isinstance(value, dict):
        return [r for k, v in value.items() for r in (*references(k), *references(v))]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def _lookup(expr: str, scope: dict[str, Any]) -> Any:
    """The value of one reference; ``KeyError`` with a readable reason when it is missing."""
    head, _, rest = expr.partition(".")
    if head == "env":
        if rest not in os.environ:
            raise KeyError(f"environment variable {rest} is not set")
        return os.environ[rest]
    if head == "steps":
        m = _STEP_REF.match(expr)
        if m is None:
            raise KeyError("use steps.NAME.output, steps.NAME.outputs.KEY or steps.NAME.result.KEY")
        step, path = m.group(1), m.group(2).split(".")
        cur: Any = scope["steps"].get(step)
        if cur is None:
            raise KeyError(f"step {step!r} has not produced outputs")
        if path == ["output"]:
            if "output" not in cur["outputs"]:
                raise KeyError(f"step {step!r} produced no main output")
            return cur["outputs"]["output"]
        cur = cur[path[0]]
        for part in path[1:]:
            if not isinstance(cur, dict) or part not in cur:
                raise KeyError(f"step {step!r} has no {'.'.join(path)}")
            cur = cur[part]
        return cur
    if head in ("vars", "pipeline"):
        table = scope[head]
        if rest not in table:
            raise KeyError(f"{head}.{rest} is not defined")
        return table[rest]
    raise KeyError("references start with steps., vars., env. or pipeline.")


def substitute(
    value: Any, scope: dict[str, Any], loc: tuple[Any, ...] = (), *, keep_steps: bool = False
) -> Any:
    """Replace references in ``value``. Raises ``KeyError((loc, expr, reason))``.

    ``keep_steps`` leaves each reference to a step as it is, written ``${steps.NAME...}``
    (and ``$${`` as it is), for checks made before any step has run: two values that name
    the same step output read the same."""

    def lookup(expr: str) -> Any:
        if keep_steps and expr.partition(".")[0] == "steps":
            return f"${{{expr}}}"
        try:
            return _lookup(expr, scope)
        except KeyError as e:
            raise KeyError((loc, expr, e.args[0])) from None

    if isinstance(value, str):
        whole = _REF.fullmatch(value.strip()) if value.strip().startswith("${") else None
        if whole is not None:
            return lookup(whole.group(1))
        out = _REF.sub(lambda m: str(lookup(m.group(1))), value)
        return out if keep_steps else out.replace("$${", "${")
    if isinstance(value, dict):
        return {
            (
                str(substitute(k, scope, (*loc, k), keep_steps=keep_steps))
                if isinstance(k, str)
                else k
            ): substitute(v, scope, (*loc, k), keep_steps=keep_steps)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute(v, scope, (*loc, i), keep_steps=keep_steps) for i, v in enumerate(value)]
    return value


def _find_ref(value: Any, expr: str, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The location of the first string containing ``${expr}`` (for error lines)."""
    if isinstance(value, str) and expr in references(value):
        return loc
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else []
    )
    for k, v in items:
        if isinstance(k, str) and isinstance(value, dict) and expr in references(k):
            return (*loc, k)
        found = _find_ref(v, expr, (*loc, k))
        if found:
            return found
    return ()


def _topo(pipe_deps: dict[str, list[str]], order: list[str], where: Any) -> list[str]:
    """Kahn's algorithm, picking ready steps in file order; a cycle is reported by name."""
    done: list[str] = []
    left = list(order)
    while left:
        ready = [s for s in left if all(d in done for d in pipe_deps[s])]
        if not ready:
            cycle = _a_cycle(pipe_deps, left)
            raise UserError(
                f"{where(cycle[0])}: steps form a cycle: {' -> '.join(cycle)}; "
                "remove one of these dependencies"
            )
        done.append(ready[0])
        left.remove(ready[0])
    return done


def _a_cycle(deps: dict[str, list[str]], nodes: list[str]) -> list[str]:
    path: list[str] = []
    cur = nodes[0]
    while cur not in path:
        path.append(cur)
        cur = next(d for d in deps[cur] if d in nodes)
    return [*path[path.index(cur) :], cur]


def pipeline_from_dict(
    data: Any,
    *,
    source: str = "pipeline",
    base_dir: Path | None = None,
    node: yaml.Node | None = None,
    overrides: list[str] | None = None,
    variables: dict[str, Any] | None = None,
) -> Pipeline:
    """Validate a pipeline mapping: names, step types, ``needs``, references, parameters
    (checked against each step type with references stood in for), and acyclicity."""
    from lmops.pipelines.steps import STEP_TYPES

    if overrides:
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a mapping at the top level")
        given = data.get("steps")
        steps: dict[str, Any] = given if isinstance(given, dict) else {}
        for o in overrides:  # a step an override names must be one of the file's
            parts = o.partition("=")[0].lstrip("-").split(".")
            if len(parts) > 2 and parts[0] == "steps" and parts[1] not in steps:
                hint = name_hint(parts[1], list(steps), "its steps")
                raise UserError(f"override {o!r}: {source} has no step {parts[1]!r}; {hint}")
        data = apply_overrides(data, overrides)
    spec = validate_config(data, PipelineSpec, source=source, node=node)
    if variables:
        spec.vars.update(variables)
    base = (base_dir or Path.cwd()).resolve()
    pipe = Pipeline(spec, source, base, [], {}, node)
    if not _NAME.match(spec.name):
        raise UserError(
            f"{pipe.where('name')}: name {spec.name!r}: use letters, digits, '-' and '_'"
        )
    names = list(spec.steps)
    scope_static = {"vars": spec.vars, "pipeline": {"dir": str(base), "name": spec.name}}
    for name, step in spec.steps.items():
        loc = ("steps", name)
        if not _NAME.match(name):
            raise UserError(f"{pipe.where(*loc)}: step name {name!r}: use letters, digits, - and _")
        if step.type not in STEP_TYPES:
            raise UserError(
                f"{pipe.where(*loc, 'type')}: steps.{name}.type: unknown step type "
                f"{step.type!r}; known: {', '.join(sorted(STEP_TYPES))}"
            )
        deps: list[str] = []
        for i, need in enumerate(step.needs):
            if need not in spec.steps:
                raise UserError(
                    f"{pipe.where(*loc, 'needs', i)}: steps.{name}.needs: unknown step {need!r}"
                )
            deps.append(need)
        for expr in references(step.params):
            ref_loc = _find_ref(step.params, expr, ())
            field = ".".join(str(p) for p in (name, *ref_loc))
            head = expr.partition(".")[0]
            if head == "steps":
                m = _STEP_REF.match(expr)
                if m is None or m.group(1) not in spec.steps:
                    why = (
                        f"unknown step {m.group(1)!r}"
                        if m is not None
                        else "use steps.NAME.output, steps.NAME.outputs.KEY or steps.NAME.result.KEY"
                    )
                    raise UserError(
                        f"{pipe.where(*loc, *ref_loc)}: steps.{field}: ${{{expr}}}: {why}"
                    )
                if m.group(1) == name:
                    raise UserError(
                        f"{pipe.where(*loc, *ref_loc)}: steps.{field}: a step cannot refer to "
                        "its own outputs"
                    )
                if m.group(1) not in deps:
                    deps.append(m.group(1))
            elif head in ("vars", "pipeline"):
                try:
                    _lookup(expr, scope_static)
                except KeyError as e:
                    raise UserError(
                        f"{pipe.where(*loc, *ref_loc)}: steps.{field}: ${{{expr}}}: {e.args[0]}"
                    ) from None
            elif head != "env":
                raise UserError(
                    f"{pipe.where(*loc, *ref_loc)}: steps.{field}: ${{{expr}}}: references "
                    "start with steps., vars., env. or pipeline."
                )
        pipe.deps[name] = deps
        _check_step(pipe, name, step, STEP_TYPES[step.type].params)
    pipe.order = _topo(pipe.deps, names, lambda s: pipe.where("steps", s))
    return pipe


def _placeholder(value: Any) -> Any:
    """Stand-ins for references so parameters can be type-checked before anything runs."""
    if isinstance(value, str):
        if value.strip().startswith("${") and _REF.fullmatch(value.strip()):
            return "placeholder:1"
        return _REF.sub("placeholder", value)
    if isinstance(value, dict):
        return {k: _placeholder(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholder(v) for v in value]
    return value


def param_error(
    pipe: Pipeline, name: str, e: ValidationError, params: Any, model: type[BaseModel]
) -> UserError:
    """A step parameter's validation error (``params`` validated as ``model``) as
    ``file:line: steps.NAME.FIELD: message``."""
    loc, message = shown_error(e, params, model)
    field = format_loc(("steps", name, *loc))
    where = pipe.where("steps", name, *loc, key=message.startswith("unknown field"))
    return UserError(f"{where}: {field}: {message}")


def _check_step(pipe: Pipeline, name: str, step: StepSpec, model: type[BaseModel]) -> None:
    params = _placeholder(step.params)
    try:
        model.model_validate(params)
    except ValidationError as e:
        raise param_error(pipe, name, e, params, model) from None
    except UserError as e:
        raise UserError(f"{pipe.where('steps', name)}: steps.{name}: {e}") from None


def load_pipeline(
    path: Path, overrides: list[str] | None = None, variables: dict[str, Any] | None = None
) -> Pipeline:
    """Read and validate ``path`` (``overrides`` like ``steps.sft.spec.train.steps=10``)."""
    data, node = read_yaml(path)
    return pipeline_from_dict(
        data,
        source=str(path),
        base_dir=path.resolve().parent,
        node=node,
        overrides=overrides,
        variables=variables,
    )
