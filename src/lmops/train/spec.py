"""The training job spec: one pydantic model, loadable from YAML, with named presets and
dotted overrides (``lmops train job.yaml train.lr=1e-4``).

```yaml
stage: sft            # pretrain | sft | reward | dpo | kto | orpo | ppo
method: lora          # full | freeze | lora | qlora | prefix | prompt_tuning
model: path/or/asset-ref        # or {preset: llama-tiny, tokenizer: tok} to start from scratch
dataset: path/or/asset-ref      # JSON Lines, JSON array, CSV, Parquet; pretrain: also .txt, token shards
output: my-model                # asset name for the result
on_error: raise                 # or skip: bad rows (e.g. an empty output) left out, counted
columns: {instruction: en_instruction, input: en_input, output: en_output}  # optional
tags: {role_tag: from, content_tag: value, user_tag: human, assistant_tag: gpt}  # optional
chat_template: chatml           # or chatml-tools, or a Jinja template's text; default: the tokenizer's own
train: {max_steps: 100, lr: 2e-4, batch_size: 8, max_seq_len: 512, seed: 0, save_steps: 50}
```

Rows: alpaca (``instruction``/``input``/``output``), chat (``messages``, OpenAI's, with
``weight: 0`` for turns left out of the loss), ShareGPT (``conversations`` of
``{from, value}``), TRL's ``prompt``/``completion`` and ``{"text"}`` for SFT; for reward,
DPO, KTO and ORPO TRL's ``prompt``/``chosen``/``rejected`` (or implicit prompt: whole
conversations), LLaMA-Factory's ``conversations`` + ``chosen``/``rejected`` message objects
or ``instruction`` + ``chosen``/``rejected``; for KTO also ``prompt``/``completion``/``label``.
Each row is recognised by its keys (:mod:`lmops.core.shapes`). ``columns`` maps lmops's
field names (:data:`~lmops.core.shapes.COLUMNS`) to a file's other ones, as LLaMA-Factory's
``dataset_info`` ``columns`` do; ``tags`` (LLaMA-Factory's names) a chat's message keys and
role names where they are not OpenAI's or ShareGPT's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmops.core.errors import UserError
from lmops.core.shapes import column_problem
from lmops.core.yamlcfg import FieldError, read_yaml, validate_config, with_presets

__all__ = [
    "LOSS_TYPES",
    "MAX_PROMPT_LEN",
    "PRESETS",
    "ChatTags",
    "DistributedParams",
    "LoraParams",
    "ModelPreset",
    "PpoParams",
    "PreferenceParams",
    "TrainParams",
    "TrainSpec",
    "check_chat_template",
    "load_spec",
]

Stage = Literal["pretrain", "sft", "reward", "dpo", "kto", "orpo", "ppo"]
Method = Literal["full", "freeze", "lora", "qlora", "prefix", "prompt_tuning"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelPreset(_Strict):
    """Start from a config preset with random weights (pretraining from scratch)."""

    preset: str  # llama-tiny | llama-small (see lmops.train.models.MODEL_PRESETS)
    tokenizer: str  # tokenizer asset ref or folder; sets the vocabulary size
    overrides: dict[str, Any] = Field(default_factory=dict)  # e.g. {num_hidden_layers: 4}


class ChatTags(_Strict):
    """LLaMA-Factory's ``tags``: a chat's message keys and role names, where they are not
    OpenAI's (``role``/``content``; ``system``, ``user``, ``assistant``) or ShareGPT's
    (``from``/``value``; ``system``, ``human``, ``gpt``), which are read without them. A
    role's tag replaces its defaults."""

    role_tag: str | None = None
    content_tag: str | None = None
    user_tag: str | None = None
    assistant_tag: str | None = None
    system_tag: str | None = None
    observation_tag: str | None = None  # a tool result's role (ShareGPT: observation)
    function_tag: str | None = None  # a turn that calls tools (ShareGPT: function_call)

    def given(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class TrainParams(_Strict):
    max_steps: int = Field(100, ge=1)
    lr: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)  # global batch (sequences per optimizer step)
    micro_batch_size: int | None = Field(None, ge=1)  # per forward pass; default = batch/world
    max_seq_len: int = Field(512, ge=8)
    seed: int = 0
    save_steps: int = Field(50, ge=1)
    eval_steps: int | None = Field(None, ge=1)  # needs eval_split; held out: scored at the end
    log_steps: int = Field(1, ge=1)
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    keep_checkpoints: int = Field(2, ge=1)


