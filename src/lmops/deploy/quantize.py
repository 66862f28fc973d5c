"""Quantization for the built-in engine: ``lmops deploy quantize MODEL --method int8|gptq4``.

``int8``  every Linear (the tied ``lm_head`` included) as symmetric per-output-channel int8;
          the engine runs them with int8 activations per token (fbgemm's dynamic int8
          kernel for one token, ``torch._int_mm`` for several), which makes CPU generation
          faster than fp32 (torchao and optimum-quanto int8 measured slower here). Where the
          perplexity went (SmolLM2-135M, tinyshakespeare, +4.5 % in all with round-to-nearest
          and one pass): down_proj's activations ~+1.7 %, the head's ~+0.8 %, the rest
          the weights' rounding and the loud channels of the RMSNorm outputs feeding
          q/k/v and gate/up. So, by default, with calibration text: SmoothQuant folded
          into those RMSNorms' weights (``smooth_norms``: free at run time), codes chosen
          by GPTQ (``int8_rounding``: same per-row scales, each rounding error fed forward
          through the inputs' Hessian, the loop gptq4 uses), and down_proj and the head
          take their activations in two int8 passes (``int8_two_pass``: the token, then
          what its rounding left, ~15 bits; twice the int8 work of those layers, still
          far cheaper than fp32). Measured: +0.42 % perplexity (down_proj alone in two
          passes +0.96 %, every layer +0.27 % but 1.28x fp32 speed). SmoothQuant on
          down_proj (``smooth``) is an option; it did not help here (its loud channels
          move from token to token). Without calibration: round-to-nearest, two passes.
          8 bits/weight + a scale a row.
``gptq4`` GPTQ (Frantar et al. 2022, the reference ``gptq.py`` algorithm): layer by layer, each
          Linear's weights are rounded to 4 bits column by column and each rounding error
          is spread over the columns not yet rounded through the inverse Hessian of the
          layer's inputs on calibration text (H = 2 X Xᵀ). Asymmetric, one fp16 scale and
          one uint8 zero point per group of ``group_size`` inputs. Layers are quantized in
          order and each layer sees the outputs of the already quantized ones, as in the
          reference. ``lm_head`` (with tied embeddings the embedding matrix too) is
          GPTQ'd at 4 bits as well (``head_bits``, on the final norm's outputs), in groups
          of 32 like the rest: 4 + 24/32 = 4.75 bits/weight for the whole model. (The
          first layout, an 8-bit head and groups of 64, was 5.15 bits/weight for
          SmolLM2-135M, whose 49k-row tied head is a fifth of its weights; a 4-bit head in
          groups of 64 was 4.375 bits but +10.7 % perplexity; groups of 32 everywhere
          +7.9 %.)

No library does calibrated 4-bit on a CPU without CUDA kernels (auto-gptq, gptqmodel and
llm-compressor build or need them), so GPTQ is written here; it is ~60 lines.

``bnb-nf4`` / ``bnb-int8``: bitsandbytes' NF4 and LLM.int8 through transformers
(:mod:`lmops.deploy.bnb`): plain transformers folders, run on CUDA or bitsandbytes' CPU back end.

Outputs are quantized model folders (:mod:`lmops.models.quantized`) registered as ``model``
assets with lineage to the source model and the calibration data.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from lmops.core.errors import UserError
from lmops.core.proc import owned_tempdir

__all__ = [
    "QuantizeConfig",
    "QuantizeResult",
    "bits_per_weight",
    "gptq_quantize_weight",
    "quantize",
    "quantize_model",
    "rtn_int4",
]

# bnb-*: bitsandbytes through transformers (lmops.deploy.bnb); the folders load anywhere
# transformers does, CUDA or bitsandbytes' CPU back end
Method = Literal["int8", "gptq4", "bnb-nf4", "bnb-int8"]


class QuantizeConfig(BaseModel):
    """How to quantize; the defaults are the published ones."""

    method: Method = "int8"
    group_size: int = Field(32, description="gptq4: inputs per scale/zero point (32..256)")
    head_bits: Literal[4, 8] = Field(4, description="gptq4: bits of lm_head (and tied embeddings)")
    calibration_samples: int = Field(32, ge=1, description="gptq4: calibration sequences")
    seq_len: int = Field(512, ge=16, description="gptq4: tokens per calibration sequence")
    damp: float = Field(0.01, gt=0, description="gptq4: diagonal damping, fraction of mean(diag H)")
    block_size: int = Field(128, ge=1, description="gptq4: columns updated lazily at once")
    int8_rounding: Literal["gptq", "nearest"] = Field(
        "gptq",
        description="int8 with calibration: codes chosen by GPTQ (error feedback through "
        "the inputs' Hessian, same per-row scales) or round-to-nearest; without "
        "calibration always round-to-nearest",
    )
    int8_two_pass: list[str] = Field(
        default_factory=lambda: ["down_proj", "lm_head"],
        description="int8: layers (last name part) whose activations go through two int8 "
        "passes (~15 bits) instead of one: the inputs with a few loud channels",
    )
    smooth: bool = Field(
        False, description="int8 with calibration: SmoothQuant on each MLP's down_proj first"
    )
    smooth_norms: bool = Field(
        True,
        description="int8 with calibration: SmoothQuant folded into the RMSNorm weights "
        "before q/k/v and gate/up (free at run time)",
    )
    smooth_alpha: float = Field(0.5, ge=0, le=1, description="SmoothQuant migration strength")


class QuantizeResult(BaseModel):
    """What ``quantize`` wrote: the folder and its figures (also the asset's metadata)."""

    path: Path
    method: Method
    bits_per_weight: float  # every stored weight of the model: codes + scales + zero points
    quantized_bits_per_weight: float  # layers at the method's width (gptq4: the 4-bit ones)
    layers: int
    ref: str | None = None


# -- int8 ------------------------------------------------------------------------------------------
def _int8(weight: Any) -> tuple[Any, Any]:
    """Symmetric per-row int8: (codes int8 [out, in], scales fp32 [out]); w ≈ q * scale."""
    import torch

    scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).float()
    q = torch.clamp(torch.round(weight / scales[:, None]), -127, 127).to(torch.int8)
    return q, scales


