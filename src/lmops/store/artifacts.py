"""Content-addressed artifact storage.

A blob is named by the sha256 of its bytes and stored once, read-only, under
``<root>/blobs/<first two hex>/<digest>``. A version's content is a *manifest*: a sorted
list of ``{path, digest, size}`` (one entry for a single file). The version digest is the
file's sha256 for a single file, and the sha256 of the canonical manifest JSON for a
directory, so equal trees have equal digests.

Writes go to a temp file and are renamed into place, so a reader never sees a partial
blob; a crashed writer leaves only a temp file, which ``gc`` removes after a grace period.
Roots are local paths, or fsspec URLs (``s3://…``, ``memory://…``) with a local cache for
the materialised views that stages read.
"""

from __future__ import annotations

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
from typing import Any, Protocol

from lmops.core.errors import IntegrityError, NotFoundError, StoreError, UserError

__all__ = [
    "ArtifactStore",
    "Entry",
    "FsspecBlobs",
    "LocalBlobs",
    "manifest_digest",
]

CHUNK = 1 << 20  # bytes read per hash/copy step


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


class Blobs(Protocol):
    """Where blob bytes live. One method per operation; ``put`` must be atomic."""

    def has(self, digest: str) -> bool: ...
    def put(self, staged: Path, digest: str) -> None: ...
    def fetch(self, digest: str, dest: Path) -> None: ...
    def open(self, digest: str) -> Any: ...
    def delete(self, digest: str) -> None: ...
    def digests(self) -> Iterator[tuple[str, float]]: ...  # (digest, mtime)
    def touch(self, digest: str) -> None: ...


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

    def put(self, staged: Path, digest: str) -> None:
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staged, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(staged, final)

    def fetch(self, digest: str, dest: Path) -> None:
        try:
            os.link(self.path(digest), dest)
        except OSError:  # another filesystem: copy instead of hard-linking
            shutil.copyfile(self.path(digest), dest)
            os.chmod(dest, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)

    def open(self, digest: str) -> Any:
        return open(self.path(digest), "rb")

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[tuple[str, float]]:
        base = self.root / "blobs"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            for f in sorted(sub.iterdir()):
                yield f.name, f.stat().st_mtime

    def touch(self, digest: str) -> None:
        os.utime(self.path(digest))


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
                f"cannot open artifact root {url!r}: {e}; for s3:// install 'lmops[s3]'"
            ) from None
        self.base = self.base.rstrip("/")

    def _p(self, digest: str) -> str:
        return f"{self.base}/{_blob_rel(digest)}"

    def has(self, digest: str) -> bool:
        return bool(self.fs.exists(self._p(digest)))

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
            info = self.fs.info(path)
            mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
            if hasattr(mtime, "timestamp"):
                mtime = mtime.timestamp()
            yield path.rsplit("/", 1)[-1], float(mtime)

    def touch(self, digest: str) -> None:
        pass  # object stores cannot touch; gc's grace period relies on upload time


class ArtifactStore:
    """Stores files and directories by content and materialises them as local paths."""

    def __init__(self, root: str, cache_dir: Path) -> None:
        self.root = root
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
    def _stage(self, src: Path) -> tuple[Path, str, int]:
        """Copy ``src`` into staging while hashing it; returns (staged path, digest, size)."""
        self.staging.mkdir(parents=True, exist_ok=True)
        staged = self.staging / f"{uuid.uuid4().hex}.part"
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as fin, open(staged, "wb") as fout:
            while chunk := fin.read(CHUNK):
                h.update(chunk)
                fout.write(chunk)
                size += len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        return staged, h.hexdigest(), size

    def add_file(self, src: Path) -> tuple[str, int]:
        """Store one file's bytes; returns (digest, size). Identical bytes are stored once."""
        staged, digest, size = self._stage(src)
        if self.blobs.has(digest):
            staged.unlink()
            self.blobs.touch(digest)  # keeps it out of a concurrent gc's grace window
        else:
            self.blobs.put(staged, digest)
        return digest, size

    def add(
        self, src: Path, progress: Callable[[int], None] | None = None
    ) -> tuple[str, str, list[Entry]]:
        """Store a file or a directory tree; returns (layout, version digest, manifest)."""
        if not src.exists():
            raise UserError(f"{src}: no such file or directory")
        if src.is_file():
            digest, size = self.add_file(src)
            if progress:
                progress(size)
            return "file", digest, [Entry(src.name, digest, size)]
        if not src.is_dir():
            raise UserError(f"{src}: not a regular file or directory")
        entries = []
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            digest, size = self.add_file(f)
            entries.append(Entry(f.relative_to(src).as_posix(), digest, size))
            if progress:
                progress(size)
        return "dir", manifest_digest(entries), entries

    # -- reading --------------------------------------------------------------------------
    def materialize(self, layout: str, entries: list[Entry]) -> Path:
        """A local, read-only path with the version's files under their original names.

        Built once per manifest (hard links to blobs where possible) into a temp folder
        renamed into ``views/<manifest digest>``. For a single file the file's path is
        returned, else the directory.
        """
        key = manifest_digest(entries)
        view = self.views / key
        if not view.exists():
            tmp = self.views / f".{key}.{uuid.uuid4().hex}"
            tmp.mkdir(parents=True)
            for e in entries:
                if not self.blobs.has(e.digest):
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise IntegrityError(
                        f"blob {e.digest[:12]} of {e.path!r} is missing from {self.root}; "
                        "run `lmops assets verify` and re-register the asset"
                    )
                dest = tmp / e.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.blobs.fetch(e.digest, dest)
            try:
                os.rename(tmp, view)
            except OSError:  # another process finished the same view first
                shutil.rmtree(tmp, ignore_errors=True)
        if layout == "file":
            return view / entries[0].path
        return view

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

    def gc(
        self, referenced: set[str], live_views: set[str], grace_s: float = 3600.0
    ) -> tuple[int, int]:
        """Delete blobs not in ``referenced`` and older than ``grace_s``, views whose key is
        not in ``live_views``, and stale temp files. Returns (blobs removed, bytes freed)."""
        now = time.time()
        removed = freed = 0
        for digest, mtime in list(self.blobs.digests()):
            if digest in referenced or now - mtime < grace_s:
                continue
            if isinstance(self.blobs, LocalBlobs):
                freed += self.blobs.path(digest).stat().st_size
            self.blobs.delete(digest)
            removed += 1
        if self.staging.is_dir():
            for f in self.staging.iterdir():
                if now - f.stat().st_mtime >= grace_s:
                    f.unlink(missing_ok=True)
        if self.views.is_dir():
            # Views are only links/caches of blobs: drop those no live version uses, and
            # half-built ones a crashed process left behind.
            for v in self.views.iterdir():
                half_built = v.name.startswith(".") and now - v.stat().st_mtime >= grace_s
                if half_built or (not v.name.startswith(".") and v.name not in live_views):
                    shutil.rmtree(v, ignore_errors=True)
        return removed, freed

    def require(self, digest: str) -> None:
        if not self.blobs.has(digest):
            raise NotFoundError(f"blob {digest[:12]} is not in {self.root}")
