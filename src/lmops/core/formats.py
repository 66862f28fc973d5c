"""Training-set row formats, a validator that says exactly what is wrong, and chat conversion.

The formats (one JSON object per row; other keys, such as ids, are allowed and ignored)::

    pretrain     {"text": str}
    sft_alpaca   {"instruction": str, "input": str | null (optional), "output": str,
                  "system": str (optional)}
    sft_chat     {"messages": [{"role": "system" | "user" | "assistant" | "tool",
                                "content": str, "weight": 0 | 1 (optional, assistant turns),
                                "tool_calls": [...] (optional, assistant turns)}, ...],
                  "tools": [...] (optional)}
    preference   {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages,
                  "tools": [...] (optional)}

Rules: required strings are non-empty (not only whitespace); ``input`` may be empty.
A chat is an optional ``system`` message, then ``user`` and ``assistant`` turns alternating,
starting with ``user`` and ending with ``assistant`` (so at least one of each); a system
message may have empty content, other turns may not. In ``preference``, a message-list
``prompt`` follows the same rules but ends with ``user``; a message-list ``chosen`` /
``rejected`` is the continuation: turns alternating from ``assistant``, ending with
``assistant``. Strings and lists may be mixed; ``chosen`` must differ from ``rejected``.
An assistant message's ``weight`` (OpenAI's fine-tuning format) is 0 or 1; 0 leaves that
turn out of the loss. Tool calls are OpenAI's too (:mod:`lmops.core.toolrows`): an assistant
turn with ``tool_calls`` (its content may be empty) is followed by one or more ``tool``
turns, the results, and those by an assistant turn; a prompt may end with results. Rows written for other tools (ShareGPT, TRL, LLaMA-Factory) are read
as these formats by :mod:`lmops.core.shapes`.

Every problem is a :class:`RowError` that prints as
``row 17: field 'messages[2].role': expected 'assistant' after 'user', got 'user'`` or, for
rows read from files by :mod:`lmops.core.rows`, with the place instead of the row number
(``sft.json:120 (element 17): field 'output': must not be empty``), and has a stable
``code`` (the key of :attr:`ValidationReport.error_counts`):

    not_object   the row is not a JSON object
    undetected   format "auto" and the row has none of the keys that name a format
    missing      a required field is absent
    type         a field has the wrong JSON type
    empty        a required string is empty
    role         a role outside system / user / assistant
    role_order   turns out of order (two users in a row, a system message not first, ...)
    last_turn    a chat that does not end with the turn it must end with
    identical    chosen equals rejected
    weight       a message's weight is not 0 or 1, or is on a turn that is not the assistant's
    tool         a tool list or call that is not OpenAI's: no function name, arguments that
                 are not a JSON object, a call of a tool the row's ``tools`` do not list (or of any, where it lists none)
    malformed    (read from a file) the row is not valid JSON
    encoding     (read from a file) the row is not valid UTF-8
    fields       (read from a file) a CSV record with the wrong number of fields
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lmops.core.errors import UserError
from lmops.core.rows import ANNOTATIONS_KEY, BadRow, Row
from lmops.core.toolrows import check_calls, check_tools, tool_schemas

__all__ = [
    "FORMATS",
    "ROLES",
    "Format",
    "RowError",
    "ValidationReport",
    "as_messages",
    "check_messages",
    "detect_format",
    "to_chat",
    "to_preference",
    "validate_row",
    "validate_rows",
]

Format = Literal["pretrain", "sft_alpaca", "sft_chat", "preference"]
FORMATS: tuple[str, ...] = ("pretrain", "sft_alpaca", "sft_chat", "preference")
ROLES: tuple[str, ...] = ("system", "user", "assistant")
_CHAT_ROLES = (*ROLES, "tool")  # tool: a tool call's result
Message = dict[str, Any]

# Keys that give a format away, checked in this order (a preference row may also carry
# "messages"-like fields, an alpaca row a "text" copy).
_HALLMARKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("preference", ("chosen", "rejected")),
    ("sft_chat", ("messages",)),
    ("sft_alpaca", ("instruction", "output")),
    ("pretrain", ("text",)),
)


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem in one row."""

    row: int  # 1-based
    field: str  # e.g. "messages[2].role"; "" for the row as a whole
    reason: str  # e.g. "expected 'assistant' after 'user', got 'user'"
    code: str  # stable category, see the module docstring
    where: str = ""  # "file:line" / "file:line (element i)" / "file:row n" when read from a file

    def __str__(self) -> str:
        field = f"field '{self.field}': " if self.field else ""
        return f"{self.where or f'row {self.row}'}: {field}{self.reason}"


