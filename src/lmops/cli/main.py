"""``lmops`` entry point: noun-verb commands, ``--json`` on every read, one-line errors.

User errors print ``error: <message>`` on stderr and exit 2 (store and integrity problems
exit 1); tracebacks only with ``lmops --debug``.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text
from typer.core import TyperGroup

from lmops import __version__
from lmops.cli._output import (
    console,
    err_console,
    human_size,
    open_store,
    parse_date,
    print_json,
    table,
    when,
)
from lmops.core.errors import LmopsError, UserError


class _Lmops(TyperGroup):
    """The root group. Typer lists a group's commands by their first paragraph with its line
    breaks kept (rich markup mode), so a docstring wrapped at 100 columns showed in
    ``lmops data --help`` as a summary broken mid-sentence; each command's summary is its
    first paragraph on one line (a ``\\b`` paragraph keeps its breaks, as click's does)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _one_line_summaries(self)


def _one_line_summaries(group: TyperGroup) -> None:
    for cmd in group.commands.values():
        if cmd.short_help is None and cmd.help:
            first = inspect.cleandoc(cmd.help).partition("\f")[0].split("\n\n")[0]
            if not first.startswith("\b"):
                cmd.short_help = " ".join(first.split())
        if isinstance(cmd, TyperGroup):
            _one_line_summaries(cmd)


app = typer.Typer(
    name="lmops",
    cls=_Lmops,
    help="Self-hosted LMOps: data, training, evaluation, serving — one store, one lineage graph.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
assets_app = typer.Typer(
    help="Versioned assets: register, show, alias, lineage, verify, delete, import.",
    no_args_is_help=True,
)
runs_app = typer.Typer(help="Jobs recorded in the store, with their metrics.", no_args_is_help=True)
audit_app = typer.Typer(help="The append-only audit log.", no_args_is_help=True)
app.add_typer(assets_app, name="assets")
app.add_typer(runs_app, name="runs")


def _add_stage_apps() -> None:
    from lmops.cli import (
        data,
        deploy,
        eval,
        guard,
        keys,
        monitor,
        pipelines,
        prompts,
        runs,
        serve,
        store,
        trace,
        train,
    )

    # keys and audit keep their place in `lmops --help`, after assets and runs
    app.add_typer(keys.app, name="keys")
    app.add_typer(audit_app, name="audit")
    app.add_typer(data.app, name="data")
    app.add_typer(train.app, name="train")
    app.add_typer(eval.app, name="eval")
    app.add_typer(serve.app, name="serve")
    app.add_typer(guard.app, name="guard")
    app.add_typer(deploy.app, name="deploy")
    app.add_typer(prompts.app, name="prompts")
    app.add_typer(monitor.app, name="monitor")
    app.add_typer(pipelines.app, name="pipeline")
    app.add_typer(store.app, name="store")
    runs_app.command("compare")(runs.compare_cmd)
    runs_app.command("log")(runs.log_cmd)
    app.command("trace")(trace.trace_cmd)
    app.command("run")(pipelines.run_cmd)
    app.command("quickstart")(pipelines.quickstart_cmd)


_add_stage_apps()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
_state: dict[str, Any] = {"debug": False}


_store = open_store


def _version_cb(value: bool) -> None:
    if value:
        console.print(f"lmops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_cb, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    from lmops.core.logging import setup_logging

    _state["debug"] = debug
    setup_logging(debug)


# -- info -------------------------------------------------------------------------------------------
@app.command()
def info(json_: JsonOpt = False) -> None:
    """Version, where state lives, optional extras found, and the torch device."""
    from lmops.api.app import info_dict
    from lmops.core.config import Settings

    data = info_dict(Settings.from_env())
    if json_:
        print_json(data)
        return
    console.print(f"[bold]lmops[/] {data['version']} (Python {data['python']})")
    for label, key in [
        ("home", "home"),
        ("database", "database_url"),
        ("artifacts", "artifacts"),
        ("shared datasets", "shared_datasets"),
        ("torch device", "device"),
    ]:
        console.print(f"  {label:<16} {data[key] if data[key] is not None else '-'}")
    found = [k for k, v in data["extras"].items() if v]
    missing = [k for k, v in data["extras"].items() if not v]
    console.print(f"  {'extras found':<16} {', '.join(found) or '-'}")
    console.print(f"  {'extras missing':<16} {', '.join(missing) or '-'}")


# -- assets -----------------------------------------------------------------------------------------
def _parse_meta(items: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--meta {item!r}: expected key=value")
        k, v = item.split("=", 1)
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    return meta


def _print_version(v: Any) -> None:
    console.print(
        f"[bold]{escape(v.ref)}[/] ({escape(v.kind)}) {v.status.value}"
        + (f"  aliases: {escape(', '.join(v.aliases))}" if v.aliases else "")
    )
    if v.description:  # as the asset's own show prints it
        console.print(f"  {escape(v.description)}")
    console.print(f"  digest   {v.digest or '-'}")
    if v.layout == "external":  # a local path recorded by content: its bytes are not stored
        console.print(f"  path     {escape(str(v.metadata.get('path')))} (not stored: a reference)")
    console.print(f"  size     {human_size(v.size)} in {v.files} file(s)")
    console.print(f"  created  {when(v.created_at)} by {v.created_by}")
    if v.run_id:
        console.print(f"  run      {v.run_id}")
    if v.metadata:
        console.print(f"  metadata {escape(json.dumps(v.metadata, ensure_ascii=False))}")
    if v.tags:
        console.print(f"  tags     {escape(', '.join(v.tags))}")
    if v.error:
        console.print(f"  error    {escape(v.error)}")


@assets_app.command("register")
def assets_register(
    kind: Annotated[
        str,
        typer.Argument(
            help="dataset, tokenizer, model, adapter, prompt, eval_suite, eval_report, package"
        ),
    ],
    name: Annotated[str, typer.Argument(help="Asset name; a new version is added if it exists.")],
    path: Annotated[Path, typer.Argument(help="File or directory to store.")],
    meta: Annotated[
        list[str], typer.Option("--meta", help="key=value (value parsed as JSON if it can be).")
    ] = [],  # noqa: B006
    input_: Annotated[
        list[str], typer.Option("--input", help="Reference of a version this was made from.")
    ] = [],  # noqa: B006
    tag: Annotated[list[str], typer.Option("--tag")] = [],  # noqa: B006
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    follow_symlinks: Annotated[
        bool,
        typer.Option(
            "--follow-symlinks",
            help="Store what symlinks pointing outside PATH point to (refused otherwise).",
        ),
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Store PATH as the next version of NAME (content-addressed, hashed, then READY).

    In a folder, symlinks pointing inside it are stored as the files they point to."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    store = _store()
    if not path.exists():
        raise UserError(f"{path}: no such file or directory; nothing was registered")
    if kind == "model" and path.is_file() and path.suffix.lower() == ".gguf":
        raise UserError(
            f"{path} is a GGUF file, not a model folder; import it instead: "
            f"lmops assets import gguf {path} --name {name}"
        )
    total = (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        transient=True,
        disable=json_ or total < 64 << 20,
    ) as bar:
        task = bar.add_task(f"storing {name}", total=total)
        v = store.assets.register(
            kind,
            name,
            path,
            metadata=_parse_meta(meta),
            inputs=input_,
            tags=tag,
            description=description,
            progress=lambda n: bar.advance(task, n),
            follow_symlinks=follow_symlinks,
        )
    if kind == "model":  # said now, in one line, not when a stage fails to load it
        from lmops.core.modelfiles import check_model_folder

        try:
            check_model_folder(path)
        except UserError as e:
            err_console.print(
                f"warning: {e}; train, eval and serve will refuse this version",
                markup=False,
                soft_wrap=True,
            )
    if json_:
        print_json(v)
    else:
        console.print(
            f"registered [bold]{v.ref}[/] ({v.kind}, {human_size(v.size)}, sha256 {(v.digest or '')[:12]})"
        )


assets_import_app = typer.Typer(
    help="Turn other formats into assets (gguf: a dequantized model folder).",
    no_args_is_help=True,
)
assets_app.add_typer(assets_import_app, name="import")


class _Phases:
    """A job's ``progress(done, total, phase)`` as :class:`lmops.core.progress.Progress` on
    stderr: a bar on a terminal, otherwise a plain line as each phase starts (an import's
    phases take seconds to a minute each, so the 30 s cadence of a long job would leave
    most of them unsaid)."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled = label, enabled
        self.bar: Any = None
        self.what = "checking the file"

    def __call__(self, done: int, total: int, what: str) -> None:
        from lmops.core.progress import Progress

        self.what = what
        if self.bar is None:
            self.bar = Progress(
                total=total, label=self.label, unit="steps", enabled=self.enabled, every_s=0
            )
            self.bar.describe(what)
            self.bar.__enter__()  # the first line: 0/N steps (the first phase)
        elif done != self.bar.done:
            self.bar.describe(what)
            self.bar.update(done)
        if done >= total:
            self.close()

    def close(self) -> None:
        bar, self.bar = self.bar, None
        if bar is not None:
            bar.__exit__(None, None, None)


@assets_import_app.command("gguf")
def assets_import_gguf(
    file: Annotated[
        str, typer.Argument(help="A .gguf file, or a GGUF model asset (deploy export).")
    ],
    name: Annotated[str, typer.Option("--name", help="Name of the model asset.")],
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="auto (default: the file's precision; float16 for Q4/Q5/Q8/K-quants), "
            "float32, float16 or bfloat16. CPU serving upcasts to float32 at load time.",
        ),
    ] = "auto",
    json_: JsonOpt = False,
) -> None:
    """Import a GGUF model as a Hugging Face model folder (dequantized; tokenizer and chat
    template kept); its lineage holds the GGUF file and its sha256."""
    from lmops.cli._output import interrupted
    from lmops.deploy.gguf import import_gguf

    phases = _Phases("import", enabled=not json_)
    try:
        v = import_gguf(
            _store(), file, name=name, description=description, dtype=dtype, progress=phases
        )
    except KeyboardInterrupt as e:  # (from registering on, signals wait for the end)
        phases.close()
        interrupted(
            f"interrupted importing {file} ({phases.what}); {name} not registered",
            getattr(e, "signum", 2),
        )
    finally:  # an error is its own line: no "stopped" line before it
        phases.close()
    if json_:
        print_json(v)
    else:
        console.print(
            f"imported [bold]{v.ref}[/] (model from {escape(v.metadata['gguf_file'])}, "
            f"{human_size(v.size)} {v.metadata['dtype']}, "
            f"gguf sha256 {v.metadata['gguf_sha256'][:12]})"
        )


@assets_app.command("list")
def assets_list(
    kind: Annotated[str | None, typer.Option("--kind", help="Only this kind.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Every asset with its latest READY version and aliases."""
    assets = _store().assets.list(kind)
    if json_:
        print_json(assets)
        return
    if not assets:
        console.print("no assets yet; register one with `lmops assets register KIND NAME PATH`")
        return
    table(
        None,
        ["name", "kind", "latest", "aliases", "created"],
        [
            [
                a.name,
                a.kind,
                a.latest,
                ", ".join(f"{k}→{v}" for k, v in sorted(a.aliases.items())),
                when(a.created_at),
            ]
            for a in assets
        ],
    )


@assets_app.command("show")
def assets_show(
    ref: Annotated[str, typer.Argument(help="name (all versions), name:N or name@alias")],
    json_: JsonOpt = False,
) -> None:
    """An asset with all its versions, or one version."""
    from lmops.api.app import show

    obj = show(_store(), ref)
    if json_:
        print_json(obj)
        return
    from lmops.store import Asset

    if isinstance(obj, Asset):
        console.print(f"[bold]{obj.name}[/] ({obj.kind}) latest READY: {obj.latest or '-'}")
        if obj.description:
            console.print(f"  {escape(obj.description)}")
        table(
            None,
            ["version", "status", "digest", "size", "aliases", "created", "by"],
            [
                [
                    v.version,
                    v.status.value,
                    (v.digest or "")[:12],
                    human_size(v.size),
                    ", ".join(v.aliases),
                    when(v.created_at),
                    v.created_by,
                ]
                for v in obj.versions
            ],
        )
    else:
        _print_version(obj)


@assets_app.command("path")
def assets_path(ref: Annotated[str, typer.Argument()]) -> None:
    """Print a local read-only path holding the version's files (for an external
    reference, the path it recorded, if it still holds the recorded bytes)."""
    sys.stdout.write(f"{_store().assets.path(ref)}\n")


@assets_app.command("alias")
def assets_alias(
    ref: Annotated[str, typer.Argument(help="The version to point at (name:N, name, name@other).")],
    alias: Annotated[str, typer.Argument(help="Alias to set or move, e.g. production.")],
    json_: JsonOpt = False,
) -> None:
    """Point ALIAS of the asset at REF (moves it if it exists)."""
    v = _store().assets.alias(ref, alias)
    if json_:
        print_json(v)
    else:
        console.print(f"{v.asset}@{alias} → {v.ref}")


@assets_app.command("unalias")
def assets_unalias(name: str, alias: str) -> None:
    """Remove an alias."""
    _store().assets.unalias(name, alias)
    console.print(f"removed {name}@{alias}")


@assets_app.command("lineage")
def assets_lineage(
    ref: Annotated[str, typer.Argument()],
    depth: Annotated[int | None, typer.Option(help="Levels to follow (default: all).")] = None,
    json_: JsonOpt = False,
) -> None:
    """What REF was made from (upstream) and what was made from it (downstream)."""
    from lmops.cli._lineage import print_tree

    g = _store().assets.lineage(ref, depth)
    if json_:
        print_json(g)
        return
    print_tree(g, "upstream")
    print_tree(g, "downstream", up=False)


@assets_app.command("verify")
def assets_verify(
    ref: Annotated[
        str | None, typer.Argument(help="Asset or version; default: everything.")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Re-hash stored bytes and report missing or corrupt blobs (exit 1 if any).

    External references (local files and folders jobs read) are read again: one that
    changed or is gone is reported as CHANGED, which is not damage to the store."""
    store = _store()
    report = store.assets.verify(ref)
    problems_of = {k: v for k, v in report.items() if v}
    changed = {k: v for k, v in problems_of.items() if store.assets.get(k).layout == "external"}
    bad = {k: v for k, v in problems_of.items() if k not in changed}
    if json_:
        print_json({"ok": not bad, "checked": len(report), "versions": report, "changed": changed})
    else:
        for k, problems in problems_of.items():
            label = "[yellow]CHANGED[/]" if k in changed else "[red]CORRUPT[/]"
            for p in problems:
                err_console.print(f"{label} {escape(k)}: {escape(p)}")
        console.print(
            f"checked {len(report)} version(s): "
            + (
                "all intact"
                if not bad
                else f"{len(bad)} damaged; registering the original files again (lmops "
                "assets register KIND NAME PATH) repairs the stored bytes"
            )
            + (f"; {len(changed)} external input(s) changed" if changed else "")
        )
    if bad:
        raise typer.Exit(1)


@assets_app.command("delete")
def assets_delete(
    ref: Annotated[str, typer.Argument(help="name:N / name@alias (one version) or name (all).")],
    force: Annotated[
        bool, typer.Option("--force", help="Also when aliases point at it (they go too).")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Mark versions DELETED (numbers are never reused); `lmops gc` frees their bytes. A
    version an alias points at needs --force, or its alias as the ref."""
    from lmops.store import parse_ref

    store = _store()
    aliases = store.assets.show(parse_ref(ref).name).aliases
    deleted = store.assets.delete(ref, force=force)
    gone = [f"@{a}" for a, n in sorted(aliases.items()) if f"{parse_ref(ref).name}:{n}" in deleted]
    if json_:
        print_json({"deleted": deleted, "aliases_removed": gone})
        return
    also = f" (and its alias {', '.join(gone)})" if gone else ""
    console.print(
        f"deleted {', '.join(deleted) or 'nothing'}{also}; run `lmops gc` to free space",
        markup=False,
    )


# -- gc ---------------------------------------------------------------------------------------------
@app.command()
def gc(
    grace: Annotated[
        float,
        typer.Option(min=0, help="Keep unreferenced blobs younger than this (seconds)."),
    ] = 3600.0,
    json_: JsonOpt = False,
) -> None:
    """Remove stored blobs that no version references, and stored Responses API responses
    past their retention (responses_ttl_days).

    Safe while registrations run, whatever the grace: what they are writing is kept."""
    rep = _store().gc(grace_s=grace)
    if json_:
        print_json(
            {
                "blobs_removed": rep.blobs_removed,
                "bytes_freed": rep.bytes_freed,
                "abandoned_marked_failed": rep.abandoned_marked_failed,
                "responses_expired": rep.responses_expired,
            }
        )
    else:
        console.print(
            f"removed {rep.blobs_removed} blob(s), freed {human_size(rep.bytes_freed)}"
            + (
                f"; marked {rep.abandoned_marked_failed} abandoned version(s) FAILED"
                if rep.abandoned_marked_failed
                else ""
            )
            + (
                f"; deleted {rep.responses_expired} expired stored response(s)"
                if rep.responses_expired
                else ""
            )
        )


# -- runs -------------------------------------------------------------------------------------------
@runs_app.command("list")
def runs_list(
    kind: Annotated[str | None, typer.Option(help="Only runs of this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    json_: JsonOpt = False,
) -> None:
    """Recent runs, newest first, with the last value of each metric."""
    runs = _store().runs.list(kind=kind, limit=limit)
    if json_:
        print_json(runs)
        return
    if not runs:
        console.print("no runs yet")
        return
    table(
        None,
        ["id", "kind", "name", "status", "started", "metrics"],
        [
            [
                r.id,
                r.kind,
                r.name,
                r.status.value,
                when(r.started_at),
                ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.summary.items())),
            ]
            for r in runs
        ],
    )


@runs_app.command("show")
def runs_show(run_id: str, json_: JsonOpt = False) -> None:
    """One run: config, params, metric series, outputs, log file, error."""
    r = _store().runs.get(run_id)
    if json_:
        print_json(r)
        return
    console.print(
        f"[bold]run {r.id}[/] ({r.kind}{' ' + r.name if r.name else ''}) {r.status.value}"
    )
    console.print(f"  started  {when(r.started_at)}  ended {when(r.ended_at)}")
    console.print(f"  host     {r.host} pid {r.pid}  lmops {r.lmops_version}  by {r.created_by}")
    if r.log_path and Path(r.log_path).exists():
        console.print(f"  log      {r.log_path}  (lmops runs log {r.id})")
    if r.config:
        console.print(f"  config   {escape(json.dumps(r.config, ensure_ascii=False))}")
    if r.params:
        console.print(f"  params   {escape(json.dumps(r.params, ensure_ascii=False))}")
    for name, series in sorted(r.metrics.items()):
        console.print(
            f"  {name:<12} {len(series)} points, last {series[-1].value:.6g} at step {series[-1].step}"
        )
    if r.outputs:
        console.print(f"  outputs  {', '.join(r.outputs)}")
    if r.error:
        console.print(f"  [red]error[/]    {escape(r.error)}")


# -- audit ------------------------------------------------------------------------------------------
@audit_app.command("list")
def audit_list(
    action: Annotated[
        str | None, typer.Option(help="Action prefix, e.g. asset. or key.revoke")
    ] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    json_: JsonOpt = False,
) -> None:
    """Recent state changes: who, what, from where, when."""
    events = _store().audit.list(action=action, limit=limit)
    if json_:
        print_json(events)
        return
    table(
        None,
        ["time", "actor", "origin", "action", "target"],
        [[when(e.time), e.actor, e.origin, e.action, e.target] for e in events],
    )


# -- usage ------------------------------------------------------------------------------------------
def _since(value: str | None) -> datetime | None:
    """``2026-11-01``, an ISO time, or a relative ``30m`` / ``24h`` / ``7d``."""
    if value is None:
        return None
    import re
    from datetime import timedelta

    m = re.fullmatch(r"(\d+)([mhd])", value.strip())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        delta = {"m": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n)}[unit]
        return datetime.now(UTC) - delta
    return parse_date(value, "--since", relative=True)


@app.command()
def usage(
    key: Annotated[str | None, typer.Option(help="Only this key.")] = None,
    deployment: Annotated[str | None, typer.Option(help="Only this deployment.")] = None,
    since: Annotated[str | None, typer.Option(help="2026-11-01, an ISO time, or 24h / 7d.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Served requests and tokens per key and per deployment, with latency percentiles."""
    from lmops.monitor.metering import usage as usage_report

    rep = usage_report(_store(), key=key, deployment=deployment, since=_since(since))
    data = rep.to_dict()
    if json_:
        print_json(data)
        return

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    # retries and fallbacks (lmops.serve.fallbacks) get columns once there were any
    tried = bool(data["total"].get("retried"))

    def rows(group: dict[str, Any]) -> list[list[Any]]:
        return [
            [
                name,
                f"{g['requests']:,}",
                f"{g['errors']:,}",
                *([f"{g['retried']:,}", f"{g['fallback_answers']:,}"] if tried else []),
                f"{g['prompt_tokens']:,}",
                f"{g['completion_tokens']:,}",
                ms(g.get("latency_p50_ms")),
                ms(g.get("ttft_p50_ms")),
            ]
            for name, g in group.items()
        ]

    cols = ["requests", "errors", *(["retried", "by fallback"] if tried else [])]
    cols += ["prompt tok", "completion tok", "p50 ms", "ttft p50 ms"]
    table("per key", ["key", *cols], rows(data["by_key"]))
    table("per deployment", ["deployment", *cols], rows(data["by_deployment"]))


def main() -> None:
    """Console-script entry: run the app, turning lmops errors into one-line messages."""
    try:
        # standalone_mode=False makes typer return the code of `raise typer.Exit(n)`.
        rc = app(standalone_mode=False)
    except LmopsError as e:
        if _state["debug"]:
            raise
        from lmops.store.refs import name_views  # a view's file is named by its version

        err_console.print(
            Text.assemble(("error: ", "red"), name_views(str(e))), highlight=False, soft_wrap=True
        )
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        # only while the commands are being built: typer turns one inside a command into
        # a silent exit 130 (commands that a Ctrl-C can stop say so themselves)
        err_console.print("interrupted before the command started; nothing was done")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except typer.TyperException as e:  # usage errors: missing argument, unknown option...
        e.show()  # type: ignore[attr-defined]
        sys.exit(e.exit_code)
    except Exception as e:
        if _state["debug"] or os.environ.get("LMOPS_DEBUG"):
            raise
        msg = f"{type(e).__name__}: {e} (rerun with --debug for a traceback)"
        err_console.print(Text.assemble(("internal error: ", "red"), msg), soft_wrap=True)
        sys.exit(70)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
