"""Prompt frameworks: editable scaffolds for a new prompt (``lmops prompts new NAME
--framework crispe``), in the field layouts of Baidu Qianfan's prompt templates.

* ``basic``: instruction, context, input data, output format.
* ``crispe``: Capacity and Role, Insight (background), Statement (the task), Personality
  (style), Experiment (ask for variants).
* ``fewshot``: role, instruction, output format and examples (the demos a few-shot
  selector or the optimiser fills in), then the input.

Each scaffold is a prompt YAML file (the format ``prompts create --file`` reads): a chat
template whose system message holds the framework's fields, each a ``{{variable}}`` with a
comment saying what goes there, and whose user message is ``{{input}}`` (what a gateway
request's last user message fills). Edit it, then register it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lmops.core.errors import ConflictError, UserError
from lmops.prompts.template import PromptSpec

__all__ = ["FRAMEWORKS", "scaffold", "write_scaffold"]

# framework -> [(section heading, variable, what goes there)]
FRAMEWORKS: dict[str, list[tuple[str, str, str]]] = {
    "basic": [
        ("Instruction", "instruction", "the task the model should perform"),
        ("Context", "context", "background or external information the task needs"),
        ("Output format", "output_format", "the type or shape of the answer"),
    ],
    "crispe": [
        ("Capacity and role", "role", "the role the model should play"),
        ("Insight", "background", "background and context of the request"),
        ("Statement", "instruction", "what exactly the model should do"),
        ("Personality", "style", "the style, tone or manner of the answer"),
        ("Experiment", "experiment", "how many variants or examples to give"),
    ],
    "fewshot": [
        ("Role", "role", "the role the model should play"),
        ("Instruction", "instruction", "the task the model should perform"),
        ("Output format", "output_format", "the type or shape of the answer"),
        ("Examples", "examples", "input -> output pairs (filled by few-shot selection)"),
    ],
}


def scaffold(framework: str) -> tuple[str, PromptSpec]:
    """The scaffold's YAML text (with comments) and the spec it parses to."""
    fields = FRAMEWORKS.get(framework)
    if fields is None:
        raise UserError(
            f"unknown framework {framework!r}; choose one of: {', '.join(sorted(FRAMEWORKS))}"
        )
    system = "\n\n".join(f"## {title}\n{{{{{var}}}}}" for title, var, _ in fields)
    spec = PromptSpec(
        type="chat",
        template=[
            {"role": "system", "content": system},
            {"role": "user", "content": "{{input}}"},
        ],
        config={"temperature": 0.2, "max_tokens": 256},
        message=f"{framework} scaffold",
    )
    body = yaml.safe_dump(
        spec.model_dump(mode="json", exclude={"metadata"}), sort_keys=False, allow_unicode=True
    )
    notes = "\n".join(f"#   {{{{{var}}}}}: {what}" for _, var, what in fields)
    head = (
        f"# A {framework} prompt scaffold. Replace a variable by fixed text, or keep it and\n"
        "# give its value when rendering. Register it with:\n"
        "#   lmops prompts create NAME --file THIS_FILE -m 'first version'\n"
        f"{notes}\n#   {{{{input}}}}: the user's input (a gateway request's last user message)\n"
    )
    return head + body, spec


def write_scaffold(path: Path, framework: str, *, force: bool = False) -> PromptSpec:
    """Write the scaffold to ``path`` (never over an existing file unless ``force``)."""
    text, spec = scaffold(framework)
    if path.exists() and not force:
        raise ConflictError(f"{path} exists; choose another file or pass --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return spec