@dataclass(slots=True)
class ValidationReport:
    """The outcome of :func:`validate_rows`."""

    format: str | None  # the format checked against (detected when "auto"); None if none
    total_rows: int = 0
    valid_rows: int = 0
    errors: list[RowError] = field(default_factory=list)  # the first max_errors problems
    error_counts: dict[str, int] = field(default_factory=dict)  # code -> problems, all rows
    truncated: bool = False  # more problems were found than `errors` lists
    # rows read as a training stage reads them (lmops.core.shaped), instead of one format:
    stage: str | None = None
    shapes: dict[str, int] = field(default_factory=dict)  # shape -> usable rows
    # consecutive usable rows of one shape: {"shape", "rows", "first", "last"} (places)
    shape_runs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. a field read beside mapped ones
    # chat rows quoting a chat template's control tokens (trained as plain text)
    control_token_rows: int = 0

    @property
    def invalid_rows(self) -> int:
        return self.total_rows - self.valid_rows

    @property
    def ok(self) -> bool:
        return self.total_rows > 0 and self.invalid_rows == 0

    def summary(self) -> str:
        """A few lines for a terminal: totals, then each listed problem."""
        read = f"stage: {self.stage}" if self.stage else f"format: {self.format or 'unknown'}"
        head = (
            f"{self.total_rows} rows, {self.valid_rows} valid, {self.invalid_rows} invalid ({read})"
        )
        lines = [head]
        if self.shapes:
            firsts: dict[str, str] = {}
            for run in self.shape_runs:
                firsts.setdefault(run["shape"], run["first"])
            lines.append(
                "read as: "
                + ", ".join(f"{k} {n:,} (first {firsts[k]})" for k, n in self.shapes.items())
            )
        if self.control_token_rows:
            n = self.control_token_rows
            lines.append(
                f"{n:,} {'row holds' if n == 1 else 'rows hold'} chat-template control-token "
                "text (trained as plain text)"
            )
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [str(e) for e in self.errors]
        if self.truncated:
            more = sum(self.error_counts.values()) - len(self.errors)
            lines.append(f"... and {more} more problems")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "total_rows": self.total_rows,
            "valid_rows": self.valid_rows,
            "invalid_rows": self.invalid_rows,
            "errors": [
                {
                    "row": e.row,
                    "where": e.where,
                    "field": e.field,
                    "reason": e.reason,
                    "code": e.code,
                    "message": str(e),
                }
                for e in self.errors
            ],
            "error_counts": dict(self.error_counts),
            "truncated": self.truncated,
            "warnings": list(self.warnings),
            "control_token_rows": self.control_token_rows,
        } | (
            {
                "stage": self.stage,
                "shapes": dict(self.shapes),
                "shape_runs": [dict(r) for r in self.shape_runs],
            }
            if self.stage
            else {}
        )


def detect_format(row: Any) -> str | None:
    """The format a row's keys point to, or ``None``; the row is not validated."""
    if not isinstance(row, Mapping):
        return None
    for fmt, keys in _HALLMARKS:
        if any(k in row for k in keys):
            return fmt
    return None