# -- 4 bits ----------------------------------------------------------------------------------------
def _group_params(w: Any) -> tuple[Any, Any]:
    """Asymmetric 4-bit grid of each row of ``w`` [out, g]: (scale fp16-rounded, zero)."""
    import torch

    xmin = torch.clamp(w.amin(dim=1), max=0)
    xmax = torch.clamp(w.amax(dim=1), min=0)
    same = xmin == xmax
    xmin, xmax = torch.where(same, xmin - 1, xmin), torch.where(same, xmax + 1, xmax)
    # the scale is stored in fp16, so round it first: codes are chosen for the stored grid
    scale = ((xmax - xmin) / 15.0).half().float().clamp(min=1e-8)
    zero = torch.clamp(torch.round(-xmin / scale), 0, 15)
    return scale, zero


def _q4(x: Any, scale: Any, zero: Any) -> Any:
    import torch

    return torch.clamp(torch.round(x / scale) + zero, 0, 15)


def rtn_int4(weight: Any, group_size: int) -> tuple[Any, Any, Any]:
    """Round-to-nearest 4-bit per group (the uncalibrated baseline): (codes uint8 [out, in],
    scales fp16 [out, in/g], zeros uint8 [out, in/g])."""
    import torch

    out_f, in_f = weight.shape
    w = weight.float().reshape(out_f, in_f // group_size, group_size)
    scale, zero = _group_params(w.reshape(-1, group_size))
    scale, zero = scale.reshape(out_f, -1), zero.reshape(out_f, -1)
    codes = _q4(w, scale[..., None], zero[..., None]).reshape(out_f, in_f)
    return codes.to(torch.uint8), scale.half(), zero.to(torch.uint8)


def _prepare(weight: Any, hessian: Any, act_order: bool) -> tuple[Any, Any, Any]:
    """(w fp32 [out, in], H float64 [in, in], perm [in]) as GPTQ starts from them: inputs
    never seen (zero diagonal) get weight 0 and a unit diagonal; with ``act_order`` the
    columns of w and H sorted by decreasing H diagonal (the loudest inputs first, so their
    error is spread over the most columns)."""
    import torch

    w = weight.detach().float().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = torch.arange(w.shape[1])
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    return w, h, perm


def _error_feedback(
    w: Any,
    h: Any,
    *,
    damp: float,
    block: int,
    round_col: Callable[[int, Any, int], Any],
) -> None:
    """The GPTQ loop over the columns of ``w`` [out, in] (changed in place): column ``col``
    is rounded by ``round_col(col, w1, i)`` (w1 the current block, i the column in it; it
    returns the rounded column, and keeps the codes), and its error, divided by the
    inverse Hessian's diagonal, is taken off the columns not yet rounded (within the
    block at once, beyond it lazily per block)."""
    import torch

    in_f = w.shape[1]
    h = h + damp * torch.mean(torch.diag(h)) * torch.eye(in_f, dtype=h.dtype)
    try:  # the upper Cholesky factor of H⁻¹: row i holds the update for columns after i
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError:
        raise UserError(
            "GPTQ: the calibration Hessian is not positive definite; use more calibration "
            "text (--calibration-samples) or a larger damping"
        ) from None
    hinv = hinv.float()
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            rounded = round_col(i1 + i, w1, i)
            err = (w1[:, i] - rounded) / h1[i, i]
            w1[:, i:] -= err[:, None] * h1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]


