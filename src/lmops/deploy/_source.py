"""The source model of a deploy transform (export, quantize): resolved from an asset ref or a
folder, refused when it is an adapter, and named in the result's lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmops.core.errors import UserError
from lmops.models.loading import resolve_local

__all__ = ["source_inputs", "source_model"]


def source_model(model_ref: str, store: Any) -> tuple[Path, str | None]:
    """``(folder, version ref or None)`` of a full model: an adapter is refused in one line
    (the transforms need the merged weights)."""
    src, src_ref = resolve_local(model_ref, store, kind="model")
    if (src / "adapter_config.json").is_file():
        raise UserError(f"{model_ref} is an adapter; merge it first (lmops train merge)")
    return src, src_ref


def source_inputs(store: Any, src: Path, src_ref: str | None, run_id: str) -> list[Any]:
    """The result's ``source`` input: the asset version, or a local folder recorded by
    content first."""
    if src_ref:
        return [(src_ref, "source")]
    return list(store.assets.record_inputs([(src, "source")], run_id=run_id))
