"""``lmops monitor``: drift on live traffic, canaries, alerts and the retraining loop."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lmops.cli._output import console, err_console, options_spec, print_json, table, when
from lmops.core.errors import UserError

app = typer.Typer(
    help="Monitoring: drift over the request log, canary prompts, alerts, automatic retraining.",
    no_args_is_help=True,
)
canaries_app = typer.Typer(help="Canary prompt sets: register and run.", no_args_is_help=True)
app.add_typer(canaries_app, name="canaries")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
EmbedderOpt = Annotated[
    str, typer.Option(help="Sentence embeddings: auto (MiniLM when installed), minilm, hashed.")
]
PlotsOpt = Annotated[bool, typer.Option("--plots/--no-plots", help="Draw a plot per monitor.")]


def _store() -> Any:
    from lmops.store import Store

    return Store(origin="cli")


def _print_report(report: Any, ref: str, json_: bool) -> None:
    from lmops.monitor.report import format_summary

    if json_:
        print_json({"report": ref, **report.model_dump(mode="json")})
        return
    console.print(format_summary(report), markup=False, highlight=False)
    console.print(f"recorded as {ref}", markup=False, highlight=False)


@app.command("check")
def check(
    deployment: Annotated[str, typer.Argument(help="Deployment whose request log to read.")],
    reference: Annotated[
        str | None, typer.Option(help="Reference dataset ref (e.g. the SFT data).")
    ] = None,
    reference_since: Annotated[
        str | None, typer.Option(help="Reference = traffic since (7d, ISO time).")
    ] = None,
    reference_until: Annotated[
        str | None, typer.Option(help="... until (default: --since).")
    ] = None,
    reference_last: Annotated[int | None, typer.Option(help="... the last N requests.")] = None,
    since: Annotated[str | None, typer.Option(help="Current window since (1h, ISO time).")] = None,
    until: Annotated[str | None, typer.Option(help="Current window until.")] = None,
    last: Annotated[int, typer.Option(min=1, help="At most the last N requests.")] = 500,
    canaries: Annotated[str | None, typer.Option(help="canary_set ref to run as well.")] = None,
    base_url: Annotated[str | None, typer.Option(help="Gateway /v1 URL for canaries.")] = None,
    webhook: Annotated[str | None, typer.Option(help="POST alert changes here.")] = None,
    embedder: EmbedderOpt = "auto",
    plots: PlotsOpt = True,
    json_: JsonOpt = False,
) -> None:
    """Compare a deployment's recent traffic with a reference; record a drift_report."""
    from lmops.monitor.checks import CheckSpec, check_deployment, require_traffic

    spec = options_spec(
        CheckSpec,
        deployment=deployment,
        reference=reference,
        reference_since=reference_since,
        reference_until=reference_until,
        reference_last=reference_last,
        since=since,
        until=until,
        last=last,
        canaries=canaries,
        base_url=base_url,
        monitor={"embedder": embedder, "plots": plots},
        alerts={"webhook": webhook},
    )
    store = _store()
    require_traffic(store, spec)
    report, version = check_deployment(store, spec, progress=not json_)
    _print_report(report, version.ref, json_)


@app.command("compare")
def compare(
    dataset_a: Annotated[str, typer.Argument(help="Reference dataset ref.")],
    dataset_b: Annotated[str, typer.Argument(help="Dataset ref to compare with it.")],
    limit: Annotated[int | None, typer.Option(min=1, help="Read at most N rows of each.")] = None,
    embedder: EmbedderOpt = "auto",
    plots: PlotsOpt = True,
    json_: JsonOpt = False,
) -> None:
    """Dataset drift: the text monitors of DATASET_B against DATASET_A; records a drift_report."""
    from lmops.monitor.checks import compare_datasets
    from lmops.monitor.drift import MonitorConfig

    report, version = compare_datasets(
        _store(),
        dataset_a,
        dataset_b,
        MonitorConfig(embedder=embedder, plots=plots),
        limit=limit,
        progress=not json_,
    )
    _print_report(report, version.ref, json_)


@app.command("reports")
def reports(json_: JsonOpt = False) -> None:
    """The newest drift report of every deployment and dataset pair."""
    from lmops.monitor.checks import latest_reports

    rows = latest_reports(_store())
    if json_:
        print_json([{"report": v.ref, **r.model_dump(mode="json")} for v, r in rows])
        return
    table(
        None,
        ["report", "subject", "status", "drifted", "alerts firing", "created"],
        [
            (
                v.ref,
                r.subject,
                r.status,
                ", ".join(r.drifted) or "-",
                ", ".join(k for k, s in r.alerts.items() if s.get("firing")) or "-",
                when(v.created_at),
            )
            for v, r in rows
        ],
    )


@app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="drift_report ref (drift-chat, drift-chat:3).")],
    json_: JsonOpt = False,
) -> None:
    """One drift report: every monitor's statistic, p-value and decision."""
    from lmops.monitor.report import load_report

    store = _store()
    version = store.assets.resolve(ref)
    if version.kind != "drift_report":
        raise UserError(f"{version.ref} is a {version.kind}, not a drift_report")
    _print_report(load_report(store, version.ref), version.ref, json_)


@app.command("metrics")
def metrics() -> None:
    """Prometheus exposition of the newest drift report of every subject."""
    import sys

    from lmops.monitor.alerts import metrics_text
    from lmops.monitor.checks import latest_reports

    sys.stdout.write(metrics_text(r for _, r in latest_reports(_store())).decode())


