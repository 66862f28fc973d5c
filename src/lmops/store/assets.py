"""Assets and their versions, aliases and lineage.

Registration protocol (why a crash never leaves a READY version with missing bytes):

1. one transaction creates the asset if new and a ``PENDING`` version numbered
   ``max + 1`` (a unique key on (asset, version) plus retries means concurrent
   registrations never share or skip a number), with its lineage edges;
2. the bytes are copied into staging and hashed, a batch at a time; each batch's digests
   are *claimed* (rows in ``blob_claims``, committed) before the blobs are looked up or
   put in place, which is what keeps a concurrent ``gc`` off them (``ArtifactStore.gc``);
3. a second transaction records the manifest, drops the claims and flips the version to
   ``READY``.

If step 2 raises, the version becomes ``FAILED``. If the process is killed, the version
stays ``PENDING`` with its writer (host and pid) recorded; the next registration or ``gc``
on that host sees the writer is dead and marks it ``FAILED``. Only READY versions resolve.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from lmops.core.errors import ConflictError, IntegrityError, NotFoundError, UserError
from lmops.store import _rows
from lmops.store._time import aware, utcnow
from lmops.store.artifacts import Entry, manifest_digest
from lmops.store.external import absolute, external_name, external_problem, scan
from lmops.store.models import AliasRow, AssetRow, BlobClaimRow, LineageRow, RunRow, VersionRow
from lmops.store.notfound import (
    unknown_alias,
    unknown_asset,
    unknown_run,
    unknown_version,
    wrong_kind,
)
from lmops.store.refs import Ref, check_alias, check_name, parse_ref, remember_view
from lmops.store.types import (
    Asset,
    AssetKind,
    LineageEdge,
    LineageGraph,
    Version,
    VersionStatus,
)

if TYPE_CHECKING:
    from lmops.store.store import Store

__all__ = ["AssetRegistry", "register_kind"]

_KINDS: set[str] = {k.value for k in AssetKind}
EXTERNAL = "external"  # the layout (and kind) of a local path recorded without its bytes
# A PENDING version older than this is considered abandoned even if its writer's pid is
# alive (pids are reused) or it was written from another host.
STALE_PENDING_S = 24 * 3600


def register_kind(kind: str) -> None:
    """Make a new asset kind available (for stages and plugins beyond the built-ins)."""
    _KINDS.add(kind)


def known_kinds() -> list[str]:
    return sorted(_KINDS)


def _writer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _writer_dead(writer: str | None) -> bool:
    if not writer or ":" not in writer:
        return False
    host, pid = writer.rsplit(":", 1)
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class AssetRegistry:
    """Register, resolve, alias, trace, verify and delete asset versions."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store.db

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        kind: str,
        name: str,
        path: str | Path,
        *,
        metadata: dict[str, Any] | None = None,
        tags: Sequence[str] = (),
        description: str = "",
        inputs: Iterable[str | tuple[str, str]] = (),
        run_id: str | None = None,
        progress: Callable[[int], None] | None = None,
        follow_symlinks: bool = False,
    ) -> Version:
        """Store ``path`` (file or directory) as the next version of asset ``name``.

        ``inputs`` are references of the versions this one was made from, optionally as
        ``(ref, role)`` pairs (role defaults to ``"input"``); they are pinned to concrete
        version numbers at registration time. In a directory, a symlink pointing outside
        it is refused unless ``follow_symlinks``; one pointing inside is stored as the file
        or folder it points to (``ArtifactStore.files``).
        """
        if kind not in _KINDS:
            raise UserError(f"unknown asset kind {kind!r}; known kinds: {', '.join(known_kinds())}")
        check_name(name)
        src = Path(path).expanduser()
        if not src.exists():
            raise UserError(f"{src}: no such file or directory; nothing was registered")
        # walked (and symlinks checked) before anything is recorded
        files = (
            self._store.artifacts.files(src, follow_symlinks=follow_symlinks)
            if src.is_dir()
            else None
        )
        parents: list[tuple[Version, str]] = []
        seen: set[tuple[str, str]] = set()
        for r in inputs:  # the same version named twice (e.g. ds:1 and ds@prod) is one edge
            ref, role = (r, "input") if isinstance(r, str) else r
            parent = self.resolve(ref)
            if (parent.ref, role) not in seen:
                seen.add((parent.ref, role))
                parents.append((parent, role))
        self.sweep_abandoned(name)
        actor = self._store.actor

        def create(s: Session) -> tuple[int, int]:
            asset = s.scalar(select(AssetRow).where(AssetRow.name == name))
            if asset is None:
                asset = AssetRow(name=name, kind=kind, description=description, created_at=utcnow())
                s.add(asset)
                s.flush()
            elif asset.kind != kind:
                raise wrong_kind(name, asset.kind, kind)
            if run_id is not None and s.get(RunRow, run_id) is None:
                raise unknown_run(run_id)
            last = s.scalar(
                select(func.max(VersionRow.version)).where(VersionRow.asset_id == asset.id)
            )
            row = VersionRow(
                asset_id=asset.id,
                version=(last or 0) + 1,
                status=VersionStatus.PENDING.value,
                size=0,
                meta=dict(metadata or {}),
                tags=sorted(set(tags)),
                description=description,
                run_id=run_id,
                created_at=utcnow(),
                created_by=actor,
                writer=_writer_id(),
            )
            s.add(row)
            s.flush()
            for parent, role in parents:
                pid = s.scalar(
                    select(VersionRow.id)
                    .join(AssetRow)
                    .where(AssetRow.name == parent.asset, VersionRow.version == parent.version)
                )
                s.add(LineageRow(child_id=row.id, parent_id=pid, role=role))
            return row.id, row.version

        version_id, number = self._db.write(create)
        ref = f"{name}:{number}"
        claimed: set[str] = set()

        def claim(digests: builtins.list[str]) -> None:
            new = [d for d in digests if d not in claimed]
            if not new:
                return

            def add(s: Session) -> None:
                row = s.get(VersionRow, version_id)
                assert row is not None
                if row.status != VersionStatus.PENDING.value:
                    raise ConflictError(f"{ref} was marked {row.status} while it was being written")
                s.add_all(BlobClaimRow(version_id=version_id, digest=d) for d in new)

            self._db.write(add)
            claimed.update(new)

        try:
            layout, digest, entries = self._store.artifacts.add(
                src, progress=progress, claim=claim, follow_symlinks=follow_symlinks, files=files
            )
        except BaseException as e:  # incl. KeyboardInterrupt: never leave it PENDING
            # best effort: on the same full disk this write fails too, and the sweep of
            # abandoned versions fails it later; the error to report is the first one
            with contextlib.suppress(Exception):
                self._fail(version_id, f"{type(e).__name__}: {e}")
            raise

        def ready(s: Session) -> Version:
            row = s.get(VersionRow, version_id)
            assert row is not None
            if row.status != VersionStatus.PENDING.value:
                raise ConflictError(f"{ref} was marked {row.status} while it was being written")
            row.digest = digest
            row.layout = layout
            row.manifest = [e.to_json() for e in entries]
            row.size = sum(e.size for e in entries)
            row.status = VersionStatus.READY.value
            row.writer = None
            s.execute(delete(BlobClaimRow).where(BlobClaimRow.version_id == version_id))
            self._store.audit.record(
                s, "asset.register", ref, {"kind": kind, "digest": digest, "size": row.size}
            )
            asset = s.get(AssetRow, row.asset_id)
            assert asset is not None
            return _rows.version(row, asset)

        return self._db.write(ready)

    def _fail(self, version_id: int, error: str) -> None:
        def fail(s: Session) -> None:
            row = s.get(VersionRow, version_id)
            if row is not None and row.status == VersionStatus.PENDING.value:
                row.status = VersionStatus.FAILED.value
                row.error = error[:2000]
                row.writer = None
                s.execute(delete(BlobClaimRow).where(BlobClaimRow.version_id == version_id))
                asset = s.get(AssetRow, row.asset_id)
                assert asset is not None
                self._store.audit.record(
                    s,
                    "asset.register_failed",
                    f"{asset.name}:{row.version}",
                    {"error": error[:500]},
                )

        self._db.write(fail)

    def sweep_abandoned(self, name: str | None = None) -> int:
        """Mark PENDING versions whose writer died (or that are very old) FAILED."""
        with self._db.session() as s:
            q = select(VersionRow.id, VersionRow.writer, VersionRow.created_at).where(
                VersionRow.status == VersionStatus.PENDING.value
            )
            if name is not None:
                q = q.join(AssetRow).where(AssetRow.name == name)
            rows = s.execute(q).all()
        now = utcnow()
        n = 0
        for vid, writer, created in rows:
            created = created if created.tzinfo else created.replace(tzinfo=now.tzinfo)
            if _writer_dead(writer) or (now - created).total_seconds() > STALE_PENDING_S:
                self._fail(vid, f"abandoned: writer {writer} is gone")
                n += 1
        return n

    # -- external references ------------------------------------------------------------------
    def external(self, path: str | Path, *, copy: bool | None = None) -> Version:
        """Record the local file or folder ``path`` as a READY version of an ``external``
        asset named ``local-<basename>-<hex of the absolute path>``, and return it.

        No bytes are copied: the version keeps the absolute path (metadata ``path``,
        ``host``, ``size``, ``files``) and a manifest of each file's size and sha256; its
        digest is the content digest (see :mod:`lmops.store.external`). The same path
        holding the same bytes returns the version recorded before; other bytes at that
        path make the next version. ``copy`` (default: the ``LMOPS_COPY_INPUTS``
        setting) stores the bytes as well, as an ordinary registration of that asset.
        """
        src = absolute(path)
        copy = self._store.settings.copy_inputs if copy is None else copy
        # a copy stores the whole tree, as any registration does; a reference skips
        # hidden names (.git), which no job reads as part of a model or a data set
        now = scan(self._store, src, skip_hidden=not copy)
        name = self._external_name(src)
        meta = {
            "path": str(src),
            "host": socket.gethostname(),
            "size": now.size,
            "files": len(now.entries),
        }
        actor = self._store.actor

        def find_or_add(s: Session) -> Version | None:
            asset = s.scalar(select(AssetRow).where(AssetRow.name == name))
            if asset is not None and asset.kind != EXTERNAL:
                raise ConflictError(
                    f"asset {name!r} is a {asset.kind}, not an external reference to {src}; "
                    "rename that asset"
                )
            if asset is not None:
                layout = VersionRow.layout == EXTERNAL
                same = s.scalar(
                    select(VersionRow)
                    .where(
                        VersionRow.asset_id == asset.id,
                        VersionRow.status == VersionStatus.READY.value,
                        VersionRow.digest == now.digest,
                        ~layout if copy else layout,
                    )
                    .order_by(VersionRow.version.desc())
                    .limit(1)
                )
                if same is not None:
                    return _rows.version(same, asset)
            if copy:
                return None  # registered below, bytes and all
            if asset is None:
                asset = AssetRow(
                    name=name,
                    kind=EXTERNAL,
                    description=f"local input {src}",
                    created_at=utcnow(),
                )
                s.add(asset)
                s.flush()
            last = s.scalar(
                select(func.max(VersionRow.version)).where(VersionRow.asset_id == asset.id)
            )
            row = VersionRow(
                asset_id=asset.id,
                version=(last or 0) + 1,
                status=VersionStatus.READY.value,
                digest=now.digest,
                layout=EXTERNAL,
                manifest=[e.to_json() for e in now.entries],
                size=now.size,
                meta=meta,
                tags=[],
                description="",
                created_at=utcnow(),
                created_by=actor,
            )
            s.add(row)
            s.flush()
            ref = f"{name}:{row.version}"
            self._store.audit.record(
                s, "asset.external", ref, {"path": str(src), "digest": now.digest}
            )
            return _rows.version(row, asset)

        found = self._db.write(find_or_add)
        if found is not None:
            return found
        return self.register(EXTERNAL, name, src, metadata=meta, follow_symlinks=True)

    def record_inputs(
        self, items: Iterable[tuple[str | Path, str]], *, run_id: str | None = None
    ) -> builtins.list[tuple[str, str]]:
        """:meth:`external` for each local ``(path, role)`` a job reads; returns the
        ``(ref, role)`` pairs to pass as ``inputs=`` when it registers its output. With
        ``run_id`` they are also noted on the run (``params.local_inputs``: ref, role and
        path of each), so a run that registers nothing still says what it read."""
        out: builtins.list[tuple[str, str]] = []
        noted: builtins.list[dict[str, str]] = []
        versions: dict[Path, Version] = {}
        for path, role in items:
            src = absolute(path)
            if src not in versions:
                versions[src] = self.external(src)
            pair = (versions[src].ref, role)
            if pair not in out:
                out.append(pair)
                noted.append({"ref": pair[0], "role": role, "path": str(src)})
        if run_id is not None and noted:

            def note(s: Session) -> None:
                row = s.get(RunRow, run_id)
                if row is None:
                    raise unknown_run(run_id)
                old = list((row.params or {}).get("local_inputs") or [])
                row.params = {
                    **(row.params or {}),
                    "local_inputs": old + [n for n in noted if n not in old],
                }

            self._db.write(note)
        return out

    def _external_name(self, src: Path) -> str:
        """The asset name for ``src``; 16 hex digits when 8 are taken by another path."""
        name = external_name(src)
        with self._db.session() as s:
            metas = s.scalars(
                select(VersionRow.meta).join(AssetRow).where(AssetRow.name == name)
            ).all()
        if any((m or {}).get("path") not in (None, str(src)) for m in metas):
            return external_name(src, 16)
        return name

    # -- lookup -------------------------------------------------------------------------------
    def _asset_row(self, s: Session, name: str) -> AssetRow:
        asset = s.scalar(select(AssetRow).where(AssetRow.name == name))
        if asset is None:
            raise unknown_asset(name, s.scalars(select(AssetRow.name)).all())
        return asset

    def _aliases_by_version(self, s: Session, asset_id: int) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for a in s.scalars(select(AliasRow).where(AliasRow.asset_id == asset_id)):
            out.setdefault(a.version_id, []).append(a.alias)
        return out

    def _version_row(self, s: Session, ref: Ref, *, ready: bool) -> tuple[VersionRow, AssetRow]:
        asset = self._asset_row(s, ref.name)
        if ref.alias is not None:
            alias = s.scalar(
                select(AliasRow).where(AliasRow.asset_id == asset.id, AliasRow.alias == ref.alias)
            )
            if alias is None:
                known = s.scalars(select(AliasRow.alias).where(AliasRow.asset_id == asset.id))
                raise unknown_alias(ref, sorted(known))
            row = s.get(VersionRow, alias.version_id)
        elif ref.version is not None:
            row = s.scalar(
                select(VersionRow).where(
                    VersionRow.asset_id == asset.id, VersionRow.version == ref.version
                )
            )
            if row is None:
                raise unknown_version(ref)
        else:
            row = s.scalar(
                select(VersionRow)
                .where(
                    VersionRow.asset_id == asset.id,
                    VersionRow.status == VersionStatus.READY.value,
                )
                .order_by(VersionRow.version.desc())
                .limit(1)
            )
            if row is None:
                raise NotFoundError(f"asset {ref.name!r} has no READY version")
        assert row is not None
        if ready and row.status != VersionStatus.READY.value:
            raise NotFoundError(
                f"{ref.name}:{row.version} is {row.status}, not READY; use a READY version"
            )
        return row, asset

    def get(self, ref: str) -> Version:
        """The version ``ref`` names, in any status."""
        with self._db.session() as s:
            row, asset = self._version_row(s, parse_ref(ref), ready=False)
            return _rows.version(row, asset, self._aliases_by_version(s, asset.id).get(row.id))

    def resolve(self, ref: str) -> Version:
        """The READY version ``ref`` names; ``NotFoundError`` otherwise."""
        with self._db.session() as s:
            row, asset = self._version_row(s, parse_ref(ref), ready=True)
            return _rows.version(row, asset, self._aliases_by_version(s, asset.id).get(row.id))

    def manifest(self, ref: str) -> tuple[Version, list[Entry]]:
        with self._db.session() as s:
            row, asset = self._version_row(s, parse_ref(ref), ready=True)
            entries = [Entry(**e) for e in row.manifest or []]
            return _rows.version(row, asset), entries

    def path(self, ref: str) -> Path:
        """A local read-only path with the version's content (file, or directory).

        For an external reference, the path it recorded, after checking (through the hash
        cache) that it still holds the recorded bytes; a ``UserError`` says when it no
        longer exists or changed. The first call for a content builds its view and checks every file against its
        digest (``IntegrityError`` naming the version and file if the bytes are corrupt or
        missing); later calls reuse the view."""
        v, entries = self.manifest(ref)
        assert v.layout is not None
        if v.layout == EXTERNAL:  # the recorded path, while it still holds those bytes
            problem = external_problem(self._store, v, entries, rehash=False)
            if problem is not None:
                raise UserError(f"{v.ref}: {problem}")
            return Path(v.metadata["path"])
        try:
            view = self._store.artifacts.materialize(v.layout, entries, label=v.ref)
        except IntegrityError:
            # A running gc may have a blob moved aside for a moment (ArtifactStore.gc):
            # once it is done, the blob is back if a version references it.
            with self._db.exclusive("gc"):
                view = self._store.artifacts.materialize(v.layout, entries, label=v.ref)
        # errors about its files name the version (name_views); a file's view is its folder
        remember_view(view.parent if v.layout == "file" else view, v.ref)
        return view

    def exists(self, ref: str) -> bool:
        try:
            self.resolve(ref)
        except NotFoundError:
            return False
        return True

    def list(self, kind: str | None = None) -> builtins.list[Asset]:
        """Every asset (without its version list), with the latest READY number and aliases."""
        with self._db.session() as s:
            q = select(AssetRow).order_by(AssetRow.name)
            if kind is not None:
                q = q.where(AssetRow.kind == kind)
            assets = list(s.scalars(q))
            latest = dict(
                s.execute(
                    select(VersionRow.asset_id, func.max(VersionRow.version))
                    .where(VersionRow.status == VersionStatus.READY.value)
                    .group_by(VersionRow.asset_id)
                ).all()
            )
            alias_rows = s.execute(
                select(AliasRow.asset_id, AliasRow.alias, VersionRow.version).join(
                    VersionRow, VersionRow.id == AliasRow.version_id
                )
            ).all()
        aliases: dict[int, dict[str, int]] = {}
        for asset_id, alias, number in alias_rows:
            aliases.setdefault(asset_id, {})[alias] = number
        return [
            Asset(
                name=a.name,
                kind=a.kind,
                description=a.description,
                created_at=aware(a.created_at),
                latest=latest.get(a.id),
                aliases=aliases.get(a.id, {}),
            )
            for a in assets
        ]

    def show(self, name: str) -> Asset:
        """One asset with all its versions."""
        with self._db.session() as s:
            asset = self._asset_row(s, check_name(name))
            by_version = self._aliases_by_version(s, asset.id)
            rows = list(
                s.scalars(
                    select(VersionRow)
                    .where(VersionRow.asset_id == asset.id)
                    .order_by(VersionRow.version)
                )
            )
            versions = [_rows.version(r, asset, by_version.get(r.id)) for r in rows]
        ready = [v.version for v in versions if v.status == VersionStatus.READY]
        return Asset(
            name=asset.name,
            kind=asset.kind,
            description=asset.description,
            created_at=aware(asset.created_at),
            latest=max(ready) if ready else None,
            aliases={a: v.version for v in versions for a in v.aliases},
            versions=versions,
        )

    # -- aliases ------------------------------------------------------------------------------
    def alias(self, ref: str, alias: str) -> Version:
        """Point ``alias`` of the asset at the READY version ``ref`` (moving it if set)."""
        check_alias(alias)
        target = self.resolve(ref)

        def move(s: Session) -> str | None:
            asset = self._asset_row(s, target.asset)
            vid = s.scalar(
                select(VersionRow.id).where(
                    VersionRow.asset_id == asset.id, VersionRow.version == target.version
                )
            )
            assert vid is not None
            row = s.scalar(
                select(AliasRow).where(AliasRow.asset_id == asset.id, AliasRow.alias == alias)
            )
            previous = None
            if row is None:
                s.add(AliasRow(asset_id=asset.id, alias=alias, version_id=vid, updated_at=utcnow()))
            else:
                old = s.get(VersionRow, row.version_id)
                previous = f"{asset.name}:{old.version}" if old else None
                row.version_id = vid
                row.updated_at = utcnow()
            self._store.audit.record(
                s, "asset.alias", f"{target.asset}@{alias}", {"to": target.ref, "from": previous}
            )
            return previous

        self._db.write(move)
        return self.resolve(f"{target.asset}@{alias}")

    def unalias(self, name: str, alias: str) -> None:
        def drop(s: Session) -> None:
            asset = self._asset_row(s, name)
            row = s.scalar(
                select(AliasRow).where(AliasRow.asset_id == asset.id, AliasRow.alias == alias)
            )
            if row is None:
                raise NotFoundError(f"alias {alias!r} of asset {name!r} not found")
            s.delete(row)
            self._store.audit.record(s, "asset.unalias", f"{name}@{alias}", {})

        self._db.write(drop)

    # -- lineage ------------------------------------------------------------------------------
    def lineage(self, ref: str, depth: int | None = None) -> LineageGraph:
        """Upstream (what it was made from) and downstream (what was made from it)."""
        root = self.get(ref)
        with self._db.session() as s:
            id_of = {
                (n, v): i
                for i, n, v in s.execute(
                    select(VersionRow.id, AssetRow.name, VersionRow.version).join(AssetRow)
                ).all()
            }
            ref_of = {i: f"{n}:{v}" for (n, v), i in id_of.items()}
            edges = s.execute(
                select(LineageRow.child_id, LineageRow.parent_id, LineageRow.role)
            ).all()
            root_id = id_of[(root.asset, root.version)]

            def walk(start: int, up: bool) -> tuple[set[int], builtins.list[LineageEdge]]:
                seen, frontier, out = {start}, [start], []
                level = 0
                while frontier and (depth is None or level < depth):
                    nxt = []
                    for node in frontier:
                        for child, parent, role in edges:
                            src, dst = (child, parent) if up else (parent, child)
                            if src != node:
                                continue
                            out.append(
                                LineageEdge(child=ref_of[child], parent=ref_of[parent], role=role)
                            )
                            if dst not in seen:
                                seen.add(dst)
                                nxt.append(dst)
                    frontier, level = nxt, level + 1
                return seen, out

            up_ids, up_edges = walk(root_id, True)
            down_ids, down_edges = walk(root_id, False)
            nodes: dict[str, Version] = {}
            runs: dict[str, str | None] = {}
            ids = up_ids | down_ids
            aliases: dict[int, list[str]] = {}
            for a in s.scalars(select(AliasRow).where(AliasRow.version_id.in_(ids))):
                aliases.setdefault(a.version_id, []).append(a.alias)
            for vid in ids:
                row = s.get(VersionRow, vid)
                assert row is not None
                asset = s.get(AssetRow, row.asset_id)
                assert asset is not None
                v = _rows.version(row, asset, aliases.get(vid))
                nodes[v.ref] = v
                runs[v.ref] = row.run_id
        return LineageGraph(
            root=root.ref, nodes=nodes, upstream=up_edges, downstream=down_edges, runs=runs
        )

    # -- integrity ----------------------------------------------------------------------------
    def verify(self, ref: str | None = None) -> dict[str, builtins.list[str]]:
        """Re-hash stored bytes. Returns ``{version ref: [problems]}`` for every checked
        version (an empty list means intact). An external reference's path is read again
        and its problem, if any, says it changed or is gone (its ``layout`` is
        ``external``: nothing in the store is damaged)."""
        with self._db.session() as s:
            q = (
                select(VersionRow, AssetRow)
                .join(AssetRow)
                .where(VersionRow.status == VersionStatus.READY.value)
                .order_by(AssetRow.name, VersionRow.version)
            )
            if ref is not None:
                r = parse_ref(ref)
                if r.version is None and r.alias is None:
                    q = q.where(AssetRow.name == r.name)
                    self._asset_row(s, r.name)
                else:
                    row, _ = self._version_row(s, r, ready=True)
                    q = q.where(VersionRow.id == row.id)
            rows = s.execute(q).all()
        report: dict[str, builtins.list[str]] = {}
        for row, asset in rows:
            entries = [Entry(**e) for e in row.manifest or []]
            if row.layout == EXTERNAL:  # re-read the local path; no stored bytes to check
                v = _rows.version(row, asset)
                problem = external_problem(self._store, v, entries, rehash=True)
                report[v.ref] = [problem] if problem else []
                continue
            problems = self._store.artifacts.verify(entries)
            if problems:  # not a gc's blob moved aside for a moment? (see path())
                with self._db.exclusive("gc"):
                    problems = self._store.artifacts.verify(entries)
            expected = entries[0].digest if row.layout == "file" else manifest_digest(entries)
            if expected != row.digest:
                problems.append(
                    f"manifest digest {expected[:12]} != recorded {str(row.digest)[:12]}"
                )
            report[f"{asset.name}:{row.version}"] = problems
        return report

    def check(self, ref: str) -> None:
        """Raise ``IntegrityError`` if the version's bytes are missing or altered."""
        problems = self.verify(ref)
        bad = {k: v for k, v in problems.items() if v}
        if bad:
            k, v = next(iter(bad.items()))
            raise IntegrityError(f"{k}: {v[0]}")

    # -- deletion -----------------------------------------------------------------------------
    def delete(self, ref: str, *, force: bool = False) -> builtins.list[str]:
        """Delete one version (``name:N``/``name@alias``) or every version of ``name``.

        Versions are marked DELETED (numbers are never reused and lineage stays readable);
        their aliases are removed; ``gc`` frees the bytes. A version an alias points to is
        refused (``ConflictError`` naming the aliases: a deployment or pipeline may follow
        them) unless ``force`` or the ref names that very alias.
        """
        r = parse_ref(ref)

        def delete(s: Session) -> builtins.list[str]:
            if r.version is None and r.alias is None:
                asset = self._asset_row(s, r.name)
                rows = list(
                    s.scalars(
                        select(VersionRow).where(
                            VersionRow.asset_id == asset.id,
                            VersionRow.status != VersionStatus.DELETED.value,
                        )
                    )
                )
            else:
                row, asset = self._version_row(s, r, ready=False)
                if row.status == VersionStatus.DELETED.value:
                    raise NotFoundError(f"{asset.name}:{row.version} is already deleted")
                rows = [row]
            if any(row.status == VersionStatus.PENDING.value for row in rows):
                raise ConflictError(f"{ref}: a version is still being written; retry later")
            aliased = [
                (a, row)
                for row in rows
                for a in s.scalars(select(AliasRow).where(AliasRow.version_id == row.id))
            ]
            if any(a.alias != r.alias for a, _ in aliased) and not force:
                named = ", ".join(
                    f"{asset.name}@{a.alias} -> {asset.name}:{row.version}" for a, row in aliased
                )
                raise ConflictError(
                    f"{ref}: aliases point at it ({named}); deployments and pipelines that "
                    "name them would lose it: move them first (lmops assets alias), or force "
                    "the delete (lmops assets delete --force; force=true in the API)"
                )
            for a, _ in aliased:
                s.delete(a)
            for row in rows:
                row.status = VersionStatus.DELETED.value
            deleted = [f"{asset.name}:{row.version}" for row in rows]
            self._store.audit.record(s, "asset.delete", ref, {"versions": deleted})
            return deleted

        return self._db.write(delete)

    def referenced(self) -> tuple[set[str], set[str]]:
        """Blob digests and view keys still used by PENDING or READY versions: the digests
        PENDING versions claimed, and those in READY (or PENDING) manifests.

        Claims are read *before* manifests, in separate statements: a version drops its
        claims in the transaction that records its manifest, so a claim gone from the first
        read is a manifest present in the second (no snapshot across statements needed,
        which SQLite's driver and PostgreSQL's READ COMMITTED would not give)."""
        digests: set[str] = set()
        views: set[str] = set()
        with self._db.session() as s:
            digests.update(s.scalars(select(BlobClaimRow.digest)))
        with self._db.session() as s:
            for (manifest,) in s.execute(
                select(VersionRow.manifest).where(
                    VersionRow.status.in_([VersionStatus.READY.value, VersionStatus.PENDING.value]),
                    # an external reference's manifest names files outside the store
                    or_(VersionRow.layout.is_(None), VersionRow.layout != EXTERNAL),
                )
            ):
                entries = [Entry(**e) for e in manifest or []]
                digests.update(e.digest for e in entries)
                if entries:
                    views.add(manifest_digest(entries))
        return digests, views