class LoraParams(_Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )

    @field_validator("targets", mode="before")
    @classmethod
    def _module_names(cls, v: Any) -> Any:
        # one module's name is most often meant as a list of one; say so, not "a list"
        if isinstance(v, str) and v != "all-linear":
            raise ValueError(f"{v!r}: give a list of module names, e.g. [{v}], or 'all-linear'")
        return v


class PrefixParams(_Strict):
    num_virtual_tokens: int = Field(16, ge=1)


class FreezeParams(_Strict):
    trainable_layers: int = Field(2, ge=1)  # the last N decoder layers (and the LM head) train
    train_embeddings: bool = False


MAX_PROMPT_LEN = 256  # the longest default prompt of a preference or PPO row, in tokens
# Stages whose rows are a prompt and an answer that share train.max_seq_len.
_PROMPTED = ("reward", "dpo", "kto", "orpo", "ppo")

# The loss types TRL 1.16 takes per stage (DPOConfig.loss_type, KTOConfig.loss_type; the
# first is TRL's default). TRL checks them only once the model is loaded and the trainer
# built; the spec checks them when it is read. Other stages have one loss each.
LOSS_TYPES: dict[str, tuple[str, ...]] = {
    "dpo": (
        "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
        "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
    ),
    "kto": ("kto", "apo_zero_unpaired"),
}  # fmt: skip


class PreferenceParams(_Strict):
    beta: float = Field(0.1, gt=0)
    loss_type: str | None = None  # TRL's name (LOSS_TYPES); default: the stage's first
    # DPO's label smoothing: conservative DPO, robust, and EXO's epsilon (exo_pair needs > 0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    # tokens a prompt keeps (its end), below train.max_seq_len so the answer has the rest;
    # default: half of train.max_seq_len, at most MAX_PROMPT_LEN (TrainSpec.prompt_len)
    max_prompt_len: int | None = Field(None, ge=8)


class PpoParams(_Strict):
    reward_model: str | None = None  # reward model asset/folder; or a built-in reward fn
    reward_fn: str | None = None  # "module:function" scoring (prompt, completion) -> float
    rollout_batch: int = Field(8, ge=1)
    max_new_tokens: int = Field(16, ge=1)
    ppo_epochs: int = Field(2, ge=1)
    clip_range: float = Field(0.2, gt=0)
    value_clip: float = Field(0.2, gt=0)
    kl_coef: float = Field(0.05, ge=0)
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)


class DistributedParams(_Strict):
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    fsdp: dict[str, Any] | None = None  # passed through to torch FSDP on GPU clusters
    deepspeed: str | None = None  # a DeepSpeed JSON config, passed through


# Stages whose TRL trainer reads lm_head.weight directly (and refuses a LoRA on lm_head).
_LOGPROBS_FROM_HEAD_WEIGHT = ("dpo", "kto")


