"""``lmops monitor``: drift on live traffic, canaries, alerts and the retraining loop."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Monitoring: drift over the request log, canary prompts, alerts, automatic retraining.",
    no_args_is_help=True,
)
