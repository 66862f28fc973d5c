"""``lmops runs compare`` (runs side by side: metrics, the params that differ, a plot) and
``lmops runs log`` (a run's log file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lmops.cli._output import console, open_store, print_json, table, when
from lmops.store.types import MetricStats, RunComparison


def _cell(m: MetricStats | None) -> str:
    if m is None:
        return "-"
    if m.points == 1:
        return f"{m.last:.6g}"
    return f"{m.last:.6g} @{m.step} ({m.min:.4g}..{m.max:.4g})"


def _value(v: Any) -> str:
    return "-" if v is None else str(v)


def plot_runs(cmp: RunComparison, path: Path) -> Path:
    """One panel per metric, one line per run (a run with one point: a marker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cmp.metrics)
    cols = min(3, max(1, len(names)))
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    labels = [run.name or run.id for run in cmp.runs]
    if len(set(labels)) < len(labels):  # two runs of one name: tell them apart by id
        labels = [f"{label} ({run.id[:8]})" for label, run in zip(labels, cmp.runs, strict=True)]
    for ax, name in zip(axes.flat, names, strict=False):
        for run, label in zip(cmp.runs, labels, strict=True):
            series = run.metrics.get(name)
            if series:
                steps, values = [p.step for p in series], [p.value for p in series]
                ax.plot(steps, values, marker="o" if len(series) == 1 else None, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    handles, names_shown = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names_shown, loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_cmd(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids (lmops runs list).")],
    all_params: Annotated[
        bool, typer.Option("--all", help="Also list the params all runs share.")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write each metric's curves to this PNG.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Runs side by side: each metric's last value (with its range), the params that
    differ, and with --plot the metric curves in one picture."""
    cmp = open_store().runs.compare(run_ids)
    if plot is not None:
        plot_runs(cmp, plot)
    if json_:
        print_json(cmp)
        return
    heads = [f"{r.id} {r.name}".strip() for r in cmp.runs]
    rows: list[list[Any]] = [
        ["kind", *(r.kind for r in cmp.runs)],
        ["status", *(r.status.value for r in cmp.runs)],
        ["started", *(when(r.started_at) for r in cmp.runs)],
    ]
    rows += [[name, *(_cell(m) for m in stats)] for name, stats in cmp.metrics.items()]
    outputs = [", ".join(r.outputs) or None for r in cmp.runs]
    if any(outputs):
        rows.append(["outputs", *outputs])
    table(None, ["", *heads], rows, no_wrap=[""])
    if cmp.differing:
        table(
            f"params that differ ({len(cmp.differing)})",
            ["param", *heads],
            [[k, *(_value(v) for v in vals)] for k, vals in cmp.differing.items()],
            no_wrap=["param"],
        )
    else:
        console.print("no params differ")
    if all_params and cmp.same:
        table(
            f"params all runs share ({len(cmp.same)})",
            ["param", "value"],
            [[k, _value(v)] for k, v in cmp.same.items()],
            no_wrap=["param"],
        )
    elif cmp.same:
        console.print(f"{len(cmp.same)} params are the same in every run (--all lists them)")
    if plot is not None:
        console.print(f"plot: {plot}", markup=False)


def log_cmd(
    run_id: Annotated[str, typer.Argument(help="A run id (lmops runs list).")],
    lines: Annotated[
        int | None, typer.Option("--tail", "-n", min=0, help="Only the last N lines.")
    ] = None,
) -> None:
    """Print a run's log: its config, the warnings its job logged, how it ended (with the
    full traceback of the error that failed it)."""
    import sys

    from lmops.store.runlog import read_run_log

    sys.stdout.write(read_run_log(open_store().runs.get(run_id), lines))