class TrainSpec(_Strict):
    stage: Stage
    method: Method = "full"
    model: str | ModelPreset
    dataset: str | list[str]
    output: str
    train: TrainParams = Field(default_factory=TrainParams)
    lora: LoraParams = Field(default_factory=LoraParams)
    prefix: PrefixParams = Field(default_factory=PrefixParams)
    freeze: FreezeParams = Field(default_factory=FreezeParams)
    preference: PreferenceParams = Field(default_factory=PreferenceParams)
    ppo: PpoParams = Field(default_factory=PpoParams)
    distributed: DistributedParams = Field(default_factory=DistributedParams)
    # Jinja text, "chatml" or "chatml-tools"; default: the tokenizer's own, else ChatML
    # (check_chat_template)
    chat_template: str | None = None
    packing: bool = False
    eval_split: float = Field(0.0, ge=0, lt=0.5)
    text_key: str = "text"
    # lmops's field names -> the dataset's columns ({instruction: en_instruction}), as
    # LLaMA-Factory's dataset_info `columns`; a field not mapped is read under its own name
    columns: dict[str, str] | None = None
    tags: ChatTags | None = None  # message keys and role names of chat rows (ChatTags)
    # raise: the first bad row stops the job before training (naming file, line, field);
    # skip: bad rows are left out and counted in the run's summary (TrainResult.data).
    on_error: Literal["raise", "skip"] = "raise"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    description: str = ""
    sweep: dict[str, Any] | None = None  # for `lmops train sweep` (see lmops.train.sweep)

    @field_validator("chat_template")
    @classmethod
    def _chat_template(cls, v: str | None) -> str | None:
        return None if v is None else check_chat_template(v)

    @model_validator(mode="after")
    def _check(self) -> TrainSpec:
        if isinstance(self.model, ModelPreset) and self.stage != "pretrain":
            raise ValueError(
                "model: {preset: ...} starts from random weights; only stage pretrain can use it"
            )
        if self.stage == "ppo" and not (self.ppo.reward_model or self.ppo.reward_fn):
            raise ValueError("stage ppo needs ppo.reward_model or ppo.reward_fn")
        self._check_columns()
        self._check_preference()
        self._check_ppo()
        self._check_eval()
        if self.method in ("prefix", "prompt_tuning") and self.stage not in ("sft", "pretrain"):
            raise ValueError(f"method {self.method} is supported for pretrain and sft")
        if (
            self.stage in _LOGPROBS_FROM_HEAD_WEIGHT
            and self.method in ("lora", "qlora")
            and isinstance(self.lora.targets, list)
            and "lm_head" in self.lora.targets
        ):
            raise ValueError(
                f"lora.targets: stage {self.stage} cannot train an adapter on lm_head (TRL "
                "computes its log-probabilities from lm_head.weight directly, so the adapter "
                "would never train); remove lm_head"
            )
        return self

    def _check_preference(self) -> None:
        """What TRL would refuse only after the model loaded: a loss type the stage's trainer
        does not know, EXO without its epsilon, settings a stage does not use."""
        p = self.preference
        if (
            self.stage in _PROMPTED
            and p.max_prompt_len is not None
            and p.max_prompt_len >= self.train.max_seq_len
        ):
            raise FieldError(
                ("preference", "max_prompt_len"),
                f"{p.max_prompt_len} leaves no room for the answer in train.max_seq_len "
                f"{self.train.max_seq_len} (a prompt keeps its last max_prompt_len tokens); "
                f"lower it (e.g. {self.train.max_seq_len // 2}) or raise train.max_seq_len",
            )
        if p.loss_type is not None:
            known = LOSS_TYPES.get(self.stage)
            if known is None:
                raise FieldError(
                    ("preference", "loss_type"),
                    f"stage {self.stage} has one loss, no loss types; remove loss_type",
                )
            if p.loss_type not in known:
                raise FieldError(
                    ("preference", "loss_type"),
                    f"{p.loss_type!r} is not a loss of stage {self.stage}; use one of "
                    f"{', '.join(known)} (TRL's names; default {known[0]})",
                )
        if p.label_smoothing and self.stage != "dpo":
            raise FieldError(
                ("preference", "label_smoothing"),
                f"only stage dpo uses label smoothing, not {self.stage}; remove it",
            )
        if p.loss_type == "exo_pair" and not p.label_smoothing:
            raise FieldError(
                ("preference", "label_smoothing"),
                "loss_type exo_pair needs label_smoothing > 0 (EXO's epsilon; the paper "
                "recommends 1e-3)",
            )

    def _check_columns(self) -> None:
        """Every ``columns`` key a field the stage reads, mapped to a column name; ``tags``
        only for stages that read chats."""
        for name, column in (self.columns or {}).items():
            problem = column_problem(name, self.stage)
            if problem is not None:
                raise FieldError(("columns", name), problem)
            if not column.strip():
                raise FieldError(("columns", name), "give the name of the column to read")
        if self.columns and "text" in self.columns and self.text_key != "text":
            raise FieldError(
                ("columns", "text"), f"text_key is {self.text_key!r} already; give one of them"
            )
        if self.tags is not None and self.stage in ("pretrain", "ppo"):
            raise FieldError(("tags",), f"stage {self.stage} reads no chat rows; remove tags")

    @property
    def text_column(self) -> str:
        """The column a text row's text is read from (``columns.text``, else ``text_key``)."""
        return (self.columns or {}).get("text", self.text_key)

    def _check_eval(self) -> None:
        """Evaluation needs held-out rows; PPO scores rollouts and holds none out."""
        if self.stage == "ppo" and (self.eval_split or self.train.eval_steps is not None):
            raise FieldError(
                ("eval_split",) if self.eval_split else ("train", "eval_steps"),
                "stage ppo does not evaluate on held-out rows (it logs its rollouts' reward "
                "and KL); remove it",
            )
        if self.train.eval_steps is not None and not self.eval_split:
            raise FieldError(
                ("train", "eval_steps"),
                "evaluates on held-out rows, and eval_split is 0 (none held out): set "
                "eval_split (e.g. 0.05), or remove train.eval_steps",
            )

    def _check_ppo(self) -> None:
        """The PPO settings that would otherwise fail once the policy model is loaded."""
        p = self.ppo
        if p.reward_model and p.reward_fn:
            raise FieldError(
                ("ppo", "reward_fn"),
                "give ppo.reward_model or ppo.reward_fn, not both (which one would score?)",
            )
        if p.reward_fn and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", p.reward_fn):
            raise FieldError(
                ("ppo", "reward_fn"),
                f"{p.reward_fn!r}: expected 'module:function' (a function of (prompt, "
                "completion) returning a float)",
            )
        if self.stage == "ppo" and p.max_new_tokens >= self.train.max_seq_len:
            raise FieldError(
                ("ppo", "max_new_tokens"),
                f"{p.max_new_tokens} leaves no room for the prompt in train.max_seq_len "
                f"{self.train.max_seq_len}; lower it or raise train.max_seq_len",
            )

    @property
    def prompt_len(self) -> int:
        """Tokens a preference row's prompt keeps: ``preference.max_prompt_len``, by default
        half of ``train.max_seq_len`` (at most :data:`MAX_PROMPT_LEN`), so the answer
        always has the other half."""
        given = self.preference.max_prompt_len
        return given if given is not None else min(MAX_PROMPT_LEN, self.train.max_seq_len // 2)

    @property
    def datasets(self) -> list[str]:
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)

    def inputs(self) -> list[str]:
        """Asset refs or local paths the job reads (a pipeline pins them in its cache key):
        the base model (or a preset's tokenizer), the datasets, a PPO reward model and a
        DeepSpeed config."""
        model = self.model.tokenizer if isinstance(self.model, ModelPreset) else self.model
        refs = [model, *self.datasets]
        if self.ppo.reward_model:
            refs.append(self.ppo.reward_model)
        if self.distributed.deepspeed:
            refs.append(self.distributed.deepspeed)
        return refs


