"""Output helpers: JSON for machines, rich tables for people, one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import BaseModel
from rich.console import Console

from lmops.core.errors import UserError

if TYPE_CHECKING:
    from lmops.store import Store

console = Console()
err_console = Console(stderr=True)


def open_store() -> Store:
    """The store every CLI command acts on (``LMOPS_HOME`` / ``LMOPS_DATABASE_URL``), acting
    as the local user with origin ``cli`` in the audit log. Imported lazily so that
    ``lmops --help`` does not load SQLAlchemy."""
    from lmops.store import Store

    return Store(origin="cli")


def options_spec(model: type[BaseModel], **values: Any) -> Any:
    """A job's config built from a command's options; a value it refuses is a one-line
    error naming the option (``--top-p: Input should be greater than 0``)."""
    from pydantic import ValidationError

    try:
        return model.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][-1]).replace("_", "-") if err["loc"] else ""
        where = f"--{name}" if name else "options"
        raise UserError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


def parse_date(s: str | None, option: str = "--expires", relative: bool = False) -> datetime | None:
    """An ISO date or time from ``option`` (UTC unless it names a zone); ``relative``: the
    message also offers a time ago (which the caller parses first)."""
    if s is None:
        return None
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        also = " or a time ago like 30m, 24h, 7d" if relative else ""
        raise UserError(
            f"{option} {s!r}: expected a date like 2027-01-31 or 2027-01-31T12:00{also}"
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def human_size(n: float) -> str:
    """Bytes in binary units labelled as such (KiB, MiB, GiB, TiB), as the web console shows
    them (``web/app.py``'s size filter), so a page and a command give one figure: SmolLM2's
    541,615,138 bytes are ``516.5 MiB`` (it said ``516.5 MB``, 1024s under a decimal label)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def interrupted(line: str, signum: int = 2) -> NoReturn:
    """Say on stderr what a Ctrl-C stopped (``interrupted <what>; <what became of it>``) and
    exit ``128 + signum``, as a shell does: 130 for SIGINT (2), 143 for SIGTERM (15). Typer
    turns a ``KeyboardInterrupt`` into a silent exit 130, so a command whose work a Ctrl-C can
    stop catches it and calls this."""
    import typer

    err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(128 + signum)


def when(dt: datetime | None) -> str:
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    no_wrap: Sequence[str] = ("id", "name"),
) -> None:
    """A table of plain text (cells are never read as markup); ids and names never wrap."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, no_wrap=c in no_wrap, overflow="fold" if c not in no_wrap else "ignore")
    for r in rows:
        t.add_row(*(Text("-" if v is None else str(v)) for v in r))
    console.print(t)
