"""Models and tokenizers as every stage loads them: below train, eval and serve, so none
of them imports another to load a model.

``resolve_local`` turns a path or an asset ref into a local folder (checking that a model
folder holds a model and its tokenizer), ``load_tokenizer`` loads a tokenizer (ChatML when it
has no chat template), ``load_merged`` an adapter merged into its base (an adapter trained
on an adapter is merged down its chain; a reward adapter, ``task_type: SEQ_CLS``, into a
sequence classifier with its trained score head), ``merged_view`` the same written out as a
plain folder for inference backends, which refuse a reward model as ``load_causal_lm``
does; ``select_device``/``select_dtype`` and ``quiet_transformers`` set up transformers the
way every job wants it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from lmops.core.errors import NotFoundError, UserError
from lmops.core.modelfiles import check_model_folder, is_reward_model, refuse_reward_model

__all__ = [
    "CHATML",
    "load_causal_lm",
    "load_merged",
    "load_tokenizer",
    "merged_view",
    "quiet_transformers",
    "resolve_local",
    "select_device",
    "select_dtype",
]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


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
    except UserError as e:
        # a valid ref the store lacks: its reason (a close name, where its versions are
        # listed); a ref that cannot be a name (``/models/x``) was a path, said as before
        why = f" ({e})" if isinstance(e, NotFoundError) else ""
        raise UserError(
            f"{ref_or_path!r} is neither an existing path nor a READY asset{why}"
        ) from None
    if kind is not None and v.kind != kind and not (kind == "model" and v.kind == "adapter"):
        raise UserError(f"{ref_or_path!r} is a {v.kind}, expected a {kind}")
    path = store.assets.path(v.ref)
    if kind == "model" and check:
        check_model_folder(path, what=f"model {v.ref}", ref=v.ref)
    return path, v.ref


def merged_view(adapter_dir: Path, store: Any | None) -> Path:
    """A full model folder for an adapter: merged into its base in a temp folder (inference
    backends such as the eval harness and the serving engine load plain HF folders),
    removed when the process exits (each was a whole model left in /tmp: 218 of them, up
    to 517 MB each, after a day of runs). A process killed outright (SIGKILL, the OOM
    killer) runs no exit handler: its folder names its pid, and the next merge removes
    the folders of processes that are gone."""
    import atexit
    import shutil

    from transformers import AutoTokenizer

    from lmops.core.proc import owned_tempdir

    refuse_reward_model(adapter_dir, "loaded as a language model")
    quiet_transformers()
    out = owned_tempdir("lmops-merged-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
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


def load_causal_lm(path: Path, *, dtype: Any = None, device: str = "cpu") -> Any:
    """The causal LM in model folder ``path`` on ``device``, in eval mode: a quantized folder
    (``lmops_quant.json``, written by ``lmops deploy quantize``) through
    :func:`lmops.models.quantized.load_quantized`, a bitsandbytes one through
    :func:`lmops.models.bnb.load_bnb`, any other through transformers.
    Load failures are one-line :class:`UserError` naming the folder."""
    from transformers import AutoModelForCausalLM

    from lmops.models.bnb import is_bnb_folder, load_bnb
    from lmops.models.quantized import is_quantized, load_quantized

    refuse_reward_model(path, "loaded as a language model")
    if is_quantized(path):
        return load_quantized(path, device=device)
    if is_bnb_folder(path):  # --method bnb-nf4|bnb-int8: placed by transformers, not .to()
        return load_bnb(path, dtype=dtype, device=device)
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {path}: {e}") from None
    return model.to(device).eval()


def load_merged(adapter_dir: Path, *, store: Any | None = None, dtype: Any = None) -> Any:
    """An adapter folder as one model: its base with the adapter merged in. The base is
    named in ``lmops_base.json`` (its asset ref when ``store`` is given, else its path) and
    is merged first when it is an adapter too (SFT LoRA -> DPO LoRA).

    A reward adapter (``task_type: SEQ_CLS``, trained by ``stage: reward``) merges into a
    sequence classifier with one output: the base loaded as one, its score head the one
    the adapter saved (``modules_to_save``), its ``pad_token_id`` the tokenizer's, since
    it scores the last token that is not padding. Saved, its config names that
    architecture, so ``AutoModelForSequenceClassification`` loads it whole."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

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
    reward = is_reward_model(adapter_dir)
    kwargs: dict[str, Any] = {} if dtype is None else {"dtype": dtype}  # None: transformers'
    if (base / "adapter_config.json").exists():
        if reward:  # its base would merge into a causal LM, without the score head
            raise UserError(
                f"{adapter_dir} is a reward adapter trained on another adapter ({base}); "
                "merge that one first (lmops train merge) and train the reward model on it"
            )
        model = load_merged(base, store=store, dtype=dtype)
    elif reward:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(base), num_labels=1, **kwargs
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    if reward:  # as train_reward set it
        merged.config.pad_token_id = load_tokenizer(adapter_dir).pad_token_id
    return merged