def gptq_quantize_weight(
    weight: Any,
    hessian: Any,
    *,
    group_size: int,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
) -> tuple[Any, Any, Any]:
    """GPTQ of one Linear weight [out, in] given the Hessian [in, in] of its inputs.

    Returns (codes uint8 [out, in], scales fp16 [out, in/g], zeros uint8 [out, in/g]).
    ``act_order`` quantizes the columns with the largest Hessian diagonal (the loudest
    inputs) first, so their error is spread over the most columns; the group grids are
    then fitted on the weights as given ("static groups"), so the stored layout stays in
    column order. Without it each group's grid is fitted when its first column comes up,
    on the columns as already corrected (``block_size`` is rounded to whole groups so a
    group never straddles two lazy blocks)."""
    import torch

    out_f, in_f = weight.shape
    n_groups = in_f // group_size
    scales = torch.zeros(out_f, n_groups)
    zeros = torch.zeros(out_f, n_groups)
    if act_order:  # static groups: fitted on the weights in column order, before sorting
        w0 = weight.detach().float().clone()
        w0[:, torch.diag(hessian) == 0] = 0.0  # as _prepare leaves them
        for gi in range(n_groups):
            sl = slice(gi * group_size, (gi + 1) * group_size)
            scales[:, gi], zeros[:, gi] = _group_params(w0[:, sl])
    w, h, perm = _prepare(weight, hessian, act_order)
    group_of = perm // group_size  # the group of the column now at each position
    codes = torch.zeros_like(w, dtype=torch.uint8)

    def round_col(col: int, w1: Any, i: int) -> Any:
        if not act_order and col % group_size == 0:
            s, z = _group_params(w1[:, i : i + group_size])
            scales[:, col // group_size], zeros[:, col // group_size] = s, z
        g = int(group_of[col])
        s, z = scales[:, g], zeros[:, g]
        q = _q4(w1[:, i], s, z)
        codes[:, col] = q.to(torch.uint8)
        return (q - z) * s

    block = max(group_size, block_size // group_size * group_size)
    _error_feedback(w, h, damp=damp, block=block, round_col=round_col)
    if act_order:  # back to column order
        codes = codes[:, torch.argsort(perm)]
    return codes.contiguous(), scales.half(), zeros.to(torch.uint8)


def gptq_int8_weight(
    weight: Any, hessian: Any, *, damp: float = 0.01, block_size: int = 128
) -> tuple[Any, Any]:
    """GPTQ rounding at int8 (symmetric, one scale a row, the layout of :func:`_int8`):
    (codes int8 [out, in], scales fp32 [out]). The scales are the round-to-nearest ones;
    only the choice of each code changes, so the error a rounding leaves on the layer's
    outputs (not on its weights) is what is minimised, act-order as in 4 bits."""
    import torch

    scales = (weight.detach().float().abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    w, h, perm = _prepare(weight, hessian, act_order=True)
    codes = torch.zeros_like(w, dtype=torch.int8)

    def round_col(col: int, w1: Any, i: int) -> Any:
        q = torch.clamp(torch.round(w1[:, i] / scales), -127, 127)
        codes[:, col] = q.to(torch.int8)
        return q * scales

    _error_feedback(w, h, damp=damp, block=block_size, round_col=round_col)
    return codes[:, torch.argsort(perm)].contiguous(), scales


# -- the model -------------------------------------------------------------------------------------
def _linears(model: Any) -> dict[str, Any]:
    import torch

    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _group_size(in_features: int, wanted: int, name: str) -> int:
    if in_features % wanted == 0:
        return wanted
    for g in (128, 64, 32):
        if g <= wanted and in_features % g == 0:
            return g
    raise UserError(
        f"{name}: {in_features} inputs are not a multiple of 32; gptq4 needs whole groups "
        "(use --method int8)"
    )


def _store_int4(
    tensors: dict[str, Any], name: str, codes: Any, scales: Any, zeros: Any, bias: Any
) -> None:
    from lmops.models.quantized import pack_int4

    tensors[f"{name}.qweight"] = pack_int4(codes)
    tensors[f"{name}.scales"] = scales.contiguous()
    tensors[f"{name}.zeros"] = zeros.contiguous()
    if bias is not None:
        tensors[f"{name}.bias"] = bias.detach().float().contiguous()


def _store_int8(tensors: dict[str, Any], name: str, weight: Any, bias: Any) -> None:
    q, s = _int8(weight.detach().float())
    tensors[f"{name}.qweight"] = q.contiguous()
    tensors[f"{name}.scales"] = s.contiguous()
    if bias is not None:
        tensors[f"{name}.bias"] = bias.detach().float().contiguous()


def _calibration_inputs(
    model: Any, ids: list[int], cfg: QuantizeConfig
) -> tuple[list[Any], list[dict[str, Any]]]:
    """The inputs (hidden states and keyword arguments) of the first decoder layer for
    each calibration sequence, captured by stopping the forward pass there."""
    import torch

    layers = model.model.layers

    class _Stop(Exception):
        pass

    hidden: list[Any] = []
    kwargs: list[dict[str, Any]] = []

    def grab(_mod: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        hidden.append(args[0] if args else kw.pop("hidden_states"))
        kwargs.append({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _Stop

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    n = min(cfg.calibration_samples, max(1, len(ids) // cfg.seq_len))
    try:
        with torch.no_grad():
            for k in range(n):
                chunk = ids[k * cfg.seq_len : (k + 1) * cfg.seq_len]
                with contextlib.suppress(_Stop):
                    model(input_ids=torch.tensor([chunk]), use_cache=False)
    finally:
        handle.remove()
    return hidden, kwargs


def _hessian_hook(
    hess: dict[str, Any], counts: dict[str, int], seen: dict[int, Any], name: str
) -> Callable[..., None]:
    """A forward hook adding 2 X Xᵀ of a Linear's inputs (summed in float64 over many
    tokens). Linears fed the same tensor (q/k/v, gate/up) share one product: ``seen`` maps
    an input's address to it, cleared by the caller between batches."""

    def hook(_m: Any, args: tuple[Any, ...], _out: Any) -> None:
        x = args[0].detach()
        key = x.data_ptr()
        if key not in seen:
            x2 = x.reshape(-1, x.shape[-1]).float()
            # x is kept referenced: its memory cannot be reused by another input this batch
            seen[key] = ((2.0 * x2.T @ x2).double(), x2.shape[0], x)
        xtx, n, _ = seen[key]
        hess[name] = hess.get(name, 0) + xtx
        counts[name] = counts.get(name, 0) + n

    return hook


def _is_decoder(model: Any) -> bool:
    return hasattr(model, "model") and hasattr(model.model, "layers")


def _gptq_model(
    model: Any, ids: list[int], cfg: QuantizeConfig, tick: Callable[[], None]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """GPTQ every Linear of every decoder layer, in order, at the method's width (gptq4: 4
    bits in groups; int8: per-row int8 codes chosen by GPTQ); for gptq4 with
    ``head_bits`` 4 the head too. Each layer is calibrated on the outputs of the layers
    before it as quantized, as in the reference."""
    import torch

    from lmops.models.quantized import dequantize_layer

    if not _is_decoder(model):
        raise UserError(
            f"gptq4 supports decoder models with model.layers (Llama, Qwen, Mistral...); "
            f"{type(model).__name__} is not one (use --method int8)"
        )
    tensors: dict[str, Any] = {}
    layers_spec: dict[str, dict[str, Any]] = {}

    def one(full: str, lin: Any, hess: Any) -> None:
        if cfg.method == "int8":
            q, s = gptq_int8_weight(lin.weight, hess, damp=cfg.damp, block_size=cfg.block_size)
            tensors[f"{full}.qweight"], tensors[f"{full}.scales"] = q, s
            if lin.bias is not None:
                tensors[f"{full}.bias"] = lin.bias.detach().float().contiguous()
            layers_spec[full] = _int8_spec(full, cfg)
            bits = 8
        else:
            g = _group_size(lin.in_features, cfg.group_size, full)
            codes, scales, zeros = gptq_quantize_weight(
                lin.weight, hess, group_size=g, damp=cfg.damp, block_size=cfg.block_size
            )
            _store_int4(tensors, full, codes, scales, zeros, lin.bias)
            layers_spec[full] = {"bits": 4, "group_size": g}
            bits = 4
        # later layers calibrate on what this one will compute
        with torch.no_grad():
            lin.weight.copy_(dequantize_layer(tensors, full, bits))
        tick()

    hidden, kwargs = _calibration_inputs(model, ids, cfg)
    for li, layer in enumerate(model.model.layers):
        linears = _linears(layer)
        hess: dict[str, Any] = {}
        counts: dict[str, int] = {}
        seen: dict[int, Any] = {}
        handles = [
            m.register_forward_hook(_hessian_hook(hess, counts, seen, n))
            for n, m in linears.items()
        ]
        with torch.no_grad():
            for h, kw in zip(hidden, kwargs, strict=True):
                seen.clear()
                layer(h, **kw)
        for hd in handles:
            hd.remove()
        for name, lin in linears.items():
            one(f"model.layers.{li}.{name}", lin, hess[name] / counts[name])
        with torch.no_grad():
            hidden = [_first(layer(h, **kw)) for h, kw in zip(hidden, kwargs, strict=True)]
    head = _head_name(model)
    norm = getattr(model.model, "norm", None)
    if cfg.method == "gptq4" and cfg.head_bits == 4 and head is not None and norm is not None:
        # the head is GPTQ'd too, on the final normed hidden states it will see: round to
        # nearest at 4 bits costs a 49k-row head (a fifth of a small model) far more.
        # (int8 keeps its head round-to-nearest: tied, the same codes are the embedding,
        # which GPTQ's output-side rounding would make worse.)
        with torch.no_grad():
            xs = [norm(h).reshape(-1, h.shape[-1]).double() for h in hidden]
        hess_head = sum(2.0 * x.T @ x for x in xs) / sum(x.shape[0] for x in xs)
        one(head, model.get_submodule(head), hess_head)
    return tensors, layers_spec


def _int8_spec(name: str, cfg: QuantizeConfig) -> dict[str, Any]:
    """The ``lmops_quant.json`` entry of an int8 layer: two activation passes where
    ``cfg.int8_two_pass`` names the layer (its last name part)."""
    leaf = name.rsplit(".", 1)[-1]
    return {"bits": 8, "act": "int8x2"} if leaf in cfg.int8_two_pass else {"bits": 8}


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def _input_absmax(model: Any, modules: list[Any], ids: list[int], cfg: QuantizeConfig) -> list[Any]:
    """Per input channel, the largest |activation| each of ``modules`` sees over the
    calibration chunks of ``ids`` (one vector per module, in order): what SmoothQuant's
    migration scales are computed from."""
    import torch

    amax: dict[int, Any] = {}

    def hook_for(i: int) -> Callable[..., None]:
        def hook(_m: Any, args: tuple[Any, ...]) -> None:
            a = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0).float()
            amax[i] = a if i not in amax else torch.maximum(amax[i], a)

        return hook

    handles = [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(modules)]
    n = min(cfg.calibration_samples, max(1, len(ids) // cfg.seq_len))
    try:
        with torch.no_grad():
            for k in range(n):
                chunk = ids[k * cfg.seq_len : (k + 1) * cfg.seq_len]
                model(input_ids=torch.tensor([chunk]), use_cache=False)
    finally:
        for hd in handles:
            hd.remove()
    return [amax[i] for i in range(len(modules))]


def _smooth_down_proj(model: Any, ids: list[int], cfg: QuantizeConfig) -> int:
    """SmoothQuant (Xiao et al. 2023) on each MLP's down_proj, whose inputs (gate * up) have
    a few channels hundreds of times louder than the rest: one int8 scale per token then
    leaves the quiet channels almost no levels. Channel j is divided by
    s_j = max|X_j|^α / max|W_j|^(1-α) (α = ``cfg.smooth_alpha``) in up_proj's output row and
    multiplied back in down_proj's column: the same function in fp32, activations and
    weights equally hard to quantize. Returns the number of MLPs smoothed."""
    import torch

    pairs = [
        (m.up_proj, m.down_proj)
        for m in model.modules()
        if hasattr(m, "up_proj") and hasattr(m, "down_proj")
    ]
    if not pairs:
        return 0
    amax = _input_absmax(model, [down for _, down in pairs], ids, cfg)
    with torch.no_grad():
        for i, (up, down) in enumerate(pairs):
            w_max = down.weight.abs().amax(dim=0).clamp(min=1e-5)
            x_max = amax[i].clamp(min=1e-5)
            s = (x_max**cfg.smooth_alpha / w_max ** (1 - cfg.smooth_alpha)).clamp(min=1e-5)
            up.weight.div_(s[:, None])
            if up.bias is not None:
                up.bias.div_(s)
            down.weight.mul_(s[None, :])
    return len(pairs)


def _smooth_norms(model: Any, ids: list[int], cfg: QuantizeConfig) -> int:
    """SmoothQuant folded into the RMSNorms: the inputs of q/k/v (input_layernorm's output)
    and of gate/up (post_attention_layernorm's) have a few loud channels, the same ones
    on every token (the norm's own weights make them). Channel j of the norm's weight is
    divided by s_j = max|X_j|^α / max|W_j|^(1-α) (W: the Linears it feeds, side by side)
    and their column j multiplied by it: the same function in fp32, no cost at run time,
    and one int8 scale a token no longer spent on one channel. Returns the norms smoothed."""
    import torch

    groups: list[tuple[Any, list[Any]]] = []
    for layer in getattr(getattr(model, "model", None), "layers", []):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        ln1, ln2 = (
            getattr(layer, n, None) for n in ("input_layernorm", "post_attention_layernorm")
        )
        if attn is not None and ln1 is not None and hasattr(attn, "q_proj"):
            groups.append((ln1, [attn.q_proj, attn.k_proj, attn.v_proj]))
        if mlp is not None and ln2 is not None and hasattr(mlp, "gate_proj"):
            groups.append((ln2, [mlp.gate_proj, mlp.up_proj]))
    if not groups:
        return 0
    amax = _input_absmax(model, [lins[0] for _, lins in groups], ids, cfg)
    a = cfg.smooth_alpha
    with torch.no_grad():
        for i, (norm, lins) in enumerate(groups):
            w_max = torch.cat([lin.weight for lin in lins]).abs().amax(dim=0).clamp(min=1e-5)
            s = (amax[i].clamp(min=1e-5) ** a / w_max ** (1 - a)).clamp(min=1e-5)
            norm.weight.div_(s)
            for lin in lins:
                lin.weight.mul_(s[None, :])
    return len(groups)


def _head_name(model: Any) -> str | None:
    head = model.get_output_embeddings()
    for name, mod in model.named_modules():
        if mod is head:
            return name
    return None


def quantize(
    model: Any,
    cfg: QuantizeConfig,
    *,
    calibration_ids: list[int] | None = None,
    tick: Callable[[], None] = lambda: None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Quantize ``model`` (fp32, changed in place for gptq4) as ``cfg`` says; returns the
    tensors of ``lmops_quant.safetensors`` and the body of ``lmops_quant.json``."""
    import torch

    head = _head_name(model)
    tied = bool(getattr(model.config, "tie_word_embeddings", False)) and head is not None
    if cfg.method == "gptq4":
        if not calibration_ids:
            raise UserError("gptq4 needs calibration text: pass --calibration DATASET")
        tensors, layers = _gptq_model(model, calibration_ids, cfg, tick)
    else:
        tensors, layers = {}, {}
        if calibration_ids and cfg.smooth:
            _smooth_down_proj(model, calibration_ids, cfg)
        if calibration_ids and cfg.smooth_norms:
            _smooth_norms(model, calibration_ids, cfg)
        if calibration_ids and cfg.int8_rounding == "gptq" and _is_decoder(model):
            tensors, layers = _gptq_model(model, calibration_ids, cfg, tick)
    rest = {n: m for n, m in _linears(model).items() if n not in layers}
    for name, lin in rest.items():
        bits = 8 if cfg.method == "int8" or name != head else cfg.head_bits
        if bits == 8:
            _store_int8(tensors, name, lin.weight, lin.bias)
            layers[name] = _int8_spec(name, cfg) if cfg.method == "int8" else {"bits": 8}
        else:
            g = _group_size(lin.in_features, cfg.group_size, name)
            _store_int4(tensors, name, *rtn_int4(lin.weight, g), lin.bias)
            layers[name] = {"bits": 4, "group_size": g}
        tick()
    embedding_ptr = model.get_input_embeddings().weight.data_ptr()
    for key, value in model.state_dict().items():
        if key.rsplit(".", 1)[0] in layers:
            continue
        if tied and head in layers and value.data_ptr() == embedding_ptr:
            continue  # the tied embedding matrix: rebuilt from the quantized head
        tensors[key] = value.detach().to(torch.float32).contiguous()
    body = {
        "format": "lmops-quant",
        "version": 1,
        "method": cfg.method,
        "layers": layers,
        "embeddings_from": head if tied and head in layers else None,
        "config": cfg.model_dump(),
    }
    return tensors, body


def bits_per_weight(tensors: dict[str, Any], body: dict[str, Any]) -> tuple[float, float]:
    """(all weights, layers at the method's own width): stored bits per weight, scales and
    zero points included. The second counts only the 4-bit layers of gptq4 (the 8-bit head
    is left out) and every layer of int8. Tied embeddings count once, as the model has
    them once; norm vectors and biases are not weights."""
    layers = body["layers"]
    width = 4 if body["method"] == "gptq4" else 8
    bits_all = weights_all = bits_own = weights_own = 0
    for key, t in tensors.items():
        bits = t.numel() * t.element_size() * 8
        owner, _, leaf = key.rpartition(".")
        if owner in layers:
            if leaf == "bias":
                continue
            n = 0
            if leaf == "qweight":
                n = t.numel() * (2 if layers[owner]["bits"] == 4 else 1)
            bits_all, weights_all = bits_all + bits, weights_all + n
            if layers[owner]["bits"] == width:
                bits_own, weights_own = bits_own + bits, weights_own + n
        elif t.dim() >= 2:
            bits_all, weights_all = bits_all + bits, weights_all + t.numel()
    return bits_all / max(weights_all, 1), bits_own / max(weights_own, 1)


def quantize_model(
    store: Any,
    model_ref: str,
    *,
    output: str,
    config: QuantizeConfig,
    calibration: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> QuantizeResult:
    """Quantize model ``model_ref`` (an asset ref or a folder) and register the result as
    model ``output`` with lineage to the source (role ``source``) and the calibration data
    (role ``calibration``). Nothing is registered when anything fails."""
    import torch
    from safetensors.torch import save_file

    from lmops.deploy._source import check_output, source_model
    from lmops.deploy._text import token_stream
    from lmops.models.loading import load_causal_lm, load_tokenizer, quiet_transformers
    from lmops.models.loading import resolve_local as resolve
    from lmops.models.quantized import QUANT_CONFIG, QUANT_WEIGHTS

    check_output(store, output)  # before any model is read (bitsandbytes' too)
    if config.method in ("bnb-nf4", "bnb-int8"):
        from lmops.deploy.bnb import quantize_bnb

        if calibration is not None:
            raise UserError(f"--method {config.method} is not calibrated; leave out --calibration")
        # the int8/gptq4 settings mean nothing to bitsandbytes: said, not silently dropped
        tuned = sorted(config.model_fields_set - {"method"})
        if tuned:
            raise UserError(
                f"--method {config.method} takes none of the int8/gptq4 settings; leave out "
                + ", ".join(f"--{name.replace('_', '-')}" for name in tuned)
            )
        return quantize_bnb(
            store, model_ref, output=output, method=config.method, progress=progress
        )
    quiet_transformers()
    if config.method == "gptq4" and calibration is None:
        raise UserError("--method gptq4 needs --calibration DATASET (text or rows to calibrate on)")
    # a bitsandbytes folder too: its Linear4bit/Linear8bitLt layers would be read as floats
    src, src_ref = source_model(
        model_ref, store, full_precision="quantize its source model instead"
    )
    cal_path: Path | None = None
    cal_ref: str | None = None
    if calibration is not None:
        cal_path, cal_ref = resolve(calibration, store, kind="dataset")
    with store.runs.track("quantize", config={**config.model_dump(), "model": model_ref}) as run:
        # asset inputs by ref; local folders and files recorded by content first
        named = [(src, src_ref, "source"), (cal_path, cal_ref, "calibration")]
        local = [(p, role) for p, r, role in named if p is not None and r is None]
        inputs = [(r, role) for _, r, role in named if r is not None]
        if local:
            inputs += store.assets.record_inputs(local, run_id=run.id)
        tok = load_tokenizer(src)
        model = load_causal_lm(src, dtype=torch.float32)
        ids = None
        if cal_path is not None:
            ids = token_stream(cal_path, tok, config.calibration_samples * config.seq_len)
        total = len(_linears(model))
        done = [0]

        def tick() -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        tensors, body = quantize(model, config, calibration_ids=ids, tick=tick)
        bpw, qbpw = bits_per_weight(tensors, body)
        body["source"] = src_ref or str(src)
        body["calibration"] = cal_ref or (str(cal_path) if cal_path else None)
        body["bits_per_weight"] = round(bpw, 4)
        tmp = owned_tempdir("lmops-quant-")
        try:
            model.config.save_pretrained(str(tmp))
            gen = getattr(model, "generation_config", None)
            if gen is not None:
                gen.save_pretrained(str(tmp))
            _copy_tokenizer(src, tmp)
            save_file(tensors, str(tmp / QUANT_WEIGHTS))
            (tmp / QUANT_CONFIG).write_text(json.dumps(body, indent=2))
            v = store.assets.register(
                "model",
                output,
                tmp,
                metadata={
                    "quantization": config.method,
                    "format": "lmops-quant",
                    "bits_per_weight": round(bpw, 4),
                    "quantized_bits_per_weight": round(qbpw, 4),
                    "source": body["source"],
                },
                inputs=inputs,
                run_id=run.id,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        store.runs.log_metrics(
            run.id, {"bits_per_weight": bpw, "quantized_bits_per_weight": qbpw}, 0
        )
    return QuantizeResult(
        path=store.assets.path(v.ref),
        method=config.method,
        bits_per_weight=bpw,
        quantized_bits_per_weight=qbpw,
        layers=len(body["layers"]),
        ref=v.ref,
    )


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def _copy_tokenizer(src: Path, dst: Path) -> None:
    """The source's tokenizer files as they are (not re-saved: byte-identical tokenization)."""
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
