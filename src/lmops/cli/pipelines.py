"""``lmops run PIPELINE.yaml``, ``lmops pipeline types|cache|clear`` and ``lmops quickstart``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from lmops.cli._output import console, print_json, table, when
from lmops.core.errors import UserError

app = typer.Typer(help="Pipelines: step types and the step cache.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

_MARK = {
    "running": "[cyan]▶[/]",
    "done": "[green]✓[/]",
    "cached": "[dim]•[/]",
    "failed": "[red]✗[/]",
    "not run": "[dim]-[/]",
}


def _store() -> Any:
    from lmops.store import Store

    return Store(origin="cli")


def _parse_vars(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UserError(f"--var {item!r}: expected NAME=VALUE")
        out[k] = yaml.safe_load(v) if v else ""
    return out


def step_printer(quiet: bool = False) -> Any:
    """Print one line per step transition: the live view of a pipeline run."""

    def show(st: Any) -> None:
        if quiet:
            return
        mark = _MARK.get(st.status, " ")
        head = f"{mark} [bold]{escape(st.name)}[/] [dim]({st.type})[/]"
        if st.status == "running":
            console.print(f"{head} running…")
        elif st.status == "done":
            console.print(f"{head} {st.seconds:.1f}s  {escape(st.summary)}")
        elif st.status == "cached":
            console.print(f"{head} cached  {escape(st.summary)}")
        elif st.status == "failed":
            console.print(f"{head} [red]failed[/]: {escape(st.error or '')}")
        elif st.status == "not run":
            console.print(f"{head} not run")

    return show


def print_run(result: Any) -> None:
    rows = [
        [
            s.name,
            s.type,
            s.status,
            f"{s.seconds:.1f}" if s.status == "done" else "-",
            s.outputs.get("output", "-"),
        ]
        for s in result.steps.values()
    ]
    table(None, ["step", "type", "status", "seconds", "output"], rows)
    done, cached = len(result.executed()), sum(s.status == "cached" for s in result.steps.values())
    verdict = "succeeded" if result.ok else "failed"
    console.print(
        f"pipeline {result.pipeline} {verdict} in {result.seconds:.1f} s: {done} step(s) run, "
        f"{cached} cached (run {result.run_id})",
        markup=False,
    )


def run_cmd(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override: steps.sft.spec.train.steps=10 (repeatable)."),
    ] = None,
    var: Annotated[
        list[str] | None, typer.Option("--var", help="NAME=VALUE for ${vars.NAME} (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Run every step, ignoring the cache.")] = False,
    force_step: Annotated[
        list[str] | None, typer.Option("--force-step", help="Re-run this step (repeatable).")
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run this step and what it needs (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and show the plan; run nothing.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Run a pipeline: steps in dependency order, unchanged steps from the cache; a failed
    run resumes at the failed step when run again."""
    from lmops.cli.main import _state
    from lmops.pipelines import load_pipeline, plan_pipeline, run_pipeline

    pipe = load_pipeline(pipeline, set_ or [], _parse_vars(var or []))
    store = _store()
    if dry_run:
        plan = plan_pipeline(pipe, store, only=only, force=force or set(force_step or []))
        if json_:
            print_json({"pipeline": pipe.name, "plan": plan})
            return
        table(
            None,
            ["step", "type", "needs", "plan"],
            [[p["step"], p["type"], ", ".join(p["needs"]) or "-", p["plan"]] for p in plan],
        )
        return
    result = run_pipeline(
        pipe,
        store,
        force=True if force else set(force_step or []),
        only=only,
        progress=not json_,
        console=None if json_ else console,
        on_update=step_printer(quiet=json_),
        raise_errors=bool(_state["debug"]),
    )
    if json_:
        print_json(result.to_dict())
    else:
        print_run(result)
    if not result.ok:
        bad = result.failed
        raise UserError(
            f"step {bad.name!r} ({bad.type}) failed: {bad.error}; completed steps are cached, "
            "run the same command again to resume"
            if bad
            else "pipeline did not complete"
        )


@app.command("types")
def types_cmd(json_: JsonOpt = False) -> None:
    """Step types and their parameters."""
    from lmops.pipelines.steps import STEP_TYPES

    rows = []
    for name, st in sorted(STEP_TYPES.items()):
        fields = [
            (f.alias or k) + ("" if f.is_required() else "?")
            for k, f in st.params.model_fields.items()
        ]
        doc = " ".join(st.doc.split("\n\n")[0].split()).replace("``", "")
        rows.append({"type": name, "params": fields, "doc": doc})
    if json_:
        print_json(rows)
        return
    table(
        None,
        ["type", "parameters (? = optional)", "what it does"],
        [[r["type"], ", ".join(r["params"]), r["doc"]] for r in rows],
    )


@app.command("cache")
def cache_cmd(
    pipeline: Annotated[str | None, typer.Argument(help="Pipeline name.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Cached step results (what a re-run would skip)."""
    entries = _store().steps.list(pipeline)
    if json_:
        print_json([e.__dict__ for e in entries])
        return
    table(
        None,
        ["pipeline", "step", "type", "outputs", "cached at"],
        [
            [
                e.pipeline,
                e.step,
                e.step_type,
                ", ".join(e.outputs.values()) or "-",
                when(e.created_at),
            ]
            for e in entries
        ],
    )


@app.command("clear")
def clear_cmd(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    step: Annotated[str | None, typer.Option(help="Only this step.")] = None,
) -> None:
    """Forget cached step results so the next run executes them again."""
    n = _store().steps.clear(pipeline, step)
    console.print(f"forgot {n} cached step result(s)", markup=False)
