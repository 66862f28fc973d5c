"""``lmops serve`` (run the HTTP server) and ``lmops serve batch`` (a dataset through a deployment).

``lmops serve --model NAME=REF`` with no subcommand runs the server, as it always has; the
group's options belong to the server, the subcommand's to the batch job.
"""

from __future__ import annotations

import contextlib
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lmops import __version__
from lmops.cli._output import console, err_console, options_spec, print_json
from lmops.core.errors import UserError

app = typer.Typer(
    help="Run the HTTP server (/healthz, /docs, /api and, with --model or --deployments, the "
    "OpenAI-compatible /v1); `lmops serve batch` runs a dataset through a deployment offline.",
    invoke_without_command=True,
    no_args_is_help=False,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ModelOpt = Annotated[
    list[str],
    typer.Option(
        "--model", help="NAME=REF: serve an asset ref or model folder as NAME (repeatable)."
    ),
]
DeploymentsOpt = Annotated[
    Path | None, typer.Option(help="Deployments YAML (engines, A/B splits, upstreams).")
]

ACCESS_LOG_ENV = "LMOPS_ACCESS_LOG"
# Slow clients (serve/http.py): seconds to send complete request headers (a real client
# sends them in one packet), and open connections per worker (ample behind a proxy, and
# within an open-files limit that can be raised to it).
HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 2048
# Request bodies (serve/protocol.py): 8 MiB holds a 128k-token prompt several times over.
MAX_BODY_MB = 8.0


class AccessLog(StrEnum):
    json = "json"
    off = "off"


@app.callback()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    model: ModelOpt = [],  # noqa: B006
    deployments: DeploymentsOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="Server worker processes.")] = 1,
    log_level: Annotated[str, typer.Option()] = "info",
    access_log: Annotated[
        AccessLog,
        typer.Option(
            "--access-log",
            envvar=ACCESS_LOG_ENV,
            case_sensitive=False,
            help="json: one JSON line per request on stderr; off: none.",
        ),
    ] = AccessLog.json,
    header_timeout: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="Seconds a connection has to send complete request headers (from connecting, "
            "or from the first byte of its next request); slower ones are closed.",
        ),
    ] = HEADER_TIMEOUT_S,
    max_connections: Annotated[
        int,
        typer.Option(
            min=1,
            help="Open connections per worker; beyond them a new one is answered 503 and closed.",
        ),
    ] = MAX_CONNECTIONS,
    max_body_mb: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="Largest /v1 request body, in MiB; a larger one is answered 413 before it is "
            "read.",
        ),
    ] = MAX_BODY_MB,
    log_bodies: Annotated[
        bool,
        typer.Option(
            help="Keep request and reply bodies (PII-masked) in the request log for every "
            "deployment, as log_bodies: true in a deployments file does (for data from-logs).",
        ),
    ] = False,
    responses_store: Annotated[
        bool,
        typer.Option(
            help="--no-responses-store: keep no /v1/responses response of any deployment (no "
            "previous_response_id, retrieve or delete), as responses_store: false in a "
            "deployments file does; else each deployment's setting (on by default).",
        ),
    ] = True,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help="Key file with the key-encryption key of sealed packages given to --model "
            "(lmops deploy package --encrypt); else $LMOPS_KEK. Served from memory.",
        ),
    ] = None,
    pubkey: Annotated[
        Path | None,
        typer.Option("--pubkey", help="Sealed packages must be signed by this key (file/.pub)."),
    ] = None,
) -> None:
    """Run the HTTP server: /healthz, /readyz, /docs, /api/... and, with --model or
    --deployments, the OpenAI-compatible API under /v1. `lmops serve batch` runs a dataset
    through a deployment offline."""
    if ctx.invoked_subcommand is not None:
        # `lmops serve --model x=y batch ...`: the deployment sources carry over to the batch
        ctx.obj = {"model": list(model), "deployments": deployments}
        return
    _run_server(
        host=host,
        port=port,
        model=model,
        deployments=deployments,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        header_timeout=header_timeout,
        max_connections=max_connections,
        max_body_mb=max_body_mb,
        log_bodies=log_bodies,
        responses_store=responses_store,
        key_file=key_file,
        pubkey=pubkey,
    )


