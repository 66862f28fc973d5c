"""``lmops data ...``: run recipes, list operators, show reports."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from lmops.cli._output import console, err_console, open_store, print_json, table
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
    keep_dropped: Annotated[
        bool,
        typer.Option(
            "--keep-dropped",
            help="Keep every dropped document with its step and reason, apart from the output "
            "(<output>-dropped; the recipe's keep_dropped: true).",
        ),
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
    if keep_dropped and r.keep_dropped is None:  # a recipe's own keep_dropped: {...} stays
        r = load_recipe(recipe, [*set_, "keep_dropped=true"])
    store = None
    if not no_store:
        from lmops.store import Store

        store = Store(origin="cli")
    try:
        result = run_recipe(
            r,
            base_dir=recipe.resolve().parent,
            store=store,
            workers=workers,
            executor=executor,
            progress=not json_,
            source=str(recipe),
        )
    except KeyboardInterrupt as e:  # as training does: say how to go on
        again = shlex.join(
            ["lmops", "data", "run", str(recipe)]
            + (["--executor", executor] if executor else [])
            + (["--workers", str(workers)] if workers else [])
            + [a for x in set_ for a in ("--set", x)]
            + (["--no-store"] if no_store else [])
            + (["--keep-dropped"] if keep_dropped else [])
        )
        from lmops.data.executor import FinishInterrupted

        said = (
            f"interrupted after all {e.stages} stage(s) had finished, before {e.left} was "
            f"written; nothing is processed again: finish with: {again}"
            if isinstance(e, FinishInterrupted)
            else f"interrupted; the finished shards are kept: resume with: {again}"
        )
        err_console.print(said, markup=False, soft_wrap=True)
        raise typer.Exit(130) from None
    if json_:
        print_json(
            {
                "recipe": result.recipe,
                "output_path": str(result.output_path) if result.output_path else None,
                "dataset": result.dataset,
                "run_id": result.run_id,
                "resumed_shards": result.resumed_shards,
                "late_interrupt": result.late_interrupt,
                "report": result.report,
            }
        )
        return
    console.print(format_summary(result.report))
    if result.output_path:
        console.print(f"  output {result.output_path}")
    if result.late_interrupt:
        err_console.print(
            "Ctrl-C came after the last stage had finished: the run was completed "
            f"{'and registered ' if result.dataset else ''}before stopping",
            markup=False,
            soft_wrap=True,
        )


def _type_name(annotation: Any) -> str:
    """``bool``, ``int | None``, ``list[str]``, ``Literal['a', 'b']``: as written in code,
    not ``<class 'bool'>``."""
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _param_rows(cls: Any) -> list[dict[str, Any]]:
    rows = []
    for name, f in cls.Params.model_fields.items():
        default = None if f.is_required() else f.get_default(call_default_factory=True)
        rows.append(
            {
                "name": name,
                "type": _type_name(f.annotation),
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
    """Print the report of a data run (what was kept, dropped and why, with examples)."""
    from lmops.data.report import format_examples, format_summary

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
        return
    console.print(format_summary(data), markup=False, highlight=False, soft_wrap=True)
    examples = format_examples(data)
    if examples:
        console.print(examples, markup=False, highlight=False, soft_wrap=True)
    gone = _dropped_gone(data.get("dropped") or {})
    if gone:
        err_console.print(gone, markup=False, soft_wrap=True)
    png = f.with_suffix(".png")
    if png.exists():
        err_console.print(f"plot: {png}")


def _dropped_gone(dropped: dict[str, Any]) -> str | None:
    """A note when the dropped documents the report names are no longer there."""
    if dropped.get("dataset"):
        from lmops.core.errors import NotFoundError
        from lmops.store import Store

        try:
            Store(origin="cli").assets.resolve(dropped["dataset"])
        except (NotFoundError, UserError):
            return f"note: the dropped documents' dataset {dropped['dataset']} is no longer READY"
    elif dropped.get("path") and not Path(dropped["path"]).exists():
        return f"note: the dropped documents' folder {dropped['path']} is gone"
    return None


_store = open_store


@app.command("validate")
def validate(
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="Files (JSON Lines, JSON arrays, CSV, Parquet), globs or dataset refs "
            "(default with --job: the job's dataset)."
        ),
    ] = None,
    format_: Annotated[
        str, typer.Option("--format", help="auto, pretrain, sft_alpaca, sft_chat, preference")
    ] = "auto",
    stage: Annotated[
        str | None,
        typer.Option(
            help="Read rows as this training stage does (sft, reward, dpo, kto, orpo): "
            "ShareGPT, TRL and LLaMA-Factory rows too, with the messages lmops train gives."
        ),
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(help="NAME=COLUMN, as the job's columns: (repeatable; with --stage)."),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(help="NAME=VALUE, as the job's tags: (repeatable; with --stage)."),
    ] = None,
    job: Annotated[
        Path | None,
        typer.Option(
            help="A training job YAML: its stage, columns, tags (and dataset, when no "
            "sources are given)."
        ),
    ] = None,
    max_errors: Annotated[
        int, typer.Option(min=1, help="Bad rows to list (all are counted).")
    ] = 20,
    json_: JsonOpt = False,
) -> None:
    """Check a training set's rows; lists bad rows by file, line and reason (exit 1 if any,
    or if there are no rows at all). With --stage (or --job), also how many rows were read
    in each shape (sharegpt, sft_chat, preference...) and where each run of them lies."""
    from lmops.data.jobs import validate_source
    from lmops.store.refs import name_views

    columns, tags = _pairs(column, "--column"), _pairs(tag, "--tag")
    if job is not None:
        from lmops.train.spec import load_spec

        spec = load_spec(job)
        stage = stage or spec.stage
        columns = {**(spec.columns or {}), **columns}
        tags = {**(spec.tags.given() if spec.tags else {}), **tags}
        sources = sources or spec.datasets
    if not sources:
        raise UserError("give the files or dataset refs to validate (or --job JOB.yaml)")
    rep = validate_source(
        sources, _store(), format_, max_errors, stage=stage, columns=columns, tags=tags
    )
    if json_:
        print_json(rep.to_dict())
    else:  # a dataset's rows by its version (mix:1/part-00000.jsonl:2), not the store's folder
        console.print(name_views(rep.summary()), markup=False)
    if stage is None and (rep.error_counts.get("undetected") or _tool_spellings(rep)):
        err_console.print(
            "note: rows written for other tools (ShareGPT's conversations, TRL's prompt/"
            "completion, KTO labels, tools as JSON text or bare functions, calls written "
            "flat...) are read by a training stage: add --stage sft (or the job's stage, or "
            "--job JOB.yaml)",
            markup=False,
            soft_wrap=True,
        )
    if not rep.total_rows:  # an empty training set is no training set
        err_console.print(
            f"error: {' '.join(sources)}: no rows; there is nothing to validate or train on",
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    if rep.valid_rows != rep.total_rows:
        raise typer.Exit(1)


def _tool_spellings(rep: Any) -> bool:
    """Whether a format check refused a row's tools or calls, which a training stage may
    read in another tool's spelling (core/shapes: tools as JSON text, bare functions,
    flat calls)."""
    return any(
        e.code == "tool" or e.field == "tools" or e.field.startswith("tools[") for e in rep.errors
    )


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict."""
    out: dict[str, str] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise UserError(f"{flag} {item!r}: expected NAME=VALUE")
        out[name.strip()] = value
    return out