def validate_row(row: Any, fmt: str, *, row_number: int = 1) -> list[RowError]:
    """Every problem of one row against ``fmt`` (empty when the row is valid)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)} or auto")
    if not isinstance(row, Mapping):
        return [_not_object(row_number, row)]
    problems = _CHECKS[fmt](row)
    return [RowError(row_number, f, reason, code) for f, code, reason in problems]


def validate_rows(
    rows: Iterable[Any],
    fmt: str = "auto",
    *,
    max_errors: int = 100,
    look: Callable[[str, str, Mapping[str, Any]], None] | None = None,
) -> ValidationReport:
    """Validate a stream of rows against ``fmt`` (or ``"auto"``).

    With ``"auto"`` the first row whose keys name a format (:func:`detect_format`) fixes the
    format for the whole set; rows before it are ``undetected`` errors, rows after it that
    look like another format fail that format's checks. At most ``max_errors`` problems are
    kept in ``errors``; ``error_counts`` counts them all.

    Rows may be plain values or what :func:`lmops.core.rows.iter_rows` yields: a ``Row`` is
    checked (without its ``_lmops`` annotations) and its problems name its place; a
    ``BadRow`` (unreadable) is one problem of its own code. ``look``: called with each
    valid row's place, format and values (``lmops data validate``'s notes).
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)} or auto")
    if max_errors < 0:
        raise UserError(f"max_errors must be >= 0, got {max_errors}")
    report = ValidationReport(format=None if fmt == "auto" else fmt)
    counts: Counter[str] = Counter()
    for n, item in enumerate(rows, 1):
        report.total_rows = n
        where = item.where if isinstance(item, Row | BadRow) else ""
        if isinstance(item, BadRow):
            problems = [RowError(n, "", item.reason, item.code)]
        else:
            row = item.values if isinstance(item, Row) else item
            if isinstance(row, Mapping) and ANNOTATIONS_KEY in row:
                row = {k: v for k, v in row.items() if k != ANNOTATIONS_KEY}
            if report.format is None:
                report.format = detect_format(row)
            if report.format is None:
                problems = [
                    _undetected(n, row) if isinstance(row, Mapping) else _not_object(n, row)
                ]
            else:
                problems = validate_row(row, report.format, row_number=n)
        if where:
            problems = [RowError(p.row, p.field, p.reason, p.code, where) for p in problems]
        if not problems:
            report.valid_rows += 1
            if look is not None and report.format is not None and isinstance(row, Mapping):
                look(where, report.format, row)
            continue
        for p in problems:
            counts[p.code] += 1
            if len(report.errors) < max_errors:
                report.errors.append(p)
            else:
                report.truncated = True
    report.error_counts = dict(counts)
    return report


def to_chat(row: Mapping[str, Any], fmt: str = "auto") -> list[Message]:
    """The chat messages a training row stands for (the training stage's input form).

    ``sft_alpaca``: an optional system message, the user turn ``instruction`` (plus
    ``"\\n\\n" + input`` when ``input`` is not empty) and the assistant turn ``output``.
    ``sft_chat``: the messages, reduced to ``role`` and ``content`` (and an assistant turn's
    ``tool_calls``, a tool turn's ``tool_call_id`` and ``name``). ``preference``: the
    prompt followed by the chosen answer. ``pretrain`` rows have no chat form. Raises
    :class:`UserError` naming the first problem of an invalid row.
    """
    fmt = _checked(row, fmt)
    if fmt == "sft_alpaca":
        messages: list[Message] = []
        system = row.get("system")
        if isinstance(system, str) and system.strip():
            messages.append({"role": "system", "content": system})
        user = row["instruction"]
        extra = row.get("input")
        if isinstance(extra, str) and extra.strip():
            user = f"{user}\n\n{extra}"
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": row["output"]})
        return messages
    if fmt == "sft_chat":
        return [_message(m) for m in row["messages"]]
    if fmt == "preference":
        prompt, chosen, _ = to_preference(row)
        return prompt + chosen
    raise UserError("pretrain rows have no chat form; use the 'text' field directly")


def to_preference(row: Mapping[str, Any]) -> tuple[list[Message], list[Message], list[Message]]:
    """A preference row as ``(prompt, chosen, rejected)`` message lists.

    A string prompt becomes one user turn, a string answer one assistant turn. Raises
    :class:`UserError` naming the first problem of an invalid row.
    """
    _checked(row, "preference")
    prompt = as_messages(row["prompt"], "user")
    return (
        prompt,
        as_messages(row["chosen"], "assistant"),
        as_messages(row["rejected"], "assistant"),
    )


# -- checks: each returns [(field, code, reason)] --------------------------------------------------
Problem = tuple[str, str, str]


def _check_pretrain(row: Mapping[str, Any]) -> list[Problem]:
    return _text(row, "text")


def _check_alpaca(row: Mapping[str, Any]) -> list[Problem]:
    problems = _text(row, "instruction")
    if row.get("input") is not None and not isinstance(row["input"], str):
        problems.append(("input", "type", f"expected a string or null, got {_type(row['input'])}"))
    if "system" in row and row["system"] is not None and not isinstance(row["system"], str):
        problems.append(
            ("system", "type", f"expected a string or null, got {_type(row['system'])}")
        )
    return problems + _text(row, "output")


