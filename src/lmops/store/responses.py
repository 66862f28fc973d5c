"""Stored responses of the gateway's Responses API: the store's part ``store.responses``.

    store.responses.put(StoredResponse(...))        # bodies already PII-masked
    store.responses.chain("resp_3", key="app")      # resp_1, resp_2, resp_3 (oldest first)
    store.responses.get("resp_3", key="app")        # None: unknown, expired or another key's
    store.responses.delete("resp_3", key="app")
    store.responses.purge()                         # rows past expires_at (``lmops gc``)

A response continues at most one earlier one (``previous_id``); the conversation is the
chain back through them, read in one recursive query (SQLite and PostgreSQL alike). A
response's rows carry only what its own request sent, so a long conversation is stored in
size linear in its length. Storing a response moves the ``expires_at`` of every response it
continues up to its own, but never past the time that response's own retention (its
``expires_at - created_at`` when it was stored, its deployment's ``responses_ttl_days``)
would keep it from now: a conversation expires after its last turn, never from the middle,
and a turn answered by a deployment that keeps responses 7 days is not kept 90 because a
later turn went to one that keeps them 90. A row past ``expires_at`` is gone for every
reader at once; ``purge`` frees the space. ``key`` (a key's name) limits a read to the
responses that key created; None reads any (an admin key's view).

Deleting a response empties its row (its input and output are gone at once) and keeps the
id and ``previous_id`` until the row expires, so a later response that continued it still
reaches the turns before it: :meth:`ResponseStore.chain` hands the deleted link back as a
:class:`StoredResponse` with ``deleted`` set and nothing in it. What the store keeps for
itself (the retention, the mark of a deleted row) is in the ``response`` JSON under
``lmops_*`` keys, which reads take out again: no column of its own (no migration).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, delete, literal, select, update
from sqlalchemy.orm import Session

from lmops.store._time import aware, utcnow
from lmops.store.models import ResponseRow
from lmops.store.types import StoredResponse

if TYPE_CHECKING:
    from lmops.store.store import Store

__all__ = ["MAX_CHAIN", "ResponseStore"]

_TABLE = cast(Table, ResponseRow.__table__)
# responses read back from one at most (a guard against a chain no client builds by hand)
MAX_CHAIN = 10_000
# the response JSON's keys the store keeps for itself: the row's retention in seconds, and
# the mark of a deleted row
_TTL = "lmops_ttl_s"
_DELETED = "lmops_deleted"


def _chain(rid: str, key: str | None) -> Any:
    """The recursive query of the ids (and depth, 0 for ``rid``) of the unexpired responses
    from ``rid`` back; none when ``rid`` is not ``key``'s (with a ``key``)."""
    now = utcnow()
    head = select(_TABLE.c.id, _TABLE.c.previous_id, literal(0).label("depth")).where(
        _TABLE.c.id == rid, _TABLE.c.expires_at > now
    )
    if key is not None:
        head = head.where(_TABLE.c.key_name == key)
    chain = head.cte("chain", recursive=True)
    back = (
        select(_TABLE.c.id, _TABLE.c.previous_id, chain.c.depth + 1)
        .join(chain, _TABLE.c.id == chain.c.previous_id)
        .where(_TABLE.c.expires_at > now, chain.c.depth < MAX_CHAIN)
    )
    return chain.union_all(back)


def _record(row: ResponseRow) -> StoredResponse:
    created, expires = aware(row.created_at), aware(row.expires_at)
    assert created is not None and expires is not None
    response = dict(row.response or {})
    deleted = bool(response.pop(_DELETED, False))
    response.pop(_TTL, None)
    return StoredResponse(
        id=row.id,
        key_name=row.key_name,
        deployment=row.deployment,
        previous_id=row.previous_id,
        created_at=created,
        expires_at=expires,
        input=list(row.input or []),
        response=response,
        deleted=deleted,
    )


