"""Data recipes: a YAML file naming inputs, operators and an output.

```yaml
name: web-zh-en
inputs: [raw/*.jsonl, raw-web:3]      # paths/globs (relative to the recipe file) or dataset refs
text_key: text                        # or fields: [instruction, input, output] / fields: messages
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from lmops.core.errors import NotFoundError, UserError
from lmops.core.rows import ROW_SUFFIXES
from lmops.core.yamlcfg import line_of, load_config
from lmops.data.io import DEFAULT_SHARD_BYTES, InputFile, ReadOptions, detect_format
from lmops.data.ops import Op, bad_param, build_op

if TYPE_CHECKING:
    from lmops.store import Store

__all__ = [
    "DroppedSpec",
    "ExecutorSpec",
    "OpSpec",
    "OutputSpec",
    "Recipe",
    "ResolvedInputs",
    "load_recipe",
]


class OpSpec(BaseModel):
    """One step: ``op`` names the operator, ``field`` (optional) the one field of the
    recipe's ``fields`` it reads, every other key is one of its parameters."""

    model_config = ConfigDict(extra="allow")
    op: str
    field: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _names_its_op(cls, data: Any) -> Any:
        # Data-Juicer writes `- name` or `- name: {params}`; say how lmops writes a step
        name, params = (data, {}) if isinstance(data, str) else (None, {})
        if isinstance(data, dict) and "op" not in data and len(data) == 1:
            key, value = next(iter(data.items()))
            if value is None or isinstance(value, dict):
                name, params = key, value or {}
        if name is None:
            return data
        beside = ", ".join(f"{k}: {v}" for k, v in list(params.items())[:2])
        raise ValueError(
            f"write the step as `- op: {name}`"
            + (f" with its parameters beside op ({beside})" if beside else "")
        )

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def build(self) -> Op:
        op = build_op(self.op, **self.params)
        op.field = self.field
        return op


def _asset_name(v: str | None) -> str | None:
    # a bad name fails when the recipe is read (with its line), not after the run
    from lmops.store.refs import check_name

    if v is not None:
        try:
            check_name(v)
        except UserError as e:
            raise ValueError(str(e)) from None
    return v


AssetName = Annotated[str | None, AfterValidator(_asset_name)]


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = None  # JSONL part files are written under this folder
    dataset: AssetName = None  # and/or registered as this dataset asset
    overwrite: bool = False
    description: str = ""

    @model_validator(mode="after")
    def _one_target(self) -> OutputSpec:
        if not self.path and not self.dataset:
            raise ValueError("give output.path, output.dataset, or both")
        return self


