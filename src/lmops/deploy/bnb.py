"""bitsandbytes quantization: ``lmops deploy quantize MODEL --method bnb-nf4|bnb-int8``.

``bnb-nf4``  every Linear of the decoder as 4-bit NormalFloat (QLoRA's NF4: the 16 levels
             are quantiles of a normal distribution) in blocks of 64 weights, each block's
             absmax itself quantized to 8 bits in groups of 256 (double quantization);
             ~4.13 bits a quantized weight. Round-to-nearest, no calibration.
``bnb-int8`` LLM.int8(): every Linear of the decoder as per-row absmax int8; at run time the
             activation columns above 6.0 (the outlier features) go through a 16-bit
             matmul, the rest through int8. ~8.03 bits a quantized weight.

In both, transformers leaves ``lm_head`` (with tied embeddings, the embedding matrix too)
unquantized, as bitsandbytes' own recipe does; those weights and the norms are stored in
``bfloat16`` (``STORE_DTYPE``), so a whole small model with a large vocabulary lands well
above the quantized layers' width (SmolLM2-135M: a fifth of its weights are the head).

The result is the folder transformers writes (``save_pretrained``: ``model.safetensors``
and a ``config.json`` whose ``quantization_config`` says how to rebuild the layers), which
``from_pretrained`` reloads with bitsandbytes installed; :func:`lmops.models.bnb.load_bnb`
is how serve and eval load it. The layers are made on the device the job runs on (CUDA
when there is one, else bitsandbytes' CPU back end, 0.48 or later), recorded in the asset's
metadata; the stored format is the same for both.

Without bitsandbytes the job stops before reading the model, with the install command and
the CPU methods that need nothing (``--method int8|gptq4``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError, first_line
from lmops.core.modelfiles import weight_files
from lmops.core.proc import owned_tempdir

__all__ = ["BNB_METHODS", "STORE_DTYPE", "bnb_bits_per_weight", "bnb_config", "quantize_bnb"]

BNB_METHODS = ("bnb-nf4", "bnb-int8")
STORE_DTYPE = "bfloat16"  # the layers bitsandbytes leaves unquantized, as stored


def bnb_config(method: str, compute_dtype: Any) -> Any:
    """transformers' ``BitsAndBytesConfig`` of ``method`` (``bnb-nf4`` or ``bnb-int8``)."""
    from transformers import BitsAndBytesConfig

    if method == "bnb-nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage="uint8",
        )
    if method == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
    raise UserError(f"--method {method}: not a bitsandbytes method ({', '.join(BNB_METHODS)})")


_DTYPE_BYTES = {"U8": 1, "I8": 1, "BOOL": 1, "F16": 2, "BF16": 2, "I16": 2, "F32": 4, "I32": 4}
_DTYPE_BYTES |= {"F64": 8, "I64": 8}


def bnb_bits_per_weight(model: Any, folder: Path) -> tuple[float, float]:
    """(all weights, the quantized layers alone): stored bits per weight of ``folder``'s
    safetensors, quantization state (absmax, code book, SCB) included. A quantized layer
    counts its ``in x out`` weights; any other tensor of two or more dimensions counts its
    elements (tied embeddings once, as stored); norms and biases are not weights."""
    import bitsandbytes as bnb
    from safetensors import safe_open

    shapes: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt):
            shapes[name] = int(m.in_features) * int(m.out_features)
    bits_all = weights_all = bits_q = 0
    for file in weight_files(folder):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                sl = f.get_slice(key)
                dims = list(sl.get_shape())
                n = 1
                for d in dims:
                    n *= int(d)
                bits = n * _DTYPE_BYTES.get(sl.get_dtype(), 4) * 8
                owner = _owner(key, shapes)
                if owner is not None:
                    if key != f"{owner}.bias":
                        bits_all, bits_q = bits_all + bits, bits_q + bits
                elif len(dims) >= 2:
                    bits_all, weights_all = bits_all + bits, weights_all + n
    weights_q = sum(shapes.values())
    weights_all += weights_q
    return bits_all / max(weights_all, 1), bits_q / max(weights_q, 1)