def _run_server(
    *,
    host: str,
    port: int,
    model: list[str],
    deployments: Path | None,
    workers: int,
    log_level: str,
    access_log: AccessLog,
    header_timeout: float = HEADER_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    max_body_mb: float = 8.0,
    log_bodies: bool = False,
    responses_store: bool = True,
    key_file: Path | None = None,
    pubkey: Path | None = None,
) -> None:
    import json

    from lmops.serve.deployments import load_deployments, parse_model_args, preflight
    from lmops.serve.http import protocol_factory
    from lmops.serve.server import ENV, MAX_BODY_ENV
    from lmops.store import Store

    store = Store(origin="api")  # migrate once before workers start, and fail early
    try:
        flagged = parse_model_args(model)
        specs = flagged + (load_deployments(deployments) if deployments else [])
        names = [s.name for s in specs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # say where: the flags, the file, or both
            by_flag = sum(s.name == twice[0] for s in flagged)
            where = [
                ("by --model", by_flag),
                (f"in {deployments}", names.count(twice[0]) - by_flag),
            ]
            said = " and ".join(w for w, n in where if n)
            raise UserError(f"deployment {twice[0]!r} is defined twice ({said})")
        # key_file:/public_key: given for a deployment itself must serve a package; the
        # options below apply to whichever deployments are packages
        own_keys = {s.name for s in specs if s.key_file or s.public_key}
        if key_file or pubkey:  # absolute: the workers may not share this working directory
            keys = {"key_file": key_file and str(key_file.resolve())}
            keys["public_key"] = pubkey and str(pubkey.resolve())
            specs = [
                s.model_copy(update={k: v for k, v in keys.items() if v and not getattr(s, k)})
                for s in specs
            ]
        # a bad ref, or a package signed by an untrusted key, fails here, before "serving
        # on", naming the deployment
        notes = preflight(specs, store, own_keys=own_keys)
    finally:
        store.close()
    for note in notes:  # what each deployment serves, where that is not everything
        console.print(f"note: {note}", markup=False, highlight=False)
    if log_bodies:
        specs = [s.model_copy(update={"log_bodies": True}) for s in specs]
    if not responses_store:
        specs = [s.model_copy(update={"responses_store": False}) for s in specs]
    if workers > 1:
        # every worker writes its metrics here and /metrics aggregates them
        import tempfile

        from lmops.core.config import Settings

        run_dir = Settings.from_env().home / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prometheus-", dir=run_dir)
    _raise_open_files_limit(max_connections)
    # Workers are child processes (or this one): the app's access-log middleware and the
    # gateway read these.
    os.environ[ACCESS_LOG_ENV] = access_log.value
    os.environ[MAX_BODY_ENV] = str(int(max_body_mb * 1024 * 1024))
    from lmops.deploy.launcher import launch_all
    from lmops.serve import startup

    # engine: vllm deployments are launched here, once, before the workers start; each
    # becomes an upstream deployment that every worker proxies to.
    with launch_all(specs) as served:
        if served:
            os.environ[ENV] = json.dumps([s.model_dump(mode="json") for s in served])
        loading = [s.name for s in served if s.upstream is None and s.fake is None]
        if loading:  # the models load before the server listens: say why it is quiet
            console.print(
                f"loading {len(loading)} deployment(s) ({', '.join(loading)})"
                + (f" in each of {workers} workers" if workers > 1 else "")
                + "...",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

        def ready() -> None:
            # only now: the server accepts connections and every deployment has loaded
            # (in every worker); never when start-up fails. One line, never wrapped: scripts
            # wait for it.
            console.print(
                f"lmops {__version__} serving on http://{host}:{port} (API docs at /docs)"
                + (f"; /v1 models: {', '.join(s.name for s in served)}" if served else ""),
                markup=False,
                soft_wrap=True,
            )

        startup.run(
            "lmops.api.app:create_app",
            on_ready=ready,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            # json: the app writes its own structured line per request, so uvicorn's plain
            # one would be a duplicate; off: no access log at all.
            access_log=False,
            # the header deadline and connection cap (serve/http.py); a picklable
            # factory, so each spawned worker gets the same limits
            http=protocol_factory(header_timeout, max_connections),
        )


def _raise_open_files_limit(max_connections: int) -> None:
    """Lift this process's (and so its workers') soft open-files limit towards the hard
    one, so the connection cap, not EMFILE on accept, is what a flood meets first."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    want = max_connections + 256  # sockets, plus database, model and log files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- batch ------------------------------------------------------------------------------------------
@app.command("batch")
def batch(
    ctx: typer.Context,
    input_: Annotated[
        str,
        typer.Option(
            "--input",
            help="Dataset asset ref or local .jsonl/.json/.parquet file or folder: chat "
            "(messages), alpaca (instruction/input) or prompt/text rows.",
        ),
    ],
    output: Annotated[str, typer.Option(help="Dataset asset name for the answers.")],
    deployment: Annotated[
        str | None, typer.Option(help="Deployment to run (default: the only one given).")
    ] = None,
    model: ModelOpt = [],  # noqa: B006
    deployments: DeploymentsOpt = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Most tokens per answer (default: the bound prompt's, else 256)."),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=2.0,
            help="0 is greedy (deterministic; the default unless the bound prompt sets one).",
        ),
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Nucleus sampling (default: the bound prompt's, else the deployment's, else 1).",
        ),
    ] = None,
    stop: Annotated[
        list[str],
        typer.Option("--stop", help="A stop string (repeatable; default: the bound prompt's)."),
    ] = [],  # noqa: B006
    seed: Annotated[
        int | None,
        typer.Option(help="Row i samples with seed + i (default: the bound prompt's, else 0)."),
    ] = None,
    var: Annotated[
        list[str],
        typer.Option(
            "--var",
            help="NAME=VALUE for a variable of the deployment's bound prompt (repeatable); "
            "a row's 'variables' object wins over it.",
        ),
    ] = [],  # noqa: B006
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1, help="Requests in flight at once (default: the deployment's max_running)."
        ),
    ] = None,
    allow_errors: Annotated[
        bool,
        typer.Option("--allow-errors", help="Register the answered rows even if some rows failed."),
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Answer every row of a dataset with a deployment and register the chats as a dataset.

    Resumable: rerun the same command after a kill or failure and finished rows are skipped.
    Exits 1 if rows failed (they are kept for the rerun) unless --allow-errors."""
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from lmops.serve.batch import BatchSpec, run_batch
    from lmops.serve.deployments import load_deployments, parse_model_args
    from lmops.store import Store

    parent = ctx.obj or {}
    model = [*parent.get("model", []), *model]
    deployments = deployments or parent.get("deployments")
    specs = parse_model_args(model) + (load_deployments(deployments) if deployments else [])
    variables: dict[str, str] = {}
    for item in var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"--var {item!r}: expected NAME=VALUE")
        variables[name] = value
    given = {  # unset: the bound prompt's
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "stop": stop or None,
        "seed": seed,
    }
    spec = options_spec(
        BatchSpec,
        deployment=deployment,
        input=input_,
        output=output,
        concurrency=concurrency,
        allow_errors=allow_errors,
        variables=variables,
        **{k: v for k, v in given.items() if v is not None},
    )
    store = Store(origin="cli")
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=json_,
    )
    tasks: list[TaskID] = []
    first: list[float] = []  # (time, rows) when this invocation began: its own rows/s

    def progress(done: int, total: int, failed: int) -> None:
        now = time.monotonic()
        if not tasks:
            # started only once the model is loaded and rows are known, so that early errors
            # print alone; a resumed batch starts at its finished rows (the ETA is then right)
            first.extend([now, done])
            bar.start()
            tasks.append(bar.add_task("batch", total=total, completed=done, rate="", failed=""))
        rate = (done - first[1]) / (now - first[0]) if now > first[0] else 0.0
        bar.update(
            tasks[0],
            completed=done,
            rate=f"{rate:.2f} rows/s",
            failed=f"[red]{failed} failed[/]" if failed else "",
        )

    try:
        result = run_batch(store, specs, spec, progress=progress)
    finally:
        if tasks:
            bar.stop()
    if json_:
        print_json(result.to_dict())
        return
    console.print(
        f"batch: {result.rows} rows ({result.resumed} resumed, {result.generated} generated"
        + (f", {result.failed} failed" if result.failed else "")
        + (f", {result.empty} empty answers" if result.empty else "")
        + (f", {result.filtered} refused by the guardrails" if result.filtered else "")
        + f"), {result.prompt_tokens} prompt + {result.completion_tokens} completion tokens, "
        f"{result.rows_per_s:.2f} rows/s; registered {result.output} ({result.written} rows, "
        f"run {result.run_id})",
        markup=False,
    )
    if result.failed or result.filtered:
        err_console.print(
            f"{result.failed + result.filtered} failed or refused rows are listed in "
            f"{result.output}'s _failed.jsonl",
            markup=False,
        )