class DroppedSpec(BaseModel):
    """Where every dropped document goes (``keep_dropped``): a folder of part files and/or
    a dataset asset, never the kept output's. Unset fields follow the output:
    ``<output.path>-dropped`` and ``<output.dataset>-dropped``."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = None
    dataset: AssetName = None


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
    # The fields to process: several string fields (instruction data), or a field holding
    # chat messages (each message's content is processed). Default: [text_key].
    fields: list[str] | None = Field(default=None, min_length=1)
    # Where text_key and id_key are read from: {text: body, id: doc_id}. The output keeps
    # the input's field names.
    columns: dict[str, str] = Field(default_factory=dict)
    text_unit: Literal["file", "paragraph", "line"] = "file"
    process: list[OpSpec] = Field(default_factory=list)
    output: OutputSpec
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    on_error: Literal["raise", "skip"] = "raise"
    # Every dropped document with its step and reason, as a dataset of its own
    # (``true``: beside the output, lmops.data._dropped); None/false: counts and examples only.
    keep_dropped: DroppedSpec | None = None
    # the YAML file it was read from, and its inputs as read there (for ``file:line`` errors)
    _source: Path | None = PrivateAttr(None)
    _source_inputs: list[str] = PrivateAttr(default_factory=list)

    def where(self, *loc: Any, default: str = "recipe") -> str:
        """``file:line`` of the node at ``loc`` (``("inputs", 1)``) in the file the recipe
        was read from (``file`` where it has no such node; ``default`` for a recipe not read
        from a file, or for inputs given instead of the file's: a pipeline step's)."""
        if self._source is None or (loc[:1] == ("inputs",) and self.inputs != self._source_inputs):
            return default
        line = line_of(self._source, loc)
        return f"{self._source}:{line}" if line else str(self._source)

    @field_validator("name")
    @classmethod
    def _one_folder(cls, v: str) -> str:
        # The name is the run's work folder under LMOPS_HOME/work/data: "team/nightly"
        # would sit inside recipe "team"'s, which starts over by deleting what it holds.
        if not v or v in (".", "..") or "/" in v or "\\" in v or "\0" in v:
            raise ValueError(
                f"recipe name {v!r} is not a folder name (it names the run's work folder); "
                "use letters, digits, '.', '_' or '-', without '/'"
            )
        return v

    @field_validator("fields", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("keep_dropped", mode="before")
    @classmethod
    def _true_is_beside_the_output(cls, v: Any) -> Any:
        return {} if v is True else None if v is False else v

    @model_validator(mode="after")
    def _dropped_apart(self) -> Recipe:
        """The dropped documents never land where the kept ones are read from."""
        d = self.keep_dropped
        if d is None:
            return self
        name = d.dataset or (f"{self.output.dataset}-dropped" if self.output.dataset else None)
        if name is not None and (name == self.output.dataset or len(name) > 128):
            raise ValueError(
                f"keep_dropped: dataset {name!r} "
                + ("is the output's" if name == self.output.dataset else "is too long")
                + "; name another: keep_dropped: {dataset: NAME}"
            )
        if d.path and self.output.path and Path(d.path) == Path(self.output.path):
            raise ValueError("keep_dropped: path is the output's; give another folder")
        return self

    @model_validator(mode="after")
    def _columns_and_fields(self) -> Recipe:
        other = sorted(set(self.columns) - {self.text_key, self.id_key})
        if other:
            raise ValueError(
                f"columns: only {self.text_key!r} (text_key) and {self.id_key!r} (id_key) can "
                f"be mapped, not {other[0]!r}; the output keeps every field under its own name"
            )
        if self.fields is not None and self.text_key in self.columns:
            raise ValueError("give fields or columns.text, not both")
        return self

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The fields this recipe processes."""
        if self.fields is not None:
            return tuple(self.fields)
        return (self.columns.get(self.text_key, self.text_key),)

    def check_step(self, i: int, op: Op) -> None:
        """Refuse a step whose ``field`` is not processed, or a text-rewriting global
        operator that would rewrite several fields joined together."""
        fields = self.text_fields
        if op.field is not None and op.field not in fields:
            raise UserError(
                f"process[{i}]: field {op.field!r} is not one of the fields this recipe "
                f"processes ({', '.join(fields)})"
            )
        if op.rewrites_text and op.field is None and len(fields) > 1:
            raise UserError(
                f"process[{i}]: {op.name} rewrites text and would rewrite the fields "
                f"{', '.join(fields)} joined; set field: to one of them"
            )

    def redactor(self) -> Callable[[str], str] | None:
        """The recipe's PII masking (every ``pii_mask`` step, in order) as a function, for
        what is kept beside the data (report examples, unreadable rows); None without one."""
        steps = [s for s in self.process if s.op == "pii_mask"]
        if not steps:
            return None
        from lmops.text.pii import mask_pii

        params = [cast(Any, s.build()).params for s in steps]

        def redact(text: str) -> str:
            for p in params:
                text = mask_pii(text, p.types, p.placeholder_format)[0]
            return text

        return redact

    def read_options(self) -> ReadOptions:
        return ReadOptions(
            text_key=self.text_key,
            id_key=self.id_key,
            columns=dict(self.columns),
            fields=self.text_fields,
            text_unit=self.text_unit,
            on_error=self.on_error,
            redact=self.redactor(),
        )

    def import_plugins(self, source: str = "recipe") -> None:
        import importlib

        for i, mod in enumerate(self.imports):
            try:
                importlib.import_module(mod)
            except ImportError as e:
                at = self.where("imports", i, default=source)
                raise UserError(f"{at}: imports[{i}]: cannot import {mod!r} ({e})") from None

    def build_ops(self, source: str = "recipe") -> list[Op]:
        """Instantiate every operator, naming the step of any bad one."""
        self.import_plugins(source)
        ops = []
        for i, spec in enumerate(self.process):
            try:
                op = spec.build()
            except UserError as e:
                raise UserError(f"{source}: process[{i}]: {e}") from None
            try:
                self.check_step(i, op)
            except UserError as e:
                raise UserError(f"{source}: {e}") from None
            ops.append(op)
        return ops


