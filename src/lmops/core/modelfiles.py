"""What a model folder must hold, checked with nothing but the file system.

A Hugging Face model folder has a ``config.json`` and a tokenizer (``tokenizer.json``, a
SentencePiece ``tokenizer.model``, or ``vocab.json`` + ``merges.txt`` / ``vocab.txt``). A
folder without one fails deep inside transformers, with several lines about a backend
tokenizer it could not build; a GGUF file is not a folder at all. These checks say it in
one line, at registration and wherever a stage is handed a model folder.

A reward model (``stage: reward``) is a sequence classifier: a ``*ForSequenceClassification``
folder, or an adapter whose ``adapter_config.json`` has ``task_type: SEQ_CLS``. Loaded as a
causal LM it silently gets a language-model head it never trained (and loses its score
head), so the stages that generate refuse it by name (:func:`refuse_reward_model`).
"""

from __future__ import annotations

import json
from pathlib import Path

from lmops.core.errors import UserError, first_line

__all__ = [
    "check_model_folder",
    "has_tokenizer",
    "is_reward_model",
    "refuse_reward_model",
    "weight_files",
]

_TOKENIZER_FILES = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("vocab.json", "merges.txt"),
    ("vocab.txt",),
)


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds the files of a tokenizer transformers can load."""
    return any(all((folder / f).is_file() for f in group) for group in _TOKENIZER_FILES)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of the transformers checkpoint in ``folder``: those its index
    names, else ``model*.safetensors``; other safetensors beside them (Mistral's native
    ``consolidated.safetensors``) are another copy of the weights under other names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, AttributeError) as e:
            raise UserError(f"{index}: unreadable weight map ({first_line(e)})") from None
        return sorted(folder / n for n in names)
    return sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("*.safetensors"))


def check_model_folder(path: Path, *, what: str | None = None, ref: str | None = None) -> None:
    """Raise a one-line :class:`UserError` unless ``path`` is a model folder with its
    tokenizer (an adapter folder, with ``adapter_config.json``, needs only the latter
    when it carries one; its base model has the rest). ``ref``: the asset version ``path``
    shows, named in the advice instead of the path."""
    name = what or str(path)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            raise UserError(
                f"{name} is a GGUF file, not a model folder; import it as one first: "
                f"lmops assets import gguf {ref or path} --name NAME"
            )
        raise UserError(f"{name} is a file; a model is a folder with config.json and a tokenizer")
    if (path / "adapter_config.json").is_file():
        return
    if not (path / "config.json").is_file():
        raise UserError(
            f"{name} has no config.json: it is not a Hugging Face model folder "
            "(save_pretrained writes one)"
        )
    if (path / "model.onnx").is_file() and not any(path.glob("*.safetensors")):
        raise UserError(
            f"{name} is an ONNX export (lmops deploy export --format onnx), which transformers "
            "cannot load: run it with onnxruntime (lmops.deploy.onnx.OnnxDecoder) or use its "
            "source model"
        )
    if not has_tokenizer(path):
        raise UserError(
            f"{name} has no tokenizer (tokenizer.json, tokenizer.model or vocab files); copy "
            "its base model's tokenizer files into it (tokenizer.save_pretrained(folder))"
        )


def _json_field(path: Path, key: str) -> object:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unreadable: whoever loads the folder says so
    return data.get(key) if isinstance(data, dict) else None


def is_reward_model(path: Path) -> bool:
    """Whether the folder ``path`` holds a reward model: an adapter trained as a sequence
    classifier (``task_type: SEQ_CLS``) or a model whose ``architectures`` are
    ``*ForSequenceClassification``."""
    if (path / "adapter_config.json").is_file():
        return _json_field(path / "adapter_config.json", "task_type") == "SEQ_CLS"
    architectures = _json_field(path / "config.json", "architectures")
    return isinstance(architectures, list) and any(
        str(a).endswith("ForSequenceClassification") for a in architectures
    )


def refuse_reward_model(path: Path, doing: str, *, what: str | None = None) -> None:
    """A one-line :class:`UserError` when ``path`` is a reward model, which cannot be
    ``doing`` ("evaluated", "served") since it scores text and generates none."""
    if path.is_dir() and is_reward_model(path):
        raise UserError(
            f"{what or path} is a reward model (a sequence classifier: it scores answers and "
            f"generates no text), so it cannot be {doing}; use it as a PPO job's "
            "ppo.reward_model"
        )
