"""transformers API drift in one place: the KV-cache keyword of ``forward`` and the
field of its output (``cache`` since transformers 5.25; ``past_key_values`` before, and
still accepted with a warning until 5.40)."""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["cache_arg", "output_cache"]


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
