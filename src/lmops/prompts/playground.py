"""The playground's back end: run one prompt version (streaming), or two versions side by
side over a data set. An ``lmops serve`` deployment is sent the version's ref and variables
(it renders the version once, in place of the prompt the deployment binds, and its request
log names the version); any other OpenAI-compatible endpoint is sent the messages rendered
here. An input for a prompt without ``{{input}}`` is the user's message after the prompt,
as a deployment that binds the prompt would send it (:func:`render_run`).

    for piece in run_prompt(prompt, model, {"question": "2+2?"}): print(piece, end="")
    report = compare_prompts(a, b, model, rows, target_field="answer")
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel

from lmops.core.errors import UserError
from lmops.prompts.binding import wrap_messages
from lmops.prompts.lm import ChatModel
from lmops.prompts.registry import Prompt

__all__ = [
    "CompareReport",
    "CompareRow",
    "compare_prompts",
    "render_run",
    "row_variables",
    "run_prompt",
]


def _params(prompt: Prompt, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    params = {k: v for k, v in prompt.spec.config.items() if k != "model"}
    params.update(overrides or {})
    return params


def render_run(
    prompt: Prompt, variables: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(the prompt's variables, the user's turns, the messages a model is sent)`` for a
    run of ``prompt``. An ``input`` the prompt has no ``{{input}}`` for is the user's
    message, put after the prompt as a deployment binding the prompt puts a request's
    (:func:`~lmops.prompts.binding.wrap_messages`: a text prompt is then the system
    message), rather than dropped or refused as an unknown variable."""
    values = dict(variables)
    user = values.pop("input") if "input" not in prompt.variables and "input" in values else None
    turns = [] if user is None else [{"role": "user", "content": str(user)}]
    messages = wrap_messages(prompt, turns, values) if turns else prompt.messages(**values)
    return values, turns, messages


def _request(
    prompt: Prompt, model: ChatModel, variables: dict[str, Any], overrides: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages and parameters that run ``prompt`` with ``variables`` on ``model``.
    Rendered here first either way, so a missing variable is the same error everywhere."""
    values, turns, messages = render_run(prompt, variables)
    params = _params(prompt, overrides)
    if getattr(model, "renders_prompts", False):
        # rendered text would be wrapped again in the deployment's bound prompt
        # with its content's digest: a gateway on another store may hold other text
        # under the same name:N, and must refuse rather than run it
        body = {"prompt": prompt.ref, "variables": values}
        if prompt.version.digest:
            body["prompt_digest"] = prompt.version.digest
        params["extra_body"] = body
        return turns, params  # the gateway wraps the user's message, if any, in the version
    return messages, params


def run_prompt(
    prompt: Prompt,
    model: ChatModel,
    variables: dict[str, Any],
    *,
    params: dict[str, Any] | None = None,
) -> Iterator[str]:
    """The reply to the rendered prompt, as it streams (all at once where the model
    cannot stream)."""
    messages, sent = _request(prompt, model, variables, params)
    stream = getattr(model, "stream", None)
    if stream is not None:
        yield from stream(messages, **sent)
    else:
        yield model.complete(messages, **sent)


def row_variables(
    prompt: Prompt, row: dict[str, Any], where: str, input_field: str
) -> dict[str, Any]:
    """The prompt's variables from a data row (``input`` may come from ``input_field``),
    and the row's ``input_field`` as ``input`` when the prompt has no ``{{input}}``: the
    user's message after it (:func:`render_run`)."""
    values: dict[str, Any] = {}
    for v in prompt.variables:
        if v == "input" and input_field in row:  # the field named, before a column 'input'
            values[v] = row[input_field]
        elif v in row:
            values[v] = row[v]
        else:
            raise UserError(
                f"{where}: no field {v!r} for {prompt.ref}'s variable {{{{{v}}}}} "
                f"(fields: {', '.join(row)})"
            )
    if "input" not in values and input_field in row:
        values["input"] = row[input_field]
    return values


class CompareRow(BaseModel):
    where: str
    variables: dict[str, Any]
    a: str
    b: str
    target: str | None = None
    a_correct: bool | None = None
    b_correct: bool | None = None


class CompareReport(BaseModel):
    a: str
    b: str
    rows: list[CompareRow]
    a_accuracy: float | None = None
    b_accuracy: float | None = None


def normalize_answer(text: str) -> str:
    """An answer as exact match compares it: punctuation dropped, trimmed, lower case
    ("Positive." is "positive"); ``prompts compare`` and ``prompts optimize`` alike."""
    return re.sub(r"[^\w\s]", "", text).strip().lower()


def _matches(reply: str, target: str) -> bool:
    return normalize_answer(reply) == normalize_answer(target)


def compare_prompts(
    a: Prompt,
    b: Prompt,
    model: ChatModel,
    rows: Sequence[tuple[str, dict[str, Any]]],
    *,
    input_field: str = "input",
    target_field: str | None = None,
    on_row: Callable[[int], None] | None = None,
) -> CompareReport:
    """Both prompts' replies for each ``(where, row)``; with ``target_field``, each reply
    is scored by exact match (:func:`normalize_answer`: case, punctuation and surrounding
    space ignored, as the optimiser scores) and accuracies given."""
    out: list[CompareRow] = []
    for n, (where, row) in enumerate(rows):
        va = row_variables(a, row, where, input_field)
        vb = row_variables(b, row, where, input_field)
        ma, pa = _request(a, model, va, None)
        mb, pb = _request(b, model, vb, None)
        ra, rb = model.complete(ma, **pa), model.complete(mb, **pb)
        target = str(row[target_field]) if target_field and target_field in row else None
        out.append(
            CompareRow(
                where=where,
                variables={**va, **vb},
                a=ra,
                b=rb,
                target=target,
                a_correct=_matches(ra, target) if target is not None else None,
                b_correct=_matches(rb, target) if target is not None else None,
            )
        )
        if on_row is not None:
            on_row(n + 1)
    scored = [r for r in out if r.target is not None]
    return CompareReport(
        a=a.ref,
        b=b.ref,
        rows=out,
        a_accuracy=sum(bool(r.a_correct) for r in scored) / len(scored) if scored else None,
        b_accuracy=sum(bool(r.b_correct) for r in scored) / len(scored) if scored else None,
    )
