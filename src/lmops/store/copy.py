"""Copy a whole store into another database and artifact root.

The move from a laptop (SQLite + local files) to a server (PostgreSQL + object storage),
a backup into a folder that is itself an ``LMOPS_HOME``, or the way back. Every asset,
version, alias, lineage edge, run with its metrics, API key (hashed, as stored), request
log row, step cache entry and audit event keeps its id, so lineage, traces and audit read
the same on the other side.

Order, and why a failed copy loses nothing and never leaves a half-filled destination:

1. **Blobs**: every blob that a READY or PENDING version's manifest names is streamed from
   the source, hashed on the way and published in the destination under its digest, unless
   an intact copy is there already; so a run after a failure resumes at the first missing
   blob. A source blob that is missing, or whose bytes do not hash to its name, stops the
   copy before any row is written, naming the versions that use it.
2. **Rows**: every table, in foreign-key order, read from one source snapshot and written
   in one destination transaction. Blobs of versions registered in the source since step 1
   are copied before it commits. Row counts are compared before the commit; on PostgreSQL
   the id sequences are moved past the copied ids after it.

The destination database must hold no rows (a new one: its schema is made by the usual
migrations); a failed step 2 leaves it empty again. JSON columns are copied as their text,
so a JSON ``null`` stays a JSON ``null`` and a SQL ``NULL`` a SQL ``NULL``.

Not copied: ``inflight`` (requests in flight on the source's servers), ``alembic_version``
(the destination's own), and what lives beside the database in ``LMOPS_HOME`` rather than in
it (run logs, trusted signer keys, the console's session key, caches and work folders):
the report names those that exist. External references (``assets register --external``)
keep their paths, which name files on the source machine.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Integer,
    Table,
    Text,
    bindparam,
    cast,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSON as PG_JSON
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from lmops.core.config import Settings, mask_url
from lmops.core.errors import IntegrityError, LmopsError, StoreError, UserError
from lmops.store._time import aware, utcnow
from lmops.store.artifacts import ArtifactStore, LocalBlobs
from lmops.store.db import Database, sqlite_file
from lmops.store.models import AuditRow, Base, VersionRow
from lmops.store.types import VersionStatus

__all__ = ["CopyReport", "copy_store"]

SKIPPED_TABLES = frozenset({"inflight"})
BATCH_ROWS = 1000
# What lives in LMOPS_HOME beside the database and the blobs, and why it stays behind.
HOME_FILES = {
    "runs": "run folders: logs, checkpoints, plots (runs keep their paths on this machine)",
    "trusted-keys": "trusted package signers: copy the .pub files to each machine that serves",
    "console.key": "the console's session key (sessions end; a new key is made)",
    "monitor": "Prometheus text files written by monitor checks",
    "work": "data run work folders",
    "eval-partial": "partial results of interrupted evals",
    "prompt-optimize": "prompt optimisation journals",
}


@dataclass
class CopyReport:
    """What :func:`copy_store` did (or, with ``dry_run``, would do)."""

    source_database: str
    source_artifacts: str
    database: str
    artifacts: str
    rows: dict[str, int] = field(default_factory=dict)
    blobs_copied: int = 0
    blobs_present: int = 0
    bytes_copied: int = 0
    external: int = 0  # versions whose files stay where they are, on the source machine
    logs_copied: int = 0  # run logs copied into the destination home (``home``)
    left_behind: dict[str, str] = field(default_factory=dict)  # path -> why
    seconds: float = 0.0
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _tables() -> list[Table]:
    return [t for t in Base.metadata.sorted_tables if t.name not in SKIPPED_TABLES]


def _same_database(a: Database, b: Database) -> bool:
    pa, pb = a.sqlite_path, b.sqlite_path
    if pa is not None and pb is not None:
        return Path(pa).resolve() == Path(pb).resolve()
    return a.url == b.url


# ---------------------------------------------------------------------------- blobs
def _wanted_blobs(conn: Connection) -> tuple[dict[str, int], dict[str, list[str]], int]:
    """(digest -> size, digest -> the versions naming it, external versions) of the READY
    and PENDING versions readable through ``conn``."""
    from lmops.store.assets import EXTERNAL
    from lmops.store.models import AssetRow

    sizes: dict[str, int] = {}
    users: dict[str, list[str]] = {}
    external = 0
    q = (
        select(
            AssetRow.kind, AssetRow.name, VersionRow.version, VersionRow.layout, VersionRow.manifest
        )
        .join(AssetRow, AssetRow.id == VersionRow.asset_id)
        .where(VersionRow.status.in_([VersionStatus.READY.value, VersionStatus.PENDING.value]))
    )
    for kind, name, version, layout, manifest in conn.execute(q):
        if layout == EXTERNAL:
            external += 1
            continue
        for e in manifest or []:
            sizes[e["digest"]] = int(e["size"])
            users.setdefault(e["digest"], []).append(f"{kind} {name}:{version} ({e['path']})")
    return sizes, users, external


@contextlib.contextmanager
def _readable(src: ArtifactStore, digest: str, scratch: Path) -> Iterator[Path]:
    """A local path holding the source blob ``digest``: the blob itself on a local root,
    a downloaded temp copy on a remote one."""
    if isinstance(src.blobs, LocalBlobs):
        yield src.blobs.path(digest)
        return
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / digest
        src.blobs.fetch(digest, path)
        yield path


def _present(dst: ArtifactStore, digest: str, size: int) -> bool:
    try:
        return dst.blobs.has(digest) and dst.blobs.intact(digest, size)
    except FileNotFoundError:
        return False


def _copy_blob(src: ArtifactStore, dst: ArtifactStore, digest: str, scratch: Path) -> int:
    """Copy one blob, hashing it on the way; returns its size. ``IntegrityError`` when the
    source bytes do not hash to ``digest``, ``FileNotFoundError`` when it is gone."""
    with _readable(src, digest, scratch) as path, dst.staged(path) as staged:
        if staged.digest != digest:
            raise IntegrityError(
                f"blob {digest[:12]} is corrupt in {src.display} (its bytes hash to "
                f"{staged.digest[:12]})"
            )
        dst.publish(staged)
        return staged.size


class _Blobs:
    """Blob copying with its counts, shared by both steps."""

    def __init__(
        self,
        src: ArtifactStore,
        dst: ArtifactStore,
        scratch: Path,
        report: CopyReport,
        progress: Callable[[int, str], None] | None,
    ) -> None:
        self.src, self.dst, self.scratch = src, dst, scratch
        self.report, self.progress = report, progress
        self.done: set[str] = set()

    def copy(self, sizes: dict[str, int], users: dict[str, list[str]], *, dry_run: bool) -> None:
        problems: list[str] = []
        for digest in sorted(sizes.keys() - self.done):
            size = sizes[digest]
            if _present(self.dst, digest, size):
                self.report.blobs_present += 1
            elif dry_run:
                if not self.src.blobs.has(digest):
                    problems.append(f"blob {digest[:12]} is missing from {self.src.display}")
                self.report.blobs_copied += 1
                self.report.bytes_copied += size
            else:
                try:
                    self.report.bytes_copied += _copy_blob(self.src, self.dst, digest, self.scratch)
                    self.report.blobs_copied += 1
                except FileNotFoundError:
                    problems.append(f"blob {digest[:12]} is missing from {self.src.display}")
                except IntegrityError as e:
                    problems.append(str(e))
            self.done.add(digest)
            if self.progress is not None:
                self.progress(1, digest[:12])
            if problems and problems[-1].startswith(f"blob {digest[:12]}"):
                problems[-1] += f", used by {', '.join(users[digest][:3])}"
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise IntegrityError(
                "; ".join(problems[:3]) + more + ": nothing was written to the destination "
                "database (blobs copied so far are kept, and a new run skips them). Check the "
                "source with `lmops assets verify NAME`; repair a version by registering its "
                "files again, or delete it, then copy again"
            )


# ---------------------------------------------------------------------------- rows
def _reason(e: DBAPIError) -> str:
    """The driver's first line, without the statement and parameters SQLAlchemy adds."""
    return mask_url(str(e.orig).strip().splitlines()[0]) if e.orig is not None else type(e).__name__