tokenizer_app = typer.Typer(
    help="Train tokenizers and register them as assets.", no_args_is_help=True
)
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train")
def tokenizer_train(
    sources: Annotated[list[str], typer.Argument(help="Files, globs or dataset refs.")],
    name: Annotated[str, typer.Option("--name", help="Tokenizer asset name.")],
    kind: Annotated[
        str, typer.Option(help="bpe, sentencepiece_bpe or sentencepiece_unigram")
    ] = "bpe",
    vocab_size: Annotated[int, typer.Option(min=64)] = 8000,
    text_key: Annotated[str, typer.Option()] = "text",
    min_frequency: Annotated[int, typer.Option(min=1)] = 2,
    json_: JsonOpt = False,
) -> None:
    """Train a tokenizer (byte-level BPE or SentencePiece) with a ChatML chat template."""
    from lmops.data.jobs import train_tokenizer_asset

    v = train_tokenizer_asset(
        _store(),
        sources,
        name,
        kind=kind,
        vocab_size=vocab_size,
        text_key=text_key,
        min_frequency=min_frequency,
    )
    if json_:
        print_json(v)
    else:
        console.print(
            f"registered tokenizer {v.ref} (vocab {v.metadata.get('vocab_size')})", markup=False
        )


@app.command("tokenize")
def tokenize(
    sources: Annotated[list[str], typer.Argument(help="Files, globs or dataset refs.")],
    tokenizer: Annotated[str, typer.Option(help="Tokenizer asset ref.")],
    output: Annotated[str, typer.Option(help="Dataset asset name for the token shards.")],
    text_key: Annotated[str, typer.Option()] = "text",
    shard_tokens: Annotated[
        int, typer.Option(min=1024, help="Tokens per shard file.")
    ] = 50_000_000,
    json_: JsonOpt = False,
) -> None:
    """Tokenize documents into packed uint16/uint32 shards (document boundaries kept)."""
    from lmops.data.jobs import tokenize_dataset

    v = tokenize_dataset(
        _store(), sources, tokenizer, output, text_key=text_key, shard_tokens=shard_tokens
    )
    if json_:
        print_json(v)
    else:
        console.print(
            f"registered {v.ref}: {v.metadata.get('num_tokens'):,} tokens in {v.metadata.get('num_docs'):,} documents",
            markup=False,
        )


