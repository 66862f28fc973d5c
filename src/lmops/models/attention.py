"""Which tokens a model's attention layers read, from its config: every token before
(full attention), or only a sliding window of the last ones (Mistral; Qwen2 with
``use_sliding_window``; Gemma 2/3's local layers between global ones; GPT-Neo's local
layers), which decides how the engine may lay out its batch cache (``models/engine.py``).

A window is counted in cache columns by transformers' masks: exact for a row whose tokens
are contiguous (left padding, then the prompt and what it generated), wrong for a row with
padding in the middle (a shared prefix, then its rest).

For a model mixing local and global layers, the layout of a batch cache whose local layers
keep only their window (:func:`fit_local`), and whether the model reads it as it reads a
cache with every column (:func:`untrimmable`): trusted for transformers' own models that
mask their local layers with ``create_sliding_window_causal_mask``
(:func:`masks_local_layers_from_cache`), checked once on other models
(:func:`trims_exactly`) where the window is small enough for that to be cheap."""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any

from lmops.models.compat import counts_seen, output_cache, set_seen

__all__ = [
    "common_window",
    "fit_local",
    "full_attention",
    "local_cache",
    "local_windows",
    "masks_local_layers_from_cache",
    "takes_4d_mask",
    "trims_exactly",
    "untrimmable",
]

# the most tokens (largest window + 2) :func:`trims_exactly` runs on at start-up: two rows
# of that many prefilled, then two decode steps; a larger window keeps every column
CHECK_MAX_TOKENS = 256


def full_attention(model: Any) -> bool:
    """Whether every layer of ``model`` attends to the whole cache (no sliding or local
    window, no attention chunks: a window counts cache columns, padding included)."""
    cfg = model.config
    layer_types = getattr(cfg, "layer_types", None) or []
    kinds = [str(t) for t in (getattr(cfg, "attention_layers", None) or [])]  # GPT-Neo
    kinds += [str(t) for t in (getattr(cfg, "attention_types", None) or [])]
    windowed = any(
        getattr(cfg, name, None)
        for name in ("sliding_window", "window_size", "attention_chunk_size")
    )
    return (
        not windowed
        and all(t == "full_attention" for t in layer_types)
        and not any("local" in t for t in kinds)
    )


def common_window(model: Any) -> int | None:
    """The window (in tokens, the new token included) of ``model`` when every one of its
    layers reads only that many: when transformers' own cache for it keeps, in every
    layer, only the last ``window - 1`` tokens (Mistral; Qwen2 with ``use_sliding_window``
    on every layer). None otherwise: full attention, local and global layers mixed
    (Gemma 2/3), or a cache transformers does not make for the config."""
    try:
        from transformers import DynamicCache

        layers = DynamicCache(config=model.config).layers
    except Exception:  # a config transformers makes no such cache for
        return None
    windows = {getattr(layer, "sliding_window", None) for layer in layers}
    if not layers or not all(getattr(layer, "is_sliding", False) for layer in layers):
        return None
    window = windows.pop() if len(windows) == 1 else None
    return window if isinstance(window, int) and window >= 2 else None


