"""The quantized model folder: how ``lmops deploy quantize`` stores a model and how every
stage loads it (below the stages, so serve and eval load it without importing deploy).

A quantized folder is a Hugging Face model folder (``config.json``, tokenizer files) whose
weights are in ``lmops_quant.safetensors`` beside ``lmops_quant.json``::

    lmops_quant.json        {"format": "lmops-quant", "version": 1, "method": "int8" | "gptq4",
                             "layers": {"model.layers.0.self_attn.q_proj": {"bits": 8}, ...},
                             (8-bit layers may say "act": "int8x2": activations in two
                             int8 passes, see ``_int8_linear``; absent means "int8")
                             "embeddings_from": "lm_head" | null, ...}
    lmops_quant.safetensors  per quantized Linear ``L`` (weight [out, in]):
                               8 bits: L.qweight int8 [out, in], L.scales fp32 [out]
                                       (symmetric, per output channel: w = q * scale)
                               4 bits: L.qweight uint8 [out, in/2] (two codes a byte, low
                                       nibble first), L.scales fp16 [out, in/g], L.zeros
                                       uint8 [out, in/g] (w = (q - zero) * scale per group g)
                             every other tensor under its own name, as stored by transformers

The file is named so that a plain ``from_pretrained`` fails ("no model.safetensors")
instead of loading random weights. With tied embeddings and a quantized ``lm_head`` the
embedding matrix is not stored twice: it is the dequantized ``lm_head``.

Loading (:func:`load_quantized`): 8-bit layers become PyTorch dynamic int8 Linear modules
(fbgemm/x86 kernels: int8 weights, activations quantized per call), which is what makes
CPU generation faster than fp32; 4-bit layers are dequantized to fp32 (no fast 4-bit CPU
kernel in PyTorch), so they save disk and transfer, not compute. 8-bit folders are CPU-only.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError

__all__ = [
    "QUANT_CONFIG",
    "QUANT_WEIGHTS",
    "dequantize_layer",
    "is_quantized",
    "load_quantized",
    "pack_int4",
    "read_quant_config",
    "unpack_int4",
]

QUANT_CONFIG = "lmops_quant.json"
QUANT_WEIGHTS = "lmops_quant.safetensors"
FORMAT = "lmops-quant"


def is_quantized(folder: Path) -> bool:
    """Whether ``folder`` is a quantized model folder written by ``lmops deploy quantize``."""
    return (folder / QUANT_CONFIG).is_file()


def read_quant_config(folder: Path, *, weights_on_disk: bool = True) -> dict[str, Any]:
    """``lmops_quant.json``, checked: a one-line error names the file when it is not ours.
    ``weights_on_disk=False``: ``lmops_quant.safetensors`` is not looked for (its tensors are
    in memory, from a sealed package)."""
    f = folder / QUANT_CONFIG
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{f}: not a readable quantization config ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or cfg.get("version") != 1:
        raise UserError(f"{f}: not an lmops-quant v1 config; re-run lmops deploy quantize")
    if weights_on_disk and not (folder / QUANT_WEIGHTS).is_file():
        raise UserError(
            f"{folder} has {QUANT_CONFIG} but no {QUANT_WEIGHTS}; the folder is damaged"
        )
    return cfg


def pack_int4(codes: Any) -> Any:
    """uint8 codes 0..15 [rows, cols] (cols even) -> uint8 [rows, cols/2], low nibble first."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: Any) -> Any:
    """The inverse of :func:`pack_int4`."""
    import torch

    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)


def dequantize_layer(tensors: dict[str, Any], name: str, bits: int) -> Any:
    """The fp32 weight [out, in] of quantized layer ``name`` from its stored tensors."""
    import torch

    q = tensors[f"{name}.qweight"]
    scales = tensors[f"{name}.scales"].float()
    if bits == 8:
        return q.float() * scales[:, None]
    codes = unpack_int4(q).float()
    zeros = tensors[f"{name}.zeros"].float()
    group = codes.shape[1] // scales.shape[1]
    scale_full = torch.repeat_interleave(scales, group, dim=1)
    zero_full = torch.repeat_interleave(zeros, group, dim=1)
    return (codes - zero_full) * scale_full


