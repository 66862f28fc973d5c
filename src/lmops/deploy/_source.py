"""The source model of a deploy transform (export, quantize): resolved from an asset ref or a
folder, refused when it is an adapter, and named in the result's lineage; and the output
name every deploy job checks before its work (:func:`check_output`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmops.core.errors import NotFoundError, UserError
from lmops.models.loading import resolve_local

__all__ = [
    "check_output",
    "quantized_as",
    "refuse_quantized",
    "source_inputs",
    "source_model",
]


def check_output(store: Any, name: str, kind: str = "model") -> str:
    """``name`` if a ``kind`` asset can be registered under it, else the one-line error that
    registering would give: called first by every deploy job (export, quantize, prune,
    distill, package, report, GGUF import), the CLI's and the API's alike, so a bad name is
    refused before a model is loaded, not after minutes of work that is then lost."""
    from lmops.store.notfound import wrong_kind
    from lmops.store.refs import check_name

    check_name(name)
    try:
        have = store.assets.show(name).kind
    except NotFoundError:
        return name  # a new asset
    if have != kind:
        raise wrong_kind(name, have, kind)
    return name


def quantized_as(folder: Path) -> str | None:
    """``"lmops"`` (``deploy quantize --method int8|gptq4``), ``"bitsandbytes"``
    (``--method bnb-*``) or None for a model folder in full precision."""
    from lmops.models.bnb import is_bnb_folder
    from lmops.models.quantized import is_quantized

    if is_quantized(folder):
        return "lmops"
    return "bitsandbytes" if is_bnb_folder(folder) else None


def refuse_quantized(folder: Path, name: str, then: str) -> None:
    """One line when ``folder`` holds quantized weights: a transform that reads the weights
    as floats (quantize, export) would read packed integers and their scales."""
    kind = quantized_as(folder)
    if kind is not None:
        raise UserError(f"{name} is already quantized ({kind}); {then}")


def source_model(
    model_ref: str, store: Any, *, full_precision: str | None = None
) -> tuple[Path, str | None]:
    """``(folder, version ref or None)`` of a full model: an adapter is refused in one line
    (the transforms need the merged weights), and so is a quantized model when
    ``full_precision`` says what to do instead ("quantize its source model instead")."""
    src, src_ref = resolve_local(model_ref, store, kind="model")
    if (src / "adapter_config.json").is_file():
        if src_ref is None:  # train merge reads an adapter asset
            raise UserError(
                f"{model_ref} is an adapter; register it (lmops assets register adapter NAME "
                f"{model_ref}), merge it (lmops train merge NAME:1) and give the merged model"
            )
        merged = f"{src_ref.rsplit(':', 1)[0]}-merged"
        raise UserError(
            f"{model_ref} is an adapter ({src_ref}); merge it into its base model first: "
            f"lmops train merge {src_ref} --output {merged}, then give {merged}"
        )
    if full_precision is not None:
        refuse_quantized(src, model_ref, full_precision)
    return src, src_ref


def source_inputs(store: Any, src: Path, src_ref: str | None, run_id: str) -> list[Any]:
    """The result's ``source`` input: the asset version, or a local folder recorded by
    content first."""
    if src_ref:
        return [(src_ref, "source")]
    return list(store.assets.record_inputs([(src, "source")], run_id=run_id))
