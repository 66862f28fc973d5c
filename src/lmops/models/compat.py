"""transformers API drift in one place: the KV-cache keyword of ``forward`` and the
field of its output (``cache`` since transformers 5.25; ``past_key_values`` before, and
still accepted with a warning until 5.40); and the count of tokens a sliding-window cache
layer has seen (``cumulative_length``, transformers 5.x's ``DynamicSlidingWindowLayer``),
which the engine sets when it lays out a batch cache of such layers itself."""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["cache_arg", "counts_seen", "output_cache", "set_seen"]


def cache_arg(model: Any) -> str:
    """The keyword ``model.forward`` takes the KV cache by: ``cache`` where forward
    declares it, ``past_key_values`` for a model whose forward predates the rename (it
    would ignore an unknown ``cache``)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a forward pass returned, read by its current name first (reading
    ``past_key_values`` on a 5.25+ output logs a deprecation warning)."""
    fields = out.keys() if hasattr(out, "keys") else ()
    if "cache" in fields or hasattr(type(out), "cache"):
        return out.cache
    return out.past_key_values


def counts_seen(layer: Any) -> bool:
    """Whether the sliding-window cache ``layer`` keeps the number of tokens it has seen
    where :func:`set_seen` writes it, an int (the offset of its mask: the model masks the
    layer's columns as that many tokens' last ones). False for a transformers whose
    layer keeps it elsewhere or not at all: the engine then keeps every column."""
    return isinstance(getattr(layer, "cumulative_length", None), int)


def set_seen(layer: Any, n: int) -> None:
    """Make the sliding-window cache ``layer`` (one :func:`counts_seen` holds for) count
    ``n`` tokens seen, whatever columns it holds."""
    layer.cumulative_length = n