def local_windows(model: Any) -> list[int | None] | None:
    """Per layer of ``model``, the window of a local layer (None for a global one), when
    transformers' own cache for it mixes the two: layers that keep only their last
    ``window - 1`` tokens (``DynamicSlidingWindowLayer``) and layers that keep them all
    (``DynamicLayer``): Gemma 2/3, Qwen2 sliding above ``max_window_layers``. Such a model
    builds the mask of each kind of layer from its cache layers' sizes (a local layer's
    counts the tokens it has seen, its offset), so a batch cache of those layers, holding
    the right columns and count, is read as the model's own cache is. None otherwise: full
    attention, every layer sliding (:func:`common_window`), another kind of layer
    (chunked, shared), local layers the model windows itself (GPT-Neo's, from one mask
    for every layer), or a transformers whose local layers keep their count of tokens
    seen where :func:`lmops.models.compat.set_seen` cannot set it. The model's masks are
    not read here: :func:`trims_exactly` checks them."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        layers = DynamicCache(config=model.config).layers
    except Exception:  # a config transformers makes no such cache for
        return None
    windows: list[int | None] = []
    for layer in layers:
        if (
            type(layer) is DynamicSlidingWindowLayer
            and layer.sliding_window >= 2
            and counts_seen(layer)
        ):
            windows.append(int(layer.sliding_window))
        elif type(layer) is DynamicLayer:
            windows.append(None)
        else:
            return None
    mixed = any(w is None for w in windows) and any(w is not None for w in windows)
    return windows if mixed else None


def fit_local(cache: Any, windows: list[int | None], t: int) -> None:
    """Lay the local layers of ``cache`` (a batch cache of (rows, kv_heads, columns,
    head_dim) layers, local ones transformers' sliding-window layers; ``windows`` as
    :func:`local_windows` gives them) out as the model's own cache does after ``t``
    tokens: the last min(t, window - 1) of the mask's t columns, t seen. The model then
    masks a local layer with the (rows, t + 1) mask's last ``window`` columns, the same
    tokens back in every row (contiguous to its last column), and the layer keeps its last
    ``window - 1`` after each step."""
    for layer, w in zip(cache.layers, windows, strict=True):
        if w is not None:
            keep = min(t, w - 1)
            layer.keys, layer.values = layer.keys[:, :, -keep:], layer.values[:, :, -keep:]
            set_seen(layer, t)


def local_cache(layers: list[tuple[Any, Any]], windows: list[int | None]) -> Any:
    """A ``DynamicCache`` of ``layers`` (keys, values): a sliding-window layer where
    ``windows`` gives a window, a plain one (every column) where it gives None."""
    import torch
    from transformers import DynamicCache

    return DynamicCache(
        ddp_cache_data=[
            (k, v) if w is None else (k, v, torch.tensor(w))
            for (k, v), w in zip(layers, windows, strict=True)
        ]
    )


def trims_exactly(model: Any, windows: list[int | None], cache_arg: str, pad_id: int) -> bool:
    """Whether ``model`` decodes from a batch cache whose local layers keep only their
    window (:func:`fit_local`) what it decodes from one keeping every column: checked
    once, on two rows (one left-padded) of the largest window + 2 tokens, then two decode
    steps. True only where the model sizes each local layer's mask from its cache layer
    (transformers' ``create_sliding_window_causal_mask`` and ``get_mask_sizes``); a model
    building its local masks otherwise (from the 2D mask's full width, say) fails it, and
    so does one that cannot run it (a window past its positions)."""
    import torch
    import torch.nn.functional as F
    from transformers import DynamicCache

    n = max(w or 0 for w in windows) + 2
    if n + 2 > int(getattr(model.config, "max_position_embeddings", 0) or n + 2):
        return False
    param = next(model.parameters())
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    vocab = vocab or model.get_input_embeddings().num_embeddings
    ids = (torch.arange(2 * n, device=param.device).view(2, n) * 7 + 3) % vocab
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :3] = False
    ids[1, :3] = pad_id % vocab
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    runs = []
    try:
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                        use_cache=True, **{cache_arg: DynamicCache()})  # fmt: skip
            layers = [(layer.keys, layer.values) for layer in output_cache(out).layers]
            for trim in (False, True):
                cache = local_cache(layers, windows if trim else [None] * len(windows))
                if trim:
                    fit_local(cache, windows, n)
                step, pos, logits = mask, positions[:, -1:], []
                for i in range(2):  # the second step reads what the first one kept
                    step, pos = F.pad(step, (0, 1), value=True), pos + 1
                    lg = model(input_ids=(ids[:, -1:] + i) % vocab, attention_mask=step,
                               position_ids=pos, use_cache=True, **{cache_arg: cache}).logits  # fmt: skip
                    logits.append(lg[:, -1].float().log_softmax(-1))
                runs.append(torch.stack(logits))
    except Exception:  # a mask as wide as every column, against a trimmed layer
        return False
    tol = 1e-3 if param.dtype == torch.float32 else 2e-2
    return bool(torch.allclose(runs[0], runs[1], rtol=tol, atol=tol))


@functools.cache
def _calls_sliding_mask(module: str) -> bool:
    """Whether ``module`` is one of transformers' own modeling modules
    (``transformers.models.*``) whose source calls ``create_sliding_window_causal_mask``:
    read once per module."""
    if not module.startswith("transformers.models."):
        return False
    try:
        source = inspect.getsource(sys.modules[module])
    except (KeyError, OSError, TypeError):
        return False
    return "create_sliding_window_causal_mask(" in source


def masks_local_layers_from_cache(model: Any) -> bool:
    """Whether ``model`` (its class and its base model's) is transformers' own and builds
    its local layers' masks with transformers' ``create_sliding_window_causal_mask``, which
    sizes each from its cache layer (``get_mask_sizes``), so a cache whose local layers
    keep only their window is masked as the model's own cache is, with no check run. The
    modules' source is read once per module; the function they hold is looked at each time,
    so a module whose mask function was replaced (patched) is not trusted. False for
    remote code (``trust_remote_code``) and for transformers models building their local
    masks otherwise (ModernBERT, EXAONE 4.5, ...)."""
    from transformers import masking_utils

    real = masking_utils.create_sliding_window_causal_mask
    for cls in {type(model), type(getattr(model, "base_model", model))}:
        if not _calls_sliding_mask(cls.__module__):
            return False
        if (
            getattr(sys.modules[cls.__module__], "create_sliding_window_causal_mask", None)
            is not real
        ):
            return False
    return True


def untrimmable(model: Any, windows: list[int | None], cache_arg: str, pad_id: int) -> str:
    """Why the local layers of ``model`` (``windows`` as :func:`local_windows` gives them)
    keep every column, "" where they may keep only their window: trusted without a check
    where :func:`masks_local_layers_from_cache` holds; else checked once
    (:func:`trims_exactly`) where that runs on at most ``CHECK_MAX_TOKENS`` tokens per row,
    and kept whole (correct, not trimmed) where the window is larger: the check would
    prefill two rows of the window at every start (8k tokens for Gemma 2's 4096)."""
    if masks_local_layers_from_cache(model):
        return ""
    n = max(w or 0 for w in windows) + 2
    if n > CHECK_MAX_TOKENS:
        return (
            f"its local layers' masks are not transformers' own, and their window "
            f"({n - 2}) is too large to check at start-up ({n} tokens a row, over "
            f"{CHECK_MAX_TOKENS})"
        )
    if not trims_exactly(model, windows, cache_arg, pad_id):
        return "its local layers' masks do not follow a cache trimmed to their window"
    return ""


def takes_4d_mask(model: Any) -> bool:
    """Whether the decode step can hand ``model`` the 4D boolean mask itself: with sdpa
    attention and only full-attention (causal) layers, the model's own mask for one new
    token per row is exactly the 2D padding mask broadcast to (rows, 1, 1, T)."""
    cfg = model.config
    return (
        getattr(cfg, "_attn_implementation", None) == "sdpa"
        and getattr(cfg, "is_causal", True)
        and full_attention(model)
    )
