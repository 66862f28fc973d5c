"""``lmops run PIPELINE.yaml``, ``lmops pipeline types|cache|clear`` and ``lmops quickstart``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from lmops.cli._output import console, err_console, open_store, print_json, table, when
from lmops.core.errors import UserError

if TYPE_CHECKING:
    from lmops.store import Store

app = typer.Typer(help="Pipelines: step types and the step cache.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

_MARK = {
    "running": "[cyan]▶[/]",
    "done": "[green]✓[/]",
    "cached": "[dim]•[/]",
    "failed": "[red]✗[/]",
    "not run": "[dim]-[/]",
}


_store = open_store


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
    from lmops.pipelines import load_pipeline, plan_pipeline

    pipe = load_pipeline(pipeline, set_ or [], _parse_vars(var or []))
    store = _store()
    if dry_run:
        plan = plan_pipeline(pipe, store, only=only, force=force or set(force_step or []))
        if json_:
            print_json({"pipeline": pipe.name, "plan": plan})
            if any("problem" in p for p in plan):
                raise typer.Exit(1)
            return
        table(
            None,
            ["step", "type", "needs", "plan"],
            [
                [
                    p["step"],
                    p["type"],
                    ", ".join(p["needs"]) or "-",
                    p["plan"] + (f" (would fail: {p['problem']})" if "problem" in p else ""),
                ]
                for p in plan
            ],
        )
        if any("problem" in p for p in plan):
            raise typer.Exit(1)  # the plan cannot run as it stands
        return
    result = _run_pipeline(
        pipe, store, json_, force=True if force else set(force_step or []), only=only
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


def _run_pipeline(pipe: Any, store: Store, json_: bool, **how: Any) -> Any:
    """Run with the terminal's progress and step lines (none with ``--json``); Ctrl-C
    says what was kept and exits 128 + the signal. ``how``: ``force``, ``only``."""
    from lmops.cli.main import _state
    from lmops.pipelines import run_pipeline

    try:
        return run_pipeline(
            pipe,
            store,
            progress=not json_,
            console=None if json_ else console,
            on_update=step_printer(quiet=json_),
            raise_errors=bool(_state["debug"]),
            **how,
        )
    except KeyboardInterrupt as e:
        _interrupted(e)


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
        # CachedStep is a slotted dataclass: no __dict__ (an internal error on any entry)
        print_json([dataclasses.asdict(e) for e in entries])
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


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def gate_lines(decision: dict[str, Any], outputs: dict[str, str]) -> str:
    """A gate's decision and every condition it judged, one per line."""
    conds = decision.get("conditions") or []
    failed = sum(not c["passed"] for c in conds)
    head = f"gate: {decision['decision']} {decision['model']}"
    if decision["decision"] == "promote":
        head += f" to {decision['alias']}" + (
            f" (all {len(conds)} conditions pass)" if conds else ""
        )
    else:
        head += f" ({failed} of {len(conds)} conditions fail)"
        selected = outputs.get("selected")
        head += (
            f"; {decision['alias']} does not move, {selected} (the baseline) is used"
            if selected
            else f"; {decision['alias']} does not move"
        )
    lines = [head]
    for c in conds:
        lines.append(f"  {'✓' if c['passed'] else '✗'} {c['metric']} {c['reason']}")
    if not conds:  # recorded before gates had conditions
        lines[0] += (
            f" ({decision['metric']} {decision['value']:.3f}"
            f" vs base {_fmt(decision['baseline_value'])})"
        )
    return "\n".join(lines)


def _interrupted(e: BaseException) -> NoReturn:
    """Ctrl-C during a pipeline: say what stopped and how to go on, exit 128 + signal."""
    import signal

    what = str(e) or "interrupted"
    err_console.print(
        f"{what}; completed steps are cached and a training step resumes from its "
        "checkpoint: run the same command again to continue",
        markup=False,
        soft_wrap=True,
    )
    raise typer.Exit(128 + int(getattr(e, "signum", signal.SIGINT)))


