"""The evaluation job spec: one pydantic model, loadable from YAML, with named presets and
dotted overrides (``lmops eval run job.yaml limit=50``), the one input of ``lmops eval run``
(whose flags are overrides of it), the pipeline's ``eval`` step and any API route.

```yaml
preset: gsm8k-instruct          # optional: a named partial spec merged under this one
model: path/or/asset-ref        # or the model's name at `endpoint`
tasks: [mmlu_redux, gsm8k]      # built-ins, mmlu_redux_<subject>, perplexity:<dataset>
task_files: [tasks/support.yaml]   # lm-eval style task YAML
endpoint: null                  # an OpenAI-compatible base URL (the key: LMOPS_API_KEY)
concurrency: 8                  # requests in flight at once at the endpoint
limit: 50                       # documents per task (a group counts per subtask)
num_fewshot: null               # default: each task's own
batch_size: auto                # local: sequences a forward pass; endpoint: prompts a request
apply_chat_template: false      # lm-eval's flags of the same names
system_instruction: null
fewshot_as_multiturn: null      # default: true with a chat template
contamination: {check: false, datasets: [], n: 13}   # or just true
output: eval-mymodel            # the eval_report asset's name
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmops.core.errors import UserError
from lmops.core.yamlcfg import deep_merge, read_yaml, validate_config, with_presets
from lmops.eval.endpoint import DEFAULT_CONCURRENCY

__all__ = [
    "PRESETS",
    "SCORING_VERSION",
    "ContaminationParams",
    "EvalSpec",
    "build_spec",
    "load_spec",
    "spec_from_dict",
    "with_preset",
]


# How lmops scores a job, as a version: the pipeline's eval step keys its cache on it, so a
# step cached before a change that scores the same job differently runs again instead of
# keeping the old numbers. Raise it with any such change. 2: a generation without filter_list
# is scored unstripped, and stops at the task's fewshot_delimiter (both as lm-eval).
SCORING_VERSION = "2"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContaminationParams(_Strict):
    """Flag test items that share an ``n``-gram with the training data: the datasets in
    the model's lineage, or ``datasets`` (refs) instead."""

    check: bool = False
    datasets: list[str] = Field(default_factory=list)
    n: int = Field(13, ge=3)

    @property
    def wanted(self) -> bool:
        return self.check or bool(self.datasets)


class EvalSpec(_Strict):
    model: str  # an asset ref, a local HF folder, or the model's name at `endpoint`
    tasks: list[str] = Field(default_factory=list)
    task_files: list[str] = Field(default_factory=list)
    endpoint: str | None = None
    output: str | None = None  # eval_report asset name (default: eval-<model>)
    limit: int | None = Field(None, ge=1)
    num_fewshot: int | None = Field(None, ge=0)
    # a local model's sequences per forward pass ("auto": the largest that fits); an
    # endpoint's prompts per /v1/completions request ("auto": 8, fewer above concurrency 8)
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    scorer: Literal["loglikelihood", "letter"] | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    max_length: int | None = Field(None, ge=1)  # context length (default: the model's)
    retries: int = Field(3, ge=0)  # per endpoint request before it counts as failed
    # endpoint requests in flight at once (speed only: the same report at any number)
    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1)
    data_dir: str | None = None  # the shared datasets (default: $LMOPS_SHARED_DATASETS)
    include_errors: bool = False  # keep MMLU-Redux rows annotated as wrong
    apply_chat_template: bool = False
    system_instruction: str | None = None
    fewshot_as_multiturn: bool | None = None  # default: True with a chat template
    contamination: ContaminationParams = Field(default_factory=ContaminationParams)
    resume: bool = True  # reuse tasks an interrupted run of the same settings finished

    @field_validator("contamination", mode="before")
    @classmethod
    def _contamination_switch(cls, v: Any) -> Any:
        # `contamination: true`, as the --contamination flag reads, for {check: true}
        return {"check": v} if isinstance(v, bool) else v

    def check(self) -> None:
        """Settings that only make sense together (a one-line error naming both, as the
        flags and as the fields)."""
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise UserError(
                "--fewshot-as-multiturn needs --apply-chat-template, as in lm-eval "
                "(fewshot_as_multiturn: true needs apply_chat_template: true)"
            )

    def resolve_paths(self, base: Path) -> EvalSpec:
        """The spec with its relative local paths (task files, data dir) read from
        ``base`` (the folder of the YAML that named them)."""

        def at(p: str) -> str:
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else base / q)

        return self.model_copy(
            update={
                "task_files": [at(f) for f in self.task_files],
                "data_dir": at(self.data_dir) if self.data_dir else None,
            }
        )

    def inputs(self) -> list[str]:
        """Asset refs or local paths the job reads (a pipeline pins them in its cache key)."""
        refs = [self.model, *self.task_files]
        refs += [t.split(":", 1)[1] for t in self.tasks if t.startswith("perplexity:")]
        return refs + list(self.contamination.datasets)


