"""bitsandbytes model folders (``lmops deploy quantize --method bnb-nf4|bnb-int8``) as every
stage loads them: below the stages, so serve and eval read them without importing deploy.

Such a folder is a plain Hugging Face folder whose ``config.json`` carries a
``quantization_config`` with ``"quant_method": "bitsandbytes"`` (transformers'
``save_pretrained`` of a model loaded with a ``BitsAndBytesConfig``); transformers rebuilds
the ``Linear4bit``/``Linear8bitLt`` layers from it. What this module adds: the package check
as a one-line error (bitsandbytes is the optional ``gpu`` extra), placement straight onto
the serving device (``device_map``), and the 4-bit layers computing in the serving dtype
instead of the one the folder was made with.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError, first_line

__all__ = [
    "BNB_INSTALL",
    "bnb_config_of",
    "is_bnb_folder",
    "load_bnb",
    "require_bitsandbytes",
    "serving_dtype",
]

BNB_INSTALL = "pip install 'lmops[gpu]'"
# the first release with a CPU back end (LLM.int8 and NF4/FP4 without CUDA)
_CPU_MIN = (0, 48)


def bnb_config_of(folder: Path) -> dict[str, Any] | None:
    """The ``quantization_config`` of ``folder``'s ``config.json`` when bitsandbytes made
    the folder (``load_in_4bit`` / ``load_in_8bit``, ``bnb_4bit_quant_type``...), else
    None."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    q = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    return q if isinstance(q, dict) and q.get("quant_method") == "bitsandbytes" else None


def is_bnb_folder(folder: Path) -> bool:
    """Whether ``folder``'s ``config.json`` says it was quantized by bitsandbytes."""
    return bnb_config_of(folder) is not None


def require_bitsandbytes(what: str, hint: str = "") -> str:
    """bitsandbytes' version, or a one-line :class:`UserError` that starts with ``what``
    and names the install command, then ``hint`` (and whether the package is missing or cannot run here:
    a back end that fails to load raises at import, not ImportError)."""
    _quiet()
    hub = logging.getLogger("kernels._internals.hf_hub")
    level = hub.level
    hub.setLevel(logging.ERROR)  # "skipping publisher trust check ... offline", at import
    try:
        import bitsandbytes
    except ModuleNotFoundError:
        why = "bitsandbytes is not installed"
    except Exception as e:  # a native back end that cannot load on this platform
        why = f"bitsandbytes cannot load here ({type(e).__name__}: {first_line(e)})"
    else:
        hub.setLevel(level)
        version = str(getattr(bitsandbytes, "__version__", "0"))
        if _cuda() or _version_tuple(version) >= _CPU_MIN:
            return version
        why = f"bitsandbytes {version} has no CPU back end (0.48 or later has one)"
    hub.setLevel(level)
    raise UserError(f"{what} needs bitsandbytes, but {why}: {BNB_INSTALL}{hint}")


def load_bnb(path: Path, *, dtype: Any = None, device: str = "cpu") -> Any:
    """The bitsandbytes-quantized causal LM in ``path`` on ``device``, in eval mode.
    ``dtype`` (default fp32) is that of the layers left unquantized (embeddings, norms, the
    head) and the compute dtype of the 4-bit layers."""
    import torch
    from transformers import AutoModelForCausalLM

    require_bitsandbytes(f"model {path} (bitsandbytes-quantized)")
    import bitsandbytes as bnb

    dtype = serving_dtype(path, dtype or torch.float32, device)
    try:
        # device_map: quantized weights are placed by transformers, never moved after
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, device_map={"": device}
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot load model {path}: {first_line(e)}") from None
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.compute_dtype = dtype  # the folder records the dtype it was made with
        # transformers keeps a pre-quantized checkpoint's unquantized weights (embeddings,
        # norms, head) in their stored dtype whatever ``dtype`` says; on CPU bf16 is slow
        for p in m.parameters(recurse=False):
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    return model.eval()


def serving_dtype(path: Path, dtype: Any, device: str) -> Any:
    """The dtype to serve ``path`` in when ``dtype`` is asked for on ``device``: LLM.int8
    (``load_in_8bit``) casts its inputs to fp16 on every call, so on CUDA a bf16 request
    becomes fp16 (transformers' own default for 8-bit), where bf16 activations above 65504
    would turn to inf in that cast."""
    import torch

    if dtype != torch.bfloat16 or not str(device).startswith("cuda"):
        return dtype
    q = bnb_config_of(path) or {}
    return torch.float16 if q.get("load_in_8bit") else dtype


def _quiet() -> None:
    """bitsandbytes logs, on CPU, at import that it could not fetch a faster 4-bit kernel
    from the Hub (the ``kernels`` package; offline, or not installed: optional) and, on every
    LLM.int8 call, that it casts fp32 inputs to fp16 (what its int8 path takes): noise in
    a server's log, said once in this module instead."""
    for name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions"):
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:  # left as set by `--debug` (lmops.core.logging)
            log.setLevel(logging.ERROR)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)
