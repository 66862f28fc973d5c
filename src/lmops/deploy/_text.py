"""Text for compression jobs (pruning calibration, distillation): a dataset as blocks of
token ids.

A source is a dataset asset ref or a local path: a ``.txt`` file (read as one text), or a
file/folder of rows in any format :mod:`lmops.core.rows` reads, where each row gives its
``text`` field, or its chat form (:func:`lmops.core.formats.to_chat`) rendered with the
tokenizer's chat template. The texts are tokenized, joined with EOS and cut into blocks of
``seq_len`` tokens, as pretraining packs them: every block is full, so every position
carries a teacher signal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError

__all__ = ["dataset_texts", "resolve_source", "token_blocks"]


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


def dataset_texts(path: Path, tokenizer: Any) -> Iterator[str]:
    from lmops.core.formats import detect_format, to_chat
    from lmops.core.rows import read_rows, row_files

    files = [f for f in ([path] if path.is_file() else sorted(path.rglob("*"))) if f.is_file()]
    txt = [f for f in files if f.suffix == ".txt" and not f.name.startswith((".", "_"))]
    if txt:
        for f in txt:
            yield f.read_text(encoding="utf-8", errors="replace")
        return
    for row in read_rows(row_files([path])):
        values = row.values
        if isinstance(values.get("text"), str):
            yield values["text"]
            continue
        fmt = detect_format(values)
        if fmt is None or fmt == "pretrain":
            raise UserError(f"{row.where}: no 'text' field and no chat form; give text rows")
        yield tokenizer.apply_chat_template(to_chat(values, fmt), tokenize=False)


def token_blocks(path: Path, tokenizer: Any, *, seq_len: int, max_blocks: int) -> Any:
    """A LongTensor [n, seq_len] (n <= max_blocks) of the texts' tokens, packed."""
    import torch

    need = seq_len * max_blocks
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in dataset_texts(path, tokenizer):
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            ids.append(eos)
        if len(ids) >= need:
            break
    n = min(max_blocks, len(ids) // seq_len)
    if n == 0:
        raise UserError(
            f"{path}: {len(ids)} tokens, fewer than one block of {seq_len}; give more text or "
            "a smaller --seq-len"
        )
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