# Named presets: partial specs merged under the user's (the user's keys win).
PRESETS: dict[str, dict[str, Any]] = {
    "mmlu-redux": {"tasks": ["mmlu_redux"]},
    "cmmlu": {"tasks": ["cmmlu"]},
    "gsm8k": {"tasks": ["gsm8k"], "num_fewshot": 5},
    # an instruct model as lm-eval evaluates one: its chat template, few-shot as turns
    "gsm8k-instruct": {
        "tasks": ["gsm8k"],
        "num_fewshot": 5,
        "apply_chat_template": True,
        "fewshot_as_multiturn": True,
    },
    "instruct": {"apply_chat_template": True, "fewshot_as_multiturn": True},
    "smoke": {"limit": 20},  # a quick look before the full run
}


def with_preset(data: Any) -> Any:
    """``data`` with its ``preset: NAME`` (if any) merged under it (the data's keys win)."""
    if not isinstance(data, dict) or data.get("preset") is None:
        return data
    data = dict(data)
    preset = data.pop("preset")
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} unknown; presets: {', '.join(PRESETS)}")
    return deep_merge(PRESETS[preset], data)


def spec_from_dict(
    data: dict[str, Any],
    overrides: list[str] | None = None,
    *,
    source: str = "eval spec",
    node: yaml.Node | None = None,
) -> EvalSpec:
    """A spec from a mapping (a job YAML's content, a pipeline step, an API body), with an
    optional ``preset: NAME`` merged under it and dotted overrides applied on top."""
    data = with_presets(data, PRESETS, overrides, source=source)
    spec = validate_config(data, EvalSpec, source=source, node=node)
    spec.check()
    return spec


def load_spec(path: Path, overrides: list[str] | None = None) -> EvalSpec:
    """Load a job YAML (with optional ``preset: NAME`` and dotted overrides); relative
    task files and data dir are read from the YAML's folder."""
    data, node = read_yaml(path)
    if data is None:
        raise UserError(f"{path}: empty file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    spec = spec_from_dict(data, overrides, source=str(path), node=node)
    return spec.resolve_paths(path.parent)


def build_spec(
    path: Path | None = None,
    given: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> EvalSpec:
    """A spec from an optional job YAML, values ``given`` directly (CLI flags, an API
    body's fields: they win over the YAML's, nested mappings merge) and dotted
    ``overrides`` on top. Relative paths in the YAML are read from its folder; ``given``
    paths are taken as they are (a CLI makes them absolute)."""
    data: dict[str, Any] = {}
    node = None
    source = "eval spec"
    if path is not None:
        raw, node = read_yaml(path)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a mapping at the top level")
        data, source = _paths_from(dict(raw), path.parent), str(path)
    if isinstance(data.get("contamination"), bool):  # before flags merge into it
        data["contamination"] = {"check": data["contamination"]}
    data = deep_merge(data, given or {})
    if "model" not in data and not (overrides and any(o.startswith("model=") for o in overrides)):
        raise UserError(f"{source}: no model: give --model NAME (or model: in the spec YAML)")
    return spec_from_dict(data, overrides, source=source, node=node)


def _paths_from(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """``data`` with its relative ``task_files`` and ``data_dir`` made absolute from
    ``base`` (left as they are when they are not strings: validation names them)."""

    def at(p: Any) -> Any:
        if not isinstance(p, str):
            return p
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else base / q)

    if isinstance(data.get("task_files"), list):
        data["task_files"] = [at(f) for f in data["task_files"]]
    if data.get("data_dir") is not None:
        data["data_dir"] = at(data["data_dir"])
    return data
