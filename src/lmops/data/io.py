"""Reading and writing documents: JSONL (plain, .gz, .zst), Parquet, plain text, and
Hugging Face ``datasets`` saved to disk.

Every document keeps an id through every step: the row's ``id_key`` field when present,
else ``<file name>:<line>`` (or ``:<row>`` for Parquet), which is stable across runs and
shardings. Fields other than the text and the id are kept in ``Document.metadata`` and
written back unchanged.

Bad input raises a one-line ``UserError`` naming file, line and field; with
``on_error="skip"`` the row is counted and sent to an :class:`ErrorSink` instead.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from lmops.core.errors import UserError
from lmops.data.document import Document

__all__ = [
    "ErrorSink",
    "InputFile",
    "JsonlWriter",
    "Shard",
    "detect_format",
    "plan_shards",
    "read_shard",
]

Format = Literal["jsonl", "parquet", "text", "hf"]
TextUnit = Literal["file", "paragraph", "line"]
# Plain JSONL files bigger than this are split into byte ranges, one shard each.
DEFAULT_SHARD_BYTES = 32 << 20
CHUNK = 1 << 20


def detect_format(path: Path) -> Format:
    name = path.name.lower()
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return "hf"
        raise UserError(
            f"{path}: a directory but not a Hugging Face dataset saved with save_to_disk"
        )
    for suffix in (".jsonl", ".json", ".ndjson"):
        if name.endswith((suffix, suffix + ".gz", suffix + ".zst")):
            return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".txt", ".txt.gz", ".txt.zst", ".md")):
        return "text"
    raise UserError(
        f"{path}: unknown file type; use .jsonl/.jsonl.gz/.jsonl.zst, .parquet, .txt or a "
        "saved Hugging Face dataset directory"
    )


def _open_text(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(
            open(path, "rb"),  # noqa: SIM115
            closefd=True,
            read_across_frames=True,
        )
        return io.BufferedReader(raw, CHUNK)  # adds line iteration
    return open(path, "rb")


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
    """Collects rows that could not be read when ``on_error="skip"``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.count = 0
        self.by_reason: dict[str, int] = {}
        self._fh: IO[str] | None = None

    def add(self, where: str, reason: str, raw: str | None = None) -> None:
        self.count += 1
        key = reason.split(":", 1)[0]
        self.by_reason[key] = self.by_reason.get(key, 0) + 1
        if self.path is not None:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
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
    # output field name -> input field name, applied before text/id extraction
    columns: dict[str, str] = field(default_factory=dict)
    text_unit: TextUnit = "file"
    on_error: Literal["raise", "skip"] = "raise"
    # Intermediate files of a run may legitimately be empty (every document dropped).
    allow_empty: bool = False


def _fail(
    opts: ReadOptions, sink: ErrorSink | None, where: str, reason: str, raw: str | None
) -> None:
    if opts.on_error == "skip" and sink is not None:
        sink.add(where, reason, raw)
        return
    raise UserError(f"{where}: {reason}; fix the input or set on_error: skip")


def _row_to_doc(row: Any, opts: ReadOptions, where: str, default_id: str) -> Document | str:
    """A Document, or the reason the row is unusable."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    for new, old in opts.columns.items():
        if old in row:
            row[new] = row.pop(old)
    if opts.text_key not in row:
        fields = ", ".join(list(row)[:8]) or "none"
        return f"field {opts.text_key!r} missing (fields: {fields}); set text_key"
    text = row.pop(opts.text_key)
    if not isinstance(text, str):
        return f"field {opts.text_key!r} is {type(text).__name__}, expected a string"
    doc_id = row.pop(opts.id_key, None)
    return Document(text=text, id=str(doc_id) if doc_id is not None else default_id, metadata=row)


def _read_jsonl(shard: Shard, opts: ReadOptions, sink: ErrorSink | None) -> Iterator[Document]:
    f = shard.file
    with _open_text(f.path) as fh:
        if shard.start:
            fh.seek(shard.start)
        pos = shard.start
        lineno = shard.first_line - 1
        seen_any = False
        for raw in fh:
            if shard.end is not None and pos >= shard.end:
                break
            pos += len(raw)
            lineno += 1
            seen_any = True
            where = f"{f.path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _fail(
                    opts,
                    sink,
                    where,
                    f"not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8",
                    None,
                )
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                _fail(opts, sink, where, f"malformed JSON ({e.msg} at column {e.colno})", line)
                continue
            doc = _row_to_doc(row, opts, where, f"{f.name}:{lineno}")
            if isinstance(doc, str):
                _fail(opts, sink, where, doc, line)
                continue
            yield doc
        if not seen_any and shard.start == 0 and not opts.allow_empty:
            _fail(opts, sink, str(f.path), "empty file (no lines)", None)


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


def _read_parquet(shard: Shard, opts: ReadOptions, sink: ErrorSink | None) -> Iterator[Document]:
    import pyarrow.parquet as pq

    f = shard.file
    try:
        pf = pq.ParquetFile(f.path)
    except Exception as e:
        raise UserError(f"{f.path}: not a readable Parquet file ({e})") from None
    row_no = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            row_no += 1
            doc = _row_to_doc(row, opts, f"{f.path}:row {row_no}", f"{f.name}:{row_no}")
            if isinstance(doc, str):
                _fail(
                    opts, sink, f"{f.path}:row {row_no}", doc, json.dumps(row, default=str)[:2000]
                )
                continue
            yield doc


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
        for row in split:
            row_no += 1
            doc = _row_to_doc(
                dict(row), opts, f"{shard.file.path}:row {row_no}", f"{shard.file.name}:{row_no}"
            )
            if isinstance(doc, str):
                _fail(opts, sink, f"{shard.file.path}:row {row_no}", doc, None)
                continue
            yield doc


_READERS = {"jsonl": _read_jsonl, "text": _read_text, "parquet": _read_parquet, "hf": _read_hf}


def read_shard(
    shard: Shard, opts: ReadOptions | None = None, sink: ErrorSink | None = None
) -> Iterator[Document]:
    """Stream the documents of one shard (memory stays bounded for JSONL/Parquet)."""
    return _READERS[shard.file.fmt](shard, opts or ReadOptions(), sink)


def read_documents(path: Path, opts: ReadOptions | None = None) -> Iterator[Document]:
    """Every document of one file (convenience for tests and small inputs)."""
    f = InputFile(path, path.name, detect_format(path))
    return read_shard(Shard(0, f), opts)


def doc_to_row(doc: Document, text_key: str = "text", id_key: str = "id") -> dict[str, Any]:
    row: dict[str, Any] = {id_key: doc.id, text_key: doc.text}
    row.update(doc.metadata)
    return row


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
        row = doc_to_row(doc, self.text_key, self.id_key)
        self._fh.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
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
