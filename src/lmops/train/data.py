"""Training examples: token ids + labels (-100 where no loss), and how they are batched.

- **pretrain**: token shards from the data stage (``format: token_shards``), cut into
  consecutive windows of ``max_seq_len + 1`` tokens; or text documents (rows' ``text_key``,
  or plain ``.txt`` / ``.md`` files, each file one document), tokenized, joined with EOS
  and cut the same way.
- **sft**: alpaca rows (``instruction``/``input``/``output``), chat rows (``messages``) and
  the other tools' shapes :mod:`lmops.core.shapes` reads as chats (ShareGPT, TRL's
  prompt/completion), rendered with the chat template. Loss only on assistant turns (their
  content and the end-of-turn token); system and user tokens carry label -100.
  Multi-turn conversations train on every assistant turn but those of ``weight`` 0
  (OpenAI's mark; a TRL prompt's own assistant turns get it: only the completion trains).
  Tool calls train as part of their assistant turn; tool results, like the tools listed
  in the prompt, carry no loss. A chat with tools is rendered as the gateway renders the
  same conversation (:mod:`lmops.models.chat`), through a template that takes ``tools``.
  Plain ``{"text"}`` rows may be mixed in: they train on every token, as in pretraining
  (replaying pretraining text keeps what the base model knows, e.g. its perplexity on
  ordinary text).
- **packing**: several examples share one row of ``max_seq_len`` tokens; ``position_ids``
  restart at 0 for each example, from which transformers builds a block-diagonal causal
  mask (no attention across examples), and the first token of each example carries no
  loss, so nothing is learned across a boundary.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmops.core.errors import UserError
from lmops.core.logging import get_logger
from lmops.core.rows import ANNOTATIONS_KEY, Row, iter_rows, row_files
from lmops.core.rows import read_rows as core_read_rows

__all__ = [
    "Batch",
    "Example",
    "build_pretrain_examples",
    "build_sft_examples",
    "collate",
    "load_training_rows",
    "pack",
    "read_rows",
]

IGNORE = -100


@dataclass(slots=True)
class Example:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(slots=True)
class Batch:
    input_ids: Any  # LongTensor (B, T)
    labels: Any  # LongTensor (B, T), -100 = no loss
    attention_mask: Any | None  # (B, T) for padded batches
    position_ids: Any | None  # (B, T) for packed batches

    @property
    def loss_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


def read_rows(
    paths: list[Path],
    *,
    on_error: Literal["raise", "skip"] = "raise",
    skipped: Counter[str] | None = None,
) -> Iterator[tuple[str, int, Any]]:
    """``(where, row number, row)`` for every row of JSON Lines, JSON array, CSV and Parquet
    files and folders of them, through the one row reader (:mod:`lmops.core.rows`).

    ``where`` names the file and line (``file:line (element i)`` in a JSON array,
    ``file:row n`` in Parquet). lmops's ``_lmops`` annotations are never part of a row.
    Unreadable rows raise, or with ``on_error="skip"`` are counted in ``skipped``.
    """
    files = row_files(paths)
    if not files:
        raise UserError(
            f"no JSON Lines/JSON/CSV/Parquet rows found in {', '.join(map(str, paths))}"
        )
    for row in core_read_rows(files, on_error=on_error, skipped=skipped):
        yield row.where, row.number, row.values


@dataclass
class LoadedRows:
    """The rows a training stage trains on, and what was read and skipped."""

    rows: list[tuple[str, int, Any]]
    read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    shapes: Counter[str] = field(default_factory=Counter)  # rows used, by the shape read

    def summary(self) -> dict[str, Any]:
        """The counts a training run reports (``TrainResult.data``, the run's params)."""
        return {
            "rows_read": self.read,
            "rows_used": len(self.rows),
            "rows_skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "row_shapes": dict(sorted(self.shapes.items())),
        }


def load_training_rows(
    paths: list[Path],
    stage: str,
    on_error: Literal["raise", "skip"] = "raise",
    *,
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> LoadedRows:
    """Read the rows of a training stage, each in the lmops form of its shape, before any
    model loads.

    Each row is recognised by its keys (:mod:`lmops.core.shapes`; ``columns`` and ``tags``
    as the job spec's): SFT takes alpaca, chat, ShareGPT and prompt/completion rows, with
    ``{"text"}`` rows mixed in (trained as pretraining text, never alone); the preference
    stages (reward, DPO, KTO, ORPO) pairs in TRL's and LLaMA-Factory's shapes, KTO also
    unpaired rows; PPO any rows. The rows come back as SFT ``{"messages"}`` / ``{"text"}``,
    or as ``{"prompt", "chosen", "rejected"}`` / ``{"prompt", "completion", "label"}``.
    A bad row (unreadable, of no shape the stage reads, or failing its shape's checks, e.g.
    an empty ``output``) raises an error naming its file, line and field, or with
    ``on_error="skip"`` is left out and counted by its problem's code. A mapped column that
    no row has is the mapping's mistake and raises either way.
    """
    from lmops.core.formats import RowError
    from lmops.core.shaped import mapping_problem, read_item, set_problem
    from lmops.core.shapes import RowReader

    files = row_files(paths)
    if not files:
        raise UserError(
            f"no JSON Lines/JSON/CSV/Parquet rows found in {', '.join(map(str, paths))}"
        )
    items = [item for f in files for item in iter_rows(f)]
    good = [item for item in items if isinstance(item, Row)]
    for row in good:
        row.values.pop(ANNOTATIONS_KEY, None)
    reader = RowReader(stage, dict(columns or {}), dict(tags or {}))
    mapping = mapping_problem(reader.columns, good)
    if mapping is not None:  # whatever on_error says: skipping would leave no row
        raise UserError(": ".join(mapping))
    out = LoadedRows([], read=len(items))
    for item in items:  # in file order, so the first bad row is the one reported
        got = read_item(reader, item)
        if not isinstance(got, RowError):
            out.rows.append((item.where, item.number, got.row))
            out.shapes[got.shape] += 1
        elif on_error == "raise":
            raise UserError(f"{got}; fix the row or set on_error: skip")
        else:
            out.skipped[got.code] += 1
    if not out.rows:
        raise UserError(f"dataset {', '.join(map(str, paths))} has no usable rows")
    whole = set_problem(stage, out.shapes, out.rows[0][0])
    if whole is not None:
        raise UserError(": ".join(whole))
    for line in reader.unmapped(row.values for row in good):
        get_logger(__name__).warning("%s", line)
    return out


def validate_training_rows(rows: list[tuple[str, int, Any]], fmt: str) -> None:
    """Refuse bad rows before training starts, naming file and line."""
    from lmops.core.formats import validate_row

    for where, _n, row in rows:
        errors = validate_row(row, fmt)
        if errors:
            e = errors[0]
            raise UserError(f"{where}: field {e.field!r}: {e.reason} (expected {fmt} rows)")


def _assistant_spans(
    literals: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation (marked: :class:`lmops.models.chat.Literals`) and the
    character spans the model must learn to write: each assistant turn's content and tool
    calls through its end-of-turn marker, but for turns of ``weight`` 0 (context, as
    OpenAI's fine-tuning format marks it). The chat and its ``tools`` are rendered as the
    gateway renders them (:func:`lmops.models.chat.chat_text`), so a prompt's text is the
    gateway's prompt for the same conversation."""
    weights = [m.get("weight", 1) for m in messages]
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    text = literals.chat(messages, tools)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or weights[i] == 0:
            continue
        before = literals.chat(messages[:i], tools, add_generation_prompt=True)
        through = literals.chat(messages[: i + 1], tools)
        if not text.startswith(through) or not through.startswith(before):
            raise UserError(
                "the chat template does not render conversations prefix by prefix; set chat_template"
            )
        # Trailing newline after the end marker is formatting, not something to learn.
        end = len(through.rstrip("\n")) if through.endswith("\n") else len(through)
        spans.append((len(before), end))
    return text, spans


def encode_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    max_len: int,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[Example, bool]:
    """Token ids with labels on assistant spans only (not on turns of ``weight`` 0);
    returns (example, truncated). The ids are the gateway's for the same chat: a special-
    token string in a message's text is ordinary text (:class:`lmops.models.chat.Literals`)."""
    from lmops.models.chat import Literals

    literals = Literals(tokenizer)
    marked, spans = _assistant_spans(literals, messages, tools)
    enc = literals.encode(marked, offsets=True)
    ids = enc.ids
    real = [(literals.position(marked, a), literals.position(marked, b)) for a, b in spans]
    labels = [IGNORE] * len(ids)
    for t, start in enumerate(enc.starts or []):
        if any(a <= start < b for a, b in real):
            labels[t] = ids[t]
    truncated = len(ids) > max_len
    return Example(ids[:max_len], labels[:max_len]), truncated


def check_tool_template(tokenizer: Any, row: Mapping[str, Any], where: str) -> None:
    """Refuse a row with tools or tool turns for a chat template that cannot render them
    as the gateway reads them (one line: the row's place and the fix): one that takes no
    ``tools``, or drops a call, or writes it in another format than the gateway's parser
    reads (:func:`lmops.models.chat.template_writes_calls` probes it). The gateway would
    serve a model without tools support with the Hermes text of
    :mod:`lmops.models.toolformat` in a system turn; a model is taught the template it is
    served with instead, which says what its tools are."""
    from lmops.core.toolrows import has_tool_turns
    from lmops.models.chat import template_writes_calls

    turns = any(has_tool_turns(row.get(k)) for k in ("messages", "prompt", "chosen", "rejected"))
    turns = turns or has_tool_turns(row.get("completion"))
    if not (turns or row.get("tools")) or template_writes_calls(tokenizer):
        return
    what = "tool calls" if turns else "tools"
    raise UserError(
        f"{where}: the row has {what}, and the model's chat template does not render tools "
        "as the gateway reads them (<tool_call> text, and the results); "
        "set chat_template: chatml-tools in the job (ChatML with tool calls in the format the "
        "gateway parses), or train a model whose own template takes tools (Qwen2.5's does)"
    )


def encode_text(tokenizer: Any, text: str, max_len: int) -> tuple[Example, bool]:
    """A plain text trained on every token, ended with EOS as pretraining documents are;
    returns (example, truncated)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    return Example(ids[:max_len], ids[:max_len]), len(ids) > max_len


def build_sft_examples(
    rows: list[tuple[str, int, Any]], tokenizer: Any, max_len: int
) -> tuple[list[Example], dict[str, int]]:
    from lmops.core.formats import detect_format, to_chat

    examples = []
    stats = {"rows": len(rows), "truncated": 0, "no_loss_tokens": 0, "text_rows": 0}
    for where, _n, row in rows:
        if detect_format(row) == "pretrain":
            ex, truncated = encode_text(tokenizer, row["text"], max_len)
            stats["text_rows"] += 1
            stats["truncated"] += int(truncated)
            examples.append(ex)
            continue
        try:
            messages: list[dict[str, Any]] = to_chat(row)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        if isinstance(row.get("messages"), list):  # to_chat leaves the weights out
            messages = [
                {**m, "weight": 0} if isinstance(w, Mapping) and w.get("weight") == 0 else m
                for m, w in zip(messages, row["messages"], strict=True)
            ]
        check_tool_template(tokenizer, row, where)
        ex, truncated = encode_chat(tokenizer, messages, max_len, row.get("tools") or None)
        stats["truncated"] += int(truncated)
        if all(label == IGNORE for label in ex.labels[1:]):
            stats["no_loss_tokens"] += 1  # the answer was cut off entirely: nothing to learn
            continue
        examples.append(ex)
    if not examples:
        raise UserError(
            "no SFT example has an assistant token within max_seq_len; raise train.max_seq_len"
        )
    return examples, stats


def build_pretrain_examples(
    paths: list[Path],
    tokenizer: Any,
    seq_len: int,
    text_key: str,
    on_error: Literal["raise", "skip"] = "raise",
) -> tuple[list[Example], dict[str, Any]]:
    """Consecutive windows of ``seq_len + 1`` tokens (input and shifted target share it).
    Rows without a string ``text_key`` raise, or with ``on_error="skip"`` are counted."""
    import numpy as np

    window = seq_len + 1
    stream: list[int] = []
    examples: list[Example] = []
    docs = 0
    shard_dirs = [p for p in paths if p.is_dir() and (p / "meta.json").exists()]
    if shard_dirs:
        from lmops.core.shards import TokenShards

        for d in shard_dirs:
            shards = TokenShards(d)
            if shards.vocab_size > len(tokenizer):
                raise UserError(
                    f"{d}: token ids up to {shards.vocab_size} exceed the tokenizer ({len(tokenizer)})"
                )
            for w in shards.iter_packed(seq_len):
                ids = np.asarray(w).tolist()
                examples.append(Example(ids, ids))
            docs += shards.num_docs
        return examples, {"docs": docs, "windows": len(examples)}
    eos = tokenizer.eos_token_id
    loaded = LoadedRows([])
    unreadable: Counter[str] = Counter()
    texts, row_paths = _text_files(paths)
    documents = itertools.chain(
        _read_texts(texts, text_key, on_error, unreadable),
        read_rows(row_paths, on_error=on_error, skipped=unreadable) if row_paths else (),
    )
    for where, n, row in documents:
        loaded.read += 1
        text = row.get(text_key)
        if not isinstance(text, str):
            if on_error == "skip":
                loaded.skipped["missing" if text_key not in row else "type"] += 1
                continue
            raise UserError(
                f"{where}: field {text_key!r} missing or not a string; set text_key "
                "(or columns.text)"
            )
        loaded.rows.append((where, n, None))
        docs += 1
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + (
            [eos] if eos is not None else []
        )
        # windows share one token (a window's last target is the next one's first input);
        # advance an offset and drop the consumed prefix once per document, not per window
        start = 0
        while len(stream) - start >= window:
            chunk = stream[start : start + window]
            examples.append(Example(chunk, chunk))
            start += window - 1
        stream = stream[start:]
    if not examples:
        raise UserError(f"the text has fewer than {window} tokens; lower train.max_seq_len")
    loaded.read += sum(unreadable.values())
    loaded.skipped.update(unreadable)
    return examples, {"docs": docs, "windows": len(examples), **loaded.summary()}


# Plain-text files a pretraining dataset may name (or hold in a folder): each is one document.
TEXT_SUFFIXES = (".txt", ".md")


def _text_files(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(plain-text files, paths of row files): a ``.txt`` / ``.md`` path is text; a folder
    gives its text files (hidden and ``_`` entries skipped, as for rows) and, if it holds
    row files too, itself for the row reader."""
    from lmops.core.rows import ROW_SUFFIXES

    texts: list[Path] = []
    rows: list[Path] = []
    for p in paths:
        if p.is_dir():
            inside = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and not any(part.startswith(("_", ".")) for part in f.relative_to(p).parts)
            )
            texts += [f for f in inside if f.suffix.lower() in TEXT_SUFFIXES]
            if any(f.name.lower().endswith(ROW_SUFFIXES) for f in inside) or not texts:
                rows.append(p)
        elif p.suffix.lower() in TEXT_SUFFIXES:
            texts.append(p)
        else:
            rows.append(p)
    return texts, rows


def _read_texts(
    files: list[Path], text_key: str, on_error: Literal["raise", "skip"], skipped: Counter[str]
) -> Iterator[tuple[str, int, dict[str, str]]]:
    """Each plain-text file as one document (a row of ``text_key``); one that is not UTF-8
    raises, or is counted."""
    for n, f in enumerate(files, 1):
        try:
            text = f.read_bytes().decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as e:
            if on_error == "skip":
                skipped["encoding"] += 1
                continue
            raise UserError(
                f"{f}: not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8 "
                "or set on_error: skip"
            ) from None
        yield str(f), n, {text_key: text}


def pack(examples: list[Example], max_len: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Greedy in-order packing into rows of at most ``max_len`` tokens.
    Returns (input_ids, labels, position_ids) per row."""
    rows: list[tuple[list[int], list[int], list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for ex in examples:
        if ids and len(ids) + len(ex) > max_len:
            rows.append((ids, labels, pos))
            ids, labels, pos = [], [], []
        ids += ex.input_ids
        # No loss on an example's first token: it would be predicted from the previous example.
        labels += [IGNORE, *ex.labels[1:]]
        pos += list(range(len(ex)))
    if ids:
        rows.append((ids, labels, pos))
    return rows


def collate(items: list[Any], pad_id: int, packed: bool) -> Batch:
    """Right-pad a micro-batch. Packed rows get position ids (padding continues the last
    position run and carries no loss); unpacked rows get an attention mask."""
    import torch

    longest = max(len(it[0]) if packed else len(it) for it in items)
    n = len(items)
    input_ids = torch.full((n, longest), pad_id, dtype=torch.long)
    labels = torch.full((n, longest), IGNORE, dtype=torch.long)
    if packed:
        position_ids = torch.zeros((n, longest), dtype=torch.long)
        for i, (ids, lab, pos) in enumerate(items):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            position_ids[i, : len(pos)] = torch.tensor(pos)
            # padding forms one more "example" so it never attends into real tokens
            position_ids[i, len(pos) :] = torch.arange(longest - len(pos))
        return Batch(input_ids, labels, None, position_ids)
    attention = torch.zeros((n, longest), dtype=torch.long)
    for i, ex in enumerate(items):
        input_ids[i, : len(ex)] = torch.tensor(ex.input_ids)
        labels[i, : len(ex)] = torch.tensor(ex.labels)
        attention[i, : len(ex)] = 1
    return Batch(input_ids, labels, attention, None)


def split_eval(items: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    if fraction <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(items) * fraction))
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]
