"""``lmops data ...``: run recipes, list operators, show reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from lmops.cli._output import console, err_console, print_json, table
from lmops.core.errors import UserError

app = typer.Typer(
    help="Data stage: recipes of cleaning, filtering, dedup and PII operators.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@app.command("run")
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
    executor: Annotated[
        str | None, typer.Option(help="local or ray (default: the recipe's).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: the recipe's).")
    ] = None,
    set_: Annotated[
        list[str], typer.Option("--set", help="Override a field: executor.workers=4")
    ] = [],  # noqa: B006
    no_store: Annotated[
        bool, typer.Option("--no-store", help="Do not record a run or register the output.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Run a recipe; re-running after a crash resumes from finished shards."""
    from lmops.data.executor import run_recipe
    from lmops.data.recipe import load_recipe
    from lmops.data.report import format_summary

    if executor not in (None, "local", "ray"):
        raise UserError(f"--executor {executor!r}: use local or ray")
    r = load_recipe(recipe, set_)
    store = None
    if not no_store:
        from lmops.store import Store

        store = Store(origin="cli")
    result = run_recipe(
        r,
        base_dir=recipe.resolve().parent,
        store=store,
        workers=workers,
        executor=executor,
        progress=not json_,
        source=str(recipe),
    )
    if json_:
        print_json(
            {
                "recipe": result.recipe,
                "output_path": str(result.output_path) if result.output_path else None,
                "dataset": result.dataset,
                "run_id": result.run_id,
                "resumed_shards": result.resumed_shards,
                "report": result.report,
            }
        )
        return
    console.print(format_summary(result.report))
    if result.output_path:
        console.print(f"  output {result.output_path}")
    if result.resumed_shards:
        console.print(f"  resumed: {result.resumed_shards} shard(s) reused from an interrupted run")


def _param_rows(cls: Any) -> list[dict[str, Any]]:
    rows = []
    for name, f in cls.Params.model_fields.items():
        default = None if f.is_required() else f.get_default(call_default_factory=True)
        rows.append(
            {
                "name": name,
                "type": str(f.annotation).replace("typing.", ""),
                "default": default,
                "required": f.is_required(),
                "description": f.description or "",
            }
        )
    return rows


@app.command("ops")
def ops(json_: JsonOpt = False) -> None:
    """Operators with their parameters and published defaults."""
    from lmops.data.ops import Filter, GlobalOp, Mapper, list_ops

    def kind(cls: Any) -> str:
        if issubclass(cls, GlobalOp):
            return "global"
        if issubclass(cls, Filter):
            return "filter"
        if issubclass(cls, Mapper):
            return "mapper"
        return "op"

    items: list[dict[str, Any]] = [
        {
            "name": name,
            "kind": kind(cls),
            "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
            "params": _param_rows(cls),
        }
        for name, cls in list_ops().items()
    ]
    if json_:
        print_json(items)
        return
    table(
        None,
        ["operator", "kind", "parameters (defaults)", "what it does"],
        [
            [
                i["name"],
                i["kind"],
                ", ".join(
                    f"{p['name']}={json.dumps(p['default'], ensure_ascii=False)}"
                    for p in i["params"]
                ),
                i["doc"],
            ]
            for i in items
        ],
    )


@app.command("report")
def report(
    ref: Annotated[
        str, typer.Argument(help="Dataset asset ref, or an output folder of `data run`.")
    ],
    json_: JsonOpt = False,
) -> None:
    """Print the report of a data run (what was kept, dropped and why)."""
    from lmops.data.report import format_summary

    path = Path(ref)
    if not path.exists():
        from lmops.store import Store

        path = Store(origin="cli").assets.path(ref)
    f = path / "_report" / "report.json"
    if not f.exists():
        raise UserError(f"{ref}: no data report found (expected {f.name} under _report/)")
    data = json.loads(f.read_text(encoding="utf-8"))
    if json_:
        print_json(data)
    else:
        console.print(format_summary(data))
        png = f.with_suffix(".png")
        if png.exists():
            err_console.print(f"plot: {png}")
