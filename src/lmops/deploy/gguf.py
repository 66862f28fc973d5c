"""GGUF in and out, in Python: no llama.cpp checkout.

``import_gguf`` (``lmops assets import gguf FILE --name NAME [--dtype auto]``): transformers'
GGUF loader reads the file and dequantizes it, to the precision the file carries (``auto``:
F16 -> float16, BF16 -> bfloat16, F32 -> float32, fp16-scaled block quants -> float16;
:mod:`lmops.deploy._gguf_dtype`); the model and its tokenizer (chat template included) are
saved as a normal Hugging Face folder and registered as a ``model`` asset whose lineage
holds the GGUF file as an external reference (role ``gguf``) and whose metadata keeps its
sha256, so every stage (train, eval, serve) can use it.

``export_gguf`` (``lmops deploy export MODEL --format gguf --quant ...``): writes a GGUF
file with the ``gguf`` package as llama.cpp's ``convert_hf_to_gguf.py`` does for the
``llama`` (SmolLM2, Llama 2/3.x, TinyLlama; Mistral without a sliding window, written as
llama as llama.cpp does), ``qwen2`` (Qwen2, Qwen2.5) and ``qwen3`` architectures:

- metadata ``{arch}.*`` (context, widths, heads, rope, rms eps), ``general.file_type``;
- the tokenizer (:mod:`lmops.deploy.gguf_vocab`): byte-level BPE as ``gpt2`` with its
  pre-tokenizer's name and merges, or SentencePiece BPE as ``llama`` with scores and token
  types; ids, add_bos and the chat template;
- tensors under llama.cpp's names; for ``llama``, q_proj/k_proj rows permuted from Hugging
  Face's rotate-half order to llama.cpp's interleaved rotary order (what transformers'
  loader undoes); ``qwen2``/``qwen3`` rotate halves in llama.cpp too, so their rows stay;
  qwen2's q/k/v biases are written as ``blk.N.attn_{q,k,v}.bias``, qwen3's per-head q/k
  norms as ``attn_{q,k}_norm`` (with its head width, which import gives back to
  transformers' reader); Llama 3.1/3.2's ``llama3`` rope scaling becomes llama.cpp's
  ``rope_freqs.weight`` (one divisor per rotary frequency, restored on import).
  1-D tensors (norms, biases) stay F32, matrices are F16 or block-quantized by
  ``gguf.quants`` (Q8_0: 32 weights + one fp16 scale = 8.5 bits; Q4_0: 4.5; Q4_1: 5.0).
  Tied embeddings are written once (``token_embd``), as llama.cpp expects. A 4-bit export
  keeps ``token_embd`` and an untied ``output`` at Q8_0 (:func:`tensor_quant`), as
  llama.cpp's ``llama-quantize`` keeps its output layer above 4 bits: on SmolLM2-135M (tied
  embeddings; 1,024 tinyshakespeare tokens) q4_1 went from +7.0 % perplexity to +0.0 %, q4_0
  from +30.4 % to +21.0 % (what is left is the layers: that source is Q4_1 dequantized, and
  Q4_0 re-rounds its grid), for 5.74 and 5.34 bits/weight where all-4-bit files had 5.0 and
  4.5 (``benchmarks/deploy_bench.py --only gguf --gguf-ppl-only``).
- the ``general.*`` metadata of a GGUF the model was imported from (license, organization,
  base name, fine-tune, size label, name...; :mod:`lmops.deploy._gguf_general`).

llama.cpp (through llama-cpp-python) and transformers both read every quant back: transformers
dequantizes exactly :func:`round_like_gguf`'s weights; llama.cpp greedy-generates lmops's
tokens on those weights for f16, and for q8_0/q4_0/q4_1 up to float ties of its own 8-bit
rounding of matmul inputs (tests/deploy/test_gguf.py; SmolLM2-135M-Instruct figures in
benchmarks/deploy_bench.py ``--llama-cpp``). The same holds for tiny qwen2 (tied and untied),
qwen3, llama3-rope, SentencePiece and mistral models in the tests; transformers' reader ignores
``rope_freqs`` (it restores no llama3 rope scaling from a GGUF), so a llama3-rope file
imported back through transformers has default rope.

The output is registered as a ``model`` asset (one ``.gguf`` file, metadata ``format:
gguf``, ``quant``) with lineage to the source model (role ``source``).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from lmops.core.errors import UserError, first_line
from lmops.core.proc import owned_tempdir
from lmops.core.signals import StopSignals
from lmops.deploy._gguf_dtype import IMPORT_DTYPES, ImportDtype

__all__ = [
    "GGUF_QUANTS",
    "IMPORT_DTYPES",
    "IMPORT_PHASES",
    "ExportResult",
    "ImportDtype",
    "export_gguf",
    "gguf_file_of",
    "import_gguf",
    "llama3_rope_factors",
    "llama_cpp_greedy",
    "round_like_gguf",
    "tensor_quant",
    "write_gguf",
]

Quant = Literal["f16", "q8_0", "q4_0", "q4_1"]
GGUF_QUANTS: tuple[str, ...] = ("f16", "q8_0", "q4_0", "q4_1")
_EXPORT_ARCHS = ("llama", "mistral", "qwen2", "qwen3")  # config model_type
# Mistral is llama.cpp's llama (convert_hf_to_gguf writes MistralForCausalLM as llama)
_GGUF_ARCH = {"mistral": "llama"}


# What a 4-bit export keeps at Q8_0: the token embeddings (also the output layer when tied)
# and an untied output layer. llama-quantize keeps the output layer at Q6_K (Q8_0 where a
# row does not split into its blocks); ``gguf.quants`` writes no Q6_K, so Q8_0 here.
_KEPT_8BIT = ("token_embd.weight", "output.weight")


def tensor_quant(gguf_name: str, quant: str) -> str:
    """The quant matrix ``gguf_name`` is written in by an export in ``quant``: ``quant``,
    except ``token_embd``/``output`` of a 4-bit export, which stay ``q8_0``."""
    return "q8_0" if quant in ("q4_0", "q4_1") and gguf_name in _KEPT_8BIT else quant


class ExportResult(BaseModel):
    path: Path  # the .gguf file (in the store when registered)
    quant: str
    size: int
    bits_per_weight: float  # over all matrices, the ones kept at q8_0 included
    ref: str | None = None
    kept_q8_0: list[str] = []  # matrices kept at q8_0 by a 4-bit export (tensor_quant)


def gguf_file_of(path: Path) -> Path | None:
    """The GGUF file a model asset's path stands for (the file, or the one ``.gguf`` in a
    folder), or None when it is not a GGUF model."""
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1 and not (path / "config.json").exists():
            return found[0]
    return None


# -- import ----------------------------------------------------------------------------------------
def _gguf_source(store: Any, source: Path | str) -> tuple[Path, str | None]:
    """(the GGUF file, the asset version it is, if one) of a path or an asset ref."""
    path = Path(source).expanduser()
    if path.exists():
        return path.resolve(), None
    try:
        v = store.assets.resolve(str(source))
    except UserError:
        raise UserError(
            f"{source}: no such file, nor an asset; give a .gguf file or a GGUF model asset "
            "(lmops deploy export --format gguf)"
        ) from None
    found = gguf_file_of(Path(store.assets.path(v.ref)))
    if found is None:
        raise UserError(f"{v.ref} is a {v.kind} with no GGUF file; give a GGUF model asset")
    return found, v.ref


def _check_gguf(file: Path) -> tuple[str, str]:
    """(architecture, file type name) of a GGUF file; one-line errors otherwise."""
    import gguf

    if not file.is_file():
        raise UserError(f"{file}: no such file")
    with open(file, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise UserError(f"{file}: not a GGUF file (no GGUF magic at its start)")
    try:
        reader = gguf.GGUFReader(str(file))
    except Exception as e:
        raise UserError(f"{file}: unreadable GGUF ({e})") from None
    arch_field = reader.get_field("general.architecture")
    if arch_field is None:
        raise UserError(f"{file}: GGUF without general.architecture; it cannot be imported")
    arch = str(arch_field.contents())
    ftype_field = reader.get_field("general.file_type")
    ftype = "unknown"
    if ftype_field is not None:
        try:
            ftype = gguf.LlamaFileType(int(ftype_field.contents())).name.removeprefix("MOSTLY_")
        except ValueError:
            ftype = str(ftype_field.contents())
    return arch, ftype


def _restore_pre_tokenizer(tok: Any, file: Path) -> None:
    """Put back what transformers' GGUF tokenizer rebuild drops:

    - ``smollm`` (SmolLM/SmolLM2) splits digits one by one before byte-level BPE, as
      llama.cpp does for these files and as the model was trained (the rebuild falls back
      to GPT-2's split);
    - a SentencePiece vocabulary with ``add_space_prefix`` false (lmops's own
      ``sentencepiece_bpe`` tokenizers) puts no ``▁`` before the text, as llama.cpp does
      (the rebuild always adds one)."""
    import gguf
    from tokenizers import decoders, pre_tokenizers

    reader = gguf.GGUFReader(str(file))

    def field(key: str) -> Any:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    if field("tokenizer.ggml.pre") == "smollm":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if (
        field("tokenizer.ggml.model") == "llama"
        and field("tokenizer.ggml.add_space_prefix") is False
    ):
        backend = tok.backend_tokenizer
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="never", split=False
        )
        backend.decoder = decoders.Sequence(  # no Strip: there is no prefix space to drop
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        tok.add_prefix_space = False


def _llama3_rope_of(file: Path) -> dict[str, Any] | None:
    """The ``rope_parameters`` a llama GGUF's ``rope_freqs.weight`` stands for (Llama 3.1's
    rope scaling, which transformers' GGUF reader ignores), or None when it has none.

    The divisors fix llama3's parameters only up to scaling ``original_max_position_embeddings``,
    ``low_freq_factor`` and ``high_freq_factor`` together, which gives the same frequencies:
    Llama 3.x's own (1, 4, 8192) are tried first, then a fit of the interpolated divisors
    with ``low_freq_factor = 1``; a file neither reproduces is refused in one line."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(file))
    tensor = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if tensor is None:
        return None

    def field(key: str, default: float) -> float:
        f = reader.get_field(f"llama.{key}")
        return float(f.contents()) if f is not None else default

    theta = field("rope.freq_base", 10000.0)
    head_dim = int(
        field(
            "rope.dimension_count", field("embedding_length", 0) / field("attention.head_count", 1)
        )
    )
    got = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    factor = float(got.max())
    candidates = [(1.0, 4.0, 8192.0)]
    wavelen = 2 * np.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    mid = (got > 1.0 + 1e-6) & (got < factor - 1e-6)
    if factor > 1.0 and mid.sum() >= 2 and len(got) == len(wavelen):
        # between the bounds 1/divisor = (1 - s)/factor + s, s = (old/wavelen - 1)/(high - 1)
        smooth = (1 / got[mid] - 1 / factor) / (1 - 1 / factor)
        slope, cut = np.polyfit(1 / wavelen[mid], smooth, 1)
        if cut < 0:
            candidates.append((1.0, 1.0 - 1.0 / cut, -slope / cut))
    for low, high, old in candidates:
        rope = {
            "rope_type": "llama3",
            "rope_theta": theta,
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": round(high, 6),
            "original_max_position_embeddings": round(float(old)),
        }
        if len(got) == head_dim // 2 and np.allclose(
            llama3_rope_factors(rope, head_dim), got, rtol=1e-4
        ):
            return rope
    raise UserError(
        f"{file}: its rope_freqs.weight is not a Llama 3 rope scaling lmops can restore; "
        "import a GGUF of the original checkpoint's rope instead"
    )


