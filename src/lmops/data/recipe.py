"""Data recipes: a YAML file naming inputs, operators and an output.

```yaml
name: web-zh-en
inputs: [raw/*.jsonl, raw-web:3]      # paths/globs (relative to the recipe file) or dataset refs
text_key: text
process:
  - op: clean_unicode
  - op: gopher_quality
  - op: pii_mask
  - op: minhash_dedup
    threshold: 0.8
output: {path: out/web, dataset: web-clean}
executor: {type: local, workers: 2}
```
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmops.core.errors import NotFoundError, UserError
from lmops.core.yamlcfg import line_of, load_config
from lmops.data.io import DEFAULT_SHARD_BYTES, InputFile, ReadOptions, detect_format
from lmops.data.ops import Op, build_op

__all__ = ["ExecutorSpec", "OpSpec", "OutputSpec", "Recipe", "ResolvedInputs", "load_recipe"]


class OpSpec(BaseModel):
    """One step: ``op`` names the operator, every other key is one of its parameters."""

    model_config = ConfigDict(extra="allow")
    op: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def build(self) -> Op:
        return build_op(self.op, **self.params)


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = None  # JSONL part files are written under this folder
    dataset: str | None = None  # and/or registered as this dataset asset
    overwrite: bool = False
    description: str = ""

    @model_validator(mode="after")
    def _one_target(self) -> OutputSpec:
        if not self.path and not self.dataset:
            raise ValueError("give output.path, output.dataset, or both")
        return self


class ExecutorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["local", "ray"] = "local"
    workers: int = Field(default=1, ge=1, le=1024)
    shard_bytes: int = Field(default=DEFAULT_SHARD_BYTES, ge=1024)
    address: str | None = None  # Ray cluster address; None starts a local Ray


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    # Python modules imported before the operators are built, so a recipe can use
    # operators of your own (classes decorated with ``@lmops.data.ops.register``).
    imports: list[str] = Field(default_factory=list)
    inputs: list[str] = Field(min_length=1)
    text_key: str = "text"
    id_key: str = "id"
    columns: dict[str, str] = Field(default_factory=dict)
    text_unit: Literal["file", "paragraph", "line"] = "file"
    process: list[OpSpec] = Field(default_factory=list)
    output: OutputSpec
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    on_error: Literal["raise", "skip"] = "raise"

    def read_options(self) -> ReadOptions:
        return ReadOptions(
            text_key=self.text_key,
            id_key=self.id_key,
            columns=dict(self.columns),
            text_unit=self.text_unit,
            on_error=self.on_error,
        )

    def import_plugins(self, source: str = "recipe") -> None:
        import importlib

        for i, mod in enumerate(self.imports):
            try:
                importlib.import_module(mod)
            except ImportError as e:
                raise UserError(f"{source}: imports[{i}]: cannot import {mod!r} ({e})") from None

    def build_ops(self, source: str = "recipe") -> list[Op]:
        """Instantiate every operator, naming the step of any bad one."""
        self.import_plugins(source)
        ops = []
        for i, spec in enumerate(self.process):
            try:
                ops.append(spec.build())
            except UserError as e:
                raise UserError(f"{source}: process[{i}]: {e}") from None
        return ops


def load_recipe(path: Path, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe, building every operator once so that an unknown
    operator or parameter fails now, with the line of its step."""
    recipe = load_config(path, Recipe, overrides)
    recipe.import_plugins(str(path))
    for i, spec in enumerate(recipe.process):
        try:
            spec.build()
        except UserError as e:
            line = line_of(path, ("process", i))
            where = f"{path}:{line}" if line else str(path)
            raise UserError(f"{where}: process[{i}]: {e}") from None
    return recipe


@dataclass
class ResolvedInputs:
    files: list[InputFile]
    refs: list[str]  # "name:N" of every dataset version read (for lineage)


_DATA_SUFFIXES = (
    ".jsonl",
    ".jsonl.gz",
    ".jsonl.zst",
    ".json",
    ".ndjson",
    ".parquet",
    ".txt",
    ".txt.gz",
    ".txt.zst",
)


def _files_under(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if (root / "dataset_info.json").exists() or (root / "state.json").exists():
        return [root]
    # Entries starting with "_" or "." are bookkeeping (reports, errors, work dirs).
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.name.lower().endswith(_DATA_SUFFIXES)
        and not any(part.startswith(("_", ".")) for part in p.relative_to(root).parts)
    )


def resolve_inputs(recipe: Recipe | list[str], base: Path, store: Any | None) -> ResolvedInputs:
    """Expand globs (relative to ``base``, the recipe's folder) and dataset refs into files,
    in a stable order (input order, then sorted paths)."""
    files: list[InputFile] = []
    refs: list[str] = []
    items = recipe.inputs if isinstance(recipe, Recipe) else recipe
    for i, item in enumerate(items):
        p = Path(item).expanduser()
        pattern = str(p if p.is_absolute() else base / p)
        matches = sorted(glob.glob(pattern, recursive=True))
        if matches:
            for m in matches:
                mp = Path(m)
                for f in _files_under(mp):
                    try:
                        name = f.relative_to(base).as_posix()
                    except ValueError:
                        name = f.name
                    files.append(InputFile(f, name, detect_format(f)))
            continue
        if store is None:
            raise UserError(f"inputs[{i}]: {item!r} matches no file")
        try:
            version = store.assets.resolve(item)
        except (NotFoundError, UserError):
            raise UserError(
                f"inputs[{i}]: {item!r} is neither an existing path (relative to {base}) "
                "nor a READY dataset asset"
            ) from None
        if version.kind != "dataset":
            raise UserError(f"inputs[{i}]: {item!r} is a {version.kind}, not a dataset")
        root = store.assets.path(version.ref)
        found = _files_under(root)
        if not found:
            raise UserError(f"inputs[{i}]: dataset {version.ref} holds no readable data files")
        for f in found:
            rel = f.relative_to(root).as_posix() if root.is_dir() else f.name
            files.append(InputFile(f, f"{version.ref}/{rel}", detect_format(f), version.ref))
        refs.append(version.ref)
    return ResolvedInputs(files, refs)
