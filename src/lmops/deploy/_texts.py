"""Text for calibration and perplexity: a dataset asset or a local file as one token stream.

A ``.txt`` file (or a folder of them) is read as it is; row files (JSON Lines, JSON, CSV,
Parquet, read by :mod:`lmops.core.rows`) give each row's ``text``, or, for instruction and
chat rows, the conversation through the model's chat template, so calibration sees what
the model will be asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError

__all__ = ["texts_of", "token_stream"]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserError(f"{path}: no files to read text from")
    return files


def texts_of(path: Path, tokenizer: Any) -> Iterator[str]:
    """Each document's text in ``path`` (a file or a folder), in order."""
    from lmops.core.formats import to_chat
    from lmops.core.rows import BadRow, iter_rows, row_format

    for f in _files(path):
        if f.suffix.lower() in (".txt", ".md"):
            yield f.read_text(encoding="utf-8", errors="replace")
            continue
        if row_format(f) is None:
            raise UserError(f"{f}: not text (.txt) or rows (.jsonl, .json, .csv, .parquet)")
        for row in iter_rows(f):
            if isinstance(row, BadRow):
                raise UserError(f"{row.where}: {row.reason}")
            data = row.values
            if isinstance(data.get("text"), str):
                yield data["text"]
                continue
            try:
                messages = to_chat(data)
            except UserError as e:
                raise UserError(
                    f"{row.where}: no 'text' and not an instruction or chat row ({e})"
                ) from None
            yield str(tokenizer.apply_chat_template(messages, tokenize=False))


def token_stream(path: Path, tokenizer: Any, max_tokens: int) -> list[int]:
    """Up to ``max_tokens`` token ids of the documents in ``path``, each document followed
    by the end-of-sequence token (so documents do not run into each other)."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts_of(path, tokenizer):
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(int(eos))
        if len(ids) >= max_tokens:
            break
    if len(ids) < 2:
        raise UserError(f"{path}: no text to read (need at least 2 tokens)")
    return ids[:max_tokens]
