"""Reading and writing documents: row files (JSON Lines, JSON arrays, CSV, Parquet; read by
the one row reader, :mod:`lmops.core.rows`), plain text, and Hugging Face ``datasets``
saved to disk.

Every document keeps an id through every step: the row's ``id_key`` field when present,
else ``<file name>:<line>`` (``<file name>[<element>]`` in a JSON array, ``:<row>`` for
Parquet), which is stable across runs and shardings.

The user's fields are never touched. A document keeps the row it came from
(:class:`~lmops.data.document.Record`), and the writer puts every field back as it was
read (for JSON input, each value's JSON text byte for byte: ``1.10`` stays ``1.10``), in
its place, with only the processed text fields replaced. lmops's own annotations (scores,
PII counts, ``duplicate_of``...) go under one reserved key, ``_lmops``, added at the end
of the row; an input row's ``_lmops`` object (an earlier lmops run's output) is read back
as annotations, and any other ``_lmops`` value is a bad row. ``_lmops.id`` holds the id
when the row's own id field does not (no id field, or a mapped one), and
``_lmops.fields`` names the processed fields when they are not ``text_key``, so the next
stage reads the row the same way.

Bad input raises a one-line ``UserError`` naming file, line and field; with
``on_error="skip"`` the row is counted and sent to an :class:`ErrorSink` instead.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, cast

from lmops.core.errors import UserError
from lmops.core.rows import (
    ANNOTATIONS_KEY,
    BadRow,
    Row,
    RowFormat,
    dumps,
    iter_rows,
    open_bytes,
    row_format,
)
from lmops.data.document import Document, Record

__all__ = [
    "ErrorSink",
    "InputFile",
    "JsonlWriter",
    "ReadOptions",
    "Shard",
    "detect_format",
    "encode_row",
    "plan_shards",
    "read_documents",
    "read_shard",
]

Format = Literal["jsonl", "json", "csv", "parquet", "text", "hf"]
TextUnit = Literal["file", "paragraph", "line"]
# Plain JSONL files bigger than this are split into byte ranges, one shard each.
DEFAULT_SHARD_BYTES = 32 << 20
_open_text = open_bytes  # the name other modules import


def detect_format(path: Path) -> Format:
    name = path.name.lower()
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return "hf"
        raise UserError(
            f"{path}: a directory but not a Hugging Face dataset saved with save_to_disk"
        )
    fmt = row_format(path)
    if fmt is not None:
        return fmt
    if name.endswith((".txt", ".txt.gz", ".txt.zst", ".md")):
        return "text"
    raise UserError(
        f"{path}: unknown file type; use .jsonl/.json (JSON Lines or a JSON array), .csv, "
        ".parquet (JSON and CSV may end in .gz or .zst), .txt or a saved Hugging Face dataset "
        "directory"
    )


@dataclass(frozen=True, slots=True)
class InputFile:
    path: Path
    name: str  # used in default ids and messages; relative to the input root when possible
    fmt: Format
    ref: str | None = None  # the dataset version it belongs to, when read from the store


@dataclass(frozen=True, slots=True)
class Shard:
    """A unit of work: a whole file, or a byte range of a plain JSONL file."""

    index: int
    file: InputFile
    start: int = 0  # byte offset (plain JSONL only)
    end: int | None = None
    first_line: int = 1  # line number of the first line in [start, end)

    @property
    def label(self) -> str:
        if self.end is None and self.start == 0:
            return self.file.name
        return f"{self.file.name}[{self.start}:{self.end}]"


def plan_shards(files: list[InputFile], shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Shard]:
    """Split inputs into shards. Only plain (uncompressed) JSONL can be split by bytes: the
    split points are moved to line starts and their line numbers counted in one pass."""
    shards: list[Shard] = []
    for f in files:
        size = f.path.stat().st_size if f.path.is_file() else 0
        plain_jsonl = f.fmt == "jsonl" and not f.path.name.lower().endswith((".gz", ".zst"))
        if not plain_jsonl or size <= shard_bytes:
            shards.append(Shard(len(shards), f))
            continue
        with open(f.path, "rb") as fh:
            start, line = 0, 1
            while start < size:
                fh.seek(min(start + shard_bytes, size))
                if fh.tell() < size:
                    fh.readline()  # move the cut to the next line start
                end = fh.tell()
                shards.append(Shard(len(shards), f, start, end, line))
                fh.seek(start)
                remaining = end - start
                while remaining > 0:  # count newlines in [start, end) for the next shard
                    chunk = fh.read(min(1 << 20, remaining))
                    line += chunk.count(b"\n")
                    remaining -= len(chunk)
                start = end
    return shards


class ErrorSink:
    """Collects rows that could not be read when ``on_error="skip"``. The file at ``path``
    is this sink's alone: what an earlier, interrupted attempt at the same shard wrote
    there is removed, so a resumed run lists each bad row once."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        if path is not None:
            path.unlink(missing_ok=True)
        self.count = 0
        self.by_reason: dict[str, int] = {}
        self._fh: IO[str] | None = None

    def add(self, where: str, reason: str, raw: str | None = None) -> None:
        self.count += 1
        # counted by kind: the reason without its particulars ("malformed JSON", not one
        # key per column) or the advice after it
        key = re.split(r" \(|; ", reason, maxsplit=1)[0]
        self.by_reason[key] = self.by_reason.get(key, 0) + 1
        if self.path is not None:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
            rec = {"where": where, "reason": reason, "raw": (raw or "")[:2000]}
            self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class ReadOptions:
    text_key: str = "text"
    id_key: str = "id"
    # {text_key or id_key: the input field holding it}; the output keeps the input's names
    columns: dict[str, str] = field(default_factory=dict)
    # The fields to process; None: the row's ``_lmops.fields`` if it has them, else text_key.
    fields: tuple[str, ...] | None = None
    text_unit: TextUnit = "file"
    on_error: Literal["raise", "skip"] = "raise"
    # Intermediate files of a run may legitimately be empty (every document dropped). An
    # empty file of a dataset asset (``InputFile.ref``) is always read as no rows.
    allow_empty: bool = False
    # Applied to a bad row's text before it is kept in the error file (the recipe's masking).
    redact: Callable[[str], str] | None = None
    # how the caller's user names another text field (a recipe's keys, a command's option)
    field_hint: str = "set text_key or fields"