def _check_chat(row: Mapping[str, Any]) -> list[Problem]:
    if "messages" not in row:
        return [("messages", "missing", "required field is missing")]
    problems = _tools(row)
    if problems:  # the calls are checked against the tools: those first
        return problems
    names = tool_schemas(row.get("tools"))
    return check_messages(
        row["messages"], "messages", first="user", last="assistant", system=True, names=names
    )


def _tools(row: Mapping[str, Any]) -> list[Problem]:
    """The problems of a row's ``tools`` (optional; null is none)."""
    return check_tools(row["tools"]) if row.get("tools") is not None else []


def _check_preference(row: Mapping[str, Any]) -> list[Problem]:
    problems = _tools(row)
    if problems:
        return problems
    names = tool_schemas(row.get("tools"))
    for name, first, last in (
        ("prompt", "user", "user"),
        ("chosen", "assistant", "assistant"),
        ("rejected", "assistant", "assistant"),
    ):
        if name not in row:
            problems.append((name, "missing", "required field is missing"))
        elif isinstance(row[name], list):
            problems += check_messages(
                row[name], name, first=first, last=last, system=name == "prompt", names=names
            )
        else:
            problems += _text(row, name, what="a string or a list of messages")
    if not problems and as_messages(row["chosen"], "assistant") == as_messages(
        row["rejected"], "assistant"
    ):
        problems.append(("rejected", "identical", "must differ from 'chosen'"))
    return problems


_CHECKS = {
    "pretrain": _check_pretrain,
    "sft_alpaca": _check_alpaca,
    "sft_chat": _check_chat,
    "preference": _check_preference,
}


def _text(row: Mapping[str, Any], name: str, *, what: str = "a string") -> list[Problem]:
    if name not in row:
        return [(name, "missing", "required field is missing")]
    value = row[name]
    if not isinstance(value, str):
        return [(name, "type", f"expected {what}, got {_type(value)}")]
    if not value.strip():
        return [(name, "empty", "must not be empty")]
    return []


def check_messages(
    value: Any,
    name: str,
    *,
    first: str,
    last: str,
    system: bool,
    names: Mapping[str, Any] | None = None,
) -> list[Problem]:
    """The problems of a message list (the rules of ``sft_chat`` and of a preference row's
    message lists): an optional leading system message (when ``system``), then
    turns alternating user/assistant from ``first``, ending with ``last`` (a prompt, whose
    ``last`` is ``user``, may also end with tool results). An assistant turn that calls
    tools is followed by ``tool`` turns, and those by an assistant turn; ``names``: the
    row's tools, the only ones a call may name (None: the row lists none, so it may call none)."""
    if not isinstance(value, list):
        return [(name, "type", f"expected a list of messages, got {_type(value)}")]
    if not value:
        return [(name, "empty", "must not be empty")]
    problems: list[Problem] = []
    prev: str | None = None  # role of the previous turn; None before the first
    called = False  # the previous turn was an assistant's that called tools
    in_order = True  # judge order (and the last turn) only up to the first role problem
    for i, msg in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(msg, Mapping):
            problems.append((where, "type", f"expected a message object, got {_type(msg)}"))
            in_order = False
            continue
        role = msg.get("role")
        # None or [] is no calls: typed data sets (Parquet, Arrow) give every row the key
        calls = msg.get("tool_calls")
        calling = role == "assistant" and bool(calls)
        if "role" not in msg:
            problems.append((f"{where}.role", "missing", "required field is missing"))
            in_order = False
        elif role not in _CHAT_ROLES:
            allowed = ", ".join(f"'{r}'" for r in _CHAT_ROLES)
            problems.append((f"{where}.role", "role", f"expected one of {allowed}, got {role!r}"))
            in_order = False
        elif in_order:
            expected = _expected_role(prev, first, system and i == 0, called)
            if role not in expected:
                want = " or ".join(f"'{r}'" for r in expected)
                if prev is None:
                    reason = f"expected {want} first, got '{role}'"
                elif called:
                    reason = f"expected 'tool' (the results) after tool calls, got '{role}'"
                else:
                    reason = f"expected {want} after '{prev}', got '{role}'"
                problems.append((f"{where}.role", "role_order", reason))
                in_order = False  # later order problems would only echo this one
            prev, called = role, calling
        if calls and not calling:
            problems.append((f"{where}.tool_calls", "tool", "only an assistant turn calls tools"))
        elif calling:
            problems += check_calls(calls, where, names)
        problems += _content(msg, where, role, calling=calling)
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if msg.get(key) is not None and not isinstance(msg[key], str):
                    problems.append(
                        (f"{where}.{key}", "type", f"expected a string, got {_type(msg[key])}")
                    )
        if "weight" in msg:
            problems += _weight(msg, where)
    ends = (last, "tool") if last == "user" else (last,)
    if in_order and prev not in ends and prev is not None:
        problems.append(
            (
                f"{name}[{len(value) - 1}].role",
                "last_turn",
                f"the last turn must be '{last}', got '{prev}'",
            )
        )
    return problems


