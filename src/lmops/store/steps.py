"""The pipeline step cache: which asset versions a step produced for a given cache key.

The key is computed by the pipeline runner over the step's resolved config, the versions of
its input assets, the content of local files it reads and the lmops version. A hit is only
trusted while every output it names still resolves to a READY version. Asking for the
cache of a pipeline, or a step, the store has never seen is a ``NotFoundError`` naming what
there is (a typo would otherwise list or forget nothing, silently)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lmops.core.errors import NotFoundError, name_hint
from lmops.store._time import aware, utcnow
from lmops.store.models import RunRow, StepCacheRow

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

    def pipeline_names(self) -> list[str]:
        """Every pipeline the store has seen: with cached steps or a recorded run."""
        with self._db.session() as s:
            cached = set(s.scalars(select(StepCacheRow.pipeline).distinct()))
            ran = s.scalars(select(RunRow.name).where(RunRow.kind == "pipeline").distinct())
            return sorted(cached.union(ran))

    def step_names(self, pipeline: str) -> list[str]:
        """The steps of ``pipeline`` the store has seen: cached, or in one of its runs."""
        with self._db.session() as s:
            q = select(StepCacheRow.step).where(StepCacheRow.pipeline == pipeline)
            found = set(s.scalars(q))
            runs = select(RunRow.config, RunRow.params).where(
                RunRow.kind == "pipeline", RunRow.name == pipeline
            )
            for config, params in s.execute(runs):
                found.update(((config or {}).get("spec") or {}).get("steps") or {})
                found.update((params or {}).get("steps") or {})
        return sorted(found)

    def check(self, pipeline: str, step: str | None = None) -> None:
        """A ``NotFoundError`` for a pipeline, or a step of it, that the store has never
        seen, naming the close one or what there is."""
        names = self.pipeline_names()
        if pipeline not in names:
            hint = name_hint(pipeline, names, "known pipelines") or "no pipeline has run yet"
            raise NotFoundError(f"no pipeline {pipeline!r}; {hint}")
        if step is not None:
            steps = self.step_names(pipeline)
            if step not in steps:
                hint = name_hint(step, steps, "its steps") or "it has none"
                raise NotFoundError(f"pipeline {pipeline!r} has no step {step!r}; {hint}")

    def list(self, pipeline: str | None = None) -> list[CachedStep]:
        """Cached steps, oldest first (of ``pipeline``, which must be known, when given)."""
        if pipeline is not None:
            self.check(pipeline)
        with self._db.session() as s:
            q = select(StepCacheRow).order_by(StepCacheRow.created_at)
            if pipeline is not None:
                q = q.where(StepCacheRow.pipeline == pipeline)
            return [_cached(r) for r in s.scalars(q)]

    def clear(self, pipeline: str, step: str | None = None) -> int:
        """Forget cached results of a pipeline (or one of its steps), which must be known;
        returns how many."""
        self.check(pipeline, step)

        def rm(s: Session) -> int:
            q = delete(StepCacheRow).where(StepCacheRow.pipeline == pipeline)
            if step is not None:
                q = q.where(StepCacheRow.step == step)
            return int(s.execute(q).rowcount or 0)  # type: ignore[attr-defined]

        return self._db.write(rm)
