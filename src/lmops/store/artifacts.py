"""Content-addressed artifact storage.

A blob is named by the sha256 of its bytes and stored once, read-only, under
``<root>/blobs/<first two hex>/<digest>``. A version's content is a *manifest*: a sorted
list of ``{path, digest, size}`` (one entry for a single file). The version digest is the
file's sha256 for a single file, and the sha256 of the canonical manifest JSON for a
directory, so equal trees have equal digests.

Writes go to a temp file in ``<root>/tmp`` and are renamed into place, so a reader never
sees a partial blob. A writer holds an exclusive ``flock`` on each temp file until it is
renamed or dropped, so ``gc`` can tell a live writer's temp file (locked: never touched,
whatever the grace) from a crashed writer's (unlocked: removed once older than the grace).
The same holds for a view being built (``views/.<key>.<uuid>``).

Roots are local paths, or fsspec URLs (``s3://…``, ``memory://…``) with a local cache for
the materialised views that stages read; temp files are always local.

Why ``gc`` never deletes a blob a registration needs, with any grace, is argued in
:meth:`ArtifactStore.gc`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from lmops.core.config import mask_url
from lmops.core.errors import DiskFullError, IntegrityError, NotFoundError, StoreError, UserError

__all__ = [
    "ArtifactStore",
    "Entry",
    "FsspecBlobs",
    "LocalBlobs",
    "manifest_digest",
]

CHUNK = 1 << 20  # bytes read per hash/copy step
# Files staged before their digests are claimed in one transaction: bounds open file
# descriptors (each staged file holds its lock) and the duplicate bytes of dedup hits.
BATCH_FILES = 64
BATCH_BYTES = 256 << 20
GC_BATCH = 256  # blobs moved aside between two re-reads of the references
_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of a manifest."""

    path: str  # relative, "/"-separated
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest, "size": self.size}


