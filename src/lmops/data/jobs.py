"""Dataset-level jobs behind ``lmops data tokenizer train``, ``tokenize``, ``mix`` and
``validate``: each reads paths or dataset refs, records a run, and registers its output
with lineage to every input version, local files and folders included (as external
references). ``validate`` registers nothing and records nothing."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lmops.core.errors import UserError
from lmops.core.formats import ValidationReport, validate_rows
from lmops.core.rows import ANNOTATIONS_KEY, BadRow, Row, iter_rows
from lmops.data.document import Document
from lmops.data.io import InputFile, JsonlWriter, ReadOptions, Shard, read_shard
from lmops.data.recipe import ResolvedInputs, resolve_inputs

if TYPE_CHECKING:
    from lmops.store import Store

__all__ = [
    "mix_datasets",
    "read_source",
    "tokenize_dataset",
    "train_tokenizer_asset",
    "validate_source",
]


def read_source(
    sources: list[str],
    store: Store | None,
    *,
    text_key: str = "text",
    base: Path | None = None,
    whole_rows: bool = False,
    field_hint: str = "name the text field (--text-key; text_key: in a pipeline step)",
) -> tuple[ResolvedInputs, Iterator[Document]]:
    """Resolve paths/globs/dataset refs and stream their documents in order. ``whole_rows``:
    rows without ``text_key`` (SFT, preference) are read by all their text and message
    fields (see :func:`_row_shape`) instead of refused."""
    resolved = resolve_inputs(sources, base or Path.cwd(), store)
    fields = _row_shape(resolved, text_key)[1] if whole_rows else None
    opts = ReadOptions(text_key=text_key, fields=fields, field_hint=field_hint)

    def docs() -> Iterator[Document]:
        for i, f in enumerate(resolved.files):
            yield from read_shard(Shard(i, f), opts)

    return resolved, docs()


def _record_local(
    store: Store, resolved: list[ResolvedInputs], run_id: str
) -> list[tuple[str, str]]:
    """The local files and folders the sources matched, recorded by content before they are
    read (``store.assets.record_inputs``): the ``(ref, role)`` lineage inputs."""
    paths = [p for r in resolved for p in r.local]
    return list(store.assets.record_inputs([(p, "input") for p in paths], run_id=run_id))


def _iter_rows(files: list[InputFile]) -> Iterator[Row | BadRow]:
    """Every record of the files through the one row reader; unreadable ones included, so
    the validator counts and names them."""
    for f in files:
        if f.fmt not in ("jsonl", "json", "csv", "parquet"):
            raise UserError(
                f"{f.path}: validate reads JSON Lines, JSON arrays, CSV or Parquet rows, "
                f"not {f.fmt}"
            )
        yield from iter_rows(f.path)


def validate_source(
    sources: list[str],
    store: Store | None,
    fmt: str = "auto",
    max_errors: int = 100,
    *,
    stage: str | None = None,
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> ValidationReport:
    """Validate training rows from files, globs or dataset refs; problems name file and
    line (element in a JSON array, row in Parquet).

    ``fmt``: each row checked as one of lmops's own formats (``auto``: the first row's).
    ``stage`` (with a job's ``columns`` and ``tags``): each row read as that training stage
    reads it (:mod:`lmops.core.shaped`): in any shape the stage takes (ShareGPT, TRL's,
    LLaMA-Factory's...), each problem in the words ``lmops train`` uses, and the shape
    each usable row was read as."""
    if stage is None:
        if columns or tags:
            raise UserError("columns and tags map a training stage's fields: give --stage too")
        resolved = resolve_inputs(sources, Path.cwd(), store)
        notes = _ServingNotes()
        rep = validate_rows(_iter_rows(resolved.files), fmt, max_errors=max_errors, look=notes)
        return notes.add_to(rep)
    from lmops.core.shaped import SHAPE_STAGES, validate_shapes
    from lmops.core.shapes import TAGS, RowReader, column_problem

    if stage not in SHAPE_STAGES:
        hint = " (its rows are text: use --format pretrain)" if stage == "pretrain" else ""
        raise UserError(
            f"--stage {stage}: validate reads the rows of stages {', '.join(SHAPE_STAGES)}{hint}"
        )
    if fmt != "auto":
        raise UserError("give --format or --stage, not both: a stage reads rows of many shapes")
    for name in columns or {}:
        problem = column_problem(name, stage)
        if problem is not None:
            raise UserError(f"columns.{name}: {problem}")
    for name in tags or {}:
        if name not in TAGS:
            raise UserError(f"tags.{name}: unknown tag; lmops reads {', '.join(TAGS)}")
    reader = RowReader(stage, dict(columns or {}), dict(tags or {}))
    resolved = resolve_inputs(sources, Path.cwd(), store)
    notes = _ServingNotes()
    rep = validate_shapes(_iter_rows(resolved.files), reader, max_errors=max_errors, look=notes)
    return notes.add_to(rep)


def _strings(value: Any) -> Iterator[str]:
    """Every string of a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


class _ServingNotes:
    """What ``validate --stage`` says of usable rows beside their problems, for a training
    set that is fine to train on: the chat rows that quote a chat template's control tokens
    (trained as plain text, as the gateway reads them: ``models/chat.Literals``), and the
    tools whose parameter schema the engine's grammar (llguidance) refuses, so that a model
    trained on them is refused requests listing them on an engine deployment (a 400,
    ``unsupported_schema``), though an upstream vLLM may serve it."""

    # warnings for this many distinct (tool, refusal), then one line counting the others
    LISTED = 20

    def __init__(self) -> None:
        self.control_rows = 0
        # (tool name, its parameters' JSON) -> the grammar's refusal: what the grammar is
        # made of (a description never reaches it), so rows that reword a tool compile once
        self._checked: dict[tuple[str, str], str | None] = {}
        # (tool name, refusal) -> [first place, its field, rows], for the first LISTED
        self._refused: dict[tuple[str, str], list[Any]] = {}
        self._unlisted: set[tuple[str, str]] = set()

    def __call__(self, where: str, shape: str, row: Mapping[str, Any]) -> None:
        from lmops.models.grammar import tool_grammar_error
        from lmops.models.tokens import GENERIC_CONTROL

        if shape != "pretrain" and any(  # a text row trains on its tokens as they are
            GENERIC_CONTROL.search(s) for s in _strings(row)
        ):
            self.control_rows += 1
        tools = row.get("tools")
        for i, tool in enumerate(tools if isinstance(tools, list) else []):
            try:
                fn = tool["function"]
                key = (
                    str(fn["name"]),
                    json.dumps(fn.get("parameters"), sort_keys=True, default=str),
                )
            except (KeyError, TypeError, AttributeError):  # not a function tool: the row's
                continue  # checks say so
            if key not in self._checked:
                try:
                    self._checked[key] = tool_grammar_error(tool)
                except (KeyError, TypeError, ValueError):  # parameters that are no schema
                    self._checked[key] = None
            refusal = self._checked[key]
            if refusal is None:
                continue
            listed = (key[0], refusal)
            if listed not in self._refused and len(self._refused) >= self.LISTED:
                self._unlisted.add(listed)
                continue
            seen = self._refused.setdefault(listed, [where, f"tools[{i}].function.parameters", 0])
            seen[2] += 1

    def add_to(self, report: ValidationReport) -> ValidationReport:
        """``report`` with the count and the warnings."""
        report.control_token_rows = self.control_rows
        report.warnings += self._warnings()
        return report

    def _warnings(self) -> list[str]:
        out = []
        for (name, refusal), (where, field, rows) in self._refused.items():
            more = f" (and {rows - 1:,} more row{'s' * (rows > 2)})" if rows > 1 else ""
            out.append(
                f"{where}{more}: {field} of tool {name!r}: the engine's tool-call grammar "
                f"(llguidance) refuses it: {refusal}; such rows train, but an engine "
                "deployment answers a request listing this tool with a 400 "
                "(unsupported_schema; an upstream vLLM may serve it)"
            )
        if self._unlisted:
            n = len(self._unlisted)
            out.append(
                f"and {n:,} more tool{'s' * (n > 1)} whose schema the engine's tool-call "
                f"grammar refuses (the first {self.LISTED} are listed above)"
            )
        return out


def train_tokenizer_asset(
    store: Store,
    sources: list[str],
    name: str,
    *,
    kind: str = "bpe",
    vocab_size: int = 8000,
    text_key: str = "text",
    min_frequency: int = 2,
) -> Any:
    """Train a tokenizer on the sources and register it as a ``tokenizer`` asset."""
    from lmops.data.tokenizer import train_tokenizer

    # a tokenizer learns from all the text it will see: SFT and chat rows whole
    resolved, docs = read_source(sources, store, text_key=text_key, whole_rows=True)
    config = {"sources": sources, "kind": kind, "vocab_size": vocab_size, "text_key": text_key}
    with store.runs.track("tokenizer", name=name, config=config) as run:
        local = _record_local(store, [resolved], run.id)
        out = Path(store.runs.dir(run.id)) / "tokenizer"
        info = train_tokenizer(
            (d.text for d in docs),
            out,
            kind=kind,  # type: ignore[arg-type]  # validated inside train_tokenizer
            vocab_size=vocab_size,
            min_frequency=min_frequency,
        )
        meta = info.to_dict()
        meta.pop("path", None)
        store.runs.log_metrics(run.id, {"vocab_size": info.vocab_size}, step=0)
        return store.assets.register(
            "tokenizer", name, out, metadata=meta, inputs=[*resolved.refs, *local], run_id=run.id
        )


def tokenize_dataset(
    store: Store,
    sources: list[str],
    tokenizer: str,
    output: str,
    *,
    text_key: str = "text",
    shard_tokens: int = 50_000_000,
) -> Any:
    """Tokenize the sources into packed token shards and register them as a dataset.

    Resumable: the shards are written in ``$LMOPS_HOME/work/tokenize/<output>``, one run at
    a time (its lock), and each finished shard is recorded there. A run that is killed is
    resumed by the next one with the same inputs (dataset versions, local files' content),
    tokenizer version and settings: finished shards are kept and their documents skipped,
    so the dataset is byte-identical to an uninterrupted run's. Anything else starts over.
    The folder is deleted once the dataset is registered."""
    from lmops import __version__
    from lmops.data._worklock import clear_own, remove_retired, retire, work_lock
    from lmops.data.shards import write_token_shards
    from lmops.store.refs import check_name

    check_name(output)  # it names the work folder too
    tok = store.assets.resolve(tokenizer)
    if tok.kind != "tokenizer":
        raise UserError(f"--tokenizer {tokenizer!r} is a {tok.kind}, not a tokenizer")
    hint = (
        "name the text field (--text-key; text_key: in a pipeline step); packed shards are "
        "for pretraining text, SFT rows are tokenized by lmops train"
    )
    resolved, docs = read_source(sources, store, text_key=text_key, field_hint=hint)
    config = {"sources": sources, "tokenizer": tok.ref, "shard_tokens": shard_tokens}
    work = store.settings.home / "work" / "tokenize" / output
    remove_retired(work.parent)  # what cleanups killed mid-delete left
    with work_lock(work, "lmops data tokenize"):
        with store.runs.track("tokenize", name=output, config=config) as run:
            local = _record_local(store, [resolved], run.id)
            key = json.dumps([resolved.refs, local, tok.ref, text_key, shard_tokens, __version__])
            if not (work / "fingerprint").is_file() or (work / "fingerprint").read_text() != key:
                clear_own(work)  # another run's work (other inputs or settings): start over
                (work / "fingerprint").write_text(key)
            out = work / "shards"
            info = write_token_shards(
                docs,
                store.assets.path(tok.ref),
                out,
                shard_tokens=shard_tokens,
                progress=work / "progress.json",
            )
            shard_meta = {k: v for k, v in info.to_dict().items() if k != "path"}
            # "format" says what kind of dataset this is; the file format version moves aside.
            meta = {
                **shard_meta,
                "shard_format": shard_meta.get("format"),
                "format": "token_shards",
            }
            store.runs.log_metrics(
                run.id, {"tokens": info.num_tokens, "docs": info.num_docs}, step=0
            )
            version = store.assets.register(
                "dataset",
                output,
                out,
                metadata=meta,
                inputs=[*resolved.refs, *local, (tok.ref, "tokenizer")],
                run_id=run.id,
            )
        retire(work)
    return version


# the fields that hold a format's text (an id, a source URL, a label beside them is not)
_FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "sft_alpaca": ("instruction", "input", "output"),
    "sft_chat": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
}


def _row_shape(
    r: ResolvedInputs, text_key: str, sample: int = 200
) -> tuple[str, tuple[str, ...] | None]:
    """A source's row format (``detect_format`` over its first rows, ``"text"`` for plain
    text files) and the fields to read it by, so that SFT and preference rows are mixed
    (counted and copied) whole: ``None`` where the rows have ``text_key`` or carry the
    fields an earlier lmops run marked (``_lmops.fields``: they are read by those); else
    the text fields of the format (an Alpaca row's instruction, input and output, not its
    id); for rows of no known format, every field that holds text or chat messages."""
    from lmops.core.formats import detect_format

    formats: dict[str, None] = {}
    fields: dict[str, None] = {}
    marked = False
    seen = 0
    for f in r.files:
        if f.fmt not in ("jsonl", "json", "parquet", "csv"):
            formats.setdefault("text" if f.fmt == "text" else f.fmt)
            continue
        for row in iter_rows(f.path, f.fmt):
            if isinstance(row, BadRow):
                continue  # reading the source names it, with its line
            ann = row.values.get(ANNOTATIONS_KEY)
            marked |= isinstance(ann, dict) and bool(ann.get("fields"))
            fmt = detect_format(row.values) or "unknown"
            formats.setdefault(fmt)
            for k, v in row.values.items():
                if k != ANNOTATIONS_KEY and (isinstance(v, str) or _is_messages(v)):
                    fields.setdefault(k)
            seen += 1
            if seen >= sample:
                break
        if seen >= sample:
            break
    fmt = "+".join(formats) or "empty"
    if marked or not fields or text_key in fields:
        return fmt, None
    if formats.keys() <= _FORMAT_FIELDS.keys():
        return fmt, tuple(dict.fromkeys(n for f in formats for n in _FORMAT_FIELDS[f]))
    return fmt, tuple(fields)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def mix_datasets(
    store: Store,
    ratios: dict[str, float],
    output: str,
    *,
    by: Literal["documents", "tokens"] = "documents",
    total: int | None = None,
    seed: int = 0,
    text_key: str = "text",
) -> tuple[Any, dict[str, Any]]:
    """Mix datasets (refs or paths → ratio) into one JSONL dataset; returns the version and
    the mix report (requested and realised ratios)."""
    from lmops.data.mix import mix

    resolved: dict[str, ResolvedInputs] = {}
    for src in ratios:
        resolved[src] = resolve_inputs([src], Path.cwd(), store)

    shapes = {src: _row_shape(r, text_key) for src, r in resolved.items()}

    def loader(r: ResolvedInputs, fields: tuple[str, ...] | None) -> Any:
        def load() -> Iterator[Document]:
            opts = ReadOptions(text_key=text_key, fields=fields)
            for i, f in enumerate(r.files):
                yield from read_shard(Shard(i, f), opts)

        return load

    config = {"ratios": ratios, "by": by, "total": total, "seed": seed}
    with store.runs.track("mix", name=output, config=config) as run:
        local = _record_local(store, list(resolved.values()), run.id)
        docs, report = mix(
            {k: loader(v, shapes[k][1]) for k, v in resolved.items()},
            ratios,
            by=by,
            total=total,
            seed=seed,
        )
        with tempfile.TemporaryDirectory(prefix="lmops-mix-") as tmp:
            target = Path(tmp) / output
            with JsonlWriter(target / "part-00000.jsonl", text_key=text_key) as w:
                for d in docs:
                    w.write(d)
            rep = report.to_dict()
            formats = {src: fmt for src, (fmt, _) in shapes.items()}
            if len(set(formats.values())) > 1:
                listed = ", ".join(f"{src}: {fmt}" for src, fmt in formats.items())
                rep["warnings"] = [
                    f"the sources hold different row formats ({listed}); each row is kept "
                    "as it is, so the mixture holds them all (lmops data validate shows them)"
                ]
            (target / "_report").mkdir()
            (target / "_report" / "mix.json").write_text(
                json.dumps(rep, indent=1, ensure_ascii=False)
            )
            refs = [ref for r in resolved.values() for ref in r.refs]
            v = store.assets.register(
                "dataset",
                output,
                target,
                metadata={"format": "jsonl", "mix": rep},
                inputs=[*refs, *local],
                run_id=run.id,
            )
        return v, rep
