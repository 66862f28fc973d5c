"""Base models, tokenizers and tuning methods.

``load_base(spec, store)`` returns the model to train (with the method applied), its
tokenizer, and the store versions it came from (for lineage). A model is a local Hugging
Face causal-LM folder, a ``model`` asset ref, or ``{preset: llama-tiny, tokenizer: REF}``
for random weights of a preset config (pretraining from scratch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmops.core.errors import UserError
from lmops.core.modelfiles import is_reward_model, refuse_reward_model
from lmops.models.loading import (
    CHATML,
    load_merged,
    load_tokenizer,
    quiet_transformers,
    resolve_local,
    select_device,
    select_dtype,
)
from lmops.train.spec import ModelPreset, TrainSpec

if TYPE_CHECKING:
    from lmops.store import Store

__all__ = [
    "CHATML",
    "MODEL_PRESETS",
    "Loaded",
    "apply_method",
    "check_preset",
    "load_base",
    "load_tokenizer",
    "resolve_local",
    "select_device",
]

# Llama configs for tests and the quickstart. With an 8k vocabulary and tied embeddings,
# llama-tiny has about 1.1 M parameters and llama-small about 6 M.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "llama-tiny": {
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    },
    "llama-small": {
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
    },
}


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (version ref, role)
    base_path: Path | None = None
    base_ref: str | None = None


def check_preset(preset: ModelPreset) -> None:
    if preset.preset not in MODEL_PRESETS:
        raise UserError(
            f"model.preset {preset.preset!r} unknown; presets: {', '.join(MODEL_PRESETS)}"
        )


def _preset_model(preset: ModelPreset, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    check_preset(preset)
    cfg = {
        **MODEL_PRESETS[preset.preset],
        "vocab_size": len(tokenizer),
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **preset.overrides,
    }
    try:
        return LlamaForCausalLM(LlamaConfig(**cfg))
    except Exception as e:  # TypeError, ValueError, huggingface_hub's strict-dataclass errors
        if not isinstance(e, (TypeError, ValueError)) and "Validation" not in type(e).__name__:
            raise
        # the validator's own words, on one line: "The hidden size (64) is not a multiple..."
        reason = str(e).strip().splitlines()[-1].strip().removeprefix("ValueError: ")
        raise UserError(f"model.overrides: {reason}") from None


def load_base(spec: TrainSpec, store: Store | None, *, for_reward: bool = False) -> Loaded:
    """Load the tokenizer and model of ``spec`` (random weights for a preset), apply the
    tuning method, and move it to the selected device."""
    import torch

    quiet_transformers()
    device = select_device(spec.device)
    dtype = select_dtype(spec.dtype, device)
    torch.manual_seed(spec.train.seed)
    if isinstance(spec.model, ModelPreset):
        tok_path, tok_ref = resolve_local(spec.model.tokenizer, store, kind="tokenizer")
        tokenizer = load_tokenizer(tok_path, spec.chat_template)
        model = _preset_model(spec.model, tokenizer)
        loaded = Loaded(model, tokenizer, [(tok_ref, "tokenizer")] if tok_ref else [])
    else:
        path, ref = resolve_local(spec.model, store, kind="model")
        tokenizer = load_tokenizer(path, spec.chat_template)
        model = _load_pretrained(path, spec, dtype, for_reward=for_reward)
        loaded = Loaded(model, tokenizer, [(ref, "base_model")] if ref else [], path, ref)
    if spec.method != "qlora":
        loaded.model = loaded.model.to(device=device, dtype=dtype)
    loaded.model = apply_method(loaded.model, spec)
    return loaded


def _load_pretrained(path: Path, spec: TrainSpec, dtype: Any, *, for_reward: bool) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if not for_reward:  # its score head would be dropped, its LM head made up
        refuse_reward_model(path, f"trained with stage {spec.stage}", what=str(spec.model))
    if (path / "adapter_config.json").exists():
        if for_reward and not is_reward_model(path):  # it would merge into a causal LM
            raise UserError(
                f"model {spec.model}: stage reward cannot start from a language-model adapter; "
                "merge it first (lmops train merge) and name the merged model"
            )
        return load_merged(path, dtype=dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if spec.method == "qlora":
        kwargs.update(_qlora_kwargs())
    cls = AutoModelForSequenceClassification if for_reward else AutoModelForCausalLM
    if for_reward:
        kwargs["num_labels"] = 1
    try:
        model = cls.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a model from {path}: {e}") from None
    if for_reward and model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def _qlora_kwargs() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "method qlora needs a CUDA GPU and bitsandbytes (pip install 'lmops[gpu]'); use method: lora on CPU"
        )
    try:
        from transformers import BitsAndBytesConfig
    except ImportError:  # pragma: no cover
        raise UserError("method qlora needs bitsandbytes: pip install 'lmops[gpu]'") from None
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        ),
        "device_map": {"": 0},
    }


def apply_method(model: Any, spec: TrainSpec) -> Any:
    """Make only the parameters the method trains require gradients (PEFT for adapters)."""
    method = spec.method
    if method == "full":
        model.requires_grad_(True)
        return model
    if method == "freeze":
        model.requires_grad_(False)
        layers = _decoder_layers(model)
        for layer in layers[-spec.freeze.trainable_layers :]:
            layer.requires_grad_(True)
        head = model.get_output_embeddings()
        if head is not None and not getattr(model.config, "tie_word_embeddings", False):
            head.requires_grad_(True)
        if spec.freeze.train_embeddings:
            model.get_input_embeddings().requires_grad_(True)
        return model
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    task = TaskType.SEQ_CLS if spec.stage == "reward" else TaskType.CAUSAL_LM
    if method in ("lora", "qlora"):
        if method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)
        cfg: Any = LoraConfig(
            r=spec.lora.r,
            lora_alpha=spec.lora.alpha,
            lora_dropout=spec.lora.dropout,
            target_modules=spec.lora.targets,
            task_type=task,
        )
    elif method == "prefix":
        cfg = PrefixTuningConfig(num_virtual_tokens=spec.prefix.num_virtual_tokens, task_type=task)
    else:
        cfg = PromptTuningConfig(num_virtual_tokens=spec.prefix.num_virtual_tokens, task_type=task)
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:
        raise UserError(f"{method}: {e}") from None


def _decoder_layers(model: Any) -> Any:
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise UserError("method freeze: cannot find the decoder layers of this architecture")


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
