"""Which tokens a model's attention layers read, from its config: every token before
(full attention), or only a sliding window of the last ones (Mistral; Qwen2 with
``use_sliding_window``; Gemma 2/3's local layers between global ones; GPT-Neo's local
layers), which decides how the engine may lay out its batch cache (``models/engine.py``).

A window is counted in cache columns by transformers' masks: exact for a row whose tokens
are contiguous (left padding, then the prompt and what it generated), wrong for a row with
padding in the middle (a shared prefix, then its rest)."""

from __future__ import annotations

from typing import Any

__all__ = ["common_window", "full_attention", "local_windows", "takes_4d_mask"]


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
    (chunked, shared), or local layers the model windows itself (GPT-Neo's, from one mask
    for every layer)."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        layers = DynamicCache(config=model.config).layers
    except Exception:  # a config transformers makes no such cache for
        return None
    windows: list[int | None] = []
    for layer in layers:
        if type(layer) is DynamicSlidingWindowLayer and layer.sliding_window >= 2:
            windows.append(int(layer.sliding_window))
        elif type(layer) is DynamicLayer:
            windows.append(None)
        else:
            return None
    mixed = any(w is None for w in windows) and any(w is not None for w in windows)
    return windows if mixed else None


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
