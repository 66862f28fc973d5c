"""The dtype ``lmops assets import gguf`` stores a GGUF's weights in (``--dtype``).

transformers dequantizes each tensor to fp32 and casts it to the dtype asked for, so the
folder can keep the precision the file carries instead of 4 bytes a weight. ``auto`` looks
at the file's matrices (2-D and up; its 1-D norms and biases are F32 in every llama.cpp
file and follow the matrices):

- F32 (and F64, integers) -> ``float32``; F16 -> ``float16``; BF16 -> ``bfloat16``: exact;
- a block quant whose scales are fp16 (Q4_0/Q4_1/Q5_*/Q8_0, the K-quants, IQ*, TQ*) ->
  ``float16``: a weight is a small integer times an fp16 scale (plus an fp16 minimum), which
  fp16 holds to within half its last bit (2^-11 relative), far under the 4-8 bit grid's own
  step. On SmolLM2-135M-Instruct's Q4_1 file that gave the fp32 import's greedy tokens
  (192/192), logits within 0.04 and perplexity -0.01 % at half the size (bfloat16: logits
  within 0.28; ``benchmarks/gguf_import_bench.py``);
- MXFP4 (fp4 times a power of two) -> ``bfloat16``, which holds it exactly where fp16's
  range would not; block types with fp32 scales (Q8_1, Q8_K, NVFP4) -> ``float32``;
- matrices that need different dtypes (F16 beside BF16, anything beside F32) -> the one
  that holds them all, ``float32`` unless every need is ``float16``/``bfloat16`` alike.

A weight beyond fp16's range (|w| > 65504) becomes inf; :func:`check_finite` catches that
after loading: ``auto`` then stores ``float32``, an explicit ``--dtype float16`` is refused
in one line.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from lmops.core.errors import UserError

__all__ = [
    "IMPORT_DTYPES",
    "ImportDtype",
    "check_finite",
    "import_dtype",
    "quiet_gguf_load",
    "quiet_packed_gguf_warning",
    "torch_dtype",
]

ImportDtype = Literal["auto", "float32", "float16", "bfloat16"]
IMPORT_DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")

_EXACT = {"F32": "float32", "F64": "float32", "F16": "float16", "BF16": "bfloat16"}
_WIDE = {"MXFP4": "bfloat16", "Q8_1": "float32", "Q8_K": "float32", "NVFP4": "float32"}


def _need(type_name: str) -> str:
    if type_name in _EXACT:
        return _EXACT[type_name]
    if type_name in _WIDE:
        return _WIDE[type_name]
    if type_name.startswith("I") and not type_name.startswith("IQ"):  # I8..I64
        return "float32"
    return "float16"  # a block quant with fp16 scales


def import_dtype(file: Path, asked: str) -> tuple[str, str]:
    """(the dtype to store, why) for GGUF ``file`` and ``--dtype asked``."""
    if asked not in IMPORT_DTYPES:
        raise UserError(f"--dtype {asked!r}: one of {', '.join(IMPORT_DTYPES)}")
    if asked != "auto":
        return asked, "asked"
    import gguf

    reader = gguf.GGUFReader(str(file))
    types = sorted({t.tensor_type.name for t in reader.tensors if len(t.shape) >= 2})
    needs = {_need(t) for t in types}
    if not needs:
        return "float32", "no matrices"
    dtype = needs.pop() if len(needs) == 1 else "float32"
    return dtype, "matrices " + "/".join(types)


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def check_finite(model: Any) -> str | None:
    """The first parameter of ``model`` with an inf or NaN (what a weight beyond fp16's
    range becomes), or None."""
    import torch

    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return name
    return None


@contextlib.contextmanager
def quiet_packed_gguf_warning() -> Iterator[None]:
    """Silence transformers' "a GGUF with its weights packed is fastest in float32" for a
    load in another dtype: transformers 5 says it even on the loader that dequantizes every
    tensor (llama, qwen2, qwen3), where nothing stays packed and there is nothing to avoid."""
    from transformers.utils import logging as hf_logging

    log = hf_logging.get_logger("transformers.quantizers.quantizer_gguf")
    level = log.level
    log.setLevel(hf_logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


_bar_lock = threading.Lock()
# how many loads run inside quiet_gguf_load now, and transformers' own tqdm to put back
_bar_quieted: dict[str, Any] = {"loads": 0, "tqdm": None}


@contextlib.contextmanager
def quiet_gguf_load() -> Iterator[None]:
    """A GGUF load through transformers (``from_pretrained(..., gguf_file=...)``) without its
    noise: the packed-weights warning (:func:`quiet_packed_gguf_warning`) and the tqdm bar
    "Converting and de-quantizing GGUF tensors" that its loader draws on stderr for every load
    (``tqdm.auto`` imported by the module itself, so ``disable_progress_bar()`` does not reach
    it): in ``assets import gguf``, ``deploy report`` and the gateway's log it was a bar no
    lmops line asked for. lmops's own progress (``core.progress``) is untouched. The bar is
    off while any such load runs (a counter: loads in two threads put it back once)."""
    import transformers.modeling_gguf_pytorch_utils as loader

    counted = False  # this load is in the count: the finally takes it out (and only then)
    try:
        with _bar_lock:
            if _bar_quieted["loads"] == 0:
                _bar_quieted["tqdm"] = loader.tqdm
                loader.tqdm = functools.partial(loader.tqdm, disable=True)
            _bar_quieted["loads"] += 1
            counted = True
        with quiet_packed_gguf_warning():
            yield
    finally:
        if counted:
            with _bar_lock:
                _bar_quieted["loads"] -= 1
                if _bar_quieted["loads"] == 0:
                    loader.tqdm = _bar_quieted["tqdm"]
