"""Runs: one record per job, with its config, status, host, metric series and log file.

Later stages wrap their jobs in ``store.runs.track(kind, config=...)``: the run is
``RUNNING`` while the block runs, ``SUCCEEDED`` when it returns, ``FAILED`` (with the
error) when it raises, ``CANCELLED`` on Ctrl-C. A run whose process died is marked
``FAILED`` the next time runs are listed on the same host.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lmops import __version__
from lmops.core.errors import UserError
from lmops.store import _rows
from lmops.store._time import utcnow
from lmops.store.models import AssetRow, MetricRow, RunRow, VersionRow
from lmops.store.notfound import unknown_run
from lmops.store.refs import INT32_MAX, check_int
from lmops.store.runlog import close_log, open_log
from lmops.store.types import Metric, MetricStats, Run, RunComparison, RunStatus

if TYPE_CHECKING:
    from lmops.store.store import Store

__all__ = ["RunTracker", "flatten"]

MAX_COMPARED = 7  # runs side by side (the console has a colour for each)


class RunTracker:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store.db

    def start(
        self,
        kind: str,
        *,
        name: str = "",
        config: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Run:
        run_id = uuid.uuid4().hex[:16]
        log_dir = self._store.settings.runs_dir / run_id
        log_dir.mkdir(parents=True, exist_ok=True)

        def create(s: Session) -> Run:
            row = RunRow(
                id=run_id,
                kind=kind,
                name=name,
                status=RunStatus.RUNNING.value,
                config=dict(config or {}),
                params=dict(params or {}),
                started_at=utcnow(),
                host=socket.gethostname(),
                pid=os.getpid(),
                lmops_version=__version__,
                log_path=str(log_dir / "run.log"),
                created_by=self._store.actor,
            )
            s.add(row)
            self._store.audit.record(s, "run.start", run_id, {"kind": kind, "name": name})
            return _rows.run(row)

        run = self._db.write(create)
        open_log(run)
        return run

    def reopen(self, run_id: str) -> Run:
        """Mark a finished or failed run RUNNING again in this process (a resumed job
        continues its own run record and metric series)."""

        def reo(s: Session) -> Run:
            row = self._row(s, run_id)
            row.status = RunStatus.RUNNING.value
            row.ended_at = None
            row.error = None
            row.host = socket.gethostname()
            row.pid = os.getpid()
            self._store.audit.record(s, "run.resume", run_id, {})
            return _rows.run(row)

        run = self._db.write(reo)
        open_log(run, resumed=True)
        return run

    def dir(self, run_id: str) -> str:
        """The run's own folder (``run.log``, plots, checkpoints)."""
        return str(self._store.settings.runs_dir / run_id)

    def log_metrics(self, run_id: str, values: Mapping[str, float], step: int) -> None:
        """Append one point per metric at ``step``. NaN/inf are rejected, not stored."""
        check_int(step, f"run {run_id}: step", minimum=-INT32_MAX - 1, maximum=INT32_MAX)
        bad = [k for k, v in values.items() if not math.isfinite(float(v))]
        if bad:
            raise UserError(f"run {run_id}: metric {bad[0]!r} at step {step} is not finite")
        now = utcnow()

        def add(s: Session) -> None:
            for k, v in values.items():
                s.add(MetricRow(run_id=run_id, step=step, name=k, value=float(v), time=now))

        self._db.write(add)

    def log_metric(self, run_id: str, name: str, value: float, step: int) -> None:
        self.log_metrics(run_id, {name: value}, step)

    def update(self, run_id: str, *, params: Mapping[str, Any] | None = None) -> None:
        def upd(s: Session) -> None:
            row = self._row(s, run_id)
            if params:
                row.params = {**(row.params or {}), **params}

        self._db.write(upd)

    def finish(
        self, run_id: str, status: RunStatus = RunStatus.SUCCEEDED, error: str | None = None
    ) -> Run:
        """Record how the run ended. Called while an exception is being handled (``except``
        blocks, as ``track`` does), its traceback goes to the run's log."""
        failed = status is not RunStatus.SUCCEEDED
        close_log(run_id, status.value, sys.exc_info()[1] if failed else None, error)

        def fin(s: Session) -> Run:
            row = self._row(s, run_id)
            row.status = status.value
            row.ended_at = utcnow()
            row.error = error[:4000] if error else None
            self._store.audit.record(s, "run.finish", run_id, {"status": status.value})
            return _rows.run(row)

        return self._db.write(fin)

    @contextlib.contextmanager
    def track(
        self,
        kind: str,
        *,
        name: str = "",
        config: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Iterator[Run]:
        run = self.start(kind, name=name, config=config, params=params)
        try:
            yield run
        except KeyboardInterrupt:
            self.finish(run.id, RunStatus.CANCELLED, "interrupted")
            raise
        except BaseException as e:
            self.finish(run.id, RunStatus.FAILED, f"{type(e).__name__}: {e}")
            raise
        else:
            self.finish(run.id, RunStatus.SUCCEEDED)

    @staticmethod
    def _row(s: Session, run_id: str) -> RunRow:
        row = s.get(RunRow, run_id)
        if row is None:
            raise unknown_run(run_id)
        return row

    def get(self, run_id: str) -> Run:
        """One run with its full metric series and the versions it produced."""
        with self._db.session() as s:
            row = self._row(s, run_id)
            run = _rows.run(row)
            series: dict[str, list[Metric]] = {}
            for m in s.scalars(
                select(MetricRow)
                .where(MetricRow.run_id == run_id)
                .order_by(MetricRow.name, MetricRow.step, MetricRow.id)
            ):
                series.setdefault(m.name, []).append(
                    Metric(step=m.step, name=m.name, value=m.value, time=m.time)
                )
            run.metrics = series
            run.outputs = [
                f"{n}:{v}"
                for n, v in s.execute(
                    select(AssetRow.name, VersionRow.version)
                    .join(AssetRow)
                    .where(VersionRow.run_id == run_id)
                    .order_by(AssetRow.name, VersionRow.version)
                ).all()
            ]
        return run

    def compare(self, run_ids: list[str]) -> RunComparison:
        """Runs side by side; the same run given twice counts once. Two to
        :data:`MAX_COMPARED` runs."""
        ids = list(dict.fromkeys(i for i in run_ids if i))
        if len(ids) < 2:
            raise UserError("give at least two run ids to compare (see `lmops runs list`)")
        if len(ids) > MAX_COMPARED:
            raise UserError(f"{len(ids)} runs given: compare at most {MAX_COMPARED} at a time")
        runs = [self.get(i) for i in ids]
        names = sorted({m for run in runs for m in run.metrics})
        metrics: dict[str, list[MetricStats | None]] = {}
        for name in names:
            row: list[MetricStats | None] = []
            for run in runs:
                series = run.metrics.get(name)
                if not series:
                    row.append(None)
                    continue
                values = [p.value for p in series]
                row.append(
                    MetricStats(
                        last=series[-1].value,
                        step=series[-1].step,
                        min=min(values),
                        max=max(values),
                        points=len(series),
                    )
                )
            metrics[name] = row
        flat = [flatten({"config": run.config, "params": run.params}) for run in runs]
        keys = sorted({k for f in flat for k in f})
        differing: dict[str, list[Any]] = {}
        same: dict[str, Any] = {}
        for k in keys:
            given = [f.get(k) for f in flat]
            if len({repr(v) for v in given}) > 1:
                differing[k] = given
            else:
                same[k] = given[0]
        return RunComparison(runs=runs, metrics=metrics, differing=differing, same=same)

    def list(self, *, kind: str | None = None, limit: int = 50) -> list[Run]:
        """Newest first; each run's ``summary`` holds the last value of every metric."""
        check_int(limit, "limit")
        self.sweep_dead()
        with self._db.session() as s:
            q = select(RunRow).order_by(RunRow.started_at.desc()).limit(limit)
            if kind:
                q = q.where(RunRow.kind == kind)
            runs = [_rows.run(r) for r in s.scalars(q)]
            if not runs:
                return runs
            ids = [r.id for r in runs]
            last_step = (
                select(MetricRow.run_id, MetricRow.name, func.max(MetricRow.step).label("step"))
                .where(MetricRow.run_id.in_(ids))
                .group_by(MetricRow.run_id, MetricRow.name)
                .subquery()
            )
            rows = s.execute(
                select(MetricRow.run_id, MetricRow.name, MetricRow.step, MetricRow.value)
                .join(
                    last_step,
                    (MetricRow.run_id == last_step.c.run_id)
                    & (MetricRow.name == last_step.c.name)
                    & (MetricRow.step == last_step.c.step),
                )
                .order_by(MetricRow.id)
            ).all()
        by_id = {r.id: r for r in runs}
        for run_id, name, _step, value in rows:
            by_id[run_id].summary[name] = value
        return runs

    def sweep_dead(self) -> int:
        """Mark RUNNING runs of this host whose process is gone as FAILED."""
        host = socket.gethostname()
        with self._db.session() as s:
            rows = s.execute(
                select(RunRow.id, RunRow.pid).where(
                    RunRow.status == RunStatus.RUNNING.value, RunRow.host == host
                )
            ).all()
        dead = []
        for run_id, pid in rows:
            if pid is None:
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                dead.append(run_id)
            except PermissionError:
                pass
        for run_id in dead:
            self.finish(run_id, RunStatus.FAILED, "process died before finishing")
        return len(dead)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config as dotted keys (``train.lr``), for parameter diffs."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}