def load_recipe(path: Path, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe, building every operator once so that an unknown
    operator or parameter fails now, with the line of its step."""
    recipe = load_config(path, Recipe, overrides)
    recipe._source, recipe._source_inputs = path, list(recipe.inputs)
    recipe.import_plugins(str(path))
    for i, spec in enumerate(recipe.process):
        where = recipe.where("process", i)
        try:
            op = spec.build()
        except UserError as e:
            param = bad_param(spec.op, spec.params)  # the line of the parameter at fault
            at = recipe.where("process", i, param) if param else where
            raise UserError(f"{at}: process[{i}]: {e}") from None
        try:
            recipe.check_step(i, op)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    return recipe


@dataclass
class ResolvedInputs:
    files: list[InputFile]
    refs: list[str]  # "name:N" of every dataset version read (for lineage)
    # the local files and folders the inputs matched, as named (recorded as external
    # references by the jobs that read them: ``store.assets.record_inputs``)
    local: list[Path] = field(default_factory=list)


_DATA_SUFFIXES = (*ROW_SUFFIXES, ".txt", ".txt.gz", ".txt.zst")


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


def resolve_inputs(recipe: Recipe | list[str], base: Path, store: Store | None) -> ResolvedInputs:
    """Expand globs (relative to ``base``, the recipe's folder) and dataset refs into files,
    in a stable order (input order, then sorted paths)."""
    files: list[InputFile] = []
    refs: list[str] = []
    local: list[Path] = []
    items = recipe.inputs if isinstance(recipe, Recipe) else recipe

    def at(i: int) -> str:
        """``recipe.yaml:3: inputs[1]: `` in a recipe; nothing before a command's argument
        (``lmops data tokenizer train SOURCES``), which the message quotes itself."""
        if not isinstance(recipe, Recipe):
            return ""
        where = recipe.where("inputs", i, default="")
        return f"{where}: inputs[{i}]: " if where else f"inputs[{i}]: "

    for i, item in enumerate(items):
        p = Path(item).expanduser()
        pattern = str(p if p.is_absolute() else base / p)
        matches = sorted(glob.glob(pattern, recursive=True))
        if matches:
            if not any(_files_under(Path(m)) for m in matches):
                # a folder of .md or .tsv files read nothing, and the run only said at its
                # end that no document was read
                seen = sorted({p.name for m in matches for p in Path(m).rglob("*") if p.is_file()})
                holds = f"; it holds {', '.join(seen[:5])}" + (", ..." if len(seen) > 5 else "")
                raise UserError(
                    f"{at(i)}{item!r} matches no data file (.jsonl, .json, .csv, .parquet, "
                    f".txt, plain or .gz/.zst){holds if seen else ''}"
                )
            for m in matches:
                mp = Path(m)
                found = _files_under(mp)
                if found and mp not in local:
                    local.append(mp)
                for f in found:
                    try:
                        name = f.relative_to(base).as_posix()
                    except ValueError:
                        name = f.name
                    files.append(InputFile(f, name, detect_format(f)))
            continue
        if store is None:
            raise UserError(f"{at(i)}{item!r} matches no file")
        try:
            version = store.assets.resolve(item)
        except UserError as e:
            # a valid ref the store lacks: its reason (a close name, where they are listed);
            # a string that cannot be a ref (``data/*.jsonl``) was a path, said as before
            why = f" ({e})" if isinstance(e, NotFoundError) else ""
            raise UserError(
                f"{at(i)}{item!r} is neither an existing path (relative to {base}) "
                f"nor a READY dataset asset{why}"
            ) from None
        if version.kind != "dataset":
            raise UserError(f"{at(i)}{item!r} is a {version.kind}, not a dataset")
        root = store.assets.path(version.ref)
        found = _files_under(root)
        if not found:
            raise UserError(f"{at(i)}dataset {version.ref} holds no readable data files")
        for f in found:
            rel = f.relative_to(root).as_posix() if root.is_dir() else f.name
            files.append(InputFile(f, f"{version.ref}/{rel}", detect_format(f), version.ref))
        refs.append(version.ref)
    return ResolvedInputs(files, refs, local)