def _fail(
    opts: ReadOptions, sink: ErrorSink | None, where: str, reason: str, raw: str | None
) -> None:
    if opts.on_error == "skip" and sink is not None:
        if raw is not None and opts.redact is not None:
            raw = opts.redact(raw)
        sink.add(where, reason, raw)
        return
    raise UserError(f"{where}: {reason}; fix the input or set on_error: skip")


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _parts(
    values: dict[str, Any], fields: tuple[str, ...]
) -> tuple[dict[str, str], dict[str, tuple[str, int | None]]] | str:
    """The parts of several fields: each string field, each message's string content."""
    parts: dict[str, str] = {}
    paths: dict[str, tuple[str, int | None]] = {}
    for name in fields:
        value = values.get(name)
        if value is None:
            continue  # absent or null (an alpaca row without input): nothing to process
        if isinstance(value, str):
            parts[name] = value
            paths[name] = (name, None)
        elif isinstance(value, list):
            for i, msg in enumerate(value):
                if isinstance(msg, dict) and isinstance(msg.get("content"), str):
                    part = f"{name}[{i}].content"
                    parts[part] = msg["content"]
                    paths[part] = (name, i)
        else:
            return f"field {name!r} is {_type(value)}, expected a string or a list of messages"
    if not paths:
        present = ", ".join(list(values)[:8]) or "none"
        want = ", ".join(fields)
        return f"none of the fields {want} holds text (fields: {present}); set fields"
    return parts, paths


# Annotations operators add to (so an input's must have the shape lmops writes).
_OBJECT_ANNOTATIONS = ("scores", "pii", "intra_doc_dedup", "c4_span_dedup")


def _foreign_annotation(ann: dict[str, Any]) -> str | None:
    """The first annotation an operator could not add to, or None."""
    for key in _OBJECT_ANNOTATIONS:
        if key in ann and not isinstance(ann[key], dict):
            return key
    for op, scores in ann.get("scores", {}).items():
        if not isinstance(scores, dict):
            return f"scores.{op}"
    return None


