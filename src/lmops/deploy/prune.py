"""Pruning: ``lmops deploy prune MODEL --method magnitude|wanda|layers|heads|channels``.

Unstructured (the weights keep their shapes, a fraction ``sparsity`` of each output row is
set to zero), over every linear layer inside the decoder blocks (embeddings and the LM head
stay whole, as in the Wanda paper):

- ``magnitude``: zero the weights with the smallest ``|W_ij|`` in each row;
- ``wanda`` (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"): the
  score is ``|W_ij| * ||X_j||_2``, the weight times the L2 norm of its input feature over
  the calibration tokens, compared within each output row. The norms come from one pass of
  the unpruned model (the paper's one-shot variant; it reports the sequential one within
  noise of it).

Structured (the model gets smaller; the result feeds ``lmops deploy distill``):

- ``layers``: drop ``drop`` decoder layers. With calibration data, the layers whose output
  differs least from their input (lowest angular distance, 1 - cos, of the hidden states:
  ShortGPT's block influence) go; without it, evenly spaced layers are kept.
- ``heads``: keep ``keep_kv_heads`` key/value groups per layer (with grouped-query
  attention a KV head and its query heads go together), chosen per layer by the norm of
  their attention output (calibration) times the norm of their ``o_proj`` columns;
- ``channels`` (width pruning, as in Minitron, Muralidharan et al. 2024): keep a fraction
  ``keep_ratio`` of the MLP's intermediate neurons in every layer (the config has one
  ``intermediate_size``, so every layer keeps the same number), the ones with the largest
  mean ``|act_fn(gate(x)) * up(x)|`` over the calibration tokens; their ``gate``/``up`` rows
  and ``down`` columns stay. With ``reconstruct`` (default) the kept ``down`` columns are then
  refitted by least squares so the MLP output on the calibration tokens changes as little as
  possible (the removed neurons' contribution projected onto the kept ones, from the Gram
  matrix of the activations, 1 % damping). With ``drop`` as well, that many layers go first
  (by block influence), then the channels: a depth + width mix.

The result is registered as a ``model`` with lineage to the model (``base_model``) and the
calibration data (``calibration``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmops.core.errors import UserError
from lmops.core.proc import temporary_owned_dir

__all__ = [
    "PruneResult",
    "PruneSpec",
    "count_params",
    "drop_layers",
    "evenly_spaced",
    "input_norms",
    "layer_influence",
    "load_model",
    "mlp_activations",
    "prune",
    "prune_channels",
    "prune_heads",
    "prune_unstructured",
    "save_model",
]


class PruneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    output: str
    method: Literal["magnitude", "wanda", "layers", "heads", "channels"]
    sparsity: float | None = Field(None, gt=0, lt=1)  # magnitude / wanda
    drop: int | None = Field(None, ge=1)  # layers (and channels: layers dropped first)
    keep_kv_heads: int | None = Field(None, ge=1)  # heads
    keep_ratio: float | None = Field(None, gt=0, lt=1)  # channels: MLP neurons kept
    reconstruct: bool = True  # channels: refit the kept down_proj columns
    calibration: str | None = None  # dataset ref or local text/rows
    samples: int = Field(32, ge=1)  # calibration blocks
    seq_len: int = Field(256, ge=8)

    @model_validator(mode="after")
    def _method_args(self) -> PruneSpec:
        if self.method in ("magnitude", "wanda") and self.sparsity is None:
            raise ValueError(f"--method {self.method} needs --sparsity (0-1)")
        if self.method == "wanda" and self.calibration is None:
            raise ValueError("--method wanda needs --calibration DATASET (activation norms)")
        if self.method == "layers" and self.drop is None:
            raise ValueError("--method layers needs --drop N (layers to remove)")
        if self.method == "heads" and self.keep_kv_heads is None:
            raise ValueError("--method heads needs --keep-kv-heads N")
        if self.method == "channels" and self.keep_ratio is None:
            raise ValueError("--method channels needs --keep-ratio R (0-1, MLP neurons kept)")
        if self.method == "channels" and self.calibration is None:
            raise ValueError("--method channels needs --calibration DATASET (activations)")
        return self


class PruneResult(BaseModel):
    ref: str
    method: str
    params_before: int
    params_after: int
    sparsity: float  # zeros among the pruned layers' weights (unstructured), else 0
    dropped: list[int] = Field(default_factory=list)  # layers removed (layers, channels)
    intermediate_size: int | None = None  # MLP width after pruning (method channels)


def count_params(model: Any) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _blocks(model: Any) -> Any:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UserError(
            f"{type(model).__name__}: no decoder layers at model.layers; pruning supports "
            "Llama-style models (Llama, Qwen2, Mistral, SmolLM)"
        )
    return layers


def _linears(model: Any) -> dict[str, Any]:
    import torch

    return {
        f"layers.{i}.{name}": m
        for i, layer in enumerate(_blocks(model))
        for name, m in layer.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


def _run_with_input_hooks(
    model: Any, blocks: Any, hooks: list[tuple[Any, Any]], batch: int
) -> None:
    """Run the calibration ``blocks`` through ``model`` (no grad, ``batch`` blocks at a
    time) with each ``(module, fn)`` of ``hooks`` as a forward pre-hook, removed after."""
    import torch

    handles = [m.register_forward_pre_hook(fn) for m, fn in hooks]
    try:
        with torch.no_grad():
            for i in range(0, len(blocks), batch):
                model(input_ids=blocks[i : i + batch], use_cache=False)
    finally:
        for h in handles:
            h.remove()


def input_norms(model: Any, blocks: Any, batch: int = 4) -> dict[str, Any]:
    """``||X_j||_2`` over every calibration token, for each input feature j of each linear
    layer in the decoder blocks (one forward pass, hooks on the inputs)."""

    sums: dict[str, Any] = {}

    def hook(name: str) -> Any:
        def fn(_m: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sq = (x * x).sum(0)
            sums[name] = sq if name not in sums else sums[name] + sq

        return fn

    _run_with_input_hooks(
        model, blocks, [(m, hook(name)) for name, m in _linears(model).items()], batch
    )
    return {k: v.sqrt() for k, v in sums.items()}


def prune_unstructured(model: Any, sparsity: float, norms: dict[str, Any] | None = None) -> float:
    """Zero ``floor(sparsity * in_features)`` weights in every row of every decoder linear
    layer: the smallest ``|W|`` (``norms`` None) or ``|W| * ||X||`` (Wanda). Returns the
    fraction of zeros over those layers."""
    import torch

    zeros = total = 0
    with torch.no_grad():
        for name, m in _linears(model).items():
            w = m.weight
            score = w.abs().float()
            if norms is not None:
                score = score * norms[name].to(score.device)[None, :]
            k = int(w.shape[1] * sparsity)
            if k:
                idx = torch.topk(score, k, dim=1, largest=False).indices
                w.scatter_(1, idx, 0.0)
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / max(1, total)


def evenly_spaced(n_layers: int, keep: int) -> list[int]:
    """``keep`` layer indices spread over ``n_layers``, always the first and the last."""
    if not 1 <= keep <= n_layers:
        raise UserError(f"cannot keep {keep} of {n_layers} layers")
    if keep == 1:
        return [0]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def layer_influence(model: Any, blocks: Any, batch: int = 4) -> list[float]:
    """Per decoder layer, the mean angular distance (1 - cos) between the hidden state it
    receives and the one it returns, over the calibration tokens: low = the layer changes
    little and is the first to drop."""
    import torch

    n = len(_blocks(model))
    acc = [0.0] * n
    count = 0
    with torch.no_grad():
        for i in range(0, len(blocks), batch):
            hs = model(
                input_ids=blocks[i : i + batch], output_hidden_states=True, use_cache=False
            ).hidden_states
            # hidden_states[0] is the embeddings; [j + 1] the output of layer j (the last
            # one after the final norm in HF models, so its influence is over-stated: it
            # is kept, as ShortGPT keeps it in practice)
            for j in range(n):
                a, b = hs[j].float(), hs[j + 1].float()
                cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
                acc[j] += float((1 - cos).sum())
            count += hs[0].shape[0] * hs[0].shape[1]
    return [a / count for a in acc]


def drop_layers(model: Any, keep: list[int]) -> Any:
    """Keep only decoder layers ``keep`` (in order), renumbering their KV-cache slots and
    the config (``num_hidden_layers`` and, where the model has one, ``layer_types``)."""
    import torch

    layers = _blocks(model)
    if not keep or sorted(set(keep)) != list(keep) or keep[-1] >= len(layers):
        raise UserError(f"layers to keep must be distinct and below {len(layers)}: {keep}")
    kept = [layers[i] for i in keep]
    for new, layer in enumerate(kept):
        for sub in layer.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new
    model.model.layers = torch.nn.ModuleList(kept)
    cfg = model.config
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)
    return model


def _slice_linear(m: Any, rows: Any = None, cols: Any = None) -> Any:
    import torch

    w = m.weight.detach()
    b = m.bias.detach() if m.bias is not None else None
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        w = w[:, cols]
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def prune_heads(model: Any, keep_kv: int, blocks: Any | None = None, batch: int = 4) -> Any:
    """Keep ``keep_kv`` key/value groups (each with its query heads) in every layer, the
    most important per layer (see the module docstring)."""
    import torch

    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    group = n_heads // n_kv
    if not 1 <= keep_kv < n_kv:
        raise UserError(f"--keep-kv-heads must be between 1 and {n_kv - 1} (the model has {n_kv})")
    layers = _blocks(model)
    act: list[Any] = [torch.ones(n_heads) for _ in layers]
    if blocks is not None:
        sums = [torch.zeros(n_heads) for _ in layers]
        hooks = []
        for li, layer in enumerate(layers):

            def fn(_m: Any, args: tuple[Any, ...], li: int = li) -> None:
                x = args[0].detach().float().reshape(-1, n_heads, head_dim)
                sums[li] += (x * x).sum(dim=(0, 2))

            hooks.append((layer.self_attn.o_proj, fn))
        _run_with_input_hooks(model, blocks, hooks, batch)
        act = [s.sqrt() for s in sums]
    for li, layer in enumerate(layers):
        attn = layer.self_attn
        wo = attn.o_proj.weight.detach().float().reshape(-1, n_heads, head_dim)
        head_score = act[li] * wo.pow(2).sum(dim=(0, 2)).sqrt()
        kv_score = head_score.reshape(n_kv, group).sum(1)
        kv_keep = sorted(torch.topk(kv_score, keep_kv).indices.tolist())
        q_heads = [k * group + g for k in kv_keep for g in range(group)]
        q_rows = torch.tensor([h * head_dim + d for h in q_heads for d in range(head_dim)])
        kv_rows = torch.tensor([k * head_dim + d for k in kv_keep for d in range(head_dim)])
        attn.q_proj = _slice_linear(attn.q_proj, rows=q_rows)
        attn.k_proj = _slice_linear(attn.k_proj, rows=kv_rows)
        attn.v_proj = _slice_linear(attn.v_proj, rows=kv_rows)
        attn.o_proj = _slice_linear(attn.o_proj, cols=q_rows)
        for name in ("num_heads", "num_attention_heads"):
            if hasattr(attn, name):
                setattr(attn, name, keep_kv * group)
        for name in ("num_key_value_heads",):
            if hasattr(attn, name):
                setattr(attn, name, keep_kv)
    cfg.head_dim = head_dim  # no longer hidden_size / num_attention_heads
    cfg.num_attention_heads = keep_kv * group
    cfg.num_key_value_heads = keep_kv
    return model


def mlp_activations(
    model: Any, blocks: Any, batch: int = 4, gram: bool = True
) -> tuple[list[Any], list[Any] | None]:
    """Per decoder layer, over every calibration token, the MLP's intermediate activations
    ``a = act_fn(gate(x)) * up(x)`` (the input of ``down_proj``): their mean ``|a_i|`` [I]
    and, with ``gram``, the Gram matrix ``sum a a^T`` [I, I] (float64) for the refit."""

    layers = _blocks(model)
    absum: list[Any] = [None] * len(layers)
    grams: list[Any] = [None] * len(layers)
    count = [0]
    hooks = []
    for li, layer in enumerate(layers):

        def fn(_m: Any, args: tuple[Any, ...], li: int = li) -> None:
            a = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            s = a.abs().sum(0).double()
            absum[li] = s if absum[li] is None else absum[li] + s
            if gram:  # float32 within a batch (fast), float64 across batches
                g = (a.T @ a).double()
                grams[li] = g if grams[li] is None else grams[li] + g
            if li == 0:
                count[0] += a.shape[0]

        hooks.append((layer.mlp.down_proj, fn))
    _run_with_input_hooks(model, blocks, hooks, batch)
    means = [(s / count[0]).float() for s in absum]
    return means, (grams if gram else None)


def prune_channels(
    model: Any, keep: int, blocks: Any, reconstruct: bool = True, damp: float = 0.01
) -> Any:
    """Keep the ``keep`` intermediate MLP neurons with the largest mean ``|activation|`` in
    every layer (``gate``/``up`` rows, ``down`` columns) and set ``intermediate_size``; with
    ``reconstruct`` the kept ``down`` columns are refitted (least squares over the
    calibration activations): ``W_K + W_R G_RK (G_KK + damp * mean(diag G_KK) I)^-1``."""
    import torch

    layers = _blocks(model)
    size = layers[0].mlp.down_proj.in_features
    if any(layer.mlp.down_proj.in_features != size for layer in layers):
        raise UserError("--method channels: the layers' MLP widths differ; prune the original")
    if not 1 <= keep < size:
        raise UserError(f"--keep-ratio keeps {keep} of {size} MLP neurons; keep 1 to {size - 1}")
    means, grams = mlp_activations(model, blocks, gram=reconstruct)
    for li, layer in enumerate(layers):
        mlp = layer.mlp
        kept = torch.topk(means[li], keep).indices.sort().values
        if reconstruct:
            assert grams is not None
            removed = torch.ones(size, dtype=torch.bool)
            removed[kept] = False
            g = grams[li]
            g_kk = g[kept][:, kept]
            eye = torch.eye(keep, dtype=g.dtype)
            # X [keep, removed] = G_KK^-1 G_KR: each removed neuron's activation as the
            # least-squares mix of the kept ones; down's kept columns take it over
            x = torch.linalg.solve(g_kk + damp * g_kk.diagonal().mean() * eye, g[kept][:, removed])
            w = mlp.down_proj.weight.detach().double()
            new_w = w[:, kept] + w[:, removed] @ x.T
            with torch.no_grad():
                mlp.down_proj.weight[:, kept] = new_w.to(mlp.down_proj.weight.dtype)
        mlp.gate_proj = _slice_linear(mlp.gate_proj, rows=kept)
        mlp.up_proj = _slice_linear(mlp.up_proj, rows=kept)
        mlp.down_proj = _slice_linear(mlp.down_proj, cols=kept)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = keep
    model.config.intermediate_size = keep
    return model


def load_model(model_ref: str, store: Any, run_id: str) -> tuple[Any, Any, Path, list[Any]]:
    """(model fp32, tokenizer, folder, lineage inputs) of a model ref or local folder."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmops.models.loading import load_merged, load_tokenizer, quiet_transformers, resolve_local

    quiet_transformers()
    path, version = resolve_local(model_ref, store, kind="model")
    inputs = (
        [(version, "base_model")]
        if version
        else store.assets.record_inputs([(path, "base_model")], run_id=run_id)
    )
    if (path / "adapter_config.json").exists():
        model = load_merged(path, store=store, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.eval(), load_tokenizer(path), path, inputs


def save_model(model: Any, tokenizer: Any, out: Path) -> Path:
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def _drop(model: Any, drop: int, blocks: Any | None) -> list[int]:
    """Drop ``drop`` layers (lowest block influence, else evenly spaced); the dropped ones."""
    n = len(_blocks(model))
    if drop >= n:
        raise UserError(f"--drop {drop}: the model has {n} layers; keep at least one")
    if blocks is not None:
        score = layer_influence(model, blocks)
        dropped = sorted(sorted(range(n - 1), key=lambda i: score[i])[:drop])
        keep = [i for i in range(n) if i not in dropped]
    else:
        keep = evenly_spaced(n, n - drop)
        dropped = [i for i in range(n) if i not in keep]
    drop_layers(model, keep)
    return dropped


def prune(spec: PruneSpec, *, store: Any | None = None) -> PruneResult:
    """Run one pruning job and register the pruned model (see the module docstring)."""

    import torch

    from lmops.deploy._source import check_output
    from lmops.deploy._text import resolve_source, token_blocks

    if store is None:
        from lmops.store import Store

        store = Store(origin="cli")
    check_output(store, spec.output)
    torch.manual_seed(0)
    with store.runs.track("prune", name=spec.output, config=spec.model_dump()) as run:
        model, tok, _path, inputs = load_model(spec.model, store, run.id)
        blocks = None
        if spec.calibration is not None:
            calib, calib_inputs = resolve_source(spec.calibration, store, run.id, "calibration")
            inputs += calib_inputs
            blocks = token_blocks(calib, tok, seq_len=spec.seq_len, max_blocks=spec.samples)
        before = count_params(model)
        sparsity = 0.0
        dropped: list[int] = []
        if spec.method in ("magnitude", "wanda"):
            assert spec.sparsity is not None
            norms = input_norms(model, blocks) if spec.method == "wanda" else None
            sparsity = prune_unstructured(model, spec.sparsity, norms)
        elif spec.method in ("layers", "channels"):
            if spec.drop is not None:
                dropped = _drop(model, spec.drop, blocks)
            if spec.method == "channels":
                assert spec.keep_ratio is not None and blocks is not None
                size = model.config.intermediate_size
                prune_channels(model, round(spec.keep_ratio * size), blocks, spec.reconstruct)
        else:
            assert spec.keep_kv_heads is not None
            prune_heads(model, spec.keep_kv_heads, blocks)
        after = count_params(model)
        store.runs.log_metrics(
            run.id, {"params_before": before, "params_after": after, "sparsity": sparsity}, 0
        )
        with temporary_owned_dir("lmops-prune-") as tmp:
            out = save_model(model, tok, Path(tmp) / spec.output)
            v = store.assets.register(
                "model",
                spec.output,
                out,
                metadata={
                    "pruned": spec.method,
                    "sparsity": round(sparsity, 4),
                    "params": after,
                    "params_before": before,
                    "dropped_layers": dropped,
                    "intermediate_size": model.config.intermediate_size,
                    "source": spec.model,
                },
                inputs=inputs,
                run_id=run.id,
            )
    return PruneResult(
        ref=v.ref,
        method=spec.method,
        params_before=before,
        params_after=after,
        sparsity=round(sparsity, 4),
        dropped=dropped,
        intermediate_size=model.config.intermediate_size if spec.method == "channels" else None,
    )
