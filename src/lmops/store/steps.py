"""The pipeline step cache: which asset versions a step produced for a given cache key.

The key is computed by the pipeline runner over the step's resolved config, the versions of
its input assets, the content of local files it reads and the lmops version. A hit is only
trusted while every output it names still resolves to a READY version."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lmops.store._time import aware, utcnow
from lmops.store.models import StepCacheRow

if TYPE_CHECKING:
    from lmops.store.store import Store

__all__ = ["CachedStep", "StepCache"]


@dataclass(frozen=True, slots=True)
class CachedStep:
    key: str
    pipeline: str
    step: str
    step_type: str
    outputs: dict[str, str]
    result: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    created_at: datetime | None = None


def _cached(row: StepCacheRow) -> CachedStep:
    return CachedStep(
        key=row.key,
        pipeline=row.pipeline,
        step=row.step,
        step_type=row.step_type,
        outputs=dict(row.outputs or {}),
        result=dict(row.result or {}),
        run_id=row.run_id,
        created_at=aware(row.created_at),
    )


class StepCache:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store.db

    def get(self, key: str) -> CachedStep | None:
        """The entry for ``key`` if each of its outputs still resolves READY."""
        with self._db.session() as s:
            row = s.get(StepCacheRow, key)
            entry = _cached(row) if row is not None else None
        if entry is None:
            return None
        for ref in entry.outputs.values():
            try:
                self._store.assets.resolve(ref)
            except Exception:  # deleted, failed or unknown: the cached result is gone
                return None
        return entry

    def put(
        self,
        key: str,
        *,
        pipeline: str,
        step: str,
        step_type: str,
        outputs: dict[str, str],
        result: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> None:
        def upsert(s: Session) -> None:
            row = s.get(StepCacheRow, key)
            if row is None:
                row = StepCacheRow(key=key)
                s.add(row)
            row.pipeline, row.step, row.step_type = pipeline, step, step_type
            row.outputs, row.result, row.run_id = dict(outputs), dict(result or {}), run_id
            row.created_at = utcnow()

        self._db.write(upsert)

    def list(self, pipeline: str | None = None) -> list[CachedStep]:
        with self._db.session() as s:
            q = select(StepCacheRow).order_by(StepCacheRow.created_at)
            if pipeline is not None:
                q = q.where(StepCacheRow.pipeline == pipeline)
            return [_cached(r) for r in s.scalars(q)]

    def clear(self, pipeline: str, step: str | None = None) -> int:
        """Forget cached results of a pipeline (or one of its steps); returns how many."""

        def rm(s: Session) -> int:
            q = delete(StepCacheRow).where(StepCacheRow.pipeline == pipeline)
            if step is not None:
                q = q.where(StepCacheRow.step == step)
            return int(s.execute(q).rowcount or 0)  # type: ignore[attr-defined]

        return self._db.write(rm)
