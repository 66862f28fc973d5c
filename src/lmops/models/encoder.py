"""Sentence embeddings from a model folder, pooled the way the folder says.

What a folder says (read by :func:`read_pooling`, as sentence-transformers and vLLM's
``--task embed`` read it):

* ``modules.json`` (a sentence-transformers folder) lists its modules: the transformer, a
  ``Pooling`` whose ``config.json`` names the mode (``cls``, ``max``, ``mean``,
  ``mean_sqrt_len_tokens``, ``weightedmean``, ``lasttoken``; several are concatenated, in
  the legacy flags' order or the order ``pooling_mode`` lists them), and ``Normalize`` (L2)
  when the vectors are unit length. A module lmops does not run (``Dense``, say) is refused
  in one line rather than served as a different vector.
* ``sentence_bert_config.json``: ``max_seq_length`` (longer texts are cut there, keeping the
  closing special token, as sentence-transformers cuts them) and ``do_lower_case``.
* Any other folder: the mean over the tokens, L2-normalised (what lmops always served for
  a causal LM), cut at the model's context.

Texts are encoded with the tokenizer's special tokens (``[CLS] ... [SEP]`` for BERT, a BOS
where a tokenizer adds one), as both of those do, and a request's token count is the tokens
the model read. A text longer than the model reads is refused (:class:`InputTooLong`, before
any text is embedded), as OpenAI refuses it, unless the caller asks for it to be cut
(``truncate``; a deployment's ``embeddings_truncate: true``), as sentence-transformers cuts.

:func:`model_kind` tells an encoder-only folder (its ``architectures`` hold no generative
head: ``BertModel``; or, without ``architectures``, a masked-LM family that is not a decoder)
from a causal LM. An encoder is loaded with ``AutoModel``, not as a causal LM with a random
head, and serves embeddings only: :class:`Encoder`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmops.core.errors import UserError

__all__ = ["Encoder", "InputTooLong", "Pooling", "embed_texts", "model_kind", "read_pooling"]

# sentence-transformers' legacy flags, in the order it concatenates their vectors
_LEGACY_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_MODES = tuple(_LEGACY_MODES.values())
_GENERATIVE = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
_BATCH = 16  # texts per forward pass


@dataclass(frozen=True)
class Pooling:
    """How token vectors become one vector. ``max_tokens``: texts are cut there (None: at
    the model's context); ``source``: where it was read, for start-up notes."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = True
    max_tokens: int | None = None
    lower_case: bool = False
    source: str = "default"

    def describe(self) -> str:
        norm = ", normalised" if self.normalize else ", not normalised"
        cut = f", up to {self.max_tokens} tokens" if self.max_tokens else ""
        return f"{'+'.join(self.modes)} pooling{norm}{cut} ({self.source})"


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    if not isinstance(data, dict | list):
        raise UserError(f"{path}: expected a JSON object")
    return data  # type: ignore[return-value]


def read_pooling(folder: Path) -> Pooling:
    """The pooling of the model in ``folder`` (see the module docstring)."""
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return Pooling()
    modules = _json(modules_file)
    if not isinstance(modules, list):
        raise UserError(f"{modules_file}: expected a list of modules")
    modes: tuple[str, ...] = ("mean",)
    normalize = False
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1] if isinstance(m, dict) else ""
        if kind == "Transformer":
            continue
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            modes = _pooling_modes(folder / str(m.get("path") or ""), modules_file)
        else:
            raise UserError(
                f"{modules_file}: module {kind or m!r} is not one lmops runs (it runs "
                "Transformer, Pooling and Normalize); its vectors would differ from the "
                "model's, so it is not served"
            )
    config: dict[str, Any] = {}
    if (folder / "sentence_bert_config.json").exists():
        config = _json(folder / "sentence_bert_config.json")
    limit = config.get("max_seq_length")
    return Pooling(
        modes=modes,
        normalize=normalize,
        max_tokens=int(limit) if isinstance(limit, int) and limit > 0 else None,
        lower_case=bool(config.get("do_lower_case", False)),
        source="sentence-transformers config",
    )


