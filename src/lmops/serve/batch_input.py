"""The input of a batch (:mod:`lmops.serve.batch`): a dataset's rows as prompt messages, and
the deployment's bound prompt wrapped around each, as the gateway wraps a request.

Every input row becomes prompt messages (:func:`prompt_of`):

* chat rows (``messages``): the turns up to the last user turn; a trailing assistant turn
  (a reference answer) is dropped and answered again;
* alpaca rows (``instruction``, optional ``input``/``system``; ``output`` is ignored);
* ``{"prompt": str | messages}`` rows and preference rows (their prompt);
* ``{"text": str}`` rows, sent as one user turn.

A row with tool calls or results is refused in one line: a batch's requests carry no
``tools``, and a tool conversation rendered without them is not the one the row holds.

A row may carry ``variables`` (an object), the values of a bound prompt's variables for that
row, over those of ``--var NAME=VALUE``; it is not part of the prompt.

A deployment that binds a prompt (``prompt:`` in the deployments file) has it applied by
:func:`bind_prompt` with :func:`lmops.prompts.binding.apply_prompt`, the gateway's own
function: the same messages, the same ``input`` taken from the last user turn, the same one
line naming the missing variables, raised for the first row that lacks one before any model
is loaded. The prompt is resolved once, so every row gets the same version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError

__all__ = ["Item", "bind_prompt", "prompt_of", "read_items"]

Message = dict[str, Any]
# Completes a prompt-only row so lmops.core.formats can validate it as a training row.
_STAND_IN = "-"


@dataclass(frozen=True)
class Item:
    """One input row: its position, where it came from, and the prompt to answer."""

    index: int  # 0-based, over all input files in order
    where: str  # file:line, for messages and metadata
    messages: list[Message]
    id: Any = None  # the row's "id", copied to the output
    variables: dict[str, Any] | None = None  # the row's values of a bound prompt's variables


# -- input ----------------------------------------------------------------------------------------
def prompt_of(row: Any, where: str) -> list[Message]:
    """The prompt messages of one input row (see the module docstring for the formats).

    Raises :class:`UserError` naming ``where`` and the field of the first problem.
    """
    from lmops.core.formats import detect_format, to_chat, to_preference, validate_row
    from lmops.core.toolrows import has_tool_turns

    if not isinstance(row, Mapping):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    fmt = detect_format(row)
    kinds = {"sft_chat": "a chat", "sft_alpaca": "an alpaca", "pretrain": "a text"}
    label = kinds.get(fmt or "", "a preference")
    if fmt is None and "prompt" in row:
        fmt, label = "preference", "a prompt"  # validated as the prompt of a preference row
    stand_in = {"role": "assistant", "content": _STAND_IN}
    probe: Mapping[str, Any]
    tools = {"tools": row["tools"]} if "tools" in row else {}  # what the calls are checked by
    if fmt == "preference":
        probe = {
            "prompt": row.get("prompt"),
            "chosen": _STAND_IN,
            "rejected": _STAND_IN + "-",
            **tools,
        }
    elif fmt == "sft_chat":
        msgs = row["messages"]
        last = msgs[-1] if isinstance(msgs, list) and msgs else None
        if isinstance(last, Mapping) and last.get("role") == "assistant":
            msgs = msgs[:-1]  # a reference answer: answered again
        probe = {"messages": [*msgs, stand_in] if isinstance(msgs, list) else msgs, **tools}
    elif fmt == "sft_alpaca":
        probe = {**row, "output": _STAND_IN}  # the reference output is not needed
    elif fmt == "pretrain":
        probe = row
    else:
        raise UserError(
            f"{where}: cannot read a prompt: expected 'messages', 'instruction', 'prompt' or "
            f"'text', got keys {sorted(row)}"
        )
    problems = validate_row(probe, fmt)
    if problems:
        p = problems[0]
        at = f"field '{p.field}': " if p.field else ""
        raise UserError(f"{where}: {at}{p.reason} (read as {label} row)")
    if fmt == "pretrain":
        return [{"role": "user", "content": str(row["text"])}]
    messages = to_preference(probe)[0] if fmt == "preference" else to_chat(probe, fmt)[:-1]
    if has_tool_turns(messages):  # the row's tools are not sent with a batch's requests
        raise UserError(
            f"{where}: the row has tool calls or results; a batch asks without tools, so "
            "leave such rows out of its input"
        )
    return messages


def _input_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(
        f
        for f in path.rglob("*")
        if f.is_file()
        and f.suffix in (".jsonl", ".json", ".parquet")
        and not any(part.startswith(("_", ".")) for part in f.relative_to(path).parts)
    )
    if not files:
        raise UserError(f"{path}: no .jsonl/.json/.parquet rows in this folder")
    return files


def _rows(f: Path, label: str) -> Iterator[tuple[str, Any]]:
    """(file:line, row) for a JSONL file, a JSON array file or a Parquet file."""
    if f.suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for b in pq.ParquetFile(f).iter_batches():
            for row in b.to_pylist():
                n += 1
                yield f"{label}:row {n}", row
        return
    text = f.read_text(encoding="utf-8")
    if f.suffix == ".json" and text.lstrip().startswith("["):
        for n, row in enumerate(json.loads(text), 1):
            yield f"{label}:item {n}", row
        return
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 is legal JSON
        if not line.strip():
            continue
        try:
            yield f"{label}:{n}", json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{label}:{n}: malformed JSON ({e.msg}); fix the row") from None


def read_items(ref_or_path: str, store: Any) -> tuple[list[Item], str | None, str]:
    """The prompts of an input dataset: ``(items, version ref or None, content id)``.

    The content id is the version ref for an asset and a sha256 of the files for a local
    path; it keys the resume fingerprint."""
    from lmops.models.loading import resolve_local

    try:
        path, ref = resolve_local(ref_or_path, store, kind="dataset")
    except UserError as e:
        raise UserError(f"--input {e}") from None
    files = _input_files(path)
    items: list[Item] = []
    digest = hashlib.sha256()
    for f in files:
        rel = f.name if f == path else str(f.relative_to(path))
        label = f"{ref}/{rel}" if ref else str(f)
        if ref is None:
            digest.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
        for where, row in _rows(f, label):
            rid = row.get("id") if isinstance(row, Mapping) else None
            values = None
            if isinstance(row, Mapping) and "variables" in row:
                values = row["variables"]
                if not isinstance(values, Mapping):
                    raise UserError(f"{where}: 'variables' must be an object of name -> value")
                row = {k: v for k, v in row.items() if k != "variables"}
                values = dict(values)
            items.append(Item(len(items), where, prompt_of(row, where), rid, values))
    if not items:
        raise UserError(f"--input {ref_or_path}: no rows")
    return items, ref, ref or "sha256:" + digest.hexdigest()


def bind_prompt(
    items: list[Item], ref: str, store: Any, variables: Mapping[str, Any]
) -> tuple[list[Item], str, dict[str, Any]]:
    """``items`` wrapped by the prompt ``ref`` names, as the gateway wraps a chat request
    (``variables``: ``--var`` values; a row's own ``variables`` win), the version's
    ``name:N`` and the prompt's model parameters (temperature, max_tokens...). A row that
    lacks a variable stops it in one line, before any model is loaded."""
    from lmops.prompts.binding import apply_prompt
    from lmops.prompts.registry import get

    prompt = get(ref, store=store)  # resolved once: every row gets this version
    out = []
    for it in items:
        body = {"messages": it.messages, "variables": {**variables, **(it.variables or {})}}
        try:
            wrapped, _ = apply_prompt(body, prompt.ref, "chat", store)
        except UserError as e:
            raise UserError(
                f"{it.where}: {e}; give --var NAME=VALUE, or a 'variables' object in the row"
            ) from None
        out.append(replace(it, messages=wrapped["messages"]))
    return out, prompt.ref, dict(prompt.spec.config)
