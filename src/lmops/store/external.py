"""External references: the local files and folders a job reads, recorded by content.

A job that reads ``/data/train.jsonl`` or a local model folder records it with
``store.assets.external(path)`` as a version of an asset of kind ``external`` (layout
``external``): the absolute path, and a manifest of ``{path, digest, size}`` exactly like a
stored version's, but no bytes are copied. The version digest is the file's sha256, or for a
folder :func:`~lmops.store.artifacts.manifest_digest` of its manifest, so equal content has
equal digests whether it was stored or referenced, and mtimes never enter it.

Hashing a large folder on every run would be slow, so :class:`HashCache` remembers each
file's sha256 with the stat it had (size, mtime, ctime, inode) in the ``file_hashes`` table
and reads the file again only when the stat changed. A file modified less than
:data:`RACY_NS` before it was hashed is not remembered: a later write within the same
timestamp tick could leave its stat unchanged (git's "racy" index entries).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lmops.core.errors import UserError
from lmops.store._time import utcnow
from lmops.store.artifacts import Entry, hash_file, manifest_digest
from lmops.store.models import AssetRow, FileHashRow, VersionRow
from lmops.store.refs import INT64_MAX
from lmops.store.types import VersionStatus

if TYPE_CHECKING:
    from lmops.store.store import Store
    from lmops.store.types import Version

__all__ = [
    "RACY_NS",
    "HashCache",
    "Scan",
    "absolute",
    "external_name",
    "external_problem",
    "registered_copy",
    "scan",
]

RACY_NS = 2_000_000_000  # 2 s: coarser than any common filesystem's timestamps
_CHUNK = 500  # keys per IN (...) query: below every driver's parameter limit

_Sig = tuple[int, int, int, str]  # size, mtime_ns, ctime_ns, inode


def absolute(path: str | Path) -> Path:
    """``path`` made absolute without resolving symlinks: the path as the user named it
    (``~`` expanded, ``..`` folded), which is what an external reference records."""
    return Path(os.path.abspath(Path(path).expanduser()))


def external_name(path: Path, width: int = 8) -> str:
    """``local-<basename>-<hex>``: readable, and distinct for distinct absolute paths
    (``width`` hex digits of the path's sha256; the caller widens it on a collision)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", path.name).strip("-") or "root"
    return f"local-{base[:100]}-{hashlib.sha256(str(path).encode()).hexdigest()[:width]}"


def _sig(st: os.stat_result) -> _Sig:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, str(st.st_ino))


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class HashCache:
    """sha256 of local files by (host, absolute path), trusted while the stat is unchanged."""

    def __init__(self, store: Store) -> None:
        self._db = store.db
        self.host = socket.gethostname()

    def _key(self, path: Path) -> str:
        return hashlib.sha256(f"{self.host}\0{path}".encode()).hexdigest()

    def digests(self, paths: Sequence[Path], *, rehash: bool = False) -> list[tuple[str, int]]:
        """(sha256, size) of each file; ``rehash`` reads every file (``assets verify``)
        and refreshes what is remembered."""
        keys = [self._key(p) for p in paths]
        known: dict[str, tuple[_Sig, str]] = {}
        if not rehash:
            with self._db.session() as s:
                for chunk in _chunks(keys):
                    for row in s.scalars(select(FileHashRow).where(FileHashRow.key.in_(chunk))):
                        sig = (row.size, row.mtime_ns, row.ctime_ns, row.inode)
                        known[row.key] = (sig, row.sha256)
        out: list[tuple[str, int]] = []
        fresh: list[FileHashRow] = []
        for path, key in zip(paths, keys, strict=True):
            st = _stat(path)
            hit = known.get(key)
            if hit is not None and hit[0] == _sig(st):
                out.append((hit[1], st.st_size))
                continue
            digest, st, started = _hash_stable(path, st)
            out.append((digest, st.st_size))
            sig = _sig(st)
            fits = all(-INT64_MAX <= v <= INT64_MAX for v in sig[:3])  # BIGINT columns
            if fits and started - st.st_mtime_ns >= RACY_NS:
                fresh.append(
                    FileHashRow(
                        key=key,
                        host=self.host,
                        path=str(path),
                        size=sig[0],
                        mtime_ns=sig[1],
                        ctime_ns=sig[2],
                        inode=sig[3],
                        sha256=digest,
                        hashed_at=utcnow(),
                    )
                )
        if fresh:
            self._save(fresh)
        return out

    def _save(self, rows: list[FileHashRow]) -> None:
        by_key = {r.key: r for r in rows}  # the same file twice (two links to it) is one row

        def put(s: Session) -> None:
            keys = list(by_key)
            for chunk in _chunks(keys):
                s.execute(delete(FileHashRow).where(FileHashRow.key.in_(chunk)))
            # fresh objects each attempt: a retried transaction must not reuse flushed ones
            s.add_all(
                FileHashRow(
                    key=r.key,
                    host=r.host,
                    path=r.path,
                    size=r.size,
                    mtime_ns=r.mtime_ns,
                    ctime_ns=r.ctime_ns,
                    inode=r.inode,
                    sha256=r.sha256,
                    hashed_at=r.hashed_at,
                )
                for r in by_key.values()
            )

        self._db.write(put)


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror}); nothing was recorded") from None