def _int8_linear(q: Any, scales: Any, bias: Any, act: str = "int8") -> Any:
    """A Linear over int8 weights ``q`` [out, in] with per-row ``scales``, activations
    quantized per token: one token (decoding) goes through fbgemm's dynamic int8 kernel,
    the fastest on CPU (its activation scale is per call, so per token here); several
    tokens (prefill, scoring) through ``torch._int_mm`` with one int8 scale per token,
    since one scale for a whole window lets a single outlier token (the first position's
    massive activations) crush every other token's precision.

    ``act="int8x2"``: the activations in two int8 passes, the token and then what its
    first rounding left (x = s1 q1 + s2 q2, ~15 bits): for inputs where one channel is
    hundreds of times louder than the rest (down_proj's gate * up, the final norm's
    output into the head) one scale a token leaves the quiet channels a few levels. Twice
    the int8 work of the layer, still ~2x cheaper than fp32 on CPU."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    out_f, in_f = q.shape
    qw = torch._make_per_channel_quantized_tensor(
        q, scales.double(), torch.zeros(out_f, dtype=torch.long), 0
    )
    dyn = DynamicLinear(in_f, out_f, bias_=bias is not None, dtype=torch.qint8)
    dyn.set_weight_bias(qw, bias)

    if act not in ("int8", "int8x2"):
        raise UserError(f"unknown activation scheme {act!r} in {QUANT_CONFIG}; upgrade lmops")
    two_pass = act == "int8x2"

    class _Int8Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.in_features, self.out_features = in_f, out_f
            self.dyn = dyn
            self.register_buffer("qt", q.t().contiguous(), persistent=False)  # [in, out] int8
            self.register_buffer("scales", scales.float(), persistent=False)
            self.register_buffer("bias", None if bias is None else bias.float(), persistent=False)

        def forward(self, x: Any) -> Any:
            shape = x.shape
            x2 = x.reshape(-1, shape[-1]).float()
            if x2.shape[0] == 1:
                y1 = self.dyn(x2)
                if two_pass:
                    # fbgemm's own rounding of x (asymmetric, 7-bit range on x86), so the
                    # second call gets exactly what the first one lost
                    xh = torch.quantize_per_tensor_dynamic(x2, torch.quint8, reduce_range=True)
                    y1 = y1 + self.dyn(x2 - xh.dequantize())
                    if self.bias is not None:  # added by both calls
                        y1 = y1 - self.bias
                return y1.to(x.dtype).reshape(*shape[:-1], out_f)
            qt: Any = self.qt
            y = _int_mm_rows(x2, qt)
            if two_pass:
                y = y + _int_mm_rows(x2 - _rounded_rows(x2), qt)
            y = y * self.scales
            if self.bias is not None:
                y = y + self.bias
            return y.to(x.dtype).reshape(*shape[:-1], out_f)

    return _Int8Linear()


def _row_scales(x: Any) -> Any:
    """One symmetric int8 scale per row (token) of x [n, in]: [n, 1]."""
    return x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0


def _rounded_rows(x: Any) -> Any:
    """x [n, in] as its per-row int8 rounding gives it back (fp32)."""
    import torch

    sx = _row_scales(x)
    return torch.round(x / sx) * sx


def _int_mm_rows(x: Any, qt: Any) -> Any:
    """x [n, in] fp32 times int8 weights qt [in, out] with x rounded to int8 per row:
    [n, out] fp32, still to be multiplied by the weights' per-column scales."""
    import torch

    sx = _row_scales(x)
    xq = torch.round(x / sx).to(torch.int8)
    return torch._int_mm(xq, qt).float() * sx


def _set_module(model: Any, name: str, module: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def load_quantized(
    folder: Path, *, device: str = "cpu", tensors: dict[str, Any] | None = None
) -> Any:
    """The model in quantized folder ``folder``, in eval mode, on ``device``.

    8-bit layers run as dynamic int8 Linear modules (CPU only: a one-line error on any
    other device); 4-bit layers are dequantized to fp32. ``tensors``: the contents of
    ``lmops_quant.safetensors`` already in memory (a sealed package, decrypted by
    :mod:`lmops.models.sealed`), read instead of the file."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = read_quant_config(folder, weights_on_disk=tensors is None)
    layers: dict[str, dict[str, Any]] = cfg["layers"]
    if device != "cpu" and any(v["bits"] == 8 for v in layers.values()):
        raise UserError(
            f"{folder} is an int8 model for the CPU engine (PyTorch dynamic int8); use device "
            "cpu, or quantize for GPUs with bitsandbytes/torchao"
        )
    if tensors is None:
        tensors = load_file(str(folder / QUANT_WEIGHTS))
    config = AutoConfig.from_pretrained(str(folder))
    model: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain = {k: v for k, v in tensors.items() if k.rsplit(".", 1)[0] not in layers}
    embeddings_from = cfg.get("embeddings_from")
    # the plain tensors first: a dynamic int8 module has a state of its own to load
    missing, unexpected = model.load_state_dict(plain, strict=False)
    expected_missing = {f"{n}.weight" for n in layers} | {f"{n}.bias" for n in layers}
    if embeddings_from:
        expected_missing.add(f"{_embedding_name(model)}.weight")
    really_missing = [k for k in missing if k not in expected_missing]
    if really_missing or unexpected:
        raise UserError(
            f"{folder / QUANT_WEIGHTS}: tensors do not match config.json (missing "
            f"{really_missing[:3]}, unexpected {unexpected[:3]}); re-run lmops deploy quantize"
        )
    with torch.no_grad():
        for name, spec in layers.items():
            weight = dequantize_layer(tensors, name, int(spec["bits"]))
            if name == embeddings_from:  # tied: the embedding is the dequantized head
                model.get_input_embeddings().weight = torch.nn.Parameter(weight)
            if spec["bits"] == 8:
                # per-channel int8 kept as stored: no second rounding of dequantized weights
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch's deprecation notes on qint8
                    mod = _int8_linear(
                        tensors[f"{name}.qweight"],
                        tensors[f"{name}.scales"],
                        tensors.get(f"{name}.bias"),
                        str(spec.get("act", "int8")),
                    )
                _set_module(model, name, mod)
            else:
                layer = model.get_submodule(name)
                # tied 4-bit head: one Parameter for both, as the source had
                layer.weight = (
                    model.get_input_embeddings().weight
                    if name == embeddings_from
                    else torch.nn.Parameter(weight)
                )
                if f"{name}.bias" in tensors:
                    layer.bias = torch.nn.Parameter(tensors[f"{name}.bias"].float())
    return model.to(device).eval()


def _embedding_name(model: Any) -> str:
    emb = model.get_input_embeddings()
    for name, mod in model.named_modules():
        if mod is emb:
            return name
    return "model.embed_tokens"
