"""``lmops prompts``: the prompt registry, frameworks, few-shot selection, runs and optimisation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lmops.cli._output import console, open_store, print_json, table, when
from lmops.core.errors import UserError

app = typer.Typer(
    help="Prompts: versioned templates with labels, frameworks, few-shot, run, compare, optimize.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
VarOpt = Annotated[
    list[str] | None,
    typer.Option("--var", "-v", help="A variable as NAME=VALUE (repeatable)."),
]
EndpointOpt = Annotated[
    str,
    typer.Option(
        envvar="LMOPS_ENDPOINT",
        help="OpenAI-compatible base URL (an lmops serve gateway: http://HOST:PORT/v1).",
    ),
]
KeyOpt = Annotated[str | None, typer.Option(envvar="LMOPS_API_KEY", help="API key.")]
DEFAULT_ENDPOINT = "http://127.0.0.1:8000/v1"


def _pairs(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``NAME=VALUE`` pairs; a value that is JSON (a number, true, a list) is parsed."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"{flag} {item!r}: expected NAME=VALUE")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Prompt name.")],
    template: Annotated[
        str | None, typer.Argument(help="Template text with {{variables}} (or use --file).")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="A prompt YAML/JSON file (type, template, config)."),
    ] = None,
    message: Annotated[str, typer.Option("--message", "-m", help="Commit message.")] = "",
    config: Annotated[
        list[str] | None,
        typer.Option("--config", "-c", help="Model parameter NAME=VALUE (repeatable)."),
    ] = None,
    label: Annotated[str | None, typer.Option(help="Also point this label at it.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Register a new immutable version of prompt NAME."""
    from lmops.prompts import registry

    if (template is None) == (file is None):
        raise UserError("give the template text or --file FILE (one of them)")
    store = open_store()
    params = _pairs(config, "--config") or None
    if file is not None:
        spec = registry.load_spec_file(file)
        v = registry.create(store, name, spec, config=params, message=message)
    else:
        assert template is not None
        v = registry.create(store, name, template, config=params, message=message)
    if label:
        v = registry.label(store, v.ref, label)
    if json_:
        print_json(v)
        return
    variables = ", ".join(v.metadata.get("variables") or []) or "none"
    console.print(f"registered {v.ref} (variables: {variables})" + (f" @{label}" if label else ""))


@app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="name, name:N or name@label.")],
    json_: JsonOpt = False,
) -> None:
    """One prompt version: template, variables, config, labels, message."""
    from lmops.prompts import registry

    p = registry.load(open_store(), ref)
    data = p.to_dict()
    if json_:
        print_json(data)
        return
    labels = " ".join(f"@{a}" for a in data["labels"])
    console.print(f"[bold]{p.ref}[/bold] {labels}  ({p.spec.type}) {data['message']}", markup=True)
    console.print(f"variables: {', '.join(p.variables) or 'none'}   config: {p.spec.config or '-'}")
    if isinstance(p.spec.template, str):
        console.print(p.spec.template, markup=False, highlight=False)
    else:
        for m in p.spec.template:
            console.print(f"[{m.role}] {m.content}", markup=False, highlight=False)


@app.command("list")
def list_(json_: JsonOpt = False) -> None:
    """Every prompt with its newest version and labels."""
    from lmops.prompts import registry

    assets = registry.list_prompts(open_store())
    if json_:
        print_json(assets)
        return
    rows = [
        (
            a.name,
            a.latest,
            " ".join(f"{k}:{v}" for k, v in sorted(a.aliases.items())) or "-",
            when(a.created_at),
        )
        for a in assets
    ]
    table(None, ["name", "latest", "labels", "created"], rows)


@app.command("diff")
def diff(
    a: Annotated[str, typer.Argument(help="Older version ref.")],
    b: Annotated[str, typer.Argument(help="Newer version ref.")],
) -> None:
    """A unified diff of two versions (template, config, message)."""
    from lmops.prompts import registry

    text = registry.diff(open_store(), a, b)
    sys.stdout.write(text or "no differences\n")


@app.command("label")
def label(
    ref: Annotated[str, typer.Argument(help="The version (name:N) to label.")],
    name: Annotated[str, typer.Argument(help="Label, e.g. production or staging.")],
    json_: JsonOpt = False,
) -> None:
    """Point a label at a version (moving it if set)."""
    from lmops.prompts import registry

    v = registry.label(open_store(), ref, name)
    if json_:
        print_json(v)
        return
    console.print(f"{v.asset}@{name} -> {v.ref}")