def _row_to_doc(row: Row, opts: ReadOptions, default_id: str) -> Document | str:
    """A Document, or the reason the row is unusable."""
    values = row.values
    metadata: dict[str, Any] = {}
    if ANNOTATIONS_KEY in values:
        ann = values.pop(ANNOTATIONS_KEY)
        if row.raw is not None:
            row.raw.pop(ANNOTATIONS_KEY, None)
        if not isinstance(ann, dict):
            return (
                f"field {ANNOTATIONS_KEY!r} is reserved for lmops's annotations (an object "
                f"written by an earlier run), got {_type(ann)}; rename the field"
            )
        metadata = ann
        wrong = _foreign_annotation(metadata)
        if wrong:
            return (
                f"field '{ANNOTATIONS_KEY}.{wrong}' is not what lmops writes there (an object); "
                f"remove it, or rename the field {ANNOTATIONS_KEY!r} if it is yours"
            )
    marked = metadata.pop("fields", None)
    ann_id = metadata.pop("id", None)
    text_field = opts.columns.get(opts.text_key, opts.text_key)
    id_field = opts.columns.get(opts.id_key, opts.id_key)
    fields = opts.fields
    if fields is None:
        ok = isinstance(marked, list) and marked and all(isinstance(f, str) for f in marked)
        fields = tuple(marked) if ok else (text_field,)
    if ann_id is not None:
        doc_id = str(ann_id)
    elif values.get(id_field) is not None:
        doc_id = str(values[id_field])
    else:
        doc_id = default_id
    rec = Record(values, row.raw, fields, id_field)
    if len(fields) == 1:
        name = fields[0]
        if name not in values:
            present = ", ".join(list(values)[:8]) or "none"
            return f"field {name!r} missing (fields: {present}); {opts.field_hint}"
        text = values[name]
        if isinstance(text, str):
            rec.text_field = name
            return Document(text, doc_id, metadata, rec)
        if not isinstance(text, list):
            return f"field {name!r} is {_type(text)}, expected a string"
    found = _parts(values, fields)
    if isinstance(found, str):
        return found
    parts, rec.paths = found
    doc = Document("", doc_id, metadata, rec, parts)
    doc.text = doc.joined()
    return doc


def _read_rows(shard: Shard, opts: ReadOptions, sink: ErrorSink | None) -> Iterator[Document]:
    f = shard.file
    fmt = cast(RowFormat, f.fmt)
    rows = iter_rows(f.path, fmt, start=shard.start, end=shard.end, first_line=shard.first_line)
    seen = 0
    for row in rows:
        seen += 1
        if isinstance(row, BadRow):
            _fail(opts, sink, row.where, row.reason, row.raw)
            continue
        if row.element is not None:
            default_id = f"{f.name}[{row.element}]"
        else:
            default_id = f"{f.name}:{row.line if row.line is not None else row.number}"
        doc = _row_to_doc(row, opts, default_id)
        if isinstance(doc, str):
            raw = row.text
            if raw is None:
                members = row.raw.values() if row.raw else ()
                raw = "{" + ", ".join(f"{k}: {v}" for k, v in members) + "}" if row.raw else None
            _fail(opts, sink, row.where, doc, raw or dumps(row.values)[:2000])
            continue
        yield doc
    # An empty file a user gave is a mistake worth naming; an empty part of a dataset asset
    # is lmops's own output (earlier versions wrote one for a shard left without rows), not
    # theirs to fix, so it is read as what it is: no rows.
    from_user = f.ref is None and not opts.allow_empty
    if not seen and shard.start == 0 and from_user and f.fmt != "parquet":
        _fail(opts, sink, str(f.path), "empty file (no rows)", None)


def _read_text(shard: Shard, opts: ReadOptions, sink: ErrorSink | None) -> Iterator[Document]:
    f = shard.file
    with _open_text(f.path) as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        _fail(opts, sink, f"{f.path}:{line}", "not valid UTF-8; re-encode the file as UTF-8", None)
        return
    if not text.strip():
        _fail(opts, sink, str(f.path), "empty file", None)
        return
    if opts.text_unit == "file":
        yield Document(text=text, id=f.name, metadata={})
        return
    line = 1
    sep = "\n\n" if opts.text_unit == "paragraph" else "\n"
    for part in text.split(sep):
        if part.strip():
            yield Document(text=part, id=f"{f.name}:{line}", metadata={})
        line += part.count("\n") + sep.count("\n")