def manifest_digest(entries: Iterable[Entry]) -> str:
    """sha256 of the canonical JSON of a manifest (sorted by path, no whitespace)."""
    rows = sorted((e.to_json() for e in entries), key=lambda r: r["path"])
    blob = json.dumps(rows, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _copy(fin: IO[bytes], fout: IO[bytes]) -> tuple[str, int]:
    """Copy ``fin`` to ``fout`` while hashing; returns (sha256, size). The seam where a
    full disk shows up (``OSError(ENOSPC)`` from ``write``)."""
    h = hashlib.sha256()
    size = 0
    while chunk := fin.read(CHUNK):
        h.update(chunk)
        fout.write(chunk)
        size += len(chunk)
    fout.flush()
    os.fsync(fout.fileno())
    return h.hexdigest(), size


def _remove_if_abandoned(path: Path) -> None:
    """Remove the temp file or folder ``path`` unless its writer still holds its ``flock``.

    The probe's lock is held while removing, so a writer that created ``path`` but had not
    locked it yet gets the lock only after the removal, sees ``st_nlink == 0`` and starts
    over with a new name (:meth:`ArtifactStore.staged`, ``_build_view``)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone already (renamed into place), or unreadable: leave it
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a live writer
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        os.close(fd)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # renamed or removed since it was listed
        return None


class Blobs(Protocol):
    """Where blob bytes live. ``put`` must be atomic; ``trash`` moves a blob aside (so it is
    no longer ``has``) in a way ``restore`` can undo, and ``purge`` deletes it for good."""

    def has(self, digest: str) -> bool: ...
    def intact(self, digest: str, size: int) -> bool: ...  # FileNotFoundError if gone
    def put(self, staged: Path, digest: str) -> None: ...
    def fetch(self, digest: str, dest: Path) -> None: ...
    def open(self, digest: str) -> Any: ...
    def delete(self, digest: str) -> None: ...
    def digests(self) -> Iterator[tuple[str, float]]: ...  # (digest, mtime)
    def touch(self, digest: str) -> None: ...
    def trash(self, digest: str) -> str | None: ...  # a token, or None if it was gone
    def trashed(self) -> Iterator[tuple[str, str]]: ...  # (token, digest) left in the trash
    def restore(self, token: str, digest: str) -> None: ...
    def purge(self, token: str) -> int: ...  # bytes freed


def _blob_rel(digest: str) -> str:
    return f"blobs/{digest[:2]}/{digest}"


class LocalBlobs:
    """Blobs in a local directory; ``put`` is a rename, so atomic on one filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / _blob_rel(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def intact(self, digest: str, size: int) -> bool:
        """Whether the stored blob still holds its bytes: the size first (an append or a
        truncation, for free), then the full hash. Views are hard links to blobs, so a
        write through a view (root ignores the read-only bit) damages the blob in place,
        and a same-size write is as likely as an append; re-reading local bytes costs
        what hashing the source did, and only when the bytes were stored already."""
        path = self.path(digest)
        if path.stat().st_size != size:
            return False
        return hash_file(path) == digest

    def put(self, staged: Path, digest: str) -> None:
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staged, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(staged, final)

    def fetch(self, digest: str, dest: Path) -> None:
        try:
            os.link(self.path(digest), dest)
        except FileNotFoundError:
            raise
        except OSError:  # another filesystem: copy instead of hard-linking
            shutil.copyfile(self.path(digest), dest)
            os.chmod(dest, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)

    def open(self, digest: str) -> Any:
        return open(self.path(digest), "rb")

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[tuple[str, float]]:
        base = self.root / "blobs"
        try:
            subs = sorted(base.iterdir())
        except FileNotFoundError:
            return
        for sub in subs:
            try:
                names = sorted(sub.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                continue
            for f in names:
                mtime = _mtime(f)
                if mtime is not None:
                    yield f.name, mtime

    def touch(self, digest: str) -> None:
        os.utime(self.path(digest))

    def trash(self, digest: str) -> str | None:
        token = self.root / "trash" / f"{digest}.{uuid.uuid4().hex}"
        token.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.path(digest), token)
        except FileNotFoundError:
            return None
        return str(token)

    def trashed(self) -> Iterator[tuple[str, str]]:
        try:
            names = sorted((self.root / "trash").iterdir())
        except FileNotFoundError:
            return
        for f in names:
            yield str(f), f.name.split(".", 1)[0]

    def restore(self, token: str, digest: str) -> None:
        final = self.path(digest)
        if final.exists():  # a writer has put its own copy (the same bytes) back already
            Path(token).unlink(missing_ok=True)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(token, final)

    def purge(self, token: str) -> int:
        try:
            size = os.stat(token).st_size
            os.unlink(token)
        except FileNotFoundError:
            return 0
        return size


class FsspecBlobs:
    """Blobs behind an fsspec URL (``s3://bucket/prefix``, ``memory://x``…)."""

    def __init__(self, url: str) -> None:
        try:
            from fsspec.core import url_to_fs
        except ImportError:  # pragma: no cover - fsspec is a base dependency
            raise StoreError("fsspec is required for remote artifact roots") from None
        try:
            self.fs, self.base = url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise StoreError(
                f"cannot open artifact root {mask_url(url)!r}: {mask_url(str(e))}; "
                "for s3:// install 'lmops[s3]'"
            ) from None
        self.base = self.base.rstrip("/")

    def _p(self, digest: str) -> str:
        return f"{self.base}/{_blob_rel(digest)}"

    def has(self, digest: str) -> bool:
        return bool(self.fs.exists(self._p(digest)))

    def intact(self, digest: str, size: int) -> bool:
        """The size only: a full check would download the object, and an object store
        writes whole objects (nothing writes into one through a view: views here are
        local copies)."""
        return int(self.fs.size(self._p(digest)) or 0) == size

    def put(self, staged: Path, digest: str) -> None:
        # Object stores write whole objects atomically; upload to a temp name then move
        # for filesystems that do not.
        tmp = f"{self.base}/tmp/{uuid.uuid4().hex}"
        self.fs.put_file(str(staged), tmp)
        self.fs.mv(tmp, self._p(digest))
        staged.unlink(missing_ok=True)

    def fetch(self, digest: str, dest: Path) -> None:
        self.fs.get_file(self._p(digest), str(dest))
        os.chmod(dest, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)

    def open(self, digest: str) -> Any:
        return self.fs.open(self._p(digest), "rb")

    def delete(self, digest: str) -> None:
        if self.fs.exists(self._p(digest)):
            self.fs.rm(self._p(digest))

    def digests(self) -> Iterator[tuple[str, float]]:
        root = f"{self.base}/blobs"
        if not self.fs.exists(root):
            return
        for path in sorted(self.fs.find(root)):
            try:
                info = self.fs.info(path)
            except FileNotFoundError:
                continue
            mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
            if hasattr(mtime, "timestamp"):
                mtime = mtime.timestamp()
            yield path.rsplit("/", 1)[-1], float(mtime)

    def touch(self, digest: str) -> None:
        pass  # object stores cannot touch; gc's grace period relies on upload time

    def trash(self, digest: str) -> str | None:
        token = f"{self.base}/trash/{digest}.{uuid.uuid4().hex}"
        try:
            self.fs.mv(self._p(digest), token)
        except FileNotFoundError:
            return None
        return token

    def trashed(self) -> Iterator[tuple[str, str]]:
        root = f"{self.base}/trash"
        if not self.fs.exists(root):
            return
        for path in sorted(self.fs.find(root)):
            yield path, path.rsplit("/", 1)[-1].split(".", 1)[0]

    def restore(self, token: str, digest: str) -> None:
        if self.has(digest):
            self.fs.rm(token)
        else:
            self.fs.mv(token, self._p(digest))

    def purge(self, token: str) -> int:
        try:
            size = int(self.fs.size(token) or 0)
            self.fs.rm(token)
        except FileNotFoundError:
            return 0
        return size


@dataclass(frozen=True, slots=True)
class Staged:
    """A file copied into staging and hashed, locked by its writer until dropped."""

    path: Path
    digest: str
    size: int


class ArtifactStore:
    """Stores files and directories by content and materialises them as local paths."""

    def __init__(self, root: str, cache_dir: Path) -> None:
        self.root = root
        self.display = mask_url(root)  # for messages: never the credentials of a URL
        self.remote = "://" in root and not root.startswith("file://")
        if self.remote:
            self.blobs: Blobs = FsspecBlobs(root)
            self.local_root = cache_dir
        else:
            local = Path(root.removeprefix("file://")).expanduser()
            self.blobs = LocalBlobs(local)
            self.local_root = local
        self.staging = self.local_root / "tmp"
        self.views = self.local_root / "views"

    # -- writing --------------------------------------------------------------------------
    def _full(self, src: Path, e: OSError) -> DiskFullError:
        where = self.display if not self.remote else f"{self.staging} (staging for {self.display})"
        return DiskFullError(
            f"disk full: cannot store {src} in {where}: {e.strerror}; free space there "
            "(`lmops gc` frees unreferenced blobs) and retry"
        )

    @contextlib.contextmanager
    def staged(self, src: Path, *, nofollow: bool = False) -> Iterator[Staged]:
        """Copy ``src`` into staging while hashing it, holding the temp file's lock until
        the block ends; the temp file is gone afterwards (renamed into place by
        :meth:`publish`, or removed). ``nofollow`` refuses ``src`` if it is a symlink (a
        file swapped for a link after the tree was walked)."""
        while True:
            path = self.staging / f"{uuid.uuid4().hex}.part"
            try:
                self.staging.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as e:
                if e.errno in _FULL:
                    raise self._full(src, e) from None
                raise
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                break
            os.close(fd)  # a gc removed it between create and lock: take another name
        try:
            flags = os.O_RDONLY | (os.O_NOFOLLOW if nofollow else 0)
            try:
                src_fd = os.open(src, flags)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise UserError(f"{src}: became a symlink while it was being stored") from None
                raise
            with os.fdopen(src_fd, "rb") as fin, os.fdopen(os.dup(fd), "wb") as fout:
                try:
                    digest, size = _copy(fin, fout)
                except OSError as e:
                    if e.errno in _FULL:
                        raise self._full(src, e) from None
                    raise
            yield Staged(path, digest, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)

    def publish(self, staged: Staged) -> None:
        """Make sure the blob of ``staged`` is stored: keep the one already there (touched,
        so a later gc's grace counts from now) if it is intact (``Blobs.intact``), else put
        the staged copy in place. So registering the same bytes again repairs a damaged
        blob, and the views that linked the damaged copy are dropped.

        Call it only after the digest is claimed (see :meth:`gc`): the check for an
        existing blob must come after the claim is visible to gc."""
        damaged: int | None = None  # an fd on a damaged blob's inode, to find its views
        if self.blobs.has(staged.digest):
            try:
                if self.blobs.intact(staged.digest, staged.size):
                    self.blobs.touch(staged.digest)
                    return
                if isinstance(self.blobs, LocalBlobs):
                    damaged = os.open(self.blobs.path(staged.digest), os.O_RDONLY)
            except FileNotFoundError:
                pass  # gc moved it aside between has() and here: store ours
        try:
            try:
                # a damaged blob is replaced by the staged copy in one rename
                self.blobs.put(staged.path, staged.digest)
            except OSError as e:
                if e.errno in _FULL:
                    raise self._full(staged.path, e) from None
                raise
            if damaged is not None:
                self._drop_views_of(os.fstat(damaged))
        finally:
            if damaged is not None:
                os.close(damaged)

    def _drop_views_of(self, old: os.stat_result) -> None:
        """Remove every view holding a hard link to the replaced blob inode ``old``: a view
        found in ``views/`` is handed out as it is, and this one holds the damaged bytes.
        The next ``path()`` builds it again from the repaired blob."""
        if old.st_nlink == 0:  # the blob was its only name: no view links it
            return
        for view in self._list(self.views):
            if view.name.startswith("."):  # being built (it hashes what it links) or dead
                continue
            for folder, _, names in os.walk(view):
                hit = False
                for name in names:
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(os.path.join(folder, name), follow_symlinks=False)
                        hit = (st.st_ino, st.st_dev) == (old.st_ino, old.st_dev)
                    if hit:
                        break
                if hit:
                    self._drop_view(view)
                    break

    def _drop_view(self, view: Path) -> None:
        # renamed first, so a half-deleted view never looks complete
        dead = self.views / f".dead-{uuid.uuid4().hex}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(view, dead)
            shutil.rmtree(dead, ignore_errors=True)

    def add_file(self, src: Path) -> tuple[str, int]:
        """Store one file's bytes without a claim; returns (digest, size). For callers that
        do not race with ``gc``; registrations go through :meth:`add`."""
        with self.staged(src) as s:
            self.publish(s)
        return s.digest, s.size

    def files(
        self, src: Path, *, follow_symlinks: bool = False, skip_hidden: bool = False
    ) -> list[tuple[str, Path, bool]]:
        """The regular files of the tree ``src``, as (relative path, path to read, is a
        plain file), sorted.

        A symlink is stored as the file (or folder) it points to. One that points outside
        ``src`` is refused unless ``follow_symlinks``; a dangling link, or a link to a
        folder that contains it (a loop), is refused always. Sockets, FIFOs and devices
        are skipped, as before. ``skip_hidden`` leaves out every entry whose name starts
        with ``.`` (``.git``, ``.cache``: what an external reference does not describe).
        """
        root = src.resolve()
        out: list[tuple[str, Path, bool]] = []

        def walk(folder: Path, rel: str, chain: frozenset[Path]) -> None:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as e:
                raise UserError(f"{folder}: cannot read the folder: {e.strerror}") from None
            for entry in entries:
                if skip_hidden and entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                name = f"{rel}{entry.name}"
                if entry.is_symlink():
                    link = os.readlink(path)
                    target = path.resolve()
                    if not target.exists():
                        raise UserError(f"{path}: symlink to {link} points to nothing; remove it")
                    if not follow_symlinks and not target.is_relative_to(root):
                        raise UserError(
                            f"{path}: symlink to {target} points outside {src}; copy the file "
                            "in, or pass --follow-symlinks to store what it points to"
                        )
                    if target.is_dir():
                        if target in chain:  # an ancestor of the link: endless
                            raise UserError(f"{path}: symlink to {link} makes a loop; remove it")
                        walk(target, f"{name}/", chain | {target})
                    elif target.is_file():
                        out.append((name, target, False))
                elif entry.is_dir(follow_symlinks=False):
                    walk(path, f"{name}/", chain | {path.resolve()})
                elif entry.is_file(follow_symlinks=False):
                    out.append((name, path, True))

        walk(src, "", frozenset({root}))
        return sorted(out, key=lambda t: t[0])

    def add(
        self,
        src: Path,
        progress: Callable[[int], None] | None = None,
        *,
        claim: Callable[[list[str]], None] | None = None,
        follow_symlinks: bool = False,
        files: list[tuple[str, Path, bool]] | None = None,
    ) -> tuple[str, str, list[Entry]]:
        """Store a file or a directory tree; returns (layout, version digest, manifest).

        ``claim(digests)`` is called with each batch of staged files' digests before their
        blobs are looked up or put in place; a registration records them there, so a
        concurrent ``gc`` keeps them (see :meth:`gc`). ``follow_symlinks``: see
        :meth:`files` (``files`` is its answer when the caller checked the tree already).
        ``src`` itself may be a symlink (the user named it).
        """
        if not src.exists():
            raise UserError(f"{src}: no such file or directory")
        if src.is_file():
            items = [(src.name, src, False)]
            layout = "file"
        elif src.is_dir():
            items = files if files is not None else self.files(src, follow_symlinks=follow_symlinks)
            layout = "dir"
        else:
            raise UserError(f"{src}: not a regular file or directory")
        entries: list[Entry] = []
        i = 0
        while i < len(items):
            with contextlib.ExitStack() as stack:
                batch: list[tuple[str, Staged]] = []
                staged_bytes = 0
                while i < len(items) and len(batch) < BATCH_FILES and staged_bytes < BATCH_BYTES:
                    rel, path, plain = items[i]
                    s = stack.enter_context(self.staged(path, nofollow=plain))
                    batch.append((rel, s))
                    staged_bytes += s.size
                    i += 1
                    if progress:
                        progress(s.size)
                if claim is not None:
                    claim(sorted({s.digest for _, s in batch}))
                for rel, s in batch:
                    self.publish(s)
                    entries.append(Entry(rel, s.digest, s.size))
        if layout == "file":
            return "file", entries[0].digest, entries
        return "dir", manifest_digest(entries), entries

    # -- reading --------------------------------------------------------------------------
    def materialize(self, layout: str, entries: list[Entry], label: str = "") -> Path:
        """A local, read-only path with the version's files under their original names.

        Built once per manifest (hard links to blobs where possible) into a locked temp
        folder renamed into ``views/<manifest digest>``. Each file is checked against its
        digest while the view is built, so a corrupt blob is refused (an ``IntegrityError``
        naming ``label``, the version, and the file) instead of handed out; an existing
        view is returned as it is while its files keep their sizes (a view whose files
        changed size is built again; a write that keeps the size is found by ``verify``,
        and registering the same bytes again repairs it). For a single file the file's
        path is returned, else the directory.
        """
        key = manifest_digest(entries)
        view = self.views / key
        if view.exists() and not self._sizes_match(view, entries):
            self._drop_view(view)  # written to since it was built: build it again
        for attempt in range(3):
            if view.exists():
                break
            try:
                self._build_view(key, entries, label)
                break
            except FileNotFoundError:
                if attempt == 2:  # our temp folder vanished each time: give up loudly
                    raise
        if layout == "file":
            return view / entries[0].path
        return view

    @staticmethod
    def _sizes_match(view: Path, entries: list[Entry]) -> bool:
        """A stat per file: an append to (or truncation of) a handed-out view is caught on
        the next ``path()`` without hashing again."""
        try:
            return all((view / e.path).stat().st_size == e.size for e in entries)
        except OSError:
            return False

    def _build_view(self, key: str, entries: list[Entry], label: str) -> None:
        what = f"{label}: " if label else ""
        verify = f"`lmops assets verify {label}`" if label else "`lmops assets verify`"
        # true since publish() checks a blob it finds: the same bytes put back repair it
        fix = f"run {verify}, then register the original files again to repair it"
        tmp = self.views / f".{key}.{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a gc leaves a locked temp view alone
            if os.fstat(fd).st_nlink == 0:  # a gc removed it before we locked it: retry
                raise FileNotFoundError(errno.ENOENT, "temp view removed", str(tmp))
            for e in entries:
                if not self.blobs.has(e.digest):
                    raise IntegrityError(
                        f"{what}{e.path}: blob {e.digest[:12]} is missing from {self.display};"
                        f" {fix}"
                    )
                dest = tmp / e.path
                if dest.parent != tmp:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.blobs.fetch(e.digest, dest)
                except FileNotFoundError:  # gone since has(): the same as missing
                    raise IntegrityError(
                        f"{what}{e.path}: blob {e.digest[:12]} is missing from {self.display};"
                        f" {fix}"
                    ) from None
                got = hash_file(dest)  # once per view: later path() calls reuse it
                if got != e.digest:
                    raise IntegrityError(
                        f"{what}{e.path}: stored bytes are corrupt (blob {e.digest[:12]} hashes"
                        f" to {got[:12]}); {fix}"
                    )
            try:
                os.rename(tmp, self.views / key)
            except OSError:  # another process finished the same view first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(fd)

    def verify(self, entries: list[Entry]) -> list[str]:
        """Re-hash each blob; returns one problem string per missing or corrupt file."""
        problems = []
        for e in entries:
            if not self.blobs.has(e.digest):
                problems.append(f"{e.path}: blob {e.digest[:12]} missing")
                continue
            h = hashlib.sha256()
            with self.blobs.open(e.digest) as fh:
                while chunk := fh.read(CHUNK):
                    h.update(chunk)
            if h.hexdigest() != e.digest:
                problems.append(
                    f"{e.path}: blob {e.digest[:12]} corrupt (bytes hash to {h.hexdigest()[:12]})"
                )
        return problems

    # -- garbage collection ---------------------------------------------------------------
    def gc(
        self, references: Callable[[], tuple[set[str], set[str]]], grace_s: float = 3600.0
    ) -> tuple[int, int]:
        """Delete blobs no version references and older than ``grace_s``, views no READY
        version uses, and temp files of crashed writers. Returns (blobs removed, bytes
        freed). ``references()`` reads (blob digests, view keys) in use from the database:
        digests in READY/PENDING manifests and digests claimed by PENDING versions.

        Why a registration never loses a blob, whatever the grace (one gc at a time: the
        caller holds ``Database.exclusive("gc")``):

        * A writer *claims* each digest (commits it to the database) before it looks
          for the blob or puts it in place (:meth:`add`, :meth:`publish`).
        * gc reads the references, then *moves* each unreferenced blob aside
          (``trash``: afterwards ``has`` is false), then reads the references *again*
          and moves back every blob that is referenced now; only the rest is deleted.
        * Take a blob D that gc moved aside at time t_move and a writer whose claim on D
          committed at t_claim. If t_claim precedes gc's second read, that read sees the
          claim (or the READY manifest that replaced it in the same transaction) and D is
          restored. Otherwise t_claim follows the second read, which follows t_move, so
          the writer's look for D comes after D was moved away: it finds nothing and puts
          its own copy. Either way D exists when the version turns READY.
        * A gc killed between the move and the second read leaves D in the trash; the next
          gc treats everything in the trash as moved aside by itself, so D comes back if
          anything references it. Until then (and for the moment between a move and a
          restore) a reader may find D missing; ``AssetRegistry.path``/``verify`` retry
          under the gc lock before reporting it.
        * Temp files and views being built are locked by their writer and never removed
          while it lives (:func:`_remove_if_abandoned`).
        * Views are caches: one is removed when no READY version used its content at gc's
          read. Views are listed before that read, so a view built later is never in the
          list; the one gap left is a version that turns READY after the read with exactly
          the content of a deleted one and whose ``path()`` finds that old view before gc
          removes it (the next ``path()`` rebuilds it).
        """
        now = time.time()
        removed = freed = 0
        # views first: listed before the references are read, so a view built for a version
        # that turns READY after that read is not in the list
        view_names = self._list(self.views)
        listed = list(self.blobs.digests())
        digests, live_views = references()
        old = [d for d, mtime in listed if d not in digests and now - mtime >= grace_s]
        pending = list(self.blobs.trashed())  # left by a gc that died mid-way
        for start in range(0, max(len(old), 1), GC_BATCH):
            for d in old[start : start + GC_BATCH]:
                token = self.blobs.trash(d)
                if token is not None:
                    pending.append((token, d))
            if not pending:
                continue
            digests, live_views = references()
            for token, d in pending:
                if d in digests:
                    self.blobs.restore(token, d)
                else:
                    freed += self.blobs.purge(token)
                    removed += 1
            pending = []
        for f in self._list(self.staging):
            mtime = _mtime(f)
            if mtime is not None and now - mtime >= grace_s:
                _remove_if_abandoned(f)
        for v in view_names:
            if v.name.startswith(".dead-"):
                shutil.rmtree(v, ignore_errors=True)
            elif v.name.startswith("."):  # a view being built, or a crashed builder's
                mtime = _mtime(v)
                if mtime is not None and now - mtime >= grace_s:
                    _remove_if_abandoned(v)
            elif v.name not in live_views:
                self._drop_view(v)
        return removed, freed

    @staticmethod
    def _list(folder: Path) -> list[Path]:
        try:
            return sorted(folder.iterdir())
        except FileNotFoundError:
            return []

    def require(self, digest: str) -> None:
        if not self.blobs.has(digest):
            raise NotFoundError(f"blob {digest[:12]} is not in {self.display}")