@app.command("render")
def render(
    ref: Annotated[str, typer.Argument(help="name, name:N or name@label.")],
    var: VarOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Render a prompt with its variables (text, or messages as JSON)."""
    from lmops.prompts import registry

    out = registry.load(open_store(), ref).render(**_pairs(var, "--var"))
    if json_ or not isinstance(out, str):
        print_json(out)
    else:
        sys.stdout.write(out + "\n")


@app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="Prompt name (the file is NAME.yaml).")],
    framework: Annotated[str, typer.Option(help="basic, crispe or fewshot.")] = "basic",
    out: Annotated[Path | None, typer.Option(help="File to write (default NAME.yaml).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write an editable prompt file scaffolded on a framework's fields."""
    from lmops.prompts.frameworks import write_scaffold

    path = out or Path(f"{name}.yaml")
    spec = write_scaffold(path, framework, force=force)
    variables = sorted({v for _, t in spec.compiled() for v in t.variables})
    console.print(f"wrote {path} ({framework}: {', '.join(variables)})")
    console.print(f"edit it, then: lmops prompts create {name} --file {path} -m 'first version'")


@app.command("fewshot")
def fewshot(
    dataset: Annotated[str, typer.Argument(help="Dataset asset ref or local file of examples.")],
    query: Annotated[str, typer.Option(help="The input to select examples for.")] = "",
    strategy: Annotated[str, typer.Option(help="fixed, random, bm25 or embedding.")] = "bm25",
    k: Annotated[int, typer.Option("-k", min=0, help="How many examples.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the random strategy.")] = 0,
    input_field: Annotated[str, typer.Option(help="The examples' input field.")] = "input",
    output_field: Annotated[str, typer.Option(help="The examples' output field.")] = "output",
    json_: JsonOpt = False,
) -> None:
    """Select few-shot examples from a dataset for an input."""
    from lmops.prompts.fewshot import FewShotSelector, format_demos, load_examples

    pool, _ = load_examples(
        open_store(), dataset, input_field=input_field, output_field=output_field
    )
    sel = FewShotSelector(pool, strategy=strategy, k=k, seed=seed)  # type: ignore[arg-type]
    demos = sel.select(query)
    if json_:
        print_json([{"index": d.index, "input": d.input, "output": d.output} for d in demos])
    else:
        sys.stdout.write(format_demos(demos) + "\n")


@app.command("run")
def run(
    ref: Annotated[str, typer.Argument(help="name, name:N or name@label.")],
    deployment: Annotated[str, typer.Option(help="Deployment (served model name).")],
    var: VarOpt = None,
    input_: Annotated[
        str | None,
        typer.Option(
            "--input",
            help="The user's text: fills {{input}}, or follows a prompt without one as the "
            "user's message.",
        ),
    ] = None,
    endpoint: EndpointOpt = DEFAULT_ENDPOINT,
    api_key: KeyOpt = None,
) -> None:
    """Render a prompt and run it once on a deployment, streaming the reply."""
    from lmops.prompts import registry
    from lmops.prompts.lm import OpenAIChat
    from lmops.prompts.playground import run_prompt

    values = _pairs(var, "--var")
    if input_ is not None:
        values["input"] = input_
    p = registry.load(open_store(), ref)
    model = OpenAIChat(endpoint, deployment, api_key=api_key)
    for piece in run_prompt(p, model, values):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command("compare")
def compare(
    a: Annotated[str, typer.Argument(help="First prompt version.")],
    b: Annotated[str, typer.Argument(help="Second prompt version.")],
    deployment: Annotated[str, typer.Option(help="Deployment (served model name).")],
    set_: Annotated[
        str, typer.Option("--set", help="Dataset ref or local file: one row per input.")
    ],
    input_field: Annotated[
        str,
        typer.Option(
            help="Field that fills {{input}} (or is the user's message after a prompt without one)."
        ),
    ] = "input",
    target_field: Annotated[
        str | None, typer.Option(help="Field with the expected answer (exact-match accuracy).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="First N rows only.")] = None,
    endpoint: EndpointOpt = DEFAULT_ENDPOINT,
    api_key: KeyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run two prompt versions side by side over a dataset (the playground's back end)."""
    from lmops.core.progress import Progress
    from lmops.prompts import registry
    from lmops.prompts.lm import OpenAIChat
    from lmops.prompts.optimize import read_set
    from lmops.prompts.playground import compare_prompts

    store = open_store()
    pa, pb = registry.load(store, a), registry.load(store, b)
    rows, _ = read_set(store, set_)
    rows = rows[:limit] if limit else rows
    model = OpenAIChat(endpoint, deployment, api_key=api_key)
    with Progress(total=len(rows), label="compare", unit="rows", enabled=not json_) as bar:
        report = compare_prompts(
            pa,
            pb,
            model,
            rows,
            input_field=input_field,
            target_field=target_field,
            on_row=lambda n: bar.advance(1),
        )
    if json_:
        print_json(report)
        return
    table(
        None,
        ["row", pa.ref, pb.ref] + (["target"] if target_field else []),
        [
            [r.where.rsplit("/", 1)[-1], r.a, r.b] + ([r.target] if target_field else [])
            for r in report.rows
        ],
    )
    if report.a_accuracy is not None:
        console.print(
            f"exact match: {pa.ref} {report.a_accuracy:.1%}  {pb.ref} {report.b_accuracy:.1%}"
        )


@app.command("optimize")
def optimize(
    name: Annotated[str, typer.Argument(help="The starting prompt (name, name:N, name@label).")],
    task: Annotated[Path, typer.Option(help="Task YAML: dataset, fields, labels, splits.")],
    model: Annotated[
        str,
        typer.Option(
            help="The target's model name at --endpoint (a deployment that binds no prompt); "
            "with --local, a model asset or folder."
        ),
    ],
    endpoint: EndpointOpt = DEFAULT_ENDPOINT,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Run --model in this process on the serving engine (no server needed).",
        ),
    ] = False,
    budget: Annotated[
        int, typer.Option(min=1, help="Calls to the target before the final test.")
    ] = 300,
    proposer: Annotated[
        str | None,
        typer.Option(help="URL/MODEL of the proposer (default: the target itself)."),
    ] = None,
    instructions: Annotated[int, typer.Option(min=0, help="Instructions to propose.")] = 4,
    demo_sets: Annotated[int, typer.Option(min=0, help="Few-shot demo sets to try.")] = 4,
    k: Annotated[int, typer.Option("-k", min=0, help="Demos per set.")] = 4,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 4,
    proposal_tokens: Annotated[
        int, typer.Option(min=1, help="Most tokens one proposed instruction may take.")
    ] = 96,
    seed: Annotated[int, typer.Option()] = 0,
    promote: Annotated[
        str | None, typer.Option(help="Point this label at the winner (default: none).")
    ] = None,
    api_key: KeyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Search instructions x few-shot demos on a dev split; register the winner with its
    held-out score and 95% CI (nothing promoted unless --promote). Ctrl-C stops at once,
    keeping the answers so far: rerun the same command to resume."""
    from lmops.core.yamlcfg import load_config
    from lmops.prompts import optimize as opt
    from lmops.prompts import registry
    from lmops.prompts.lm import OpenAIChat

    store = open_store()
    spec = load_config(task, opt.OptimizeTask)
    start = registry.load(store, name)
    target: Any
    if local:
        from lmops.prompts.local import LocalChat

        target = LocalChat(store, model)
    else:
        target = OpenAIChat(endpoint, model, api_key=api_key)
    prop = None
    if proposer:
        url, sep, pmodel = proposer.rpartition("/")
        if not sep or not url.startswith("http"):
            raise UserError(
                f"--proposer {proposer!r}: expected URL/MODEL, e.g. http://h:8000/v1/big"
            )
        prop = OpenAIChat(url, pmodel, api_key=api_key)
    settings = opt.OptimizeSettings(
        budget=budget,
        instructions=instructions,
        demo_sets=demo_sets,
        k=k,
        concurrency=concurrency,
        seed=seed,
        proposal_tokens=proposal_tokens,
    )
    say = (lambda m: None) if json_ else (lambda m: console.print(f"optimize: {m}", markup=False))
    try:
        r = opt.optimize(
            store,
            start,
            spec,
            target,
            settings,
            proposer=prop,
            task_file=task,
            model_name=f"local:{model}" if local else f"{endpoint}/{model}",
            promote=promote,
            on_progress=say,
        )
    except opt.OptimizeInterrupted as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(130) from None
    finally:
        if local:
            target.close()
    if json_:
        print_json(r)
        return
    lo, hi = r.diff_ci
    chance = f", a uniform guess {r.test_chance:.3f}" if r.test_chance is not None else ""
    console.print(
        f"held-out ({r.test_items} rows): start {r.test_baseline:.3f} -> best {r.test_best:.3f} "
        f"(difference 95% CI [{lo:+.3f}, {hi:+.3f}]); always answering the most common "
        f"target ({r.majority_target!r}) scores {r.test_majority:.3f}{chance}; "
        f"{r.calls_total} calls",
        markup=False,
        highlight=False,
    )
    if r.test_best <= r.test_majority:
        console.print(
            "warning: the best prompt does not beat always answering the most common target; "
            "its gain may be majority-class guessing (check its answers, or balance the set)",
            markup=False,
            highlight=False,
        )
    if r.registered:
        console.print(f"registered {r.registered}" + (f" @{r.promoted}" if r.promoted else ""))
    else:
        console.print("the starting prompt scored best; nothing registered")
