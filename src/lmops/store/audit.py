"""The append-only audit log: who did what to which thing, from where, when.

Every state-changing store method records its event inside its own transaction, so an
action and its audit entry commit together or not at all. The database refuses UPDATE
and DELETE on the table (triggers installed by migration 0003).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmops.store import _rows
from lmops.store._time import utcnow
from lmops.store.models import AuditRow
from lmops.store.types import AuditEvent

if TYPE_CHECKING:
    from lmops.store.store import Store

__all__ = ["AuditLog"]


class AuditLog:
    def __init__(self, store: Store) -> None:
        self._store = store

    def record(
        self, s: Session, action: str, target: str, details: dict[str, Any] | None = None
    ) -> None:
        """Add an event to the open transaction ``s``."""
        s.add(
            AuditRow(
                time=utcnow(),
                actor=self._store.actor,
                action=action,
                target=target[:255],
                origin=self._store.origin,
                details=details or {},
            )
        )

    def list(
        self,
        *,
        action: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Newest first."""
        q = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if action:
            q = q.where(AuditRow.action.startswith(action))
        if target:
            q = q.where(AuditRow.target == target)
        if since:
            q = q.where(AuditRow.time >= since)
        with self._store.db.session() as s:
            return [_rows.audit(r) for r in s.scalars(q)]
