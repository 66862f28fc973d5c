"""One report over model variants: ``lmops deploy report MODEL...``.

For each variant (a Hugging Face folder, a quantized folder of ``lmops deploy quantize``,
a GGUF of ``lmops deploy export`` / ``lmops assets import``, or an ONNX folder of
``lmops deploy export --format onnx``):

- ``size``: bytes on disk of the variant (every file of the folder, or the GGUF file);
- ``bits_per_weight``: stored bits per weight of its matrices (scales and zero points
  included; norm vectors and biases are not weights); tied embeddings count once (an ONNX
  int8 graph stores a tied embedding twice, fp32 for the lookup and an int8 copy as the
  output projection: the bits of both count, its weights once);
- ``perplexity`` on a reference text: non-overlapping windows of ``window`` tokens, the
  mean negative log-likelihood of every token but each window's first; each variant uses
  its own tokenizer (a GGUF's as transformers rebuilds it). GGUF weights are dequantized by
  transformers, so this measures the file's weights, not llama.cpp's arithmetic; an ONNX
  graph runs in onnxruntime (one prefill a window), so its int8 arithmetic is measured too;
- ``tokens_per_s``: greedy decode speed, one sequence of the chat prompt, after its first
  token: in the built-in engine (``lmops serve``'s), or onnxruntime with the KV cache
  (:class:`~lmops.deploy.onnx.OnnxDecoder`) for ONNX; ``None`` for GGUF (llama.cpp runs
  those, not lmops). Threads: whatever torch has (benchmarks set 1; onnxruntime gets the
  same number).

Written as ``report.json``, ``report.md`` and ``report.png`` (bits/weight vs perplexity,
tokens/s) in a ``deploy_report`` asset with lineage to every variant (role ``variant``).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from lmops.core.errors import UserError
from lmops.core.proc import owned_tempdir
from lmops.store import register_kind

__all__ = [
    "ReportConfig",
    "ReportResult",
    "VariantRow",
    "bits_per_weight_of",
    "deploy_report",
    "engine_tokens_per_s",
    "load_variant",
    "onnx_tokens_per_s",
    "perplexity",
    "reference_text",
]

register_kind("deploy_report")

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


class ReportConfig(BaseModel):
    text: str | None = Field(None, description="dataset asset or file; default tinyshakespeare")
    max_tokens: int = Field(4096, ge=64, description="reference tokens for perplexity")
    window: int = Field(512, ge=16, description="tokens per perplexity window")
    gen_tokens: int = Field(64, ge=0, description="tokens generated for tokens/s; 0 skips it")


class VariantRow(BaseModel):
    model: str  # the ref (or path) as given
    ref: str | None
    format: str  # hf | lmops-quant | bnb | gguf | onnx
    method: str | None  # fp32/bf16 dtype, int8, gptq4, gguf quant, onnx --quant
    size: int
    bits_per_weight: float
    perplexity: float | None
    ppl_delta_pct: float | None  # vs the first variant
    tokens_per_s: float | None
    speedup: float | None  # tokens/s vs the first variant


class ReportResult(BaseModel):
    rows: list[VariantRow]
    reference: str
    tokens: int
    ref: str | None = None
    path: Path | None = None


# -- measurements ----------------------------------------------------------------------------------
def _folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _is_onnx(path: Path) -> bool:
    from lmops.deploy.onnx import ONNX_FILE

    return path.is_dir() and (path / ONNX_FILE).is_file()


def bits_per_weight_of(path: Path) -> tuple[str, str | None, float]:
    """(format, method, bits per weight) of a variant at ``path``."""
    from lmops.deploy.gguf import gguf_file_of
    from lmops.models.quantized import is_quantized, read_quant_config

    if _is_onnx(path):
        from lmops.deploy.onnx import _require_exporter, onnx_weight_bits

        _require_exporter(f"measuring the ONNX folder {path}")
        quant, bits, n = onnx_weight_bits(path)
        return "onnx", quant, bits / max(n, 1)
    g = gguf_file_of(path)
    if g is not None:
        import gguf

        reader = gguf.GGUFReader(str(g))
        bits = n = 0
        for t in reader.tensors:
            if len(t.shape) >= 2 and int(min(t.shape)) > 1:
                bits += int(t.n_bytes) * 8
                n += int(t.n_elements)
        ftype = reader.get_field("general.file_type")
        method = None
        if ftype is not None:
            try:
                method = gguf.LlamaFileType(int(ftype.contents())).name.removeprefix("MOSTLY_")
            except ValueError:
                method = str(ftype.contents())
        return "gguf", method and method.lower(), bits / max(n, 1)
    from lmops.models.bnb import bnb_config_of

    bnb = bnb_config_of(path)
    if bnb is not None:
        return _bnb_bits(path, bnb)
    if is_quantized(path):
        cfg = read_quant_config(path)
        return "lmops-quant", str(cfg["method"]), float(cfg.get("bits_per_weight") or math.nan)
    from safetensors import safe_open

    from lmops.core.modelfiles import weight_files

    bits = n = 0
    dtypes: set[str] = set()
    for f in weight_files(path):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                sl = st.get_slice(k)
                shape = sl.get_shape()
                if len(shape) >= 2:
                    count = math.prod(shape)
                    size = {"F32": 32, "F16": 16, "BF16": 16, "F64": 64, "I8": 8, "U8": 8}
                    bits += count * size.get(sl.get_dtype(), 32)
                    n += count
                    dtypes.add(sl.get_dtype().lower())
    if not n:
        raise UserError(f"{path}: no .safetensors weights to measure")
    return "hf", "/".join(sorted(dtypes)), bits / n


def _bnb_bits(path: Path, q: dict[str, Any]) -> tuple[str, str, float]:
    """A bitsandbytes folder (``q``: its ``quantization_config``): its method, and bits
    per weight counted as ``deploy quantize`` counted them (packed weights as their
    ``in x out`` elements, quantization state included), which needs the loaded layers;
    the safetensors count of an ``hf`` folder would take the packed uint8 rows for the
    weights (10.9 bits against 8.2 on a tiny NF4 model)."""
    from lmops.deploy.bnb import bnb_bits_per_weight
    from lmops.models.bnb import load_bnb

    method = f"bnb-{q.get('bnb_4bit_quant_type') or 'nf4'}" if q.get("load_in_4bit") else "bnb-int8"
    bits, _ = bnb_bits_per_weight(load_bnb(path), path)
    return "bnb", method, bits


def load_variant(path: Path) -> tuple[Any, Any]:
    """(model in eval mode on CPU, tokenizer) of a variant, whatever its format; an ONNX
    folder's model is an :class:`~lmops.deploy.onnx.OnnxDecoder` (torch's thread count),
    which :func:`perplexity` takes as it takes a transformers model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmops.deploy._gguf_dtype import quiet_gguf_load
    from lmops.deploy.gguf import gguf_file_of
    from lmops.models.loading import load_causal_lm, load_tokenizer

    if _is_onnx(path):
        from lmops.deploy.onnx import OnnxDecoder

        return OnnxDecoder(path, threads=torch.get_num_threads()), load_tokenizer(path)
    g = gguf_file_of(path)
    if g is not None:
        with quiet_gguf_load():  # no tqdm bar of transformers' in the report's output
            model = AutoModelForCausalLM.from_pretrained(
                str(g.parent), gguf_file=g.name, dtype=torch.float32
            )
            tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
        return model.eval(), tok
    return load_causal_lm(path, dtype=torch.float32), load_tokenizer(path)


