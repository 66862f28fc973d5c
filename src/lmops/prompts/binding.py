"""A registered prompt wrapping a gateway request (the ``serve`` → ``prompts`` edge).

A deployment binds one (``prompt: support@production`` in the deployments YAML) and a chat
request may pick another with ``extra_body={"prompt": "name@label", "variables": {...}}``
(on ``/v1/completions`` the body's ``prompt`` is the text, so only the binding applies).
:func:`apply_prompt` rewrites the request body; the gateway then serves it as any other and
the request log records the version (``prompt_ref``).

How a prompt wraps a chat request:

* ``variables`` fill the template. A template variable ``input`` the body does not give is
  the text of the request's last user message, which the rendered prompt then replaces.
* The rendered prompt's leading system messages come first, then the request's remaining
  messages (the conversation so far), then the rest of the rendered prompt. A text prompt
  without ``input`` is one system message; with ``input`` it is the user's turn.
* A request that picks a prompt and sends no messages is that prompt alone, as it renders
  (``lmops prompts render``; a text prompt is the user's turn), with every variable,
  ``input`` included, in ``variables``: how the prompt stage's client runs a version on a
  deployment (:mod:`lmops.prompts.playground`) so that the deployment's bound prompt does
  not wrap the version again and the request log names the version that was run. (A
  version without ``input`` run on an input is sent that input as its one user message,
  and wrapped as above: :func:`wrap_messages`, which the client also uses elsewhere.)
* The prompt's model-parameter config (temperature, max_tokens...) fills the fields the
  request left unset.

On ``/v1/completions`` a prompt with ``input`` is the whole prompt (``input`` = the
request's text); without, it is put before the text, separated by a newline.

Errors (unknown prompt, missing or unknown variables) are ``UserError`` one-liners that
the gateway answers with a 400.
"""

from __future__ import annotations

from typing import Any

from lmops.core.errors import UserError
from lmops.prompts.registry import Prompt, get
from lmops.prompts.template import SAMPLING_PARAMS

__all__ = ["apply_prompt", "wrap_messages"]


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def wrap_messages(
    prompt: Prompt, messages: list[Any], variables: dict[str, Any]
) -> list[dict[str, Any]]:
    """A chat request's ``messages`` wrapped by ``prompt`` filled with ``variables`` (the
    module docstring's rules): what the gateway sends on, and what the prompt stage's
    client sends an endpoint that is not lmops, so both wrap alike."""
    values = dict(variables)
    messages = list(messages)
    wants_input = "input" in prompt.variables and "input" not in values
    if wants_input:
        last = max(
            (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"),
            default=None,
        )
        if last is None:
            raise UserError(f"{prompt.ref}: its {{{{input}}}} needs a user message")
        values["input"] = _text(messages.pop(last).get("content"))
    rendered: list[dict[str, Any]] = list(prompt.messages(**values))
    if prompt.spec.type == "text" and not wants_input:
        rendered[0]["role"] = "system"
    lead = 0
    while lead < len(rendered) and rendered[lead]["role"] in ("system", "developer"):
        lead += 1
    return rendered[:lead] + messages + rendered[lead:]


def apply_prompt(
    body: dict[str, Any], bound: str | None, kind: str, store: Any
) -> tuple[dict[str, Any], str]:
    """The body wrapped by the prompt it picks (else ``bound``), and the version's
    ``name:N``. ``kind`` is ``chat`` or ``completion``."""
    body = dict(body)
    ref = body.pop("prompt", None) if kind == "chat" else None
    ref = ref if ref is not None else bound
    if not isinstance(ref, str) or not ref:
        raise UserError("prompt: give a registered prompt ref such as 'support@production'")
    variables = body.pop("variables", None) or {}
    if not isinstance(variables, dict) or not all(isinstance(k, str) for k in variables):
        raise UserError("variables: give an object of variable name -> value")
    digest = body.pop("prompt_digest", None)
    prompt: Prompt = get(ref, store=store)
    if digest is not None and digest != prompt.version.digest:
        raise UserError(
            f"prompt: {prompt.ref} on this gateway is not the version you rendered (its "
            "content differs: the gateway has its own store); register the same version "
            "here, or run the prompt against a deployment that binds none"
        )
    values = dict(variables)
    wants_input = "input" in prompt.variables and "input" not in values
    if kind == "chat" and not body.get("messages"):
        body["messages"] = prompt.messages(**values)  # the prompt alone, as it renders
    elif kind == "chat":
        body["messages"] = wrap_messages(prompt, list(body.get("messages") or []), values)
    else:
        text = body.get("prompt")
        if not isinstance(text, str):
            raise UserError("prompt: a bound prompt wraps one prompt string; send one")
        if wants_input:
            values["input"] = text
            body["prompt"] = prompt.compiled.render_text(values, what=prompt.ref)
        else:
            body["prompt"] = prompt.compiled.render_text(values, what=prompt.ref) + "\n" + text
    for k in SAMPLING_PARAMS:
        if k in prompt.spec.config and body.get(k) is None:
            if k == "max_tokens" and body.get("max_completion_tokens") is not None:
                continue
            body[k] = prompt.spec.config[k]
    return body, prompt.ref