def _owner(key: str, layers: dict[str, int]) -> str | None:
    """The quantized layer a stored key belongs to (``L.weight.absmax`` -> ``L``), if any."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        if name in layers:
            return name
    return None


def quantize_bnb(
    store: Any,
    model_ref: str,
    *,
    output: str,
    method: str,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Quantize model ``model_ref`` (an asset ref or a folder) with bitsandbytes and register
    the folder as model ``output``, lineage to the source (role ``source``). Returns a
    :class:`lmops.deploy.quantize.QuantizeResult`. Nothing is registered when anything
    fails."""
    import torch

    from lmops.deploy._source import source_inputs, source_model
    from lmops.deploy.quantize import QuantizeResult, _copy_tokenizer
    from lmops.models.bnb import BNB_INSTALL, require_bitsandbytes
    from lmops.models.loading import quiet_transformers, select_device

    if method not in BNB_METHODS:
        raise UserError(f"--method {method}: not a bitsandbytes method ({', '.join(BNB_METHODS)})")
    # before any model is read: the refusal names the install and the CPU methods
    version = require_bitsandbytes(
        f"--method {method}", "; or quantize on CPU without it: --method int8|gptq4"
    )
    src, src_ref = source_model(
        model_ref, store, full_precision="quantize its source model instead"
    )
    dev = select_device(device)
    if dev not in ("cpu", "cuda"):
        raise UserError(f"--method {method} runs on cuda or cpu, not {dev}; pass device cpu")
    quiet_transformers()
    compute = torch.bfloat16 if dev == "cuda" else torch.float32
    store_dtype = getattr(torch, STORE_DTYPE)
    with store.runs.track("quantize", config={"method": method, "model": model_ref}) as run:
        inputs = source_inputs(store, src, src_ref, run.id)
        model = _load_quantizing(src, method, compute, store_dtype, dev, BNB_INSTALL)
        tmp = owned_tempdir("lmops-bnb-")
        try:
            model.save_pretrained(str(tmp))
            _copy_tokenizer(src, tmp)
            bpw, qbpw = bnb_bits_per_weight(model, tmp)
            layers = sum(1 for n in model.modules() if _is_bnb_layer(n))
            if progress is not None:
                progress(layers, layers)
            del model
            meta = {
                "quantization": method,
                "format": "bitsandbytes",
                "bits_per_weight": round(bpw, 4),
                "quantized_bits_per_weight": round(qbpw, 4),
                "source": src_ref or str(src),
                "device": dev,
                "bitsandbytes": version,
                "unquantized_dtype": STORE_DTYPE,
            }
            v = store.assets.register(
                "model", output, tmp, metadata=meta, inputs=inputs, run_id=run.id
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        store.runs.log_metrics(
            run.id, {"bits_per_weight": bpw, "quantized_bits_per_weight": qbpw}, 0
        )
    return QuantizeResult(
        path=store.assets.path(v.ref),
        method=method,
        bits_per_weight=bpw,
        quantized_bits_per_weight=qbpw,
        layers=layers,
        ref=v.ref,
    )


def _is_bnb_layer(m: Any) -> bool:
    import bitsandbytes as bnb

    return isinstance(m, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt)


def _load_quantizing(
    src: Path, method: str, compute: Any, store_dtype: Any, device: str, install: str
) -> Any:
    """``src`` loaded through ``BitsAndBytesConfig``: transformers quantizes each Linear as
    its weights arrive on ``device``."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(src),
            quantization_config=bnb_config(method, compute),
            dtype=store_dtype,
            device_map={"": device},
        )
    except ImportError as e:  # transformers' own checks of bitsandbytes/accelerate
        raise UserError(f"--method {method}: {first_line(e)} ({install})") from None
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot quantize {src} with {method}: {first_line(e)}") from None
    if not any(_is_bnb_layer(m) for m in model.modules()):
        raise UserError(f"{src}: bitsandbytes found no Linear layer to quantize")
    return model.eval()