def _content(msg: Mapping[str, Any], where: str, role: Any, *, calling: bool) -> list[Problem]:
    """A message's content: a non-empty string, but for a system turn and a tool result
    (may be empty) and an assistant turn that calls tools (may be empty, null or left out)."""
    content = msg.get("content")
    if calling and content is None:
        return []
    if "content" not in msg:
        return [(f"{where}.content", "missing", "required field is missing")]
    if not isinstance(content, str):
        return [(f"{where}.content", "type", f"expected a string, got {_type(content)}")]
    if not content.strip() and role not in ("system", "tool") and not calling:
        return [(f"{where}.content", "empty", "must not be empty")]
    return []


def _weight(msg: Mapping[str, Any], where: str) -> list[Problem]:
    weight = msg["weight"]
    if isinstance(weight, bool) or weight not in (0, 1):
        return [(f"{where}.weight", "weight", f"expected 0 or 1, got {weight!r}")]
    if msg.get("role") != "assistant":
        return [(f"{where}.weight", "weight", "only an assistant turn has a weight")]
    return []


def _expected_role(
    prev: str | None, first: str, system_allowed: bool, called: bool
) -> tuple[str, ...]:
    """The roles that may follow ``prev`` (``called``: an assistant turn that called tools)."""
    if prev is None:
        return ("system", first) if system_allowed else (first,)
    if prev == "system":
        return (first,)
    if prev == "assistant":
        return ("tool",) if called else ("user",)
    return ("assistant",) if prev == "user" else ("assistant", "tool")


# -- helpers ---------------------------------------------------------------------------------------
def _checked(row: Mapping[str, Any], fmt: str) -> str:
    if fmt == "auto":
        detected = detect_format(row)
        if detected is None:
            raise UserError(str(_undetected(1, row)).removeprefix("row 1: "))
        fmt = detected
    problems = validate_row(row, fmt)
    if problems:
        raise UserError(f"invalid {fmt} row: {str(problems[0]).removeprefix('row 1: ')}")
    return fmt


def as_messages(value: str | list[Mapping[str, Any]], role: str) -> list[Message]:
    """A prompt or an answer as messages: a string is one turn of ``role``; a (checked)
    message list keeps the keys training reads (role, content, tool calls and results)."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [_message(m) for m in value]


def _message(m: Mapping[str, Any]) -> Message:
    """A (checked) message with the keys training reads: role and content, an assistant
    turn's tool calls, a tool result's call id and name."""
    out: Message = {"role": m["role"], "content": m.get("content")}
    if m["role"] == "assistant" and m.get("tool_calls"):
        out["tool_calls"] = m["tool_calls"]
    elif m["role"] == "tool":
        out.update({k: m[k] for k in ("tool_call_id", "name") if m.get(k) is not None})
    return out


def _not_object(n: int, row: Any) -> RowError:
    return RowError(n, "", f"expected a JSON object, got {_type(row)}", "not_object")


def _undetected(n: int, row: Any) -> RowError:
    keys = sorted(row) if isinstance(row, Mapping) else []
    hallmarks = ", ".join(f"'{k}'" for _, ks in _HALLMARKS for k in ks)
    return RowError(
        n,
        "",
        f"cannot detect the format: expected one of the keys {hallmarks}, got {keys}",
        "undetected",
    )


def _type(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__
