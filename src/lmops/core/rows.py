"""The one row reader: every command that reads records (``lmops data run``, ``data validate``,
``train``, ``eval``) reads them here, so every format works everywhere and every error names
the same place.

Formats, by file name (each may also end in ``.gz`` or ``.zst``, except Parquet)::

    .jsonl .ndjson .json   JSON Lines, or a JSON array of objects when the file's first
                           non-blank character is "[" (the format of the Alpaca releases)
    .parquet               Parquet
    .csv                   CSV with a header line; values stay strings ("00123" stays "00123")

Where a row is, in every message: ``file:line`` for JSON Lines and CSV (the line a record
starts on), ``file:line (element i)`` for a JSON array (``i`` counts from 0, as
``jq '.[i]'``), ``file:row n`` for Parquet, which has no lines. A row index is never
presented as a line.

A row that cannot be read as an object (malformed JSON, invalid UTF-8, a JSON value that is
not an object, a CSV record with the wrong number of fields) is a :class:`BadRow`; callers
raise it as a :class:`~lmops.core.errors.UserError` or skip and count it. Damage that leaves
the rest of a file unreadable (malformed JSON inside an array, a broken Parquet file) always
raises.

JSON rows remember each member's JSON text as written (:attr:`Row.raw`), so a writer can put
a user's fields back byte-for-byte. The key ``_lmops`` is reserved for lmops's annotations of
a row (:data:`ANNOTATIONS_KEY`); :func:`read_rows` leaves it out unless asked.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from lmops.core.errors import UserError
from lmops.core.jsonl import (
    ArrayElementError,
    JSONDecodeError,
    RawMembers,
    json_array_elements,
    line_col,
    parse_object,
)

__all__ = [
    "ANNOTATIONS_KEY",
    "ROW_SUFFIXES",
    "BadRow",
    "Row",
    "RowFormat",
    "dumps",
    "iter_rows",
    "json_default",
    "open_bytes",
    "read_rows",
    "row_files",
    "row_format",
]

RowFormat = Literal["jsonl", "json", "parquet", "csv"]
ANNOTATIONS_KEY = "_lmops"
_COMPRESSED = ("", ".gz", ".zst")
_JSON_SUFFIXES = tuple(s + c for s in (".jsonl", ".ndjson", ".json") for c in _COMPRESSED)
_CSV_SUFFIXES = tuple(".csv" + c for c in _COMPRESSED)
ROW_SUFFIXES: tuple[str, ...] = (*_JSON_SUFFIXES, *_CSV_SUFFIXES, ".parquet")
CHUNK = 1 << 20

# CSV fields may hold whole documents; the csv module refuses fields over 128 KiB by default.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(slots=True)
class Row:
    """One record as read: its values, where it is, and (JSON sources) each member's text."""

    values: dict[str, Any]
    where: str  # "file:12", "file:40 (element 7)", "file:row 3"
    number: int  # 1-based position in its file, bad rows included
    line: int | None  # the line it starts on; None for Parquet
    raw: RawMembers | None = None  # JSON only: key -> (key's JSON text, value's JSON text)
    element: int | None = None  # JSON arrays: the element's index, from 0
    text: str | None = None  # JSON Lines: the line as read (for an error file)


@dataclass(slots=True)
class BadRow:
    """A record that could not be read as an object."""

    where: str
    reason: str  # "malformed JSON (Expecting ',' delimiter at column 9)"
    code: str  # malformed | encoding | not_object | fields
    number: int
    line: int | None
    raw: str | None = None  # the record's text, for an error file


def open_bytes(path: Path) -> IO[bytes]:
    """``path`` opened for reading bytes, decompressing ``.gz`` and ``.zst``."""
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


def _first_char(path: Path) -> bytes:
    with open_bytes(path) as fh:
        head = fh.read(4096)
        while head:
            stripped = head.lstrip(b" \t\r\n").removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
            if stripped:
                return stripped[:1]
            head = fh.read(4096)
    return b""


def row_format(path: Path) -> RowFormat | None:
    """The format of a row file by its name (and, for JSON, its first character); ``None``
    for a name that is not a row file."""
    name = path.name.lower()
    if name.endswith(_JSON_SUFFIXES):
        return "json" if path.is_file() and _first_char(path) == b"[" else "jsonl"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    return None