def _pooling_modes(path: Path, modules_file: Path) -> tuple[str, ...]:
    config = _json(path / "config.json")
    given = config.get("pooling_mode")  # sentence-transformers >= 5
    if given is not None:
        modes = (given,) if isinstance(given, str) else tuple(given)
    else:
        modes = tuple(mode for flag, mode in _LEGACY_MODES.items() if config.get(flag))
    bad = [m for m in modes if m not in _MODES]
    if not modes or bad:
        raise UserError(
            f"{path / 'config.json'}: pooling mode {bad[0] if bad else 'none'!r} is not one of "
            f"{', '.join(_MODES)} (named by {modules_file.name})"
        )
    return modes


def model_kind(folder: Path) -> tuple[Literal["encoder", "decoder"], str]:
    """``("encoder" | "decoder", architecture)`` of the model in ``folder``."""
    config_file = folder / "config.json"
    if not config_file.exists():  # a quantized or packaged folder: lmops' own causal LMs
        return "decoder", "?"
    config = _json(config_file)
    archs = [str(a) for a in config.get("architectures") or []]
    if archs:
        generative = any(a.endswith(_GENERATIVE) for a in archs)
        return ("decoder" if generative else "encoder"), archs[0]
    model_type = str(config.get("model_type", ""))
    if config.get("is_decoder") or config.get("is_encoder_decoder"):
        return "decoder", model_type
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    masked = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return ("encoder" if masked else "decoder"), model_type


class InputTooLong(ValueError):
    """Text ``index`` of those to embed holds ``tokens`` tokens, more than the ``limit``
    the model reads (and the caller did not ask for it to be cut)."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"text {index} has {tokens} tokens; the model reads at most {limit}")
        self.index = index
        self.tokens = tokens
        self.limit = limit


def embedding_tokens(pooling: Pooling, limit: int) -> int:
    """The most tokens an embedded text keeps: the model's context ``limit``, or the
    shorter ``max_seq_length`` of its sentence-transformers config."""
    return min(limit, pooling.max_tokens or limit)


def _special_suffix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer adds after a text (BERT's ``[SEP]``; none for a
    Llama's BOS-only tokenizer), found by encoding a word with and without them."""
    done = getattr(tokenizer, "_lmops_special_suffix", None)
    if done is not None:
        return list(done)
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    suffix: list[int] = []
    for i in range(len(with_special) - len(plain) + 1):
        if plain and with_special[i : i + len(plain)] == plain:
            suffix = with_special[i + len(plain) :]
            break
    tokenizer._lmops_special_suffix = suffix
    return suffix


def encode_for_embedding(
    tokenizer: Any, text: str, pooling: Pooling, cut: int | None, *, special: bool = True
) -> list[int]:
    """The token ids of ``text`` as the model embeds it: lower-cased where its config says,
    with its special tokens (``special``), at most ``cut`` tokens (the text's end is cut,
    the closing special tokens kept, as ``truncation=True`` cuts; None: whole). Cut here rather than by
    the tokenizer: ``truncation=True`` sets state on the shared fast tokenizer, which a
    call from another thread (generation, ``/tokenize``) resets midway, so a text came out
    whole (a 500 for the batch it was in)."""
    ids = list(
        tokenizer(text.lower() if pooling.lower_case else text, add_special_tokens=special)[
            "input_ids"
        ]
    )
    if cut is not None and len(ids) > cut:
        suffix = _special_suffix(tokenizer) if special else []
        ids = ids[: max(cut - len(suffix), 0)] + suffix
    return ids or [tokenizer.eos_token_id or 0]


