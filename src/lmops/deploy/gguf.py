"""GGUF in and out, in Python: no llama.cpp checkout.

``import_gguf`` (``lmops assets import gguf FILE --name NAME``): transformers' GGUF loader
reads the file and dequantizes it; the model and its tokenizer (chat template included) are
saved as a normal Hugging Face folder and registered as a ``model`` asset whose lineage
holds the GGUF file as an external reference (role ``gguf``) and whose metadata keeps its
sha256, so every stage (train, eval, serve) can use it.

``export_gguf`` (``lmops deploy export MODEL --format gguf --quant ...``): writes a GGUF
file with the ``gguf`` package as llama.cpp's ``convert_hf_to_gguf.py`` does for the
``llama`` architecture:

- metadata ``llama.*`` (context, widths, heads, rope, rms eps), ``general.file_type``;
- the tokenizer as llama.cpp expects a GPT-2-style byte-level BPE: ``tokenizer.ggml.model =
  gpt2``, ``pre`` (the pre-tokenizer's regex family, from ``tokenizer.json``), ``tokens`` in
  byte-level spelling, ``token_type`` (control for special added tokens, user-defined for
  other added tokens, unused for padding rows), ``merges``, bos/eos/unk/pad ids, add_bos,
  and the chat template;
- tensors under llama.cpp's names; q_proj/k_proj rows permuted from Hugging Face's
  rotate-half order to llama.cpp's interleaved rotary order (what transformers' loader
  undoes); 1-D tensors (norms) stay F32, matrices are F16 or block-quantized by
  ``gguf.quants`` (Q8_0: 32 weights + one fp16 scale = 8.5 bits; Q4_0: 4.5; Q4_1: 5.0).
  Tied embeddings are written once (``token_embd``), as llama.cpp expects.

llama.cpp (through llama-cpp-python) and transformers both read every quant back: transformers
dequantizes exactly :func:`round_like_gguf`'s weights; llama.cpp greedy-generates lmops's
tokens on those weights for f16, and for q8_0/q4_0/q4_1 up to float ties of its own 8-bit
rounding of matmul inputs (tests/deploy/test_gguf.py; SmolLM2-135M-Instruct figures in
benchmarks/deploy_bench.py ``--llama-cpp``).

The output is registered as a ``model`` asset (one ``.gguf`` file, metadata ``format:
gguf``, ``quant``) with lineage to the source model (role ``source``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from lmops.core.errors import UserError

__all__ = [
    "GGUF_QUANTS",
    "ExportResult",
    "export_gguf",
    "gguf_file_of",
    "import_gguf",
    "llama_cpp_greedy",
    "round_like_gguf",
    "write_gguf",
]

Quant = Literal["f16", "q8_0", "q4_0", "q4_1"]
GGUF_QUANTS: tuple[str, ...] = ("f16", "q8_0", "q4_0", "q4_1")
_EXPORT_ARCHS = ("llama",)


class ExportResult(BaseModel):
    path: Path  # the .gguf file (in the store when registered)
    quant: str
    size: int
    bits_per_weight: float
    ref: str | None = None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
    """Put back the pre-tokenizer a GGUF names where transformers' rebuild falls back to
    GPT-2's: ``smollm`` (SmolLM/SmolLM2) splits digits one by one before byte-level BPE,
    as llama.cpp does for these files and as the model was trained."""
    import gguf
    from tokenizers import pre_tokenizers

    field = gguf.GGUFReader(str(file)).get_field("tokenizer.ggml.pre")
    if field is None or str(field.contents()) != "smollm":
        return
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


def _supported_import_archs() -> list[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(GGUF_CONFIG_MAPPING)


def import_gguf(
    store: Any,
    file: Path,
    *,
    name: str,
    description: str = "",
) -> Any:
    """Turn GGUF ``file`` into model asset ``name`` (a dequantized Hugging Face folder, fp32)
    and return its version. Raises a one-line :class:`UserError` for a file that is not
    GGUF or of an architecture transformers cannot load; nothing is registered then."""
    file = Path(file).expanduser().resolve()
    # the file is checked before torch and transformers are imported (seconds on a busy
    # server), so a wrong path is refused at once
    arch, ftype = _check_gguf(file)
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
    digest = _sha256(file)
    with store.runs.track("gguf_import", config={"file": str(file), "name": name}) as run:
        inputs = store.assets.record_inputs([(file, "gguf")], run_id=run.id)
        folder, gguf_name = str(file.parent), file.name
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=gguf_name, dtype=torch.float32
            )
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
        except (ValueError, KeyError, NotImplementedError, OSError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{file}: transformers cannot load this GGUF ({msg})") from None
        _restore_pre_tokenizer(tok, file)
        # transformers marks a GGUF-loaded model as "quantized with gguf" and then refuses
        # to save it; its weights are already plain fp32 tensors (dequantized on load)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = Path(tempfile.mkdtemp(prefix="lmops-gguf-import-"))
        try:
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
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
                },
                description=description or f"imported from {file.name} (dequantized {ftype})",
                inputs=inputs,
                run_id=run.id,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return v


# -- export ----------------------------------------------------------------------------------------
def _pre_tokenizer_name(tokenizer_json: dict[str, Any], where: Path) -> str:
    """llama.cpp's name for the pre-tokenizer in ``tokenizer.json`` (which regex splits the
    text before BPE): ``gpt-2`` (ByteLevel's own regex; llama.cpp refuses the spelling
    ``gpt2`` as an unknown pre-tokenizer), ``smollm`` (single digits, then ByteLevel),
    ``llama-bpe`` (Llama 3's split). Anything else is refused, since llama.cpp would
    tokenize differently."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [p.get("type") for p in parts]
    byte_level = parts[-1] if types and types[-1] == "ByteLevel" else None
    if byte_level is not None and types == ["ByteLevel"] and byte_level.get("use_regex", True):
        return "gpt-2"
    if (
        byte_level is not None
        and types == ["Digits", "ByteLevel"]
        and parts[0].get("individual_digits")
        and byte_level.get("use_regex", True)
    ):
        return "smollm"
    if types == ["Split", "ByteLevel"]:
        pattern = (parts[0].get("pattern") or {}).get("Regex", "")
        if "\\p{N}{1,3}" in pattern and "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in pattern:
            return "llama-bpe"
    raise UserError(
        f"{where}: pre-tokenizer {types} has no llama.cpp equivalent this exporter knows "
        "(gpt-2, smollm, llama-bpe); export a model with a GPT-2-style byte-level BPE tokenizer"
    )


def _tokenizer_fields(folder: Path, vocab_size: int) -> dict[str, Any]:
    """The ``tokenizer.ggml.*`` values of the tokenizer in ``folder``."""
    import gguf

    from lmops.models.loading import load_tokenizer

    tj_path = folder / "tokenizer.json"
    if not tj_path.is_file():
        raise UserError(
            f"{folder} has no tokenizer.json; GGUF export needs a fast (tokenizers) BPE "
            "tokenizer: save one with tokenizer.save_pretrained(folder)"
        )
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or tj.get("decoder", {}).get("type") != "ByteLevel":
        raise UserError(
            f"{tj_path}: a {model.get('type')} tokenizer; GGUF export writes GPT-2-style "
            "byte-level BPE tokenizers only (SentencePiece vocabularies are not supported yet)"
        )
    pre = _pre_tokenizer_name(tj, tj_path)
    raw_merges = model.get("merges") or []
    merges = [m if isinstance(m, str) else " ".join(m) for m in raw_merges]
    tok = load_tokenizer(folder)
    vocab: dict[str, int] = model.get("vocab") or {}
    added = {t["id"]: t for t in tj.get("added_tokens") or []}
    top = max([*vocab.values(), *added, len(tok) - 1])
    if top >= vocab_size:
        # llama.cpp takes n_vocab from the token list and refuses a token_embd of other rows
        raise UserError(
            f"{tj_path}: token id {top} is past the model's vocab_size {vocab_size} "
            "(config.json); resize the embeddings (model.resize_token_embeddings) first"
        )
    n = vocab_size
    by_id = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(
                gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED
            )
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:  # embedding rows past the vocabulary (padded vocab): never produced
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    probe = tok("a")["input_ids"]
    return {
        "pre": pre,
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": tok.bos_token_id,
        "eos": tok.eos_token_id,
        "unk": tok.unk_token_id,
        "pad": tok.pad_token_id,
        "add_bos": bool(probe) and tok.bos_token_id is not None and probe[0] == tok.bos_token_id,
        "chat_template": tok.chat_template if isinstance(tok.chat_template, str) else None,
    }


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
}


