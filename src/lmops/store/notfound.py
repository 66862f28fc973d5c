"""The store's "not found" errors, each with what to do in the CLI (a command) and in the
REST API or the gateway (a route): :class:`~lmops.core.errors.LmopsError`'s ``cli=``/``api=``;
and the one "that name is another kind of asset" error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmops.core.errors import ConflictError, NotFoundError

__all__ = ["unknown_alias", "unknown_asset", "unknown_run", "unknown_version", "wrong_kind"]


def unknown_run(run_id: str) -> NotFoundError:
    return NotFoundError(
        f"run {run_id!r} not found", cli="see `lmops runs list`", api="GET /api/runs lists them"
    )


def unknown_asset(name: str, known: Sequence[str] = ()) -> NotFoundError:
    """``known``: the names there are; a close one is offered (``smoll`` -> ``smol``)."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    if close:
        hint = f"did you mean {close[0]!r}?"
        return NotFoundError(f"asset {name!r} not found", cli=hint, api=hint)
    return NotFoundError(
        f"asset {name!r} not found",
        cli="see `lmops assets list`",
        api="GET /api/assets lists them",
    )


def unknown_alias(ref: Any, known: Sequence[str] = ()) -> NotFoundError:
    """``known``: the asset's aliases; a close one is offered before setting a new one, so
    that a typo is not made an alias."""
    import difflib

    what = f"alias {ref.alias!r} of asset {ref.name!r} not found"
    close = difflib.get_close_matches(ref.alias, list(known), n=1, cutoff=0.6)
    if close:
        hint = f"did you mean {ref.name}@{close[0]}?"
        return NotFoundError(what, cli=hint, api=hint)
    return NotFoundError(
        what,
        cli=f"set it with `lmops assets alias {ref.name}:N {ref.alias}`",
        api=f"set it with POST /api/assets/{ref.name}:N/alias",
    )


def unknown_version(ref: Any) -> NotFoundError:
    return NotFoundError(
        f"{ref} not found",
        cli=f"see `lmops assets show {ref.name}`",
        api=f"GET /api/assets/{ref.name} lists its versions",
    )


def wrong_kind(name: str, kind: str, wanted: str) -> ConflictError:
    """Asset ``name`` is a ``kind``, so no ``wanted`` can be registered under its name
    (said by ``register``, and by a job before its work when it checks its output name)."""
    return ConflictError(
        f"asset {name!r} is a {kind}, not a {wanted}; choose another name or register it as a "
        + kind
    )