def embed_texts(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    pooling: Pooling,
    *,
    device: Any,
    limit: int,
    truncate: bool = False,
) -> tuple[list[list[float]], int]:
    """The vectors of ``texts`` and the tokens the model read (``limit``: the model's
    context; ``pooling.max_tokens`` is shorter where set). A longer text raises
    :class:`InputTooLong` before any is embedded, or is cut there with ``truncate``.
    Texts go in batches, right-padded, with their attention mask, so padding never
    enters a vector."""
    import torch

    cut = embedding_tokens(pooling, limit)
    ids = []
    for i, t in enumerate(texts):
        x = encode_for_embedding(tokenizer, t, pooling, cut if truncate else None)
        if len(x) > cut:
            raise InputTooLong(i, len(x), cut)
        ids.append(x)
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
    out: list[list[float]] = []
    for start in range(0, len(ids), _BATCH):
        chunk = ids[start : start + _BATCH]
        width = max(len(x) for x in chunk)
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in chunk], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk], device=device)
        with torch.inference_mode():
            res = model(
                input_ids=input_ids,
                attention_mask=mask,
                output_hidden_states=True,
                use_cache=False,
            )
        hidden = getattr(res, "last_hidden_state", None)
        if hidden is None:
            hidden = res.hidden_states[-1]
        out += pool(hidden.float(), mask, pooling).tolist()
    return out, sum(len(x) for x in ids)


def pool(hidden: Any, mask: Any, pooling: Pooling) -> Any:
    """(batch, tokens, dim) hidden states and their (batch, tokens) 0/1 mask (right
    padding) -> (batch, dim * modes) vectors."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
    count = m.sum(1).clamp(min=1e-9)  # (batch, 1)
    last = mask.sum(1).long() - 1  # (batch,) the last real token (right padding)
    parts = []
    for mode in pooling.modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "lasttoken":
            parts.append(hidden[torch.arange(hidden.shape[0]), last])
        elif mode == "max":
            parts.append(hidden.masked_fill(m == 0, float("-inf")).max(1).values)
        elif mode == "weightedmean":  # position i (1-based) weighs i
            w = m * torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype).view(1, -1, 1)
            parts.append((hidden * w).sum(1) / w.sum(1).clamp(min=1e-9))
        else:  # mean, mean_sqrt_len_tokens
            total = (hidden * m).sum(1)
            parts.append(total / (count if mode == "mean" else count.sqrt()))
    v = torch.cat(parts, dim=-1)
    if pooling.normalize:
        v = torch.nn.functional.normalize(v, p=2, dim=-1)
    return v


class Encoder:
    """An encoder-only model (BERT, MiniLM, E5...) that serves embeddings and nothing
    else: loaded with ``AutoModel`` (no language-model head), pooled as its folder says.
    It stands where a deployment target's engine stands; the gateway refuses generation
    on it before it gets here (``Deployment.refuse_unless``)."""

    chat_template_fallback = False  # what a deployment asks an engine

    def __init__(
        self,
        model_path: Path,
        *,
        device: str = "auto",
        name: str | None = None,
        loaded: tuple[Any, Any] | None = None,
    ) -> None:
        """``loaded``: (model, tokenizer) already in memory (a sealed package's), the
        folder giving the rest (pooling)."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        from lmops.models.loading import quiet_transformers, select_device

        quiet_transformers()
        self.device = select_device(device)
        self.pooling = read_pooling(model_path)
        self.architecture = model_kind(model_path)[1]
        self.name = name or model_path.name
        self.generation_defaults: dict[str, Any] = {}  # it generates nothing
        model: Any
        if loaded is not None:
            model, self.tokenizer = loaded
        else:
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
                dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
                model = AutoModel.from_pretrained(str(model_path), dtype=dtype)
            except (OSError, ValueError) as e:
                raise UserError(f"cannot load model {model_path}: {e}") from None
        self.model = model.to(self.device).eval()
        self.max_context = _max_context(model.config)

    def embed(self, texts: list[str], *, truncate: bool = False) -> tuple[list[list[float]], int]:
        return embed_texts(
            self.model,
            self.tokenizer,
            texts,
            self.pooling,
            device=self.device,
            limit=self.max_context,
            truncate=truncate,
        )

    def close(self) -> None:
        """Nothing runs in the background."""


def _max_context(config: Any) -> int:
    """The longest input the model's position table takes. RoBERTa and its kin number
    positions from ``pad_token_id + 1`` (514 positions hold 512 tokens), so their table is
    that much shorter than ``max_position_embeddings`` says."""
    positions = int(getattr(config, "max_position_embeddings", 512) or 512)
    if "roberta" in str(getattr(config, "model_type", "")) or getattr(config, "model_type", "") in (
        "camembert",
        "longformer",
    ):
        positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    return max(1, positions)
