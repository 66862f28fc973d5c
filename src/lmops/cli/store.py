"""``lmops store``: the store as a whole (copy it to another database and artifact root)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from lmops.cli._output import console, err_console, human_size, print_json
from lmops.core.errors import UserError

app = typer.Typer(
    help="The store as a whole: copy it to PostgreSQL + object storage, or to a backup folder.",
    no_args_is_help=True,
)


def _destination(
    to_home: Path | None, to_database: str | None, to_artifacts: str | None
) -> tuple[str, str]:
    if to_home is not None:
        if to_database or to_artifacts:
            raise UserError(
                "--to-home DIR already names the database (DIR/lmops.db) and the artifacts "
                "(DIR/artifacts): give it alone, or --to-database with --to-artifacts"
            )
        home = to_home.expanduser().resolve()
        return f"sqlite:///{home / 'lmops.db'}", str(home / "artifacts")
    if not to_database or not to_artifacts:
        missing = "--to-artifacts" if to_database else "--to-database"
        raise UserError(
            f"{missing} is missing: give --to-database URL and --to-artifacts ROOT (the "
            "source's own root shares its blobs), or --to-home DIR for a folder that is "
            "itself an LMOPS_HOME"
        )
    return to_database, to_artifacts


@app.command("copy")
def copy_cmd(
    to_home: Annotated[
        Path | None,
        typer.Option(
            "--to-home",
            help="A folder to become a complete LMOPS_HOME (DIR/lmops.db + DIR/artifacts): a backup.",
        ),
    ] = None,
    to_database: Annotated[
        str | None,
        typer.Option(
            "--to-database",
            help="A new, empty database: postgresql://user:pass@host/db or sqlite:////path.db.",
        ),
    ] = None,
    to_artifacts: Annotated[
        str | None,
        typer.Option("--to-artifacts", help="Where the blobs go: s3://bucket/prefix or a folder."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be copied; write nothing.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Copy this store (LMOPS_HOME / LMOPS_DATABASE_URL / LMOPS_ARTIFACTS) into a new database
    and artifact root, ids, lineage, keys, runs, request log and audit included.

    Blobs first (each hashed on the way, skipped if already there: a re-run resumes), then
    every row in one transaction, so the destination is complete or empty. The source is
    only read."""
    from lmops.core.config import Settings, mask_url
    from lmops.core.progress import Progress
    from lmops.store.copy import copy_store

    database, artifacts = _destination(to_home, to_database, to_artifacts)
    settings = Settings.from_env()
    with contextlib.ExitStack() as stack:
        bar: list[Progress] = []

        def on_total(n: int) -> None:
            p = Progress(total=n, label="blobs", unit="blobs", enabled=not json_ and n > 0)
            bar.append(stack.enter_context(p))

        def progress(n: int, what: str) -> None:
            bar[0].describe(what)
            bar[0].advance(n)

        report = copy_store(
            settings,
            database,
            artifacts,
            dry_run=dry_run,
            actor=_user(),
            progress=progress,
            on_total=on_total,
            home=to_home.expanduser().resolve() if to_home is not None else None,
        )
    if json_:
        print_json(report.to_json())
        return
    verb = "would copy" if dry_run else "copied"
    rows = report.rows
    main = ("assets", "versions", "runs", "api_keys", "request_log", "audit")
    parts = [f"{rows[k]:,} {k}" for k in main if rows.get(k)]
    others = sum(n for k, n in rows.items() if k not in main)
    console.print(
        f"{verb} the store to {report.database} + {report.artifacts}"
        + ("" if dry_run else f" in {report.seconds:.1f}s"),
        markup=False,
        soft_wrap=True,
    )
    console.print(
        f"  rows: {', '.join(parts) or 'none'}" + (f" (+{others:,} other rows)" if others else ""),
        markup=False,
    )
    console.print(
        f"  blobs: {report.blobs_copied:,} {'to copy' if dry_run else 'copied'} "
        f"({human_size(report.bytes_copied)}), {report.blobs_present:,} already there",
        markup=False,
    )
    if report.logs_copied:
        done = "to copy" if dry_run else "copied"
        console.print(f"  run logs: {report.logs_copied:,} {done} into the new home", markup=False)
    if report.external:
        console.print(
            f"  {report.external} external reference(s) keep their paths on this machine",
            markup=False,
        )
    for path, why in report.left_behind.items():
        err_console.print(f"  not copied: {path}: {why}", markup=False, soft_wrap=True)
    if not dry_run:
        if to_home is not None:
            use = f"LMOPS_HOME={to_home.expanduser().resolve()}"
        else:
            use = f"LMOPS_DATABASE_URL={mask_url(database)} LMOPS_ARTIFACTS={mask_url(artifacts)}"
        console.print(f"  use it with: {use}", markup=False, soft_wrap=True)


def _user() -> str:
    from lmops.store.store import _local_user

    return _local_user()