def _hash_stable(path: Path, st: os.stat_result) -> tuple[str, os.stat_result, int]:
    """Hash ``path`` until its stat is the same before and after reading (a file still
    being written is not recorded with a digest of half its bytes)."""
    for _ in range(3):
        started = time.time_ns()
        try:
            digest = hash_file(path)
        except OSError as e:
            raise UserError(
                f"{path}: cannot read it ({e.strerror}); nothing was recorded"
            ) from None
        after = _stat(path)
        if _sig(after) == _sig(st):
            return digest, st, started
        st = after
    raise UserError(f"{path}: changed while it was being hashed; retry once it is written")


@dataclass(frozen=True, slots=True)
class Scan:
    """What a local path holds now: its layout (``file`` or ``dir``), digest and manifest."""

    path: Path
    layout: str
    digest: str
    entries: list[Entry]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)


def scan(store: Store, path: Path, *, rehash: bool = False, skip_hidden: bool = True) -> Scan:
    """Hash the file or folder ``path`` (absolute) through the hash cache. A folder is walked
    as a registration walks it (``ArtifactStore.files``), following symlinks wherever they
    point (a Hugging Face cache snapshot links into its blobs) and, with ``skip_hidden``,
    leaving out names starting with ``.`` (``.git`` is not part of a model or a data set)."""
    if path.is_file():
        items = [(path.name, path)]
        layout = "file"
    elif path.is_dir():
        walked = store.artifacts.files(path, follow_symlinks=True, skip_hidden=skip_hidden)
        items = [(rel, p) for rel, p, _plain in walked]
        layout = "dir"
    elif path.exists():
        raise UserError(f"{path}: not a regular file or folder; nothing was recorded")
    else:
        raise UserError(f"{path}: no such file or folder; nothing was recorded")
    hashed = HashCache(store).digests([p for _, p in items], rehash=rehash)
    entries = [Entry(rel, d, n) for (rel, _), (d, n) in zip(items, hashed, strict=True)]
    digest = entries[0].digest if layout == "file" else manifest_digest(entries)
    return Scan(path, layout, digest, entries)


def external_problem(store: Store, v: Version, entries: list[Entry], *, rehash: bool) -> str | None:
    """Why the path of external reference ``v`` (a version of kind ``external``) no longer holds its recorded bytes, or
    ``None``. ``rehash`` reads every file again instead of trusting the hash cache."""
    path = Path(v.metadata.get("path", ""))
    host = v.metadata.get("host")
    where = f" (recorded on host {host})" if host and host != socket.gethostname() else ""
    if not path.exists():
        return f"{path}{where} no longer exists; it was recorded as external input {v.ref}"
    try:
        now: Scan = scan(store, path, rehash=rehash)
    except UserError as e:
        return f"cannot read it again: {e}"
    if now.digest == v.digest:
        return None
    with store.db.session() as s:
        newer = s.scalar(
            select(VersionRow.version)
            .join(AssetRow)
            .where(
                AssetRow.name == v.asset,
                VersionRow.status == VersionStatus.READY.value,
                VersionRow.digest == now.digest,
            )
            .order_by(VersionRow.version.desc())
            .limit(1)
        )
    tail = "the store is intact; " + (
        f"its bytes now are {v.asset}:{newer}"
        if newer is not None
        else "a job that reads it now records it as a new version"
    )
    was_file = len(entries) == 1 and v.digest == entries[0].digest  # a folder's is not
    if was_file and now.layout == "file":
        return (
            f"{path}{where} changed since it was recorded (sha256 now {now.digest[:12]}, "
            f"recorded {str(v.digest)[:12]}); {tail}"
        )
    was = {e.path: e.digest for e in entries}
    has = {e.path: e.digest for e in now.entries}
    changed = sorted(k for k in was.keys() & has.keys() if was[k] != has[k])
    added = sorted(has.keys() - was.keys())
    removed = sorted(was.keys() - has.keys())
    first = (changed or added or removed or [""])[0]
    return (
        f"{path}{where} changed since it was recorded: {len(changed)} file(s) changed, "
        f"{len(added)} added, {len(removed)} removed"
        + (f" (first: {first})" if first else "")
        + f"; {tail}"
    )


def registered_copy(store: Store, path: Path, kinds: Collection[str]) -> Version | None:
    """The READY version of one of ``kinds`` that holds exactly the bytes of the file or
    folder ``path`` (a copy of a registered package file, a registered model's folder), or
    ``None``. The oldest one when several do: the registration a job made, with its lineage,
    before any later copy.

    Cheap when nothing matches: the sizes (a stat per file) are compared first, and only a
    path whose total some version of ``kinds`` has is hashed, through the hash cache (each
    file is read once while its stat stays the same). The whole tree counts, hidden names
    included, as a registration stores it; a path that cannot be walked matches nothing."""
    from lmops.store import _rows

    path = absolute(path)
    try:
        if path.is_file():
            layout, size = "file", path.stat().st_size
        elif path.is_dir():
            walked = store.artifacts.files(path, follow_symlinks=True)
            layout, size = "dir", sum(p.stat().st_size for _, p, _ in walked)
        else:
            return None
    except (OSError, UserError):
        return None
    query = (
        select(VersionRow, AssetRow)
        .join(AssetRow, VersionRow.asset_id == AssetRow.id)
        .where(
            AssetRow.kind.in_(list(kinds)),
            VersionRow.status == VersionStatus.READY.value,
            VersionRow.layout == layout,
            VersionRow.size == size,
        )
        .order_by(VersionRow.id)
    )
    with store.db.session() as s:
        candidates = [(row.digest, _rows.version(row, asset)) for row, asset in s.execute(query)]
    if not candidates:
        return None
    try:  # outside the session: the hash cache writes what it learns
        digest = scan(store, path, skip_hidden=False).digest
    except UserError:
        return None
    return next((v for d, v in candidates if d == digest), None)
