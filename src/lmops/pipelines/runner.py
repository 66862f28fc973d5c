"""Run a pipeline: steps in dependency order, each skipped when its cache key is known.

The cache key of a step is a sha256 over the pipeline and step names, the step type, its
parameters as the step will see them (references substituted, so earlier steps' outputs
are pinned ``name:N`` refs; defaults filled in and nested jobs resolved: an override equal
to a default is no change), every input it names or reads through those (a recipe's
matched files, a task file's data) pinned to what it is now (an asset's version ref, a
local file's content digest) and the lmops version (:mod:`lmops.pipelines.keys`). A completed step is recorded in the store's step cache with
the versions it produced, so re-running an unchanged pipeline runs nothing, and a run that
failed (or was killed) resumes at the step that did not finish; training steps also resume
from their last checkpoint.

The whole run is recorded as a ``pipeline`` run whose params list each step's outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lmops import __version__
from lmops.core.errors import LmopsError, UserError
from lmops.core.yamlcfg import format_loc
from lmops.pipelines.keys import canonical, pin_step, resolved_params
from lmops.pipelines.preflight import check_gates
from lmops.pipelines.spec import Pipeline, param_error, substitute
from lmops.pipelines.steps import STEP_TYPES, StepContext
from lmops.store.runlog import note_error
from lmops.store.steps import CachedStep

if TYPE_CHECKING:
    from lmops.store import Store

__all__ = [
    "PipelineRun",
    "StepState",
    "plan_pipeline",
    "run_pipeline",
    "select_steps",
    "step_key",
]

# Bumped when a step type's behaviour changes in a way old cache entries must not hide, or
# when what a key is computed over changes. 2: keys over the resolved parameters (defaults
# filled in, local paths written one way) instead of the parameters as written. Entries
# stored under older keys stay in the step cache (listed and cleared as before) but are
# never hit again: each step of a pipeline runs once more after the upgrade, as it does
# after any lmops release (the version is in the key too).
CACHE_FORMAT = 2


@dataclass
class StepState:
    name: str
    type: str
    status: str = "pending"  # pending, running, done, cached, failed, not run
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    error: str | None = None
    key: str | None = None
    run_id: str | None = None


@dataclass
class PipelineRun:
    pipeline: str
    run_id: str | None
    steps: dict[str, StepState]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.status in ("done", "cached") for s in self.steps.values())

    @property
    def failed(self) -> StepState | None:
        return next((s for s in self.steps.values() if s.status == "failed"), None)

    def executed(self) -> list[str]:
        return [n for n, s in self.steps.items() if s.status == "done"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "run_id": self.run_id,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "steps": [asdict(s) for s in self.steps.values()],
        }


def step_key(pipe: Pipeline, name: str, params: Any, pinned: dict[str, str]) -> str:
    """The cache key of step ``name`` over its resolved parameters
    (:func:`~lmops.pipelines.keys.resolved_params`) and its pinned inputs."""
    material = {
        "cache_format": CACHE_FORMAT,
        "lmops": __version__,
        "pipeline": pipe.name,
        "step": name,
        "type": pipe.spec.steps[name].type,
        "params": params,
        "inputs": pinned,
    }
    return hashlib.sha256(canonical(material).encode()).hexdigest()


def select_steps(pipe: Pipeline, only: list[str] | None) -> list[str]:
    """``only`` plus everything they depend on, in run order (all steps when ``None``)."""
    if not only:
        return list(pipe.order)
    want: set[str] = set()
    todo = list(only)
    for name in todo:
        if name not in pipe.deps:
            raise UserError(f"--only {name}: no such step in {pipe.source}")
    while todo:
        n = todo.pop()
        if n not in want:
            want.add(n)
            todo += pipe.deps[n]
    return [n for n in pipe.order if n in want]


def _params(pipe: Pipeline, name: str, scope: dict[str, Any]) -> Any:
    step = pipe.spec.steps[name]
    try:
        raw = substitute(step.params, scope)
    except KeyError as e:
        loc, expr, why = e.args[0]
        field_ = format_loc((name, *loc))
        raise UserError(
            f"{pipe.where('steps', name, *loc)}: steps.{field_}: ${{{expr}}}: {why}"
        ) from None
    model = STEP_TYPES[step.type].params
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise param_error(pipe, name, e, raw, model) from None


def _prepare(
    pipe: Pipeline,
    name: str,
    store: Store,
    scope: dict[str, Any],
    force: bool | set[str],
    console: Any,
    progress: bool,
) -> tuple[Any, StepContext, str, CachedStep | None, dict[str, str]]:
    """A step's parameters, context and cache key, its cache entry when it may be reused
    (cacheable, not forced, not always-run, and the entry still resolves), and its pinned
    inputs (what the key was computed over)."""
    step = pipe.spec.steps[name]
    params = _params(pipe, name, scope)
    forced = force is True or (isinstance(force, set) and name in force)
    ctx = StepContext(store, pipe.name, name, pipe.base_dir, console, progress, forced)
    pins, found = pin_step(ctx, params)
    key = step_key(pipe, name, resolved_params(ctx, params, found), pins)
    hit = None
    if step.cache and not forced and not STEP_TYPES[step.type].always_run(params):
        hit = store.steps.get(key)
    return params, ctx, key, hit, pins


def run_pipeline(
    pipe: Pipeline,
    store: Store,
    *,
    force: bool | set[str] = False,
    only: list[str] | None = None,
    progress: bool = True,
    console: Any = None,
    on_update: Callable[[StepState], None] | None = None,
    raise_errors: bool = False,
) -> PipelineRun:
    """Run ``pipe``. A failed step skips the steps that depend on it (``not run``); the
    others still run, as the finished ones stay cached for the next run anyway.

    ``force`` re-runs every step (``True``) or the named ones; ``only`` runs those steps
    and what they depend on. A gate on a metric that an eval step it reads will not report
    is refused (``UserError``) before anything runs (:mod:`lmops.pipelines.preflight`). ``raise_errors`` re-raises a step's unexpected exception
    (for ``--debug``) after recording it."""
    from lmops.store.types import RunStatus

    selected = select_steps(pipe, only)
    check_gates(pipe, store, selected)  # before any step runs (and before the run is recorded)
    states = {n: StepState(n, pipe.spec.steps[n].type) for n in selected}
    scope: dict[str, Any] = {
        "steps": {},
        "vars": pipe.spec.vars,
        "pipeline": {"dir": str(pipe.base_dir), "name": pipe.name},
    }
    notify = on_update or (lambda s: None)
    rec = store.runs.start(
        "pipeline",
        name=pipe.name,
        config={"source": pipe.source, "spec": pipe.spec.model_dump(mode="json"), "only": only},
    )
    started = time.perf_counter()
    result = PipelineRun(pipe.name, rec.id, states)
    failure: BaseException | None = None
    try:
        with contextlib.chdir(pipe.base_dir):
            for name in selected:
                st = states[name]
                # what it depends on failed or was skipped (steps run in dependency order)
                if any(
                    d in states and states[d].status in ("failed", "not run")
                    for d in pipe.deps[name]
                ):
                    st.status = "not run"
                    notify(st)
                    continue
                try:
                    _run_step(pipe, name, st, store, scope, force, progress, console, notify)
                except KeyboardInterrupt as e:
                    # a training step says after which step and where its checkpoint is
                    st.status, st.error = "failed", str(e) or "interrupted"
                    notify(st)
                    raise
                except LmopsError as e:
                    st.status, st.error = "failed", str(e)
                    failure = e
                    note_error(rec.id, f"step {name} ({st.type})", e)
                    notify(st)
                except Exception as e:
                    st.status, st.error = "failed", f"{type(e).__name__}: {e}"
                    failure = e
                    note_error(rec.id, f"step {name} ({st.type})", e)
                    notify(st)
                    if raise_errors:
                        raise
    except BaseException as e:
        _finish(store, rec.id, result, started, RunStatus.CANCELLED, f"{type(e).__name__}: {e}")
        raise
    if failure is not None:
        bad = result.failed
        assert bad is not None
        _finish(store, rec.id, result, started, RunStatus.FAILED, f"{bad.name}: {bad.error}")
    else:
        _finish(store, rec.id, result, started, RunStatus.SUCCEEDED, None)
    return result


def _finish(
    store: Store, run_id: str, result: PipelineRun, started: float, status: Any, error: str | None
) -> None:
    result.seconds = time.perf_counter() - started
    steps = {
        n: {"status": s.status, "outputs": s.outputs, "seconds": round(s.seconds, 3)}
        for n, s in result.steps.items()
    }
    try:
        store.runs.update(run_id, params={"steps": steps})
        store.runs.log_metrics(
            run_id,
            {
                "seconds": result.seconds,
                "executed": float(len(result.executed())),
                "cached": float(sum(s.status == "cached" for s in result.steps.values())),
            },
            step=0,
        )
    finally:  # the run ends (and its log closes) whatever happened above
        store.runs.finish(run_id, status, error)


def _run_step(
    pipe: Pipeline,
    name: str,
    st: StepState,
    store: Store,
    scope: dict[str, Any],
    force: bool | set[str],
    progress: bool,
    console: Any,
    notify: Callable[[StepState], None],
) -> None:
    step = pipe.spec.steps[name]
    params, ctx, st.key, cached, _ = _prepare(pipe, name, store, scope, force, console, progress)
    if cached is not None:
        st.status = "cached"
        st.outputs = cached.outputs
        st.result = {k: v for k, v in cached.result.items() if k != "_summary"}
        st.summary = str(cached.result.get("_summary", ""))
        st.run_id = cached.run_id
    else:
        st.status = "running"
        notify(st)
        t0 = time.perf_counter()
        out = STEP_TYPES[step.type].run(ctx, params)
        st.seconds = time.perf_counter() - t0
        st.outputs, st.result, st.summary, st.run_id = (
            out.outputs,
            out.result,
            out.summary,
            out.run_id,
        )
        store.steps.put(
            st.key,
            pipeline=pipe.name,
            step=name,
            step_type=step.type,
            outputs=out.outputs,
            result={**out.result, "_summary": out.summary},
            run_id=out.run_id,
        )
        st.status = "done"
    scope["steps"][name] = {"outputs": st.outputs, "result": st.result}
    notify(st)


def plan_pipeline(
    pipe: Pipeline,
    store: Store,
    *,
    only: list[str] | None = None,
    force: bool | set[str] = False,
) -> list[dict[str, Any]]:
    """What ``run_pipeline`` would do, without running anything: for each step ``cached``
    (with its outputs) or ``run``, and its cache key where its inputs are known now. A
    gate on a metric an eval step it reads will not report is refused (``UserError``), as
    ``run_pipeline`` refuses it."""
    scope: dict[str, Any] = {
        "steps": {},
        "vars": pipe.spec.vars,
        "pipeline": {"dir": str(pipe.base_dir), "name": pipe.name},
    }
    plan: list[dict[str, Any]] = []
    will_run: set[str] = set()
    selected = select_steps(pipe, only)
    check_gates(pipe, store, selected)  # what run_pipeline refuses before running anything
    with contextlib.chdir(pipe.base_dir):
        for name in selected:
            step = pipe.spec.steps[name]
            entry: dict[str, Any] = {"step": name, "type": step.type, "needs": pipe.deps[name]}
            if will_run & set(pipe.deps[name]):  # its inputs are not known yet
                entry["plan"] = "run"
                missing = _missing_file(pipe, name, scope, store)
                if missing:  # but its own files are
                    entry["problem"] = missing
            else:
                _, _, key, hit, pins = _prepare(pipe, name, store, scope, force, None, False)
                entry["key"] = key
                entry["plan"] = "cached" if hit is not None else "run"
                if hit is not None:
                    entry["outputs"] = hit.outputs
                    scope["steps"][name] = {"outputs": hit.outputs, "result": hit.result}
                else:  # an input that is neither a file nor an asset now: it would fail
                    bad = [
                        f"{ref}: {'no such file or asset' if pin == 'unresolved' else pin}"
                        for ref, pin in pins.items()
                        if pin == "unresolved" or pin.startswith("unreadable")
                    ]
                    if bad:
                        entry["problem"] = bad[0]
            if entry["plan"] == "run":
                will_run.add(name)
            plan.append(entry)
    return plan


# Inputs written with one of these endings are files, never asset names.
_FILE_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl", ".csv", ".parquet", ".txt")


def _plainly_a_path(ref: str) -> bool:
    """An input that names a local file whatever the store holds: absolute, ``~`` or
    ``./``-relative, or written with a file's ending (a task, recipe or job YAML). A bare
    name or ``dir/name`` may be an asset, or an endpoint's model, that an earlier step makes."""
    if "${" in ref or any(c in ref for c in "*?["):  # a step's output, a glob
        return False
    return ref.startswith(("/", "~", "./", "../")) or ref.lower().endswith(_FILE_SUFFIXES)


def _missing_file(pipe: Pipeline, name: str, scope: dict[str, Any], store: Store) -> str | None:
    """For a step some of whose parameters come from steps that have not run yet: the first
    of its own local files (:func:`_plainly_a_path`) that is not there, found with each step
    reference left as it is written. ``None`` where the parameters cannot be read before
    their references are known: the step says what is wrong when it runs."""
    step = pipe.spec.steps[name]
    try:
        raw = substitute(step.params, scope, keep_steps=True)
        refs = STEP_TYPES[step.type].params.model_validate(raw).inputs()
    except (KeyError, ValueError, LmopsError):  # ValidationError is a ValueError
        return None
    ctx = StepContext(store, pipe.name, name, pipe.base_dir, None, False)
    for ref in refs:
        if _plainly_a_path(ref) and not ctx.path(ref).exists():
            return f"{ref}: no such file"
    return None