def _row_counts(conn: Connection, tables: list[Table]) -> dict[str, int]:
    return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in tables}  # fmt: skip


def _require_empty(db: Database) -> None:
    try:
        with db.engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            counts = _row_counts(conn, [t for t in _tables() if t.name in present])
    except DBAPIError as e:
        raise StoreError(
            f"cannot open database {db.masked_url}: {mask_url(str(e.orig)).splitlines()[0]}; "
            "check --to-database and that the server is running"
        ) from None
    held = {k: n for k, n in counts.items() if n}
    if held:
        listed = ", ".join(f"{n} {k}" for k, n in sorted(held.items())[:4])
        raise UserError(
            f"destination database {db.masked_url} is not empty (it holds {listed}): "
            "`lmops store copy` fills a new database only; create an empty one, or point "
            "--to-database at another"
        )


def _read_columns(t: Table) -> list[Any]:
    """The columns of ``t`` as read for copying: JSON as its text."""
    return [cast(c, Text).label(c.name) if isinstance(c.type, JSON) else c for c in t.columns]


def _insert(t: Table, postgres: bool) -> Any:
    """An INSERT of every column of ``t`` from bind parameters of the same names; JSON
    text goes in as written (cast to ``json`` on PostgreSQL, as is on SQLite)."""
    values: dict[str, Any] = {}
    for c in t.columns:
        if isinstance(c.type, JSON):
            p = bindparam(c.name, type_=Text)
            values[c.name] = cast(p, PG_JSON) if postgres else p
        else:
            values[c.name] = bindparam(c.name, type_=c.type)
    return insert(t).values(values)