class ResponseStore:
    """The stored responses of one store (``store.responses``)."""

    def __init__(self, store: Store) -> None:
        self._db = store.db

    def put(self, r: StoredResponse) -> None:
        """Keep ``r`` (its bodies as they are to be kept) for ``expires_at - created_at``,
        and keep the responses it continues as long, each at most its own retention from
        now. One statement per retention among them (usually one), at any depth."""
        ttl = (r.expires_at - r.created_at).total_seconds()

        def put(s: Session) -> None:
            s.add(
                ResponseRow(
                    id=r.id,
                    key_name=r.key_name,
                    deployment=r.deployment,
                    previous_id=r.previous_id,
                    created_at=r.created_at,
                    expires_at=r.expires_at,
                    input=r.input,
                    response={**r.response, _TTL: ttl},
                )
            )
            if r.previous_id is None:
                return
            ids = select(_chain(r.previous_id, None).c.id).scalar_subquery()
            own = _TABLE.c.response[_TTL].as_float()
            for row_ttl in s.execute(select(own).distinct().where(_TABLE.c.id.in_(ids))).scalars():
                # a row stored before rows kept their retention (None): the new row's
                until = r.expires_at
                if row_ttl is not None:
                    until = min(until, r.created_at + timedelta(seconds=float(row_ttl)))
                same = own.is_(None) if row_ttl is None else own == row_ttl
                s.execute(
                    update(_TABLE)
                    .where(_TABLE.c.id.in_(ids), same, _TABLE.c.expires_at < until)
                    .values(expires_at=until)
                )

        self._db.write(put)

    def _chain(self, s: Session, rid: str, key: str | None) -> list[tuple[ResponseRow, Any]]:
        chain = _chain(rid, key)
        q = (
            select(ResponseRow, chain.c.depth)
            .join(chain, ResponseRow.id == chain.c.id)
            .order_by(chain.c.depth.desc())
        )
        return [(row, depth) for row, depth in s.execute(q).all()]

    def chain(self, rid: str, *, key: str | None = None) -> list[StoredResponse]:
        """The conversation that ends with response ``rid``, oldest first (``rid`` last);
        empty when ``rid`` is unknown, expired, deleted or (with ``key``) another key's. A
        response deleted from the middle is in it as an empty record with ``deleted`` set:
        the chain goes on through it to the turns before."""
        with self._db.session() as s:
            found = [_record(row) for row, _ in self._chain(s, rid, key)]
        return found if found and not found[-1].deleted else []

    def _row(self, s: Session, rid: str, key: str | None) -> ResponseRow | None:
        q = select(ResponseRow).where(ResponseRow.id == rid, ResponseRow.expires_at > utcnow())
        if key is not None:
            q = q.where(ResponseRow.key_name == key)
        row = s.execute(q).scalar_one_or_none()
        return None if row is None or (row.response or {}).get(_DELETED) else row

    def get(self, rid: str, *, key: str | None = None) -> StoredResponse | None:
        """Response ``rid``; None when unknown, expired, deleted or (with ``key``) another
        key's."""
        with self._db.session() as s:
            row = self._row(s, rid, key)
            return _record(row) if row is not None else None

    def delete(self, rid: str, *, key: str | None = None) -> bool:
        """Delete response ``rid``'s input and output (its id and link stay until it
        expires, see the module docstring); False when there was none to delete (as
        :meth:`get`)."""

        def empty(s: Session) -> bool:
            row = self._row(s, rid, key)
            if row is None:
                return False
            row.input = []
            row.response = {_DELETED: True, _TTL: (row.response or {}).get(_TTL)}
            return True

        return bool(self._db.write(empty))

    def purge(self, now: datetime | None = None) -> int:
        """Delete every response past its ``expires_at``; how many."""
        at = now or utcnow()
        q = delete(_TABLE).where(_TABLE.c.expires_at <= at)
        return int(self._db.write(lambda s: s.execute(q).rowcount))  # type: ignore[attr-defined]

    def count(self, *, key: str | None = None) -> int:
        """Stored responses (expired ones not yet purged included), of ``key`` or all."""
        from sqlalchemy import func

        q = select(func.count()).select_from(_TABLE)
        if key is not None:
            q = q.where(_TABLE.c.key_name == key)
        with self._db.session() as s:
            return int(s.execute(q).scalar() or 0)