# A conversation a usable template must show: each message's content appears in its text.
_PROBE = [
    {"role": "user", "content": "lmops-probe-user"},
    {"role": "assistant", "content": "lmops-probe-answer"},
]


def check_chat_template(text: str) -> str:
    """The Jinja chat template ``text`` stands for (``"chatml"`` names ChatML,
    ``"chatml-tools"`` ChatML that renders tools: :data:`lmops.models.chat.NAMED_TEMPLATES`),
    refused with a one-line ``ValueError`` when it does not compile or renders a
    conversation without its messages: a template's name (``llama3``) given as its text renders as that word, so every
    answer would carry no loss (SFT) or every pair be empty (DPO trained on nothing). A
    template that refuses the probe conversation itself (``raise_exception``) passes."""
    from lmops.models.chat import NAMED_TEMPLATES

    if text.strip().lower() in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[text.strip().lower()]
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered = render_jinja_template(conversations=[_PROBE], chat_template=text)[0][0]
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(
            f"not a Jinja template ({e.message} on line {e.lineno} of the template); "
            "give the template's text, 'chatml', 'chatml-tools', or leave it out for the "
            "tokenizer's own"
        ) from None
    except Exception:  # raise_exception, or needs what only the tokenizer passes: judge later
        return text
    if not all(m["content"] in rendered for m in _PROBE):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError(
            f"{shown!r} renders a conversation without its messages (a template's name is "
            "not a template); give the Jinja template's text, 'chatml', 'chatml-tools', or "
            "leave it out for the tokenizer's own"
        )
    return text


# Named presets: partial specs merged under the user's YAML (the user's keys win).
PRESETS: dict[str, dict[str, Any]] = {
    "sft-lora": {
        "stage": "sft",
        "method": "lora",
        "train": {"lr": 2e-4, "lr_scheduler": "cosine", "warmup_steps": 10},
        "lora": {"r": 16, "alpha": 32, "targets": "all-linear"},
    },
    "sft-full": {"stage": "sft", "method": "full", "train": {"lr": 2e-5, "warmup_steps": 10}},
    "pretrain-tiny": {
        "stage": "pretrain",
        "method": "full",
        "train": {"lr": 3e-3, "batch_size": 16, "max_seq_len": 256, "warmup_steps": 20},
    },
    "dpo-lora": {
        "stage": "dpo",
        "method": "lora",
        "train": {"lr": 5e-5, "batch_size": 8},
        "preference": {"beta": 0.1},
    },
}


def load_spec(path: Path, overrides: list[str] | None = None) -> TrainSpec:
    """Load a job YAML (with optional ``preset: NAME`` and dotted overrides)."""
    data, node = read_yaml(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return spec_from_dict(data, overrides, source=str(path), node=node)


def spec_from_dict(
    data: dict[str, Any],
    overrides: list[str] | None = None,
    *,
    source: str = "train spec",
    node: yaml.Node | None = None,
) -> TrainSpec:
    """A spec from a mapping (a job YAML's content, or a pipeline step's ``spec:``), with
    an optional ``preset: NAME`` merged under it and dotted overrides applied on top."""
    data = with_presets(data, PRESETS, overrides, source=source)
    return validate_config(data, TrainSpec, source=source, node=node, overrides=overrides)
