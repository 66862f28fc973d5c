"""``FakeEvalModel``: the in-package fake of the ``EvalModel`` seam (:mod:`lmops.eval.lm`),
scripted by two functions, for tests and dry runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmops.eval.tasks import ChatTemplate

__all__ = ["FakeEvalModel"]


def _chatml(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """ChatML rendering (``FakeEvalModel``'s template), continuing an opened last turn."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if add_generation_prompt:
        return text + "<|im_start|>assistant\n"
    return text[: -len("<|im_end|>\n")]


class FakeEvalModel:
    """A scripted backend for tests and dry runs: ``respond(context) -> text`` answers
    generation requests and ``score(context, continuation) -> float`` log-likelihoods."""

    def __init__(
        self,
        respond: Any = None,
        score: Any = None,
        name: str = "fake",
        chat_template: ChatTemplate | None = None,
    ) -> None:
        self.name = name
        self.respond = respond or (lambda ctx: "")
        self.score = score or (lambda ctx, cont: -float(len(cont)))
        self.chat_template = chat_template or _chatml
        # a template given is the model's own; ChatML is what --apply-chat-template forces
        self.has_chat_template = chat_template is not None

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool
    ) -> str:
        return self.chat_template(messages, add_generation_prompt)

    def generate(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        outs = []
        for ctx, kw in requests:
            text = str(self.respond(ctx))
            until = kw.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            outs.append(text)
        return outs

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return [(float(self.score(c, x)), False) for c, x in requests]

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        return [(float(self.score("", t)), max(1, len(t.split()))) for t in texts]
