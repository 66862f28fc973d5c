"""Text for the deployment stage's jobs: a dataset asset or a local path as documents, as one
token stream (quantization calibration, report perplexity) or as packed blocks (pruning
calibration, distillation).

A source is a dataset asset ref or a local path: a file, or a folder whose files are read
in name order (entries starting with ``.`` or ``_``, such as a data run's ``_report``, are
skipped). ``.txt`` and ``.md`` files are read as one text each; row files (JSON Lines, JSON,
CSV, Parquet, read by :mod:`lmops.core.rows`) give each row's ``text`` field or, for
instruction, chat and preference rows, the conversation rendered with the tokenizer's chat
template, so calibration sees what the model will be asked. Every document is followed by
the end-of-sequence token, so documents do not run into each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError

__all__ = ["resolve_source", "texts_of", "token_blocks", "token_stream"]

_TEXT_SUFFIXES = (".txt", ".md")


def resolve_source(source: str, store: Any, run_id: str, role: str) -> tuple[Path, list[Any]]:
    """(local path, lineage inputs) of a dataset ref or local path; a local path is
    recorded by content as an external reference."""
    p = Path(source).expanduser()
    if p.exists():
        return p, store.assets.record_inputs([(p, role)], run_id=run_id)
    try:
        v = store.assets.resolve(source)
    except UserError:
        raise UserError(f"{source!r} is neither an existing file nor a READY dataset") from None
    if v.kind != "dataset":
        raise UserError(f"{source!r} is a {v.kind}, expected a dataset (text or rows)")
    return Path(store.assets.path(v.ref)), [(v.ref, role)]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    # the names under the folder, not the full path: a store view may sit under a "_" folder
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )
    if not files:
        raise UserError(f"{path}: no files to read text from")
    return files


def texts_of(path: Path, tokenizer: Any) -> Iterator[str]:
    """Each document's text in ``path`` (a file or a folder), in order."""
    from lmops.core.formats import to_chat
    from lmops.core.rows import BadRow, iter_rows, row_format
    from lmops.core.toolrows import read_tools
    from lmops.models.chat import chat_text

    for f in _files(path):
        if f.suffix.lower() in _TEXT_SUFFIXES:
            yield f.read_text(encoding="utf-8", errors="replace")
            continue
        if row_format(f) is None:
            raise UserError(f"{f}: not text (.txt, .md) or rows (.jsonl, .json, .csv, .parquet)")
        for row in iter_rows(f):
            if isinstance(row, BadRow):
                raise UserError(f"{row.where}: {row.reason}")
            data = row.values
            if isinstance(data.get("text"), str):
                yield data["text"]
                continue
            # tools in the spellings training reads (JSON text, bare functions), as it reads them
            tools, why = read_tools(data.get("tools")) if data.get("tools") else (None, None)
            if why is not None:
                raise UserError(f"{row.where}: field 'tools': {why}")
            if tools:
                data = {**data, "tools": tools}
            try:
                messages = to_chat(data)
            except UserError as e:
                raise UserError(
                    f"{row.where}: no 'text' field and not an instruction or chat row ({e})"
                ) from None
            # a chat with tool calls reads as the gateway renders it (models/chat.py)
            yield chat_text(tokenizer, messages, tools or None)


def _ids(path: Path, tokenizer: Any, max_tokens: int) -> list[int]:
    """At least ``max_tokens`` token ids when the text has them (documents + EOS each)."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts_of(path, tokenizer):
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(int(eos))
        if len(ids) >= max_tokens:
            break
    return ids


def token_stream(path: Path, tokenizer: Any, max_tokens: int) -> list[int]:
    """Up to ``max_tokens`` token ids of the documents in ``path``."""
    ids = _ids(path, tokenizer, max_tokens)
    if len(ids) < 2:
        raise UserError(f"{path}: no text to read (need at least 2 tokens)")
    return ids[:max_tokens]


def token_blocks(path: Path, tokenizer: Any, *, seq_len: int, max_blocks: int) -> Any:
    """A LongTensor [n, seq_len] (n <= max_blocks) of the documents' tokens packed as
    pretraining packs them: every block is full, so every position carries a signal."""
    import torch

    ids = _ids(path, tokenizer, seq_len * max_blocks)
    n = min(max_blocks, len(ids) // seq_len)
    if n == 0:
        raise UserError(
            f"{path}: {len(ids)} tokens, fewer than one block of {seq_len}; give more text or "
            "a smaller --seq-len"
        )
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
