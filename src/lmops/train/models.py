"""Base models, tokenizers and tuning methods.

``load_base(spec, store)`` returns the model to train (with the method applied), its
tokenizer, and the store versions it came from (for lineage). A model is a local Hugging
Face causal-LM folder, a ``model`` asset ref, or ``{preset: llama-tiny, tokenizer: REF}``
for random weights of a preset config (pretraining from scratch).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError
from lmops.core.modelfiles import check_model_folder
from lmops.train.spec import ModelPreset, TrainSpec

__all__ = [
    "CHATML",
    "MODEL_PRESETS",
    "Loaded",
    "apply_method",
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

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (version ref, role)
    base_path: Path | None = None
    base_ref: str | None = None


def resolve_local(
    ref_or_path: str, store: Any | None, *, kind: str | None = None, check: bool = True
) -> tuple[Path, str | None]:
    """A local folder/file for a path or an asset ref; returns (path, version ref or None).
    A ``model`` is checked to be a model folder with its tokenizer (one-line error) unless
    ``check`` is false (a server such as vLLM that reads other layouts itself)."""
    p = Path(ref_or_path).expanduser()
    if p.exists():
        if kind == "model" and check:
            check_model_folder(p)
        return p, None
    if store is None:
        raise UserError(f"{ref_or_path!r} is not an existing path")
    try:
        v = store.assets.resolve(ref_or_path)
    except UserError:
        raise UserError(f"{ref_or_path!r} is neither an existing path nor a READY asset") from None
    if kind is not None and v.kind != kind and not (kind == "model" and v.kind == "adapter"):
        raise UserError(f"{ref_or_path!r} is a {v.kind}, expected a {kind}")
    path = store.assets.path(v.ref)
    if kind == "model" and check:
        check_model_folder(path, what=f"model {v.ref}")
    return path, v.ref


def merged_view(adapter_dir: Path, store: Any | None) -> Path:
    """A full model folder for an adapter: merged into its base in a temp folder (inference
    backends such as the eval harness and the serving engine load plain HF folders)."""
    import tempfile

    from transformers import AutoTokenizer

    quiet_transformers()
    out = Path(tempfile.mkdtemp(prefix="lmops-merged-"))
    load_merged(adapter_dir, store=store).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(out))
    return out


def quiet_transformers() -> None:
    """Our progress bar and errors speak for the job; silence transformers' own bars and
    deprecation chatter (set TRANSFORMERS_VERBOSITY=info to see them again)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*|peft\..*")


def select_device(name: str) -> str:
    import torch

    if name != "auto":
        if name == "cuda" and not torch.cuda.is_available():
            raise UserError("device: cuda requested but no CUDA GPU is available; use device: cpu")
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def select_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32  # CPU: fp32 is fastest and exact; bf16 on CPU is slow
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(path: Path, chat_template: str | None = None) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise UserError(f"cannot load a tokenizer from {path}: {e}") from None
    if chat_template:
        tok.chat_template = chat_template
    elif not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def _preset_model(preset: ModelPreset, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset.preset not in MODEL_PRESETS:
        raise UserError(
            f"model.preset {preset.preset!r} unknown; presets: {', '.join(MODEL_PRESETS)}"
        )
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
    except (TypeError, ValueError) as e:
        raise UserError(f"model.overrides: {e}") from None


def load_base(spec: TrainSpec, store: Any | None, *, for_reward: bool = False) -> Loaded:
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

    if (path / "adapter_config.json").exists():
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


def load_merged(adapter_dir: Path, *, store: Any | None = None, dtype: Any = None) -> Any:
    """An adapter folder as one model: its base with the adapter merged in. The base is
    named in ``lmops_base.json`` (its asset ref when ``store`` is given, else its path) and
    is merged first when it is an adapter too (SFT LoRA -> DPO LoRA)."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    meta_file = adapter_dir / "lmops_base.json"
    if not meta_file.exists():
        raise UserError(
            f"{adapter_dir} is an adapter without lmops_base.json; merge it first "
            "(lmops train merge)"
        )
    info = json.loads(meta_file.read_text())
    if info.get("base_ref") and store is not None:
        base = Path(store.assets.path(info["base_ref"]))
    else:
        base = Path(info["base_path"])
    if (base / "adapter_config.json").exists():
        model = load_merged(base, store=store, dtype=dtype)
    else:
        kwargs = {} if dtype is None else {"dtype": dtype}  # None: transformers' default
        model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


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
