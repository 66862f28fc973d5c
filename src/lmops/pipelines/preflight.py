"""Checks made before any step of a pipeline runs: what is sure to fail later is refused now.

A gate reads its metrics from eval reports that earlier steps register. Where a candidate or
the baseline is an ``eval`` step's report (``${steps.NAME.output}``), the names that report
will hold are known from the step's tasks (:func:`lmops.eval.jobs.spec_metric_names`: a task
file's metric_list and filters, the built-in tasks, ``perplexity:<dataset>``), so a gate on a
metric the report will not hold is refused before the training and evaluation it waits for,
naming ``file:line``, the gate's field and what the eval will report. Where the names are not
known (task files, a data dir or a task list that another step's output names, a built-in
whose data is not there, a report that is not an eval step's), the gate checks when it runs.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from typing import Any

from lmops.core.errors import UserError
from lmops.core.yamlcfg import format_loc
from lmops.pipelines.spec import Pipeline, references, substitute
from lmops.pipelines.steps import EvalParams, GateParams, StepContext, pick_metric

__all__ = ["check_gates"]

# a step's main output, as a gate's candidates and baseline name an eval step's report
_REPORT = re.compile(r"^\$\{steps\.([A-Za-z0-9_-]+)\.(?:output|outputs\.output)\}$")


def check_gates(pipe: Pipeline, store: Any, steps: list[str]) -> None:
    """Refuse (``UserError``) the first gate among ``steps`` with a metric that an eval
    step it reads will not report."""
    scope = {"vars": pipe.spec.vars, "pipeline": {"dir": str(pipe.base_dir), "name": pipe.name}}
    reports: dict[str, list[str] | None] = {}  # eval step -> its metric names, when known
    with contextlib.chdir(pipe.base_dir):  # where the steps run
        for name in steps:
            if pipe.spec.steps[name].type != "gate":
                continue
            try:
                gate = GateParams.model_validate(
                    substitute(pipe.spec.steps[name].params, scope, keep_steps=True)
                )
            except (KeyError, ValueError):  # an unset ${env.X}: the step says so when it runs
                continue
            # every condition's metric (the first ranks): each candidate and the baseline
            metrics: list[tuple[tuple[Any, ...], str]] = [
                (("conditions", i, "metric"), c.metric) for i, c in enumerate(gate.conditions)
            ]
            metrics = metrics or [(("metric",), str(gate.metric))]
            for ref in [*gate.candidates, *([gate.baseline] if gate.baseline else [])]:
                m = _REPORT.match(ref)
                if m is None or pipe.spec.steps[m.group(1)].type != "eval":
                    continue
                source = m.group(1)
                if source not in reports:
                    reports[source] = _eval_metrics(pipe, source, scope, store)
                names = reports[source]
                if names is None:
                    continue
                for loc, metric in metrics:
                    problem = _missing(metric, names, source)
                    if problem:
                        where = pipe.where("steps", name, *loc)
                        raise UserError(f"{where}: steps.{name}.{format_loc(loc)}: {problem}")


def _eval_metrics(pipe: Pipeline, name: str, scope: dict[str, Any], store: Any) -> list[str] | None:
    """The metric names eval step ``name``'s report will hold, or ``None`` where they are
    not known before it runs."""
    from lmops.eval.jobs import spec_metric_names

    try:
        params = EvalParams.model_validate(
            substitute(pipe.spec.steps[name].params, scope, keep_steps=True)
        )
    except (KeyError, ValueError):
        return None
    # what another step's output names is known when it has run; but a perplexity task is
    # named by its dataset as written, so a gate's metric names it the same way
    if references([*params.task_files, params.data_dir or ""]) or any(
        references(t) and not t.startswith("perplexity:") for t in params.tasks
    ):
        return None
    spec = params.resolved(StepContext(store, pipe.name, name, pipe.base_dir, None))
    try:
        return spec_metric_names(spec, store)
    except (UserError, OSError):  # the step says what is wrong when it runs
        return None


def _missing(metric: str, names: list[str], step: str) -> str | None:
    """Why ``metric`` cannot be read from a report holding ``names`` (as the gate reads it,
    :func:`pick_metric`), or ``None`` when it can, or may."""
    if pick_metric(dict.fromkeys(names, 0.0), metric) is not None:
        return None
    # a step output the metric names and the report's names do not: known when it runs
    if set(references(metric)) - {r for n in names for r in references(n)}:
        return None
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") or "no metric"
    several = [n for n in names if n.startswith(metric + ",")]
    if several:
        return (
            f"{metric!r} is {len(several)} metrics of steps.{step}'s report "
            f"({', '.join(several)}); name one"
        )
    # a metric of one filter is also read by its name without the filter
    bases = [n.split(",", 1)[0] for n in names if "," in n]
    short = [b for b in dict.fromkeys(bases) if bases.count(b) == 1]
    close = difflib.get_close_matches(metric, [*short, *names], n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"steps.{step} (eval) will not report {metric!r}; {hint}it will report: {shown}"
