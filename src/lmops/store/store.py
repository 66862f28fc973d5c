"""The ``Store`` facade: one object that every stage, the CLI and the API go through."""

from __future__ import annotations

import getpass
from dataclasses import dataclass

from lmops.core.config import Settings
from lmops.store.artifacts import ArtifactStore
from lmops.store.assets import AssetRegistry
from lmops.store.audit import AuditLog
from lmops.store.db import Database
from lmops.store.keys import KeyRing
from lmops.store.requests import RequestLog
from lmops.store.responses import ResponseStore
from lmops.store.runs import RunTracker
from lmops.store.steps import StepCache

__all__ = ["GcReport", "Store"]

ORIGINS = ("cli", "api", "console", "lib")


@dataclass(frozen=True, slots=True)
class GcReport:
    blobs_removed: int
    bytes_freed: int
    abandoned_marked_failed: int
    responses_expired: int = 0  # stored Responses API responses past their retention


class Store:
    """Metadata database + artifact store, seen through its parts:

    ``assets`` (versions, aliases, lineage, verify, delete), ``runs``, ``keys``,
    ``audit``, ``steps`` (the pipeline step cache), ``requests`` (the gateway's request
    log), ``responses`` (the Responses API's stored responses) and ``artifacts``
    (bytes). ``actor`` and ``origin`` are written to the audit log for every change made
    through this object.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        actor: str | None = None,
        origin: str = "lib",
    ) -> None:
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}")
        self.settings = settings or Settings.from_env()
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.actor = actor or _local_user()
        self.origin = origin
        self.db = Database(self.settings.database_url)
        self.artifacts = ArtifactStore(self.settings.artifacts, self.settings.home / "cache")
        self.audit = AuditLog(self)
        self.assets = AssetRegistry(self)
        self.runs = RunTracker(self)
        self.keys = KeyRing(self)
        self.steps = StepCache(self)
        self.requests = RequestLog(self)
        self.responses = ResponseStore(self)

    def as_actor(self, actor: str, origin: str) -> Store:
        """A view of this store that audits changes as ``actor`` from ``origin``."""
        other = object.__new__(Store)
        other.__dict__.update(self.__dict__)
        other.actor, other.origin = actor, origin
        other.audit = AuditLog(other)
        other.assets = AssetRegistry(other)
        other.runs = RunTracker(other)
        other.keys = KeyRing(other)
        other.steps = StepCache(other)
        other.requests = RequestLog(other)
        other.responses = ResponseStore(other)
        return other

    def gc(self, grace_s: float = 3600.0) -> GcReport:
        """Free blobs that no READY/PENDING version references and that are older than
        ``grace_s``. Safe beside running registrations with any grace, 0 included: blobs
        they claimed and their temp files are kept (``ArtifactStore.gc`` argues why). One
        gc runs at a time (a lock every process using the database sees). Stored
        responses past their retention are deleted too."""
        with self.db.exclusive("gc"):
            abandoned = self.assets.sweep_abandoned()
            removed, freed = self.artifacts.gc(self.assets.referenced, grace_s=grace_s)
            expired = self.responses.purge()
        details = {"removed": removed, "bytes": freed, "responses_expired": expired}
        self.db.write(lambda s: self.audit.record(s, "store.gc", "artifacts", details))
        return GcReport(removed, freed, abandoned, expired)

    def close(self) -> None:
        self.db.dispose()


def _local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "local"