@app.command("mix")
def mix_cmd(
    source: Annotated[
        list[str],
        typer.Option("--source", help="REF=RATIO, repeat per dataset (ratios are weights)."),
    ],
    output: Annotated[str, typer.Option(help="Dataset asset name of the mixture.")],
    by: Annotated[str, typer.Option(help="documents or tokens")] = "documents",
    total: Annotated[
        int | None,
        typer.Option(help="Target size in the --by unit (default: largest without repeats)."),
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    json_: JsonOpt = False,
) -> None:
    """Combine datasets by target ratios, with up/down-sampling; reports realised ratios."""
    from lmops.data.jobs import mix_datasets

    ratios: dict[str, float] = {}
    for item in source:
        ref, sep, raw = item.rpartition("=")
        if ref in ratios:
            raise UserError(f"--source {ref!r} is given twice; give each source once")
        try:
            ratios[ref] = float(raw)
        except ValueError:
            raise UserError(f"--source {item!r}: expected REF=RATIO, e.g. web-clean=0.7") from None
        # 0 leaves a source out (data.mix); a negative or non-finite weight means nothing
        if not sep or not ref or not ratios[ref] >= 0 or ratios[ref] == float("inf"):
            raise UserError(f"--source {item!r}: expected REF=RATIO with a ratio >= 0")
    if by not in ("documents", "tokens"):
        raise UserError(f"--by {by!r}: use documents or tokens")
    v, rep = mix_datasets(_store(), ratios, output, by=by, total=total, seed=seed)  # type: ignore[arg-type]
    for warning in rep.get("warnings", []):
        err_console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    if json_:
        print_json({"version": v, "report": rep})
        return
    console.print(
        f"registered {v.ref} ({rep['total_docs']:,} documents, {rep['total_tokens']:,} tokens)",
        markup=False,
    )
    table(
        None,
        ["source", "requested", "realised", "taken", "available", "repeats"],
        [
            [
                name,
                f"{s['ratio']:.3f}",
                f"{s['realised_ratio_' + ('docs' if by == 'documents' else 'tokens')]:.3f}",
                s["taken_docs"],
                s["available_docs"],
                s["repeated_docs"],
            ]
            for name, s in rep["sources"].items()
        ],
    )


@app.command("from-logs")
def from_logs(
    deployment: Annotated[
        str, typer.Option(help="Deployment whose logged conversations to export.")
    ],
    output: Annotated[str, typer.Option(help="Dataset asset name.")],
    since: Annotated[str | None, typer.Option(help="2026-11-01, an ISO time, or 24h / 7d.")] = None,
    keep_truncated: Annotated[
        bool, typer.Option(help="Keep answers cut at max_tokens (finish_reason length).")
    ] = False,
    keep_filtered: Annotated[
        bool, typer.Option(help="Keep answers a content filter ended.")
    ] = False,
    keep_flagged: Annotated[
        bool, typer.Option(help="Keep exchanges a guardrail flagged (moderation, injection).")
    ] = False,
    keep_failed: Annotated[bool, typer.Option(help="Keep requests that failed.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Export logged chat requests (bodies kept after PII masking) as an SFT dataset with
    lineage to the model versions that answered; tool conversations keep their tools, calls
    and results. Truncated, content-filtered, flagged and failed exchanges are left out (and
    counted) unless a --keep-* option says otherwise; rows `lmops train` would refuse,
    calls whose arguments hold a PII mask and answers cut inside a tool call always are."""
    from lmops.cli.main import _since
    from lmops.monitor.metering import export_conversations

    flags = {
        "truncated": keep_truncated,
        "content_filtered": keep_filtered,
        "flagged": keep_flagged,
        "failed": keep_failed,
    }
    v = export_conversations(
        _store(),
        deployment=deployment,
        output=output,
        since=_since(since),
        keep=[reason for reason, on in flags.items() if on],
    )
    if json_:
        print_json(v)
    else:
        skipped = v.metadata.get("skipped") or {}
        left_out = ", ".join(f"{n} {r}" for r, n in skipped.items())
        console.print(
            f"registered {v.ref}: {v.metadata.get('count')} conversations from {deployment}"
            + (f" (left out: {left_out})" if left_out else ""),
            markup=False,
        )