def _gguf_name(hf: str) -> str | None:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf)
    if m and m.group(2) in _NAME_MAP:
        return f"blk.{m.group(1)}.{_NAME_MAP[m.group(2)]}.weight"
    return None


def write_gguf(
    folder: Path,
    out: Path,
    quant: str,
    *,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Write model folder ``folder`` (llama architecture, byte-level BPE tokenizer) as GGUF
    file ``out`` with matrices in ``quant``; returns the bits per weight of the matrices
    (block scales included). One-line errors for what cannot be written."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    if quant not in GGUF_QUANTS:
        raise UserError(
            f"--quant {quant!r}: the GGUF writer does {', '.join(GGUF_QUANTS)}; pick one of them"
        )
    from lmops.core.modelfiles import check_model_folder

    check_model_folder(folder)
    cfg = json.loads((folder / "config.json").read_text())
    arch = cfg.get("model_type")
    if arch not in _EXPORT_ARCHS:
        raise UserError(
            f"{folder / 'config.json'}: model_type {arch!r}; GGUF export supports "
            f"{', '.join(_EXPORT_ARCHS)} (SmolLM2, Llama 2/3, TinyLlama...)"
        )
    if (folder / "lmops_quant.json").is_file():
        raise UserError(
            f"{folder} is an lmops-quantized model; export its source model to GGUF instead"
        )
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    rope = cfg.get("rope_parameters") or {}
    rope_theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    if rope.get("rope_type", "default") not in ("default", None):
        raise UserError(
            f"{folder / 'config.json'}: rope_type {rope.get('rope_type')!r} is not exported yet"
        )
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise UserError(f"{folder / 'config.json'}: llama with biases is not exported yet")
    qtype = {
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
        "q4_1": gguf.GGMLQuantizationType.Q4_1,
    }[quant]
    ftype = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    }[quant]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: no .safetensors weights (save with save_pretrained)")
    tokf = _tokenizer_fields(folder, int(cfg["vocab_size"]))

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(name or folder.name)
    w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    w.add_embedding_length(hidden)
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head:  # llama.cpp assumes hidden / heads unless told
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(rope_theta)
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_vocab_size(len(tokf["tokens"]))
    w.add_file_type(int(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tokf["pre"])
    w.add_token_list(tokf["tokens"])
    w.add_token_types(tokf["types"])
    w.add_token_merges(tokf["merges"])
    for key, add in (
        ("bos", w.add_bos_token_id),
        ("eos", w.add_eos_token_id),
        ("unk", w.add_unk_token_id),
        ("pad", w.add_pad_token_id),
    ):
        if tokf[key] is not None:
            add(int(tokf[key]))
    w.add_add_bos_token(tokf["add_bos"])
    w.add_add_eos_token(False)
    if tokf["chat_template"]:
        w.add_chat_template(tokf["chat_template"])

    names: list[tuple[Path, str]] = []
    for f in files:
        with safe_open(str(f), framework="np") as st:
            names += [(f, k) for k in st.keys()]  # noqa: SIM118 (safe_open has no __iter__)
    tied = bool(cfg.get("tie_word_embeddings"))
    wanted = [(f, k) for f, k in names if not (tied and k == "lm_head.weight") and _gguf_name(k)]
    unknown = [k for _, k in names if _gguf_name(k) is None and "rotary_emb" not in k]
    if unknown:
        raise UserError(f"{folder}: tensors a llama GGUF has no place for: {unknown[:3]}")
    q_bits = 0
    q_weights = 0
    for i, (f, k) in enumerate(wanted):
        with safe_open(str(f), framework="pt") as st:
            t = st.get_tensor(k).float().numpy()
        if k.endswith("q_proj.weight"):
            t = _permute(t, n_head)
        elif k.endswith("k_proj.weight"):
            t = _permute(t, n_kv)
        gname = _gguf_name(k)
        assert gname is not None
        if t.ndim == 1:
            w.add_tensor(gname, t.astype(np.float32))
        else:
            if quant == "f16":
                data = t.astype(np.float16)
                w.add_tensor(gname, data)
            else:
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
    ``quant`` (``gguf.quants`` quantize then dequantize; fp16 for f16); 1-D tensors stay fp32
    as in the file. Blocks run along rows, so the q/k rotary row permutation does not change
    them: this is lmops computing with the file's weights, the reference a GGUF reader is
    checked against. Returns ``model``."""
    import gguf
    import numpy as np
    import torch

    if quant not in GGUF_QUANTS:
        raise UserError(f"quant {quant!r}: one of {', '.join(GGUF_QUANTS)}")
    qtype = getattr(gguf.GGMLQuantizationType, quant.upper())
    with torch.no_grad():
        for param in model.parameters():  # a tied head is one parameter, rounded once
            if param.dim() < 2:
                continue
            w = param.detach().float().cpu().numpy()
            if quant == "f16":
                back = w.astype(np.float16).astype(np.float32)
            else:
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
    ``output`` (metadata ``format: gguf``, ``quant``, ``bits_per_weight``) with lineage to
    the source. Nothing is registered when anything fails."""
    from lmops.deploy._source import source_inputs, source_model

    if quant not in GGUF_QUANTS:  # said before any work, with the choices
        raise UserError(
            f"--quant {quant!r}: the GGUF writer does {', '.join(GGUF_QUANTS)}; pick one of them"
        )
    src, src_ref = source_model(model_ref, store)
    with store.runs.track(
        "gguf_export", config={"model": model_ref, "quant": quant, "output": output}
    ) as run:
        inputs = source_inputs(store, src, src_ref, run.id)
        tmp = Path(tempfile.mkdtemp(prefix="lmops-gguf-"))
        try:
            out = tmp / f"{output.replace('/', '_')}.{quant}.gguf"
            bpw = write_gguf(src, out, quant, name=output, progress=progress)
            size = out.stat().st_size
            v = store.assets.register(
                "model",
                output,
                out,
                metadata={
                    "format": "gguf",
                    "quant": quant,
                    "bits_per_weight": round(bpw, 4),
                    "architecture": "llama",
                    "source": src_ref or str(src),
                },
                inputs=inputs,
                run_id=run.id,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        store.runs.log_metrics(run.id, {"bits_per_weight": bpw, "size": size}, 0)
    return ExportResult(
        path=store.assets.path(v.ref), quant=quant, size=size, bits_per_weight=bpw, ref=v.ref
    )