def _rows_of(t: Table, batch: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows read from ``t`` as insert parameters: datetimes as UTC-aware values (SQLite
    hands back naive UTC ones), so PostgreSQL never reads them in its session's zone."""
    names = [c.name for c in t.columns]
    times = [i for i, c in enumerate(t.columns) if isinstance(c.type, DateTime)]
    out = []
    for r in batch:
        values = list(r)
        for i in times:
            if values[i] is not None:
                values[i] = aware(values[i]).astimezone(UTC)  # type: ignore[union-attr]
        out.append(dict(zip(names, values, strict=True)))
    return out


@contextlib.contextmanager
def _snapshot(db: Database) -> Iterator[Connection]:
    """A connection whose reads all see one state of the database."""
    with db.engine.connect() as conn:
        if db.is_sqlite:
            conn.exec_driver_sql("BEGIN")  # pysqlite opens none before a write
        else:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        try:
            yield conn
        finally:
            conn.rollback()


def _bump_sequences(conn: Connection, tables: list[Table]) -> None:
    """Move PostgreSQL's id sequences past the ids copied in explicitly."""
    for t in tables:
        if "id" in t.c and t.c.id.primary_key and isinstance(t.c.id.type, Integer):
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{t.name}', 'id'), "
                    f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {t.name}), false)"
                )
            )