def row_files(paths: Iterable[Path]) -> list[Path]:
    """Files and folders expanded into row files, in order; inside a folder, entries whose
    name starts with ``_`` or ``.`` (reports, error files, work folders) are skipped."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.name.lower().endswith(ROW_SUFFIXES)
                and not any(part.startswith(("_", ".")) for part in f.relative_to(p).parts)
            )
        else:
            files.append(p)
    return files


def _malformed(e: JSONDecodeError, col: int | None = None) -> str:
    # (json ends some messages with " at": "Invalid control character at")
    return f"malformed JSON ({e.msg.removesuffix(' at')} at column {col or e.colno})"


def _jsonl(path: Path, start: int, end: int | None, first_line: int) -> Iterator[Row | BadRow]:
    with open_bytes(path) as fh:
        if start:
            fh.seek(start)
        pos, lineno, number = start, first_line - 1, 0
        for data in fh:
            if end is not None and pos >= end:
                break
            pos += len(data)
            lineno += 1
            where = f"{path}:{lineno}"
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as e:
                number += 1
                reason = f"not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8"
                yield BadRow(where, reason, "encoding", number, lineno)
                continue
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            number += 1
            try:
                # without its line break: a line cut short is named at its own end
                # ("column 32"), not at "column 1" of the next line the break begins
                values, raw = parse_object(line.rstrip("\r\n"))
            except JSONDecodeError as e:
                yield BadRow(where, _malformed(e), "malformed", number, lineno, line)
                continue
            except ValueError as e:
                yield BadRow(where, str(e), "not_object", number, lineno, line)
                continue
            yield Row(values, where, number, lineno, raw, text=line)


def _json_array(path: Path) -> Iterator[Row | BadRow]:
    with open_bytes(path) as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8"
        ) from None
    try:
        for index, line, values, raw in json_array_elements(text):
            where = f"{path}:{line} (element {index})"
            if values is None:
                assert isinstance(raw, str)
                yield BadRow(where, raw, "not_object", index + 1, line)
            else:
                assert not isinstance(raw, str)
                yield Row(values, where, index + 1, line, raw, index)
    except JSONDecodeError as e:
        line, col = line_col(e.doc, e.pos)
        inside = f" (element {e.element})" if isinstance(e, ArrayElementError) else ""
        raise UserError(
            f"{path}:{line}{inside}: {_malformed(e, col)}; the rest of the array cannot be "
            "read, fix the file"
        ) from None


def _csv(path: Path) -> Iterator[Row | BadRow]:
    with io.TextIOWrapper(open_bytes(path), encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header: list[str] | None = None
        number, prev = 0, 0
        try:
            for record in reader:
                start, prev = prev + 1, reader.line_num
                if not record:
                    continue  # a blank line
                if header is None:
                    header = record
                    dupes = sorted({h for h in header if header.count(h) > 1})
                    if dupes:
                        raise UserError(
                            f"{path}:{start}: column {dupes[0]!r} appears twice in the header; "
                            "rename one"
                        )
                    continue
                number += 1
                where = f"{path}:{start}"
                if len(record) != len(header):
                    n = len(record)
                    reason = (
                        f"has {n} field{'s' if n != 1 else ''}, the header has {len(header)}; "
                        "quote values that contain commas"
                    )
                    yield BadRow(where, reason, "fields", number, start, ",".join(record))
                    continue
                yield Row(dict(zip(header, record, strict=True)), where, number, start)
        except UnicodeDecodeError as e:
            raise UserError(
                f"{path}:{prev + 1}: not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8"
            ) from None
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def _parquet(path: Path) -> Iterator[Row | BadRow]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None
    number = 0
    for batch in pf.iter_batches(batch_size=4096):
        for values in batch.to_pylist():
            number += 1
            yield Row(values, f"{path}:row {number}", number, None)


def iter_rows(
    path: Path,
    fmt: RowFormat | None = None,
    *,
    start: int = 0,
    end: int | None = None,
    first_line: int = 1,
) -> Iterator[Row | BadRow]:
    """Every record of one file, in order, as a :class:`Row` or a :class:`BadRow`.

    ``start``/``end``/``first_line`` read a byte range of a plain JSON Lines file (a shard);
    ``start`` must be a line start and ``first_line`` its line number. JSON (``fmt`` "json"
    or "jsonl") is read as an array or as lines by its first character, whatever the name.
    """
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if fmt in ("json", "jsonl") and not start and end is None:
        fmt = "json" if _first_char(path) == b"[" else "jsonl"
    fmt = fmt or row_format(path)
    if fmt is None:
        raise UserError(
            f"{path}: unknown file type; use .jsonl, .json (JSON Lines or an array), .csv or "
            ".parquet (JSON and CSV may end in .gz or .zst)"
        )
    if fmt == "jsonl":
        return _jsonl(path, start, end, first_line)
    if start or end is not None:
        raise ValueError(f"only JSON Lines can be read by byte range, not {fmt}")
    return {"json": _json_array, "csv": _csv, "parquet": _parquet}[fmt](path)


def read_rows(
    paths: Iterable[Path],
    fmt: RowFormat | None = None,
    *,
    on_error: Literal["raise", "skip"] = "raise",
    skipped: Counter[str] | None = None,
    keep_annotations: bool = False,
) -> Iterator[Row]:
    """Every readable row of the files (folders are expanded with :func:`row_files`); ``fmt``
    reads every file as that format instead of going by its name.

    A :class:`BadRow` raises ``UserError("<where>: <reason>")``, or with ``on_error="skip"``
    is counted in ``skipped`` by its code. The ``_lmops`` annotations are removed from the
    values unless ``keep_annotations``: what a training or eval stage reads is the user's
    record, never lmops's scores.
    """
    files = row_files(paths)
    for f in files:
        for row in iter_rows(f, fmt):
            if isinstance(row, BadRow):
                if on_error == "raise":
                    raise UserError(f"{row.where}: {row.reason}; fix the row or skip bad rows")
                if skipped is not None:
                    skipped[row.code] += 1
                continue
            if not keep_annotations and ANNOTATIONS_KEY in row.values:
                del row.values[ANNOTATIONS_KEY]
                if row.raw is not None:
                    row.raw.pop(ANNOTATIONS_KEY, None)
            yield row


def json_default(value: Any) -> Any:
    """``default=`` for :func:`json.dumps` of values read from Parquet: dates and times as
    ISO 8601, decimals as numbers, bytes as UTF-8 text (base64 when not UTF-8)."""
    import base64
    import datetime as dt
    import decimal

    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> str:
    """JSON text of a value as lmops writes it: UTF-8 (no ``\\u`` escapes), Parquet types
    handled by :func:`json_default`."""
    return json.dumps(value, ensure_ascii=False, default=json_default)
