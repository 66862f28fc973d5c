"""``lmops keys``: API keys of the server and the gateway. A secret is printed once (by
``create`` and ``rotate``) and stored hashed; ``update`` changes limits, never the secret."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from lmops.cli._output import console, open_store, parse_date, print_json, table, when
from lmops.core.errors import UserError

app = typer.Typer(
    help="API keys for the server (secrets shown once, stored hashed).", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="A unique name for the key (shown in logs).")],
    role: Annotated[str, typer.Option(help="admin or user")] = "user",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute limit.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute limit.")] = None,
    expires: Annotated[str | None, typer.Option(help="Expiry date (ISO, UTC).")] = None,
    scope: Annotated[
        list[str],
        typer.Option("--scope", help="Deployment this key may call (repeat; default all)."),
    ] = [],  # noqa: B006
    json_: JsonOpt = False,
) -> None:
    """Create a key and print its secret once."""
    record, secret = open_store().keys.create(
        name, role=role, rpm=rpm, tpm=tpm, expires_at=parse_date(expires), scopes=scope or None
    )
    if json_:
        print_json({"key": secret, "record": record})
    else:
        console.print(
            f"created key [bold]{record.name}[/] (role {record.role}); store this secret now, it is not shown again:"
        )
        sys.stdout.write(secret + "\n")


@app.command("list")
def keys_list(json_: JsonOpt = False) -> None:
    """Keys with prefix, role, limits and state (never the secret)."""
    keys = open_store().keys.list()
    if json_:
        print_json(keys)
        return
    table(
        None,
        ["name", "prefix", "role", "rpm", "tpm", "scopes", "expires", "state"],
        [
            [
                k.name,
                k.prefix + "…",
                k.role,
                k.rpm,
                k.tpm,
                _scopes(k.scopes),
                when(k.expires_at),
                "active" if k.active else ("revoked" if k.revoked_at else "expired"),
            ]
            for k in keys
        ],
    )


@app.command("revoke")
def keys_revoke(name: str, json_: JsonOpt = False) -> None:
    """Revoke a key; effective for the next request."""
    k = open_store().keys.revoke(name)
    if json_:
        print_json(k)
    else:
        console.print(f"revoked key {k.name}")


def _either(value: Any, cleared: bool, option: str, clear: str) -> Any:
    """The change one pair of options asks for: ``value``, ``None`` (``clear``), or
    nothing (``...``) when neither was given."""
    if value is not None and cleared:
        raise UserError(f"give {option} or {clear}, not both")
    if cleared:
        return None
    return ... if value is None else value


def _scopes(scopes: list[str] | None) -> str:
    return ", ".join(scopes) if scopes else "all"


def _shown(field: str, value: Any) -> str:
    if field == "scopes":
        return _scopes(value)
    if field == "expires_at":
        return when(value) if value else "never"
    return "none" if value is None else str(value)


@app.command("update")
def keys_update(
    name: str,
    rpm: Annotated[int | None, typer.Option(help="New requests per minute limit.")] = None,
    no_rpm: Annotated[bool, typer.Option("--no-rpm", help="Remove the rpm limit.")] = False,
    tpm: Annotated[int | None, typer.Option(help="New tokens per minute limit.")] = None,
    no_tpm: Annotated[bool, typer.Option("--no-tpm", help="Remove the tpm limit.")] = False,
    scope: Annotated[
        list[str],
        typer.Option("--scope", help="Deployment the key may call (repeat; replaces the list)."),
    ] = [],  # noqa: B006
    all_scopes: Annotated[
        bool, typer.Option("--all-scopes", help="Let the key call every deployment.")
    ] = False,
    expires: Annotated[str | None, typer.Option(help="New expiry date (ISO, UTC).")] = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="Never expire.")] = False,
    role: Annotated[str | None, typer.Option(help="admin or user")] = None,
    json_: JsonOpt = False,
) -> None:
    """Change a key's limits, deployments, expiry or role; its secret stays the same.

    A running gateway applies the change within a second, without a restart."""
    asked = {
        "rpm": _either(rpm, no_rpm, "--rpm N", "--no-rpm"),
        "tpm": _either(tpm, no_tpm, "--tpm N", "--no-tpm"),
        "scopes": _either(scope or None, all_scopes, "--scope", "--all-scopes"),
        "expires_at": _either(parse_date(expires), no_expiry, "--expires", "--no-expiry"),
        "role": ... if role is None else role,
    }
    changes = {k: v for k, v in asked.items() if v is not ...}
    if not changes:
        raise UserError(
            f"nothing to change for key {name!r}: give --rpm N/--no-rpm, --tpm N/--no-tpm, "
            "--scope D/--all-scopes, --expires DATE/--no-expiry or --role R"
        )
    store = open_store()
    before = store.keys.get(name)
    after = store.keys.update(name, **changes)
    if json_:
        print_json(after)
        return
    diff = [
        f"{field.removesuffix('_at')} {_shown(field, getattr(before, field))} -> "
        f"{_shown(field, getattr(after, field))}"
        for field in changes
        if getattr(before, field) != getattr(after, field)
    ]
    if diff:
        console.print(f"updated key {after.name}: {', '.join(diff)}", highlight=False)
    else:
        console.print(f"key {after.name} unchanged: it already has these values")


@app.command("rotate")
def keys_rotate(name: str, json_: JsonOpt = False) -> None:
    """Give a key a new secret and print it once; name, role, limits and usage stay.

    The old secret stops working at once (a running gateway: within a second)."""
    record, secret = open_store().keys.rotate(name)
    if json_:
        print_json({"key": secret, "record": record})
    else:
        console.print(
            f"rotated key [bold]{record.name}[/] (role {record.role}); the old secret no longer "
            "works. Store this secret now, it is not shown again:"
        )
        sys.stdout.write(secret + "\n")