def _read_hf(shard: Shard, opts: ReadOptions, sink: ErrorSink | None) -> Iterator[Document]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise UserError(
            f"{shard.file.path}: reading a saved HF dataset needs `pip install datasets`"
        ) from None
    ds = load_from_disk(str(shard.file.path))
    # a DatasetDict: read every split in name order
    splits = [ds[k] for k in sorted(ds.keys())] if hasattr(ds, "keys") else [ds]
    row_no = 0
    for split in splits:
        for values in split:
            row_no += 1
            where = f"{shard.file.path}:row {row_no}"
            row = Row(dict(values), where, row_no, None)
            doc = _row_to_doc(row, opts, f"{shard.file.name}:{row_no}")
            if isinstance(doc, str):
                _fail(opts, sink, where, doc, None)
                continue
            yield doc


_READERS = {
    "jsonl": _read_rows,
    "json": _read_rows,
    "csv": _read_rows,
    "parquet": _read_rows,
    "text": _read_text,
    "hf": _read_hf,
}


def read_shard(
    shard: Shard, opts: ReadOptions | None = None, sink: ErrorSink | None = None
) -> Iterator[Document]:
    """Stream the documents of one shard (memory stays bounded for JSONL/Parquet/CSV; a JSON
    array is read whole)."""
    return _READERS[shard.file.fmt](shard, opts or ReadOptions(), sink)


def read_documents(path: Path, opts: ReadOptions | None = None) -> Iterator[Document]:
    """Every document of one file (convenience for tests and small inputs)."""
    f = InputFile(path, path.name, detect_format(path))
    return read_shard(Shard(0, f), opts)


def _set_part(value: Any, index: int | None, text: str) -> Any:
    if index is None:
        return text
    return [dict(m, content=text) if i == index else m for i, m in enumerate(value)]


_LINE_BREAK = re.compile(r"[\r\n]+[ \t]*")


def _one_line(text: str) -> str:
    """A member's JSON text on one line. JSON strings cannot hold a raw line break, so every
    one is whitespace between tokens (a pretty-printed array's indentation) and goes, with
    the indentation after it."""
    return _LINE_BREAK.sub("", text) if "\n" in text or "\r" in text else text


def encode_row(doc: Document, text_key: str = "text", id_key: str = "id") -> str:
    """The JSON line for ``doc``: the user's row with its processed fields replaced (every
    other member as read, on one line), then ``"_lmops": {...}`` when there are annotations.
    A document not read from a row (plain text) is ``{id_key: id, text_key: text}``."""
    rec = doc.record
    ann: dict[str, Any] = {}
    if rec is None:
        members = [f"{dumps(id_key)}: {dumps(doc.id)}", f"{dumps(text_key)}: {dumps(doc.text)}"]
    else:
        changed: dict[str, Any] = {}
        if doc.parts is None:
            assert rec.text_field is not None
            if doc.text != rec.values[rec.text_field]:
                changed[rec.text_field] = doc.text
        else:
            for part, text in doc.parts.items():
                if text != rec.original(part):
                    name, index = rec.paths[part]
                    changed[name] = _set_part(changed.get(name, rec.values[name]), index, text)
        raw = rec.raw or {}
        members = []
        for key, value in rec.values.items():
            if key in changed:
                members.append(
                    f"{raw[key][0] if key in raw else dumps(key)}: {dumps(changed[key])}"
                )
            elif key in raw:
                members.append(f"{raw[key][0]}: {_one_line(raw[key][1])}")
            else:
                members.append(f"{dumps(key)}: {dumps(value)}")
        own_id = rec.values.get(id_key) if rec.id_field == id_key else None
        if own_id is None or str(own_id) != doc.id:
            ann["id"] = doc.id
        if rec.fields != (text_key,):
            ann["fields"] = list(rec.fields)
    ann.update(doc.metadata)
    if ann:
        members.append(f"{dumps(ANNOTATIONS_KEY)}: {dumps(ann)}")
    return "{" + ", ".join(members) + "}"


class JsonlWriter:
    """Writes rows to ``path`` through a temp file renamed into place on ``close``:
    readers never see a half-written file, and a killed writer leaves only ``.tmp``."""

    def __init__(self, path: Path, text_key: str = "text", id_key: str = "id") -> None:
        self.path = path
        self.text_key, self.id_key = text_key, id_key
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(path.name + ".tmp")
        self._fh: IO[str] = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115
        self.count = 0

    def write(self, doc: Document) -> None:
        self._fh.write(encode_row(doc, self.text_key, self.id_key) + "\n")
        self.count += 1

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
