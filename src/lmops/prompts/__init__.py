"""The prompt engineering stage: a registry of versioned prompt templates with labels
(:mod:`.registry`, :mod:`.template`), framework scaffolds (:mod:`.frameworks`), few-shot
selection (:mod:`.fewshot`), the gateway binding (:mod:`.binding`), the playground
(:mod:`.playground`) and eval-driven optimisation (:mod:`.optimize`).

    import lmops.prompts
    lmops.prompts.get("qa@production").render(question="2+2?")

Only the registry and the template core are imported here, so ``serve`` may import this
package (the gateway renders bound prompts) without pulling in the rest.
"""

from __future__ import annotations

from lmops.prompts.registry import Prompt, create, diff, get, label, list_prompts, load
from lmops.prompts.template import PromptSpec, Template, parse_template

__all__ = [
    "Prompt",
    "PromptSpec",
    "Template",
    "create",
    "diff",
    "get",
    "label",
    "list_prompts",
    "load",
    "parse_template",
]