def _qwen3_head_dim(file: Path) -> dict[str, int]:
    """``head_dim`` of a qwen3 GGUF (``qwen3.attention.key_length``), which transformers'
    reader leaves at Qwen3Config's default of 128: right for Qwen3's own checkpoints, wrong
    for any other width."""
    import gguf

    field = gguf.GGUFReader(str(file)).get_field("qwen3.attention.key_length")
    return {"head_dim": int(field.contents())} if field is not None else {}


def _supported_import_archs() -> list[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(GGUF_CONFIG_MAPPING)


# what import_gguf reports to ``progress`` as it starts each phase, in order; before them the
# file is checked (magic, architecture, dtype, rope: seconds), so a refusal is its one line
IMPORT_PHASES: tuple[str, ...] = (
    "loading weights",  # transformers dequantizes each tensor (its bar is off: quiet_gguf_load)
    "checking weights",  # float16: no weight beyond its range
    "loading the tokenizer",  # rebuilt from the file's vocabulary
    "saving the model folder",
    "registering",  # hashed and stored
)


def import_gguf(
    store: Any,
    file: Path | str,
    *,
    name: str,
    description: str = "",
    dtype: str = "auto",
    progress: Callable[[int, int, str], None] | None = None,
) -> Any:
    """Turn GGUF ``file`` into model asset ``name`` (a dequantized Hugging Face folder in
    ``dtype``: ``auto`` keeps the file's precision, fp16 for block quants, see
    :mod:`lmops.deploy._gguf_dtype`) and return its version; metadata ``dtype`` says which.
    ``file`` may also be a GGUF model asset (``lmops deploy export --format gguf``): the
    import's lineage then goes to that version. ``progress(done, total, phase)`` is called as
    each of :data:`IMPORT_PHASES` starts. Raises a one-line :class:`UserError` for a
    file that is not GGUF or of an architecture transformers cannot load, or a ``float16``
    asked of weights beyond its range; nothing is registered then."""
    from lmops.deploy._gguf_reader import one_reader
    from lmops.deploy._source import check_output

    if dtype not in IMPORT_DTYPES:
        raise UserError(f"--dtype {dtype!r}: one of {', '.join(IMPORT_DTYPES)}")
    check_output(store, name)
    file, source_ref = _gguf_source(store, file)

    def phase(what: str) -> None:
        if progress is not None:
            progress(IMPORT_PHASES.index(what), len(IMPORT_PHASES), what)

    # every check below and transformers' loader share one parse of the file's metadata
    with one_reader(file):
        v = _import(store, file, source_ref, name, description, dtype, phase)
    if progress is not None:
        progress(len(IMPORT_PHASES), len(IMPORT_PHASES), "done")
    return v


def _import(
    store: Any,
    file: Path,
    source_ref: str | None,
    name: str,
    description: str,
    dtype: str,
    phase: Callable[[str], None],
) -> Any:
    from lmops.deploy._gguf_dtype import (
        check_finite,
        import_dtype,
        quiet_gguf_load,
        torch_dtype,
    )
    from lmops.deploy._gguf_general import read_general
    from lmops.store.artifacts import hash_file

    # the file is checked before torch and transformers are imported (seconds on a busy
    # server), so a wrong path is refused at once
    arch, ftype = _check_gguf(file)
    dt, why = import_dtype(file, dtype)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmops.models.loading import quiet_transformers

    quiet_transformers()
    supported = _supported_import_archs()
    if arch not in supported:
        raise UserError(
            f"{file}: GGUF architecture {arch!r} is not supported by transformers' GGUF loader "
            f"(supported: {', '.join(supported)}); convert the original checkpoint instead"
        )
    rope = _llama3_rope_of(file) if arch == "llama" else None  # refused before any run
    general = read_general(file)
    config = {"file": str(file), "name": name, "dtype": dtype}
    # a signal stops the import at once (SIGTERM as Ctrl-C) until registering begins; from
    # there on it waits, so "not registered" is never said of a registered model
    with StopSignals(graceful=False) as stop, store.runs.track("gguf_import", config=config) as run:
        inputs = [(source_ref, "gguf")] if source_ref else []
        if not inputs:  # an external reference hashes the file (through the hash cache)
            inputs = store.assets.record_inputs([(file, "gguf")], run_id=run.id)
        ext = store.assets.get(inputs[0][0])  # the sha256 read once, not twice
        is_file = ext.layout == "external" and ext.files == 1
        digest = str(ext.digest) if is_file else hash_file(file)
        folder, gguf_name = str(file.parent), file.name
        with quiet_gguf_load():  # no tqdm bar of transformers': the phase lines say it
            try:
                extra: dict[str, Any] = {"rope_parameters": rope} if rope else {}
                extra |= _qwen3_head_dim(file) if arch == "qwen3" else {}  # config overrides
                # each tensor is dequantized to fp32 and cast to dt as it is read
                phase("loading weights")
                model: Any = AutoModelForCausalLM.from_pretrained(
                    folder, gguf_file=gguf_name, dtype=torch_dtype(dt), **extra
                )
                phase("checking weights")
                if dt == "float16" and (bad := check_finite(model)) is not None:
                    if dtype != "auto":
                        raise UserError(
                            f"{file}: {bad} has weights float16 cannot hold (beyond +-65504); "
                            "import with --dtype bfloat16 or float32"
                        )
                    dt, why = "float32", f"{why}, beyond float16's range"
                    model = AutoModelForCausalLM.from_pretrained(
                        folder, gguf_file=gguf_name, dtype=torch.float32, **extra
                    )
                phase("loading the tokenizer")
                tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
            except (ValueError, KeyError, NotImplementedError, OSError) as e:
                msg = first_line(e)
                raise UserError(f"{file}: transformers cannot load this GGUF ({msg})") from None
        _restore_pre_tokenizer(tok, file)
        # transformers marks a GGUF-loaded model as "quantized with gguf" and then refuses
        # to save it; its weights are already plain tensors (dequantized on load)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = owned_tempdir("lmops-gguf-import-")
        try:
            phase("saving the model folder")
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            phase("registering")
            stop.hold()
            v = store.assets.register(
                "model",
                name,
                tmp,
                metadata={
                    "format": "hf",
                    "imported_from": "gguf",
                    "gguf_file": file.name,
                    "gguf_sha256": digest,
                    "gguf_file_type": ftype,
                    "architecture": arch,
                    # what the weights are stored in, and why (auto: the file's matrices)
                    "dtype": dt,
                    "dtype_from": "--dtype" if why == "asked" else f"auto ({why})",
                    # license, name, base name...: written back by an export of this model
                    "gguf_general": general,
                },
                description=description
                or f"imported from {file.name} ({ftype} dequantized to {dt})",
                inputs=inputs,
                run_id=run.id,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return v


def _permute(w: Any, n_head: int) -> Any:
    """Hugging Face's rotate-half rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf's
    ``LlamaModel.permute``); w: [n_head * head_dim, hidden]."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


_NAME_MAP = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "self_attn.q_norm": "attn_q_norm",  # qwen3: RMSNorm of each head's q and k
    "self_attn.k_norm": "attn_k_norm",
}
# Qwen2's q/k/v projections have biases (llama.cpp's qwen2 loads blk.N.attn_{q,k,v}.bias)
_BIASED = {"qwen2": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")}


def _gguf_name(hf: str, arch: str = "llama") -> str | None:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf)
    if m is None or m.group(2) not in _NAME_MAP:
        return None
    if m.group(3) == "bias" and m.group(2) not in _BIASED.get(arch, ()):
        return None
    return f"blk.{m.group(1)}.{_NAME_MAP[m.group(2)]}.{m.group(3)}"


def _rope(cfg: dict[str, Any]) -> dict[str, Any]:
    """The rope settings of a config.json: ``rope_parameters`` (transformers 5) over the
    older ``rope_scaling`` + ``rope_theta``; ``rope_type`` is ``default`` when unset."""
    rope = {**(cfg.get("rope_scaling") or {}), **(cfg.get("rope_parameters") or {})}
    rope.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    rope["rope_type"] = rope.get("rope_type") or rope.get("type") or "default"
    return rope


def _check_arch(cfg: dict[str, Any], where: Path) -> str:
    """The GGUF architecture of config ``cfg`` (``llama`` for llama and mistral, ``qwen2``
    or ``qwen3``); one-line errors for what this writer cannot express."""
    model_type = cfg.get("model_type")
    if model_type not in _EXPORT_ARCHS:
        raise UserError(
            f"{where}: model_type {model_type!r}; GGUF export supports "
            f"{', '.join(_EXPORT_ARCHS)} (SmolLM2, Llama 2/3, TinyLlama, Mistral, Qwen2/2.5/3)"
        )
    arch = _GGUF_ARCH.get(str(model_type), str(model_type))
    rope_type = _rope(cfg)["rope_type"]
    allowed = ("default", "llama3") if arch == "llama" else ("default",)
    if rope_type not in allowed:
        raise UserError(
            f"{where}: rope_type {rope_type!r} is not exported for {model_type} (this writer "
            f"does {', '.join(allowed)}); export a model without that rope scaling"
        )
    partial = cfg.get("partial_rotary_factor", _rope(cfg).get("partial_rotary_factor", 1.0))
    if float(partial) != 1.0:
        raise UserError(f"{where}: partial_rotary_factor is not exported; rotate full heads")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":  # llama.cpp's llama, qwen2 and qwen3 gate with SiLU, whatever the file says
        raise UserError(f"{where}: hidden_act {act!r}; GGUF export writes SiLU models only")
    if arch != "qwen2" and (cfg.get("attention_bias") or cfg.get("mlp_bias")):
        raise UserError(f"{where}: {model_type} with attention/MLP biases is not exported yet")
    window = cfg.get("sliding_window")
    qwen = arch in ("qwen2", "qwen3")
    sliding = cfg.get("use_sliding_window") if qwen else window is not None
    if sliding and window is not None and window < int(cfg.get("max_position_embeddings", 0)):
        # llama.cpp's llama and qwen2 attend to the whole context: past the window the
        # exported model would compute something else (Mistral v0.1; v0.2+ has no window)
        raise UserError(
            f"{where}: sliding_window {window} is shorter than the context; llama.cpp's "
            f"{arch} attends to the whole context, so export a model without a sliding window"
        )
    return arch


def llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> Any:
    """Llama 3.1's rope scaling as llama.cpp stores it: a ``rope_freqs`` tensor of
    ``head_dim / 2`` divisors of the default inverse frequencies ``theta ** (-2i / head_dim)``
    (float32). Wavelengths shorter than ``original_max_position_embeddings /
    high_freq_factor`` keep their frequency (1), longer than ``... / low_freq_factor`` are
    slowed by ``factor``, and those between are interpolated smoothly."""
    import numpy as np

    theta = float(rope["rope_theta"])
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    out = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, out)
    out = np.where(wavelen > old_ctx / low, factor, out)
    return out.astype(np.float32)


def write_gguf(
    folder: Path,
    out: Path,
    quant: str,
    *,
    name: str | None = None,
    general: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Write model folder ``folder`` (llama, qwen2 or qwen3 architecture, byte-level or
    SentencePiece BPE tokenizer) as GGUF file ``out`` with matrices in ``quant`` (the
    embeddings and output layer of a 4-bit file in q8_0: :func:`tensor_quant`); returns
    the bits per weight of the matrices (block scales included). ``general``: ``general.*``
    fields to carry (a source GGUF's: :mod:`lmops.deploy._gguf_general`), its
    ``general.name`` over ``name``. One-line errors for what cannot be written."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    from lmops.deploy._gguf_general import add_general
    from lmops.deploy.gguf_vocab import add_tokenizer, tokenizer_fields

    if quant not in GGUF_QUANTS:
        raise UserError(
            f"--quant {quant!r}: the GGUF writer does {', '.join(GGUF_QUANTS)}; pick one of them"
        )
    from lmops.core.modelfiles import check_model_folder, weight_files

    check_model_folder(folder)
    cfg = json.loads((folder / "config.json").read_text())
    arch = _check_arch(cfg, folder / "config.json")
    from lmops.deploy._source import refuse_quantized

    refuse_quantized(folder, str(folder), "export its source model to GGUF instead")
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    rope = _rope(cfg)
    ftype = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    }[quant]
    files = weight_files(folder)
    if not files:
        raise UserError(f"{folder}: no .safetensors weights (save with save_pretrained)")
    tokf = tokenizer_fields(folder, int(cfg["vocab_size"]))

    # use_temp_file: tensors wait in a temporary file, not in memory, until the header is
    # written (a 7B model in f16 would otherwise hold ~14 GB extra RAM to the end)
    w = gguf.GGUFWriter(str(out), arch, use_temp_file=True)  # keys: f"{arch}.…"
    general = general or {}
    w.add_name(str(general.get("general.name") or name or folder.name))
    add_general(w, general)
    w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    w.add_embedding_length(hidden)
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head or arch == "qwen3":  # else llama.cpp takes hidden / heads
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_vocab_size(len(tokf["tokens"]))
    w.add_file_type(int(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(w, tokf)

    names: list[tuple[Path, str]] = []
    for f in files:
        with safe_open(str(f), framework="np") as st:
            names += [(f, k) for k in st.keys()]  # noqa: SIM118 (safe_open has no __iter__)
    tied = bool(cfg.get("tie_word_embeddings"))
    wanted = [
        (f, k) for f, k in names if not (tied and k == "lm_head.weight") and _gguf_name(k, arch)
    ]
    unknown = [k for _, k in names if _gguf_name(k, arch) is None and "rotary_emb" not in k]
    if unknown:
        raise UserError(f"{folder}: tensors a {arch} GGUF has no place for: {unknown[:3]}")
    if rope["rope_type"] == "llama3":  # first, as llama.cpp's converter writes it
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(rope, head_dim))
    # llama.cpp's llama rotates interleaved pairs, so q/k rows are permuted from Hugging
    # Face's rotate-half order; its qwen2/qwen3 rotate halves (NEOX) as Hugging Face does
    permute = arch == "llama"
    q_bits = 0
    q_weights = 0
    for i, (f, k) in enumerate(wanted):
        with safe_open(str(f), framework="pt") as st:
            t = st.get_tensor(k).float().numpy()
        if permute and k.endswith("q_proj.weight"):
            t = _permute(t, n_head)
        elif permute and k.endswith("k_proj.weight"):
            t = _permute(t, n_kv)
        gname = _gguf_name(k, arch)
        assert gname is not None
        if t.ndim == 1:  # norms and biases
            w.add_tensor(gname, t.astype(np.float32))
        else:
            tq = tensor_quant(gname, quant)
            if tq == "f16":
                data = t.astype(np.float16)
                w.add_tensor(gname, data)
            else:
                qtype = getattr(gguf.GGMLQuantizationType, tq.upper())
                block = gguf.GGML_QUANT_SIZES[qtype][0]
                if t.shape[-1] % block:
                    raise UserError(
                        f"{folder}: {k} has rows of {t.shape[-1]} weights, not a multiple of "
                        f"{block}; use --quant f16"
                    )
                data = gguf.quants.quantize(t.astype(np.float32), qtype)
                w.add_tensor(gname, data, raw_dtype=qtype)
            q_bits += data.nbytes * 8
            q_weights += t.size
        if progress is not None:
            progress(i + 1, len(wanted))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return q_bits / max(q_weights, 1)


def llama_cpp_greedy(llm: Any, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """``n`` greedy tokens after ``ids`` in llama.cpp (a ``llama_cpp.Llama`` opened with
    ``logits_all``), and at each step the margin between its top two logits: how an export
    is read back (tests, ``benchmarks/deploy_bench.py --llama-cpp``)."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    toks: list[int] = []
    margins: list[float] = []
    for _ in range(n):
        logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        second, first = np.argsort(logits)[-2:]
        toks.append(int(first))
        margins.append(float(logits[first] - logits[second]))
        llm.eval([toks[-1]])
    return toks, margins


def round_like_gguf(model: Any, quant: str) -> Any:
    """Round every matrix of Hugging Face ``model`` (in place) as ``write_gguf`` stores it in
    ``quant`` (``gguf.quants`` quantize then dequantize; fp16 for f16; the embeddings and
    output layer of a 4-bit file in q8_0); 1-D tensors stay fp32 as in the file. Blocks run
    along rows, so the q/k rotary row permutation does not change them: this is lmops
    computing with the file's weights, the reference a GGUF reader is checked against.
    Returns ``model``."""
    import gguf
    import numpy as np
    import torch

    if quant not in GGUF_QUANTS:
        raise UserError(f"quant {quant!r}: one of {', '.join(GGUF_QUANTS)}")
    with torch.no_grad():
        # a tied head is one parameter, listed (and rounded) once, as token_embd
        for name, param in model.named_parameters():
            if param.dim() < 2:
                continue
            w = param.detach().float().cpu().numpy()
            tq = tensor_quant(_gguf_name(name) or "", quant)
            if tq == "f16":
                back = w.astype(np.float16).astype(np.float32)
            else:
                qtype = getattr(gguf.GGMLQuantizationType, tq.upper())
                back = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)
            param.copy_(torch.from_numpy(back.reshape(w.shape)).to(param.dtype))
    return model


def export_gguf(
    store: Any,
    model_ref: str,
    *,
    quant: str,
    output: str,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Export model ``model_ref`` (asset ref or folder) to GGUF and register it as model
    ``output`` (metadata ``format: gguf``, ``quant``, ``bits_per_weight``, ``kept_q8_0``)
    with lineage to the source. A model imported from a GGUF takes that file's
    ``general.*`` metadata (license, name...) along. Nothing is registered when anything
    fails."""
    import gguf

    from lmops.deploy._gguf_general import source_general
    from lmops.deploy._source import check_output, source_inputs, source_model

    if quant not in GGUF_QUANTS:  # said before any work, with the choices
        raise UserError(
            f"--quant {quant!r}: the GGUF writer does {', '.join(GGUF_QUANTS)}; pick one of them"
        )
    check_output(store, output)
    src, src_ref = source_model(
        model_ref, store, full_precision="export its source model to GGUF instead"
    )
    with store.runs.track(
        "gguf_export", config={"model": model_ref, "quant": quant, "output": output}
    ) as run:
        inputs = source_inputs(store, src, src_ref, run.id)
        tmp = owned_tempdir("lmops-gguf-")
        try:
            out = tmp / f"{output.replace('/', '_')}.{quant}.gguf"
            general = source_general(store, src_ref)
            bpw = write_gguf(src, out, quant, name=output, general=general, progress=progress)
            arch = _check_arch(json.loads((src / "config.json").read_text()), src)
            size = out.stat().st_size
            kept = [  # matrices a 4-bit export wrote in q8_0 (tensor_quant), as the file says
                t.name
                for t in gguf.GGUFReader(str(out)).tensors
                if len(t.shape) > 1 and t.tensor_type.name.lower() != quant
            ]
            v = store.assets.register(
                "model",
                output,
                out,
                metadata={
                    "format": "gguf",
                    "quant": quant,
                    "bits_per_weight": round(bpw, 4),
                    "kept_q8_0": kept,
                    "architecture": arch,
                    "source": src_ref or str(src),
                },
                inputs=inputs,
                run_id=run.id,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        store.runs.log_metrics(run.id, {"bits_per_weight": bpw, "size": size}, 0)
    return ExportResult(
        path=store.assets.path(v.ref),
        quant=quant,
        size=size,
        bits_per_weight=bpw,
        ref=v.ref,
        kept_q8_0=kept,
    )