# ---------------------------------------------------------------------------- entry point
def copy_store(
    settings: Settings,
    database_url: str,
    artifacts: str,
    *,
    dry_run: bool = False,
    actor: str = "local",
    progress: Callable[[int, str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    home: Path | None = None,
) -> CopyReport:
    """Copy the store of ``settings`` into ``database_url`` + ``artifacts`` (see the module
    docstring). ``on_total(n)`` is told how many blobs step 1 looks at, ``progress(1,
    what)`` after each. With ``dry_run`` nothing is written anywhere (not even the
    destination's schema) and the report says what would be copied. ``home``: the
    destination is that ``LMOPS_HOME`` (``--to-home``): each run's ``run.log`` is copied
    into its ``runs/`` and the copied run points at it."""
    t0 = time.monotonic()
    scratch = settings.home / "cache" / "copy"
    src = ArtifactStore(settings.artifacts, settings.home / "cache")
    dst = ArtifactStore(artifacts, scratch)  # (a bad root fails before any database is made)
    src_db = Database(settings.database_url)
    # A dry run neither creates a new SQLite file nor migrates an existing database.
    file = sqlite_file(database_url)
    new_file = dry_run and file is not None and not Path(file).exists()
    try:
        # not migrated before it is known to be empty: a database of an older lmops given by
        # mistake is refused as it is, not upgraded first
        dst_db = None if new_file else Database(database_url, migrate=False)
        if dst_db is not None and _same_database(src_db, dst_db):
            raise UserError(
                f"--to-database {dst_db.masked_url} is the source database itself; "
                "give a new, empty database"
            )
        if dst_db is not None:
            _require_empty(dst_db)
            if not dry_run:
                dst_db.migrate()
    except LmopsError as e:  # its words name the variable of the source's database
        src_db.dispose()
        raise type(e)(str(e).replace("LMOPS_DATABASE_URL", "--to-database")) from None
    try:
        report = CopyReport(
            source_database=src_db.masked_url,
            source_artifacts=src.display,
            database=mask_url(database_url),
            artifacts=dst.display,
            dry_run=dry_run,
            left_behind={
                str(settings.home / name): why
                for name, why in HOME_FILES.items()
                if (settings.home / name).exists()
            },
        )
        mover = None
        if home is not None:
            mover = _LogMover(settings.runs_dir, home / "runs", report, dry_run)
            report.left_behind.pop(str(settings.home / "runs"), None)
            if settings.runs_dir.exists():
                report.left_behind[str(settings.runs_dir)] = (
                    "run folders (checkpoints, plots); their run logs were copied"
                )
        blobs = _Blobs(src, dst, scratch, report, progress)
        with src_db.engine.connect() as conn:
            sizes, users, report.external = _wanted_blobs(conn)
        if on_total is not None:
            on_total(len(sizes))
        blobs.copy(sizes, users, dry_run=dry_run)  # step 1
        tables = _tables()
        with _snapshot(src_db) as read:
            if dst_db is None or dry_run:
                report.rows = _row_counts(read, tables)
                if mover is not None:  # count the logs that would be copied
                    for (path,) in read.execute(select(Base.metadata.tables["runs"].c.log_path)):
                        mover({"log_path": path})
            else:
                with dst_db.exclusive("store-copy"), dst_db.engine.begin() as write:
                    _require_empty(dst_db)  # (a second copy may have filled it meanwhile)
                    report.rows = _copy_rows(
                        read, write, tables, postgres=not dst_db.is_sqlite, mover=mover
                    )
                    sizes, users, _ = _wanted_blobs(read)  # registered since step 1
                    blobs.copy(sizes, users, dry_run=False)
                    if not dst_db.is_sqlite:
                        _bump_sequences(write, tables)
                    write.execute(
                        insert(AuditRow).values(
                            time=utcnow(),
                            actor=actor,
                            action="store.copy",
                            target=f"from {report.source_database}"[:255],
                            origin="cli",
                            details={
                                "rows": sum(report.rows.values()),
                                "blobs": report.blobs_copied,
                            },
                        )
                    )
        if mover is not None and not dry_run:
            mover.copy()
        report.seconds = time.monotonic() - t0
        return report
    finally:
        src_db.dispose()
        if dst_db is not None:
            dst_db.dispose()


class _LogMover:
    """Copies a run's ``run.log`` into the destination home and points the row at it."""

    def __init__(self, src_runs: Path, dst_runs: Path, report: CopyReport, dry_run: bool) -> None:
        self.src_runs, self.dst_runs = src_runs, dst_runs
        self.report, self.dry_run = report, dry_run
        self.pending: list[tuple[Path, Path]] = []

    def __call__(self, row: dict[str, Any]) -> None:
        path = row.get("log_path")
        if not path:
            return
        try:
            rel = Path(path).relative_to(self.src_runs)
        except ValueError:  # a log of another home or machine: left as it is
            return
        if not Path(path).is_file():
            return
        target = self.dst_runs / rel
        if not self.dry_run:
            self.pending.append((Path(path), target))  # copied once the rows committed
            row["log_path"] = str(target)
        self.report.logs_copied += 1

    def copy(self) -> None:
        for src, target in self.pending:
            with contextlib.suppress(OSError):  # a log gone meanwhile: the row still names it
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)


def _copy_rows(
    read: Connection,
    write: Connection,
    tables: list[Table],
    *,
    postgres: bool,
    mover: _LogMover | None = None,
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tables:
        stmt = _insert(t, postgres)
        fix = mover if t.name == "runs" else None  # the runs' log paths, to a new home
        n = 0
        result = read.execution_options(yield_per=BATCH_ROWS).execute(select(*_read_columns(t)))
        for batch in result.partitions():
            rows = _rows_of(t, batch)
            if fix is not None:
                for row in rows:
                    fix(row)
            try:
                write.execute(stmt, rows)
            except DBAPIError as e:
                # named by table and ids, never by the values (request bodies, hashes)
                ids = [r.get("id", r.get("key")) for r in rows]
                raise StoreError(
                    f"cannot write table {t.name} (rows {ids[0]}..{ids[-1]}) to the destination: "
                    f"{_reason(e)}; nothing was written to the destination database"
                ) from None
            n += len(rows)
        counts[t.name] = n
    written = _row_counts(write, tables)
    # the audit row of this copy is not in yet: the counts must match exactly
    if written != counts:
        off = {k: (counts[k], written[k]) for k in counts if counts[k] != written[k]}
        raise IntegrityError(f"row counts differ after the copy (read, written): {off}")
    return counts