@app.command("rules")
def rules(
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here (default: stdout).")
    ] = None,
    drift_for: Annotated[str, typer.Option(help="How long raw drift must last.")] = "15m",
) -> None:
    """A Prometheus alert-rules file for the monitor gauges."""
    from lmops.monitor.alerts import alert_rules

    text = alert_rules(drift_for=drift_for)
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    err_console.print(f"wrote {output}", markup=False, highlight=False)


@canaries_app.command("register")
def canaries_register(
    path: Annotated[Path, typer.Argument(help="Canary set YAML.")],
    name: Annotated[str, typer.Option(help="Asset name.")],
    json_: JsonOpt = False,
) -> None:
    """Validate a canary set and register it as a canary_set asset."""
    from lmops.monitor.canary import register_canaries
    from lmops.monitor.wording import counted

    v = register_canaries(_store(), path, name)
    if json_:
        print_json(v)
        return
    console.print(f"registered {v.ref} ({counted(v.metadata['prompts'], 'prompt')})", markup=False)


@canaries_app.command("run")
def canaries_run(
    ref: Annotated[str, typer.Argument(help="canary_set ref.")],
    base_url: Annotated[str, typer.Option(help="Gateway /v1 URL.")],
    model: Annotated[str, typer.Option(help="Deployment (model name) to ask.")],
    api_key: Annotated[
        str | None, typer.Option(envvar="LMOPS_API_KEY", help="Bearer key for the gateway.")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Run a canary set once against a deployment (nothing is recorded; `check` records)."""
    from lmops.monitor.canary import (
        CanarySetupError,
        key_name,
        load_canaries,
        run_canaries,
        setup_error,
    )

    store = _store()
    v = store.assets.resolve(ref)
    results = run_canaries(
        load_canaries(store.assets.path(v.ref)),
        base_url=base_url,
        model=model,
        api_key=api_key,
        key=key_name(store, api_key),
    )
    if json_:
        print_json([r.model_dump(mode="json") for r in results])
    fix = setup_error(results)
    if fix is not None:  # not a failing model: nothing was asked of it
        raise CanarySetupError(fix)
    if not json_:
        table(
            None,
            ["id", "result", "why", "ms"],
            [
                (
                    r.id,
                    r.outcome
                    if r.passed
                    else {"unanswered": "NO ANSWER", "slow": "SLOW"}.get(
                        r.cause or "", r.outcome.upper()
                    ),
                    r.error or "; ".join(r.failures) or "-",
                    f"{r.latency_ms:.0f}" if r.latency_ms is not None else "-",
                )
                for r in results
            ],
        )
    if not all(r.passed for r in results):
        raise typer.Exit(1)


@app.command("watch")
def watch_cmd(
    config: Annotated[Path, typer.Argument(help="Watch YAML: check, interval_s, retrain.")],
    once: Annotated[bool, typer.Option("--once", help="One round, then exit (for cron).")] = False,
    json_: JsonOpt = False,
) -> None:
    """Check a deployment every interval; on drift or a canary answered wrong, retrain
    from the logs and promote the challenger only when it wins by the margin (canaries
    that got no answer, or a right one too late, are an availability alert and never
    retrain)."""
    from lmops.monitor.checks import require_traffic
    from lmops.monitor.wording import counted, noun_for
    from lmops.pipelines.retrain import Decision, load_watch, watch

    spec, base = load_watch(config)
    store = _store()
    require_traffic(store, spec.check)  # a misspelt deployment: refused before any round
    failed: list[str] = []

    def show_round(d: Decision | None, err: str | None) -> None:
        if d is None:
            failed.append(str(err))
        if json_:
            print_json(d.model_dump(mode="json") if d else {"error": err})
            return
        if d is None:
            goes_on = "" if once else " (the watcher goes on)"
            err_console.print(f"error: {err}{goes_on}", markup=False)
            return
        head = f"{d.report}: {d.status}"
        if d.triggered:
            head += f"; triggered by {'; '.join(d.triggers)}"
            head += "; PROMOTED" if d.promoted else "; not promoted"
        console.print(head, markup=False, highlight=False)
        notes = [f"alert firing: {a}" for a in d.alerts_firing]
        if d.operational_drift and not any(t.startswith("operational") for t in d.triggers):
            notes.append(
                "operational drift, not a retrain trigger: " + ", ".join(d.operational_drift)
            )
        serving = {*d.canaries_unanswered, *d.canaries_slow}
        wrong = [c for c in d.canaries_failing if c not in serving]
        if wrong:
            notes.append(
                f"{noun_for(len(wrong), 'canary', 'canaries')} failing: " + ", ".join(wrong)
            )
        for ids, what in [
            (d.canaries_unanswered, "unanswered (availability"),
            (d.canaries_slow, "slow (latency"),
        ]:
            if ids:
                many = noun_for(len(ids), "canary", "canaries")
                notes.append(f"{many} {what}, not a retrain trigger): " + ", ".join(ids))
        notes += [f"webhook failed: {w}" for w in d.webhook_errors]
        notes += [
            f"{name}: {counted(n, 'chat')} not scored, {why}"
            for name, reasons in d.skipped.items()
            for why, n in reasons.items()
        ]
        for line in [*notes, *d.reasons]:
            console.print(f"  {line}", markup=False, highlight=False)
        if d.decision:
            console.print(f"  recorded as {d.decision}", markup=False, highlight=False)

    watch(store, spec, base, once=once, progress=not json_, on_round=show_round)
    if once and failed:  # for cron: a round that could not run is a failure
        raise typer.Exit(1)
