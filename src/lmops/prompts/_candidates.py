"""The optimiser's candidates: what one is, how it is sent to the target model to be scored,
and how the winner is written as a template of the starting prompt's type.

**How a candidate is scored** is how its registered version will be used, so the version
picked is measured the way it will run:

* a chat prompt's candidates are chat messages, sent to ``/v1/chat/completions``;
* a text prompt's candidates are texts. A registered text prompt is an eval task's
  ``doc_to_text``, which ``lmops eval`` sends to ``/v1/completions`` as plain text (unless
  asked for ``--apply-chat-template``), and what a deployment binding it sends on
  ``/v1/completions``. So each is sent there, as plain text, stopped at the blank line
  that separates its demos (as an eval's generation stops at lm-eval's default ``until``,
  its few-shot delimiter), when the target takes plain text
  (:meth:`~lmops.prompts.lm.TextModel.takes_text`: an lmops deployment's ``/v1/models``
  card lists ``completion`` among its endpoints; another endpoint answers a one-token
  request there; an in-process model always does). Else it is sent through chat as one
  user message (as :meth:`Prompt.messages` sends a text prompt), and a one-line warning
  says the winner was not measured as it will be used.

The route taken is part of the resume journal's key (a run scored through chat never
resumes from answers to plain text, nor the other way) and of the result (``scored_via``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from lmops.core.errors import UserError
from lmops.prompts.registry import Prompt
from lmops.prompts.template import literal

if TYPE_CHECKING:
    from lmops.prompts.lm import ChatModel
    from lmops.prompts.optimize import OptimizeTask

__all__ = ["TEXT_STOP", "Builder", "Candidate", "Route", "scoring_route"]

Messages = list[dict[str, str]]
Route = Literal["chat", "completions"]
log = logging.getLogger("lmops.prompts")

# where a text candidate's answer ends: the blank line between its demos, which a model
# continuing the text writes before the next made-up demo (lm-eval's default `until`)
TEXT_STOP = ["\n\n"]
_INPUT = "\x00INPUT\x00"  # stands for {{input}} while a candidate's template is built


class Candidate(BaseModel):
    key: str
    instruction: str
    demos: list[int]  # train row indexes
    start: bool = False  # the starting prompt itself


def scoring_route(model: ChatModel, text: bool, where: str, ref: str) -> tuple[Route, str]:
    """``(route, why)``: how candidates of a text (``text``) or chat prompt are sent to
    ``model`` (the module docstring). The chat fall-back of a text prompt is warned of in
    one line naming ``ref`` and ``where``."""
    if not text:
        return "chat", "a chat prompt"
    takes = getattr(model, "takes_text", None)
    ok, why = takes() if takes is not None else (False, "it takes chat messages only")
    if ok:
        return "completions", why
    log.warning(
        "%s is a text prompt, but %s takes no plain text (%s): its candidates are scored "
        "through chat, each as one user message, not as an eval task's doc_to_text or "
        "/v1/completions will send the winner",
        ref,
        where,
        why,
    )
    return "chat", why


class Builder:
    """Builds a candidate from the starting prompt, in the starting prompt's type, so the
    version registered can go wherever the starting one went (a text prompt into an eval
    task's ``doc_to_text`` or ``/v1/completions``).

    * chat: the instruction (and the prompt's own system text) as the system message, each
      demo as the prompt's user turn for the demo's input answered by its output, then the
      prompt's turn for the input;
    * text: the instruction, each demo as the prompt for the demo's input followed by its
      output, then the prompt for the input, separated by blank lines (lm-eval's few-shot
      layout: a space before an answer, a blank line between shots). Sent as the route
      says (:func:`scoring_route`): plain text, or one user message.

    The template registered renders, for any input, exactly the text or messages that were
    scored: demo rows and instructions are written with :func:`~lmops.prompts.template.literal`,
    so ``{{``, ``{%``, ``{#`` in them stay text, in lmops' renderer and in an eval's Jinja."""

    def __init__(
        self,
        start: Prompt,
        task: OptimizeTask,
        train: list[dict[str, Any]],
        route: Route = "chat",
    ) -> None:
        self.start = start
        self.task = task
        self.train = train
        self.text = start.spec.type == "text"
        self.route = route
        extra = [v for v in start.variables if v != "input" and v not in task.variables]
        if "input" not in start.variables or extra:
            raise UserError(
                f"{start.ref}: optimisation needs a prompt with an {{{{input}}}} variable and "
                f"values for the others in the task's variables (missing: {', '.join(extra) or '-'})"
            )

    def turn(self, x: str) -> tuple[list[str], Messages]:
        msgs = self.start.messages(**self.task.variables, input=x)
        systems = []
        while msgs and msgs[0]["role"] in ("system", "developer"):
            systems.append(msgs.pop(0)["content"])
        return systems, msgs

    def shot(self, i: int) -> str:
        """Train row ``i`` as a text prompt's demo: the prompt for its input, then its output."""
        row = self.train[i]
        asked = self.start.compiled.render_text(
            {**self.task.variables, "input": str(row[self.task.input_field])}
        )
        return asked + ("" if asked[-1:].isspace() else " ") + str(row[self.task.target_field])

    def render(self, c: Candidate, x: str) -> str | Messages:
        """The candidate for input ``x``: a text (a text starting prompt) or messages."""
        if c.start:
            return self.start.render(**self.task.variables, input=x)
        if self.text:
            asked = self.start.compiled.render_text({**self.task.variables, "input": x})
            return "\n\n".join(
                [*([c.instruction] if c.instruction else []), *map(self.shot, c.demos), asked]
            )
        systems, rest = self.turn(x)
        system = "\n\n".join(s for s in [c.instruction, *systems] if s)
        out: Messages = [{"role": "system", "content": system}] if system else []
        for i in c.demos:
            row = self.train[i]
            out += self.turn(str(row[self.task.input_field]))[1]
            out.append({"role": "assistant", "content": str(row[self.task.target_field])})
        return out + rest

    def request(self, c: Candidate, x: str) -> str | Messages:
        """What the target model is sent: a text candidate's text on the completions route,
        else messages (a text is one user message, as :meth:`Prompt.messages` sends a text
        prompt)."""
        out = self.render(c, x)
        if isinstance(out, str):
            return out if self.route == "completions" else [{"role": "user", "content": out}]
        return out

    def template(self, c: Candidate) -> str | list[dict[str, str]]:
        """The candidate as a template of the starting prompt's type, ``{{input}}`` kept a
        variable and every other character text (:func:`~lmops.prompts.template.literal`)."""

        def source(rendered: str) -> str:
            return "{{input}}".join(literal(piece) for piece in rendered.split(_INPUT))

        out = self.render(c, _INPUT)
        if isinstance(out, str):
            return source(out)
        return [{"role": m["role"], "content": source(m["content"])} for m in out]
