"""``lmops trace``: from a served answer (or a refused request) to the model version, prompt
and data behind it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from lmops.cli._output import console, open_store, print_json
from lmops.core.errors import UserError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def trace_cmd(
    request_id: Annotated[
        str | None,
        typer.Argument(
            help="The answer's id (chatcmpl-…, cmpl-…, resp_…, emb-…) or the response's "
            "x-request-id header (a refused request has only that one).",
            show_default=False,
        ),
    ] = None,
    last: Annotated[
        bool, typer.Option("--last", help="The newest logged request instead.")
    ] = False,
    deployment: Annotated[str | None, typer.Option(help="With --last: of this deployment.")] = None,
    key: Annotated[str | None, typer.Option(help="With --last: of this key.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Trace a served answer back: the model version that gave it (or would have, for a
    refused request, with why it was refused), the prompt that wrapped it, and everything
    upstream of them down to the raw files."""
    from lmops.cli._lineage import print_tree
    from lmops.store.trace import trace_request

    if request_id is not None and last:
        raise UserError("give a request id or --last (the newest logged request), not both")
    if request_id is None and not last:
        raise UserError("give a request id, or --last (the newest logged request)")
    if request_id is not None and (deployment or key):
        raise UserError("--deployment and --key narrow --last; a request id is already one")
    store = open_store()
    try:
        t = trace_request(store, request_id, deployment=deployment, key=key)
    finally:
        store.close()
    if json_:
        print_json(t)
        return
    when = t.time.isoformat(timespec="seconds") if t.time else "?"
    # a refused request's answer id was never sent: it is known by its x-request-id
    shown = t.request_id if t.answered or not t.x_request_id else "(no answer)"
    console.print(
        f"{shown}  x-request-id {t.x_request_id or '-'}  {when}  {t.endpoint}  "
        f"deployment {t.deployment or '-'}  key {t.key_name or '-'}  status {t.status}  "
        f"tokens {t.prompt_tokens}+{t.completion_tokens}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if not t.answered:
        what = "failed" if t.status >= 500 else "refused"
        console.print(f"{what}: {t.error or '-'}", markup=False, highlight=False, soft_wrap=True)
    for action in t.guardrail_actions():
        console.print(f"guardrails: {action}", markup=False, highlight=False, soft_wrap=True)
    verb = "answered by" if t.answered else "would have been answered by"
    # one line each, never wrapped inside a path (it is there to be copied)
    replica = f" (replica {t.replica})" if t.replica else ""
    console.print(
        f"{verb} {t.model_ref or '-'}{replica}", markup=False, highlight=False, soft_wrap=True
    )
    for n, tried in enumerate(t.tries, 1):  # retries, fallbacks, replicas: when several
        status = int(tried.get("status") or 200)
        outcome = (
            f"failed: {tried.get('reason')}"
            if tried.get("reason")
            else ("answered" if status < 400 else f"answered {status}")
        )
        where = tried.get("replica") or tried.get("model_ref") or "-"
        console.print(
            f"  try {n}: {tried.get('deployment')} ({where}) {outcome}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if t.prompt_ref:
        console.print(f"wrapped by prompt {t.prompt_ref}", markup=False, highlight=False)
    for g in (t.model, t.prompt):
        if g is not None and g.upstream:  # a version made from nothing is only a source
            print_tree(g, "upstream")
    if t.sources:
        console.print("sources:", highlight=False)
        for src in t.sources:
            where = f" {escape(src.path)}" if src.path else ""
            if src.changed:
                where += f" [red]CHANGED since:[/] {escape(src.changed)}"
            # one line each, never wrapped inside a path (it is there to be copied)
            console.print(
                f"  [bold]{src.ref}[/] ({src.kind}){where}", highlight=False, soft_wrap=True
            )
    if t.note:
        console.print(f"note: {t.note}", markup=False, highlight=False, soft_wrap=True)
