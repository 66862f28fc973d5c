"""``lmops prompts``: the prompt registry, frameworks, few-shot selection, runs and optimisation."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Prompts: versioned templates with labels, frameworks, few-shot, run, compare, optimize.",
    no_args_is_help=True,
)