def quickstart_cmd(
    tiny: Annotated[
        bool, typer.Option(help="A seconds-long run (tiny data and steps) that checks the chain.")
    ] = False,
    serve: Annotated[
        bool, typer.Option(help="Keep serving the promoted model after the chat request.")
    ] = False,
    workdir: Annotated[
        Path, typer.Option(help="Where the generated data and quickstart.yaml are written.")
    ] = Path("lmops-quickstart"),
    shared: Annotated[
        Path | None,
        typer.Option(
            help="Shared datasets folder (default: $LMOPS_SHARED_DATASETS or ../shared/datasets)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Run every step, ignoring the cache.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Raw text to a served, evaluated, promoted model: clean a generated bilingual corpus
    (+ tinyshakespeare), train a tokenizer, pretrain a tiny Llama, LoRA-SFT and DPO it on a
    skill, evaluate base vs SFT vs DPO, gate the production alias, serve it behind a key."""
    from lmops.pipelines import load_pipeline
    from lmops.pipelines.quickstart import eval_table, find_shared, prepare

    found = find_shared(shared)
    say = (lambda *a, **k: None) if json_ else console.print
    if found is not None:
        say(f"shared datasets: {found}", markup=False)
    else:
        say(
            "shared datasets not found (set LMOPS_SHARED_DATASETS or --shared): running on "
            "generated data only, without tinyshakespeare and Alpaca",
            markup=False,
        )
    files = prepare(workdir, tiny=tiny, shared=found, serve=serve)
    c = files.corpus
    say(
        f"corpus: {c.docs:,} documents written to {c.path} ({c.shakespeare:,} from Shakespeare); "
        f"planted {c.exact_duplicates} exact and {c.near_duplicates} near duplicates, "
        f"{sum(c.junk.values())} junk, PII "
        + ", ".join(f"{k} {v}" for k, v in sorted(c.pii.items())),
        markup=False,
    )
    say(f"pipeline: {files.pipeline}\n", markup=False)
    pipe = load_pipeline(files.pipeline)
    store = _store()
    result = _run_pipeline(pipe, store, json_, force=force)
    rows = eval_table(result)
    clean = result.steps.get("clean")
    gate = result.steps.get("gate")
    served = result.steps.get("serve")
    if json_:
        print_json(
            {
                **result.to_dict(),
                "workdir": str(files.workdir),
                "corpus": c.to_dict(),
                "eval": rows,
                "gate": gate.result if gate else None,
                "serve": served.result if served else None,
            }
        )
    else:
        if clean is not None and clean.result.get("report"):
            console.print("\n[bold]data[/]")
            console.print(clean.result["report"], markup=False, highlight=False)
        if any(r["exact_match"] is not None for r in rows):
            console.print(
                "\n[bold]evaluation[/] (held-out addition, perplexity on held-out text, "
                "red-team probe)"
            )
            table(
                None,
                ["model", "version", "exact match", "word perplexity", "safe responses"],
                [
                    [
                        r["model"],
                        r["ref"],
                        _fmt(r["exact_match"]),
                        _fmt(r["word_perplexity"], ".1f"),
                        _fmt(r["safe_response_rate"]),
                    ]
                    for r in rows
                ],
            )
        if gate is not None and gate.result:
            console.print(gate_lines(gate.result, gate.outputs), markup=False, highlight=False)
        if served is not None and served.status == "cached" and served.result:
            s = served.result
            key = f"key {s['key']}" if s.get("key") else "its key"
            if s.get("key_expires_at"):
                key += f" expires {s['key_expires_at'][:16].replace('T', ' ')} UTC"
            console.print(
                f"served {s['model']} as {s['deployment']!r} (cached run; {key}): "
                f"Q: {s['prompt']}  A: {s['answer']}",
                markup=False,
            )
        print_run(result)
        if result.ok and gate is not None and gate.outputs.get("output"):
            console.print(f"trace it: lmops assets lineage {gate.outputs['output']}", markup=False)
    if not result.ok:
        bad = result.failed
        raise UserError(
            f"quickstart step {bad.name!r} failed: {bad.error}; run it again to resume"
            if bad
            else "quickstart did not complete"
        )