def perplexity(model: Any, ids: list[int], window: int = 512) -> float:
    """exp(mean NLL) over non-overlapping windows of ``ids`` (each window's first token is
    context only). ``model`` is a transformers causal LM or an
    :class:`~lmops.deploy.onnx.OnnxDecoder` (one onnxruntime prefill a window)."""
    import torch

    from lmops.deploy.onnx import OnnxDecoder

    def logits_of(x: torch.Tensor) -> torch.Tensor:  # [1, seq] -> [seq, vocab]
        if isinstance(model, OnnxDecoder):
            return torch.from_numpy(model.logits(x[0].tolist()))
        return model(input_ids=x).logits[0]

    nll = 0.0
    count = 0
    with torch.no_grad():
        for i in range(0, len(ids) - 1, window):
            x = torch.tensor([ids[i : i + window]])
            if x.shape[1] < 2:
                break
            logits = logits_of(x)[:-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
            count += x.shape[1] - 1
    return math.exp(nll / max(count, 1))


def engine_tokens_per_s(path: Path, n_tokens: int, prompt: str = PROMPT) -> float:
    """Greedy decode tokens/s of the built-in engine on ``path``: one sequence of up to
    ``n_tokens``, timed from its first generated token to its last."""
    import asyncio

    from lmops.models.engine import Engine
    from lmops.models.types import Delta, Done, GenRequest

    engine = Engine(path, device="cpu", max_running=1)
    try:
        ids = engine.encode_chat([{"role": "user", "content": prompt}])

        async def run() -> tuple[int, float]:
            first: float | None = None
            tokens = 0
            req = GenRequest("report", prompt_ids=ids, max_tokens=n_tokens, temperature=0.0)
            async for ev in engine.generate(req):
                if isinstance(ev, Delta) and first is None:
                    first = time.perf_counter()
                if isinstance(ev, Done):
                    tokens = ev.completion_tokens
            return tokens, time.perf_counter() - (first or time.perf_counter())

        tokens, elapsed = asyncio.run(run())
    finally:
        engine.close()
    if tokens < 2 or elapsed <= 0:
        raise UserError(f"{path}: generated {tokens} tokens; cannot time the engine")
    return (tokens - 1) / elapsed


def onnx_tokens_per_s(path: Path, n_tokens: int, prompt: str = PROMPT) -> float:
    """Greedy decode tokens/s of an ONNX folder in onnxruntime (KV cache, torch's thread
    count): the chat prompt as the engine builds it, timed as
    :func:`engine_tokens_per_s` times the engine (first generated token to last)."""
    import torch

    from lmops.deploy.onnx import OnnxDecoder
    from lmops.models.loading import load_tokenizer

    tok = load_tokenizer(path)
    messages = [{"role": "user", "content": prompt}]
    if tok.chat_template:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    dec = OnnxDecoder(path, threads=torch.get_num_threads())
    times: list[float] = []
    dec.generate(
        ids, n_tokens, tok.eos_token_id, on_token=lambda _: times.append(time.perf_counter())
    )
    if len(times) < 2 or times[-1] <= times[0]:
        raise UserError(f"{path}: generated {len(times)} tokens; cannot time onnxruntime")
    return (len(times) - 1) / (times[-1] - times[0])


def reference_text(store: Any, text: str | None) -> tuple[Path, str | None, str]:
    """(path, asset ref or None, label) of the reference text: ``text`` (a dataset asset or
    a file), else the last 60,000 characters of the shared tinyshakespeare."""
    from lmops.core.config import find_shared_datasets
    from lmops.models.loading import resolve_local

    if text is not None:
        path, ref = resolve_local(text, store, kind="dataset")
        return path, ref, ref or str(path)
    shared = find_shared_datasets()
    src = shared / "tinyshakespeare" / "input.txt" if shared else None
    if src is None or not src.is_file():
        raise UserError(
            "no reference text: pass --text DATASET (the default, tinyshakespeare from the "
            "shared datasets, was not found; set LMOPS_SHARED_DATASETS)"
        )
    return src, None, "tinyshakespeare (last 60,000 chars)"


def _reference_ids(path: Path, tok: Any, label: str, max_tokens: int) -> list[int]:
    from lmops.deploy._text import token_stream

    if label.startswith("tinyshakespeare"):
        chars = path.read_text(encoding="utf-8")[-60_000:]
        return list(tok(chars, add_special_tokens=False)["input_ids"][:max_tokens])
    return token_stream(path, tok, max_tokens)


# -- the report ------------------------------------------------------------------------------------
def measure(
    store: Any, models: list[str], config: ReportConfig, progress: Callable[[int, int], None]
) -> tuple[list[VariantRow], list[tuple[str, str]], str, int]:
    """Every variant's row; the (ref, role) inputs (assets and recorded local paths)."""
    import gc

    from lmops.models.loading import resolve_local

    text_path, text_ref, label = reference_text(store, config.text)
    rows: list[VariantRow] = []
    inputs: list[tuple[str, str]] = [(text_ref, "reference_text")] if text_ref else []
    local: list[tuple[Path, str]] = [] if text_ref else [(text_path, "reference_text")]
    n_tokens = 0
    for i, m in enumerate(models):
        path, ref = resolve_local(m, store, kind="model", check=False)
        if ref:
            inputs.append((ref, "variant"))
        else:
            local.append((path, "variant"))
        fmt, method, bpw = bits_per_weight_of(path)
        model, tok = load_variant(path)
        ids = _reference_ids(text_path, tok, label, config.max_tokens)
        n_tokens = max(n_tokens, len(ids))
        ppl = perplexity(model, ids, config.window)
        del model
        gc.collect()
        tps = None
        if fmt == "onnx" and config.gen_tokens:
            tps = onnx_tokens_per_s(path, config.gen_tokens)
        elif fmt != "gguf" and config.gen_tokens:
            tps = engine_tokens_per_s(path, config.gen_tokens)
        base = rows[0] if rows else None
        rows.append(
            VariantRow(
                model=m,
                ref=ref,
                format=fmt,
                method=method,
                size=_folder_size(path),
                bits_per_weight=bpw,
                perplexity=ppl,
                ppl_delta_pct=(
                    100.0 * (ppl / base.perplexity - 1) if base and base.perplexity else None
                ),
                tokens_per_s=tps,
                speedup=(tps / base.tokens_per_s if base and base.tokens_per_s and tps else None),
            )
        )
        progress(i + 1, len(models))
    if local:
        inputs += store.assets.record_inputs(local)
    return rows, inputs, label, n_tokens


def _plot(rows: list[VariantRow], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        if r.perplexity is not None:
            a.scatter(r.bits_per_weight, r.perplexity)
            a.annotate(r.model, (r.bits_per_weight, r.perplexity), fontsize=8)
    a.set_xlabel("bits per weight")
    a.set_ylabel("perplexity (reference text)")
    a.set_title("size vs quality")
    timed = [r for r in rows if r.tokens_per_s is not None]
    b.barh([r.model for r in timed], [r.tokens_per_s or 0.0 for r in timed])
    b.set_xlabel("tokens/s (greedy: built-in engine; onnxruntime for ONNX)")
    b.set_title("speed")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _markdown(rows: list[VariantRow], label: str) -> str:
    lines = [
        f"# Deploy report\n\nReference text: {label}\n",
        "| model | format | method | size (MB) | bits/weight | perplexity | vs first "
        "| tokens/s | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in rows:
        lines.append(
            f"| {r.model} | {r.format} | {r.method or '-'} | {r.size / 1e6:.1f} "
            f"| {r.bits_per_weight:.2f} | {f(r.perplexity, '.3f')} | {f(r.ppl_delta_pct, '+.2f')}% "
            f"| {f(r.tokens_per_s, '.1f')} | {f(r.speedup, '.2f')}x |"
        )
    return "\n".join(lines) + "\n"


def deploy_report(
    store: Any,
    models: list[str],
    *,
    output: str = "deploy-report",
    config: ReportConfig | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> ReportResult:
    """Measure ``models`` and register the report as ``deploy_report`` asset ``output``
    (lineage: every variant, role ``variant``, and the reference text)."""
    from lmops.deploy._source import check_output
    from lmops.models.loading import quiet_transformers

    if not models:
        raise UserError("name at least one model variant to report on")
    check_output(store, output, "deploy_report")
    config = config or ReportConfig()
    quiet_transformers()
    with store.runs.track("deploy_report", config={**config.model_dump(), "models": models}) as run:
        rows, inputs, label, n_tokens = measure(store, models, config, progress)
        tmp = owned_tempdir("lmops-deploy-report-")
        try:
            result = ReportResult(rows=rows, reference=label, tokens=n_tokens)
            (tmp / "report.json").write_text(result.model_dump_json(indent=2))
            (tmp / "report.md").write_text(_markdown(rows, label))
            _plot(rows, tmp / "report.png")
            v = store.assets.register(
                "deploy_report",
                output,
                tmp,
                metadata={"variants": len(rows), "reference": label, "tokens": n_tokens},
                inputs=inputs,
                run_id=run.id,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for i, r in enumerate(rows):
            store.runs.log_metrics(
                run.id,
                {
                    k: v
                    for k, v in {
                        "bits_per_weight": r.bits_per_weight,
                        "perplexity": r.perplexity,
                        "tokens_per_s": r.tokens_per_s,
                    }.items()
                    if v is not None
                },
                i,
            )
    result.ref = v.ref
    result.path = store.assets.path(v.ref)
    return result
