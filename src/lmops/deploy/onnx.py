"""ONNX export of a causal LM, with its KV cache, by torch's own exporter.

``export_onnx`` (``lmops deploy export MODEL --format onnx [--quant fp32|int8]``) writes a
folder that onnxruntime can generate from incrementally, laid out as optimum's ONNX decoders
are (``model.onnx`` + ``config.json`` + ``generation_config.json`` + tokenizer files):

- inputs ``input_ids`` [batch, seq] (int64), ``attention_mask`` [batch, past + seq] (int64,
  1 = attend), ``position_ids`` [batch, seq] (int64), and per layer ``i``
  ``past_key_values.{i}.key`` / ``.value`` [batch, kv_heads, past, head_dim] (float32);
- outputs ``logits`` [batch, seq, vocab] and ``present.{i}.key`` / ``.value``
  [batch, kv_heads, past + seq, head_dim]: the cache after this step, fed back as the next
  step's ``past_key_values``. The first step feeds a past of length 0, so one graph serves
  both prefill and decode (optimum's older exports needed two, or a ``use_cache_branch``
  ``If`` node, because the TorchScript exporter could not trace an empty past).

Why torch's exporter (``torch.onnx.export(..., dynamo=True)``, which needs ``onnx`` and
``onnxscript``) and not optimum: ``optimum-onnx`` 0.1.0 pins transformers < 4.58, and this
project runs 5.x. The model is wrapped so that the cache crosses the graph boundary as flat
tensors (a ``DynamicCache`` is filled inside ``forward``); everything else is the model's own
code, so any decoder transformers runs with a ``DynamicCache`` exports the same way.

Every export is checked before it is registered: onnxruntime runs a prefill and one cached
decode step and the logits are compared with transformers'; an fp32 graph further than
``1e-3 * max(1, max |logit|)`` away is refused.

``--quant int8`` rewrites every weight MatMul, the output projection included, as
onnxruntime's ``MatMulNBits`` (``MatMulNBitsQuantizer``, bits 8): int8 weights in symmetric
blocks of 64 along the input (``scale = -w[argmax |w|] / 128``, 8.5 bits a weight with the
fp32 scale), run with ``accuracy_level`` 4 (each activation block of 64 rounded to int8 at
``max |x| / 127`` at run time, int8 dot products). A tied output projection is quantized as
a transposed copy (the embedding lookup stays fp32). Measured on SmolLM2-135M
(``benchmarks/onnx_bench.py``: perplexity on 4,096 tinyshakespeare tokens, fp32 graph
30.93, 538 MB; tok/s 1 thread, median of 9 round-robin runs on a shared 2-core CPU):

=============================  =======  =========  ============  =======  =====
recipe (level, block, head)     size     ppl        max |dlogit|  argmax   tok/s
=============================  =======  =========  ============  =======  =====
L4, b32, head fp32 (old int8)   233 MB   +0.43 %    2.3 (of 40)   97.3 %   46
L0 (fp32 compute), b32          233 MB   +0.20 %    1.3           99.1 %   3.7
L4, b32, down_proj fp32         310 MB   +0.25 %    2.1           97.3 %   36
L4, b32, head int8              265 MB   +0.39 %    2.0           98.2 %   59
L4, b64, head int8 (``int8``)   257 MB   -0.06 %    4.8           93.6 %   68
L4, b128, head int8             265 MB   +1.24 %    4.5           91.8 %   70
=============================  =======  =========  ============  =======  =====

(The level 0 and down_proj rows' tok/s are from a 5-round run in which the fp32 graph made
25 tok/s and "L4, b32, head int8" 55.)

What moves the logits: the weights' rounding (fp32 compute over the same int8 weights,
level 0, moves them by 1.3) and then the activations' (level 4); the MLP down projections'
outlier inputs are not the cause (keeping them fp32 changes little). Greedy chat runs part
from transformers' wherever the top two logits are closer than that: even the fp32 graph
(1e-4 away) keeps only 207 of 8 x 32 greedy tokens before the runs part, level 0 140, the
int8 recipes 45-78. Perplexity, the issue's bar (<= 1 %), is met by every recipe with
blocks up to 64; level 0 is not worth its cost (onnxruntime 1.32 runs 8-bit fp32 compute 7x
slower than the fp32 graph); the int8 output projection (28 M of the 135 M weights, read
every token) is the largest speed-up, blocks of 64 the next. Blocks of 128 add 3 % speed
for +1.2 % perplexity: not offered. ``quantize_dynamic`` (one int8 range for a whole
activation row-matrix) was tried earlier and dropped: logits moved by 28 (of 40), argmax
52 %. The int8 logits difference is recorded, not bounded; tests/deploy/test_onnx.py checks
the int8 graph against transformers with the same rounding of weights and activations.

The folder is registered as a ``model`` asset (metadata ``format: onnx``, ``quant``,
``opset``, ``max_abs_logit_diff``) with lineage to the source (role ``source``). Nothing is
registered when anything fails. :class:`OnnxDecoder` runs such a folder (greedy decode) for
the tests and ``benchmarks/onnx_bench.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lmops.core.errors import UserError, first_line
from lmops.core.proc import owned_tempdir, temporary_owned_dir

__all__ = [
    "ONNX_FILE",
    "ONNX_QUANTS",
    "OnnxDecoder",
    "OnnxExportResult",
    "export_onnx",
    "missing_onnx_packages",
    "write_onnx",
]

ONNX_QUANTS: tuple[str, ...] = ("fp32", "int8")
ONNX_FILE = "model.onnx"
_QUANT_PROP = "lmops.quant"  # the graph's metadata_props key of its --quant
_TIED_COPY_PROP = "lmops.tied_lm_head_copy"  # the MatMul quantizing a tied embedding's copy
OPSET = 18  # onnxruntime >= 1.14 runs it; newer opsets add nothing a decoder needs here
# the exporter's (and the int8 step's) packages: import name -> pip name
_PACKAGES = {
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnx_ir": "onnx-ir",  # the exporter's graph objects (onnxscript installs it)
    "onnxruntime": "onnxruntime",
}
PIP_HINT = "pip install 'lmops[onnx]'"  # onnx, onnxscript, onnx-ir, onnxruntime
# weights past this many bytes go to model.onnx.data beside the graph: protobuf caps a file
# at 2 GiB
_EXTERNAL_DATA_BYTES = 1 << 30
# sample shapes of the traced call; distinct and > 1 so torch.export keeps them symbolic
_BATCH, _SEQ, _PAST = 2, 3, 5


class OnnxExportResult(BaseModel):
    path: Path  # the folder (in the store when registered)
    quant: str
    size: int  # bytes of the ONNX graph and its weights
    opset: int
    max_abs_logit_diff: float  # onnxruntime vs transformers on the check prompt
    ref: str | None = None


def missing_onnx_packages() -> list[str]:
    """The pip names of the exporter's packages that cannot be imported here."""
    missing = []
    for mod, pip_name in _PACKAGES.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
            found = False
        if not found:
            missing.append(pip_name)
    return missing


def _require_exporter(what: str = "--format onnx") -> None:
    missing = missing_onnx_packages()
    if missing:
        raise UserError(
            f"{what} needs {', '.join(missing)}, not installed here: "
            f"pip install {' '.join(missing)} (or {PIP_HINT})"
        )


def _check_quant(quant: str) -> None:
    if quant not in ONNX_QUANTS:
        raise UserError(
            f"--quant {quant!r}: ONNX export does {', '.join(ONNX_QUANTS)} (int8: "
            "onnxruntime's MatMulNBits, 8-bit blocks of 64); pick one of them"
        )


def _flat(cache: Any) -> list[Any]:
    """``[k0, v0, k1, v1, ...]`` of a ``DynamicCache``; a layer that keeps no keys and
    values (linear attention, state-space layers of hybrid models) cannot cross the graph
    this way and is refused."""
    flat: list[Any] = []
    for i, layer in enumerate(cache.layers):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None:
            raise UserError(
                f"layer {i} keeps a {type(layer).__name__}, not keys and values; ONNX export "
                "handles attention-only decoders"
            )
        flat += [keys, values]
    return flat


def _wrapper(model: Any) -> Any:
    """``model`` as a module whose KV cache is flat tensors in and out:
    ``(input_ids, attention_mask, position_ids, (k0, v0, k1, v1, ...)) ->
    (logits, k0', v0', ...)``."""
    import torch
    from transformers import DynamicCache

    from lmops.models.compat import cache_arg

    key = cache_arg(model)

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            position_ids: torch.Tensor,
            past: tuple[torch.Tensor, ...],
        ) -> tuple[torch.Tensor, ...]:
            cache = DynamicCache(config=self.model.config)
            for i in range(len(past) // 2):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{key: cache},
            )
            # the cache was filled in place: past + this step's keys/values
            return (out.logits, *_flat(cache))

    return Decoder().eval()


def _load_fp32(folder: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from lmops.models.loading import quiet_transformers

    quiet_transformers()
    from lmops.deploy._source import refuse_quantized

    refuse_quantized(folder, str(folder), "export its source model to ONNX instead")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch.float32, attn_implementation="sdpa"
        )
    except (ValueError, KeyError, OSError) as e:
        msg = first_line(e)
        raise UserError(f"{folder}: transformers cannot load this model ({msg})") from None
    return model.eval()


def _sample_inputs(model: Any) -> tuple[Any, ...]:
    """A traced call's arguments: random ids after a past of ``_PAST`` positions whose
    cache has the shapes the model itself produces (heads and head size from a real
    forward, so no per-architecture config reading)."""
    import torch
    from transformers import DynamicCache

    from lmops.models.compat import cache_arg

    vocab = int(model.config.vocab_size)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (_BATCH, _SEQ), generator=g)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(
            input_ids=torch.randint(0, vocab, (_BATCH, _PAST), generator=g),
            use_cache=True,
            **{cache_arg(model): cache},
        )
    past = tuple(_flat(cache))
    mask = torch.ones(_BATCH, _PAST + _SEQ, dtype=torch.long)
    pos = torch.arange(_PAST, _PAST + _SEQ).unsqueeze(0).expand(_BATCH, _SEQ).contiguous()
    return ids, mask, pos, past


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's and the quantizer's chatter off: warnings about axis names and
    torchvision ops, and onnxruntime's pre-processing advice (logged on the root logger)."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    return past, present


def _export_graph(model: Any, out: Path) -> None:
    """Trace ``model`` (fp32) into ``out`` with the KV-cache signature of the module
    docstring."""
    import onnx_ir as ir
    import torch

    args = _sample_inputs(model)
    past_names, present_names = _names(len(args[3]) // 2)
    dynamic = (
        {0: "batch", 1: "seq"},
        {0: "batch", 1: "total"},
        {0: "batch", 1: "seq"},
        tuple({0: "batch", 2: "past"} for _ in past_names),
    )
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        with _quiet():
            program = torch.onnx.export(
                _wrapper(model),
                args,
                None,  # the program, saved below without the per-node metadata
                input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                output_names=["logits", *present_names],
                dynamic_shapes=dynamic,
                dynamo=True,
                opset_version=OPSET,
                verbose=False,
            )
    except Exception as e:  # the exporter's errors are pages long; the first line says what
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise UserError(
            f"torch.onnx could not export {model.config.model_type!r} ({first[:200]}); "
            "this exporter handles decoders that run with transformers' DynamicCache"
        ) from None
    assert program is not None
    # every node carries its Python stack trace and FX text (this machine's paths; 5 MB on
    # SmolLM2-135M, half the file on the tiny test model): debugging aids, not the model
    for node in ir.traversal.RecursiveGraphIterator(program.model.graph):
        node.metadata_props.clear()
    program.save(str(out), external_data=n_bytes > _EXTERNAL_DATA_BYTES)


class Int8Recipe(BaseModel, frozen=True):
    """How ``--quant int8`` rewrites the weight MatMuls as onnxruntime ``MatMulNBits``
    (8-bit symmetric blocks along the input, one fp32 scale a block); the defaults are
    ``int8``'s. The fields past ``lm_head`` are the benchmark's sweep knobs."""

    block_size: int = 64  # weights (and, at level 4, activations) a scale; a power of 2
    # onnxruntime's compute type: 0 = fp32 over dequantized weights (for 8 bits a slow path
    # in onnxruntime 1.32: 5x slower than the fp32 graph), 4 = activations rounded to int8
    # per block at run time, int8 dot products
    accuracy_level: int = 4
    lm_head: bool = True  # quantize the output projection too (a tied one as a copy)
    exclude_down: bool = False  # the MLP down projections stay fp32 MatMuls
    down_accuracy_level: int | None = None  # their level, when not ``accuracy_level``


# the --quant names of the int8 recipes (measured in benchmarks/onnx_bench.py)
INT8_RECIPES: dict[str, Int8Recipe] = {"int8": Int8Recipe()}


def _untie_lm_head(model: Any) -> str | None:
    """A tied ``lm_head`` is ``MatMul(x, Transpose(embedding))``, the embedding being the
    table a ``Gather`` looks up; the quantizer only takes a MatMul over an initializer, so
    that MatMul gets its own transposed copy (the embedding stays fp32 for the lookup).
    Returns the MatMul's name, None when the head is not tied (already an initializer)."""
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    tables = {n.input[0] for n in g.node if n.op_type == "Gather" and n.input[0] in inits}
    for tr in [n for n in g.node if n.op_type == "Transpose" and n.input[0] in tables]:
        users = [n for n in g.node if tr.output[0] in n.input]
        if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[1] != tr.output[0]:
            continue
        head = users[0]
        name = f"{tr.input[0]}.T"
        w = numpy_helper.to_array(inits[tr.input[0]]).T.copy()
        g.initializer.append(numpy_helper.from_array(w, name))
        head.input[1] = name
        g.node.remove(tr)
        return str(head.name)
    return None


def _down_projections(model: Any) -> set[str]:
    """Names of the MatMuls whose weight's input dimension is the widest of the graph: the
    MLP down projections (``intermediate_size`` rows)."""
    inits = {t.name: t for t in model.graph.initializer}
    rows = {
        n.name: int(inits[n.input[1]].dims[0])
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
    }
    widest = max(rows.values(), default=0)
    return {name for name, k in rows.items() if k == widest and widest > min(rows.values())}


def _quantize_int8(src: Path, dst: Path, recipe: Int8Recipe, label: str) -> None:
    """Graph ``src`` (fp32) quantized by ``recipe`` into ``dst``, ``label`` (the --quant)
    recorded in its metadata."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    r = recipe
    model = onnx.load(str(src))
    copied = _untie_lm_head(model) if r.lm_head else None
    down = _down_projections(model)
    opts: dict[str, Any] = {
        "bits": 8,
        "block_size": r.block_size,
        "is_symmetric": True,
        "accuracy_level": r.accuracy_level,
    }
    with _quiet():
        q = MatMulNBitsQuantizer(
            model,
            **opts,
            nodes_to_exclude=sorted(down) if r.exclude_down else None,
            algo_config=DefaultWeightOnlyQuantConfig(**opts),
        )
        q.process()
    level = r.down_accuracy_level
    if level is not None:
        for n in q.model.model.graph.node:
            if n.op_type == "MatMulNBits" and n.name.removesuffix("_Q8") in down:
                kept = [a for a in n.attribute if a.name != "accuracy_level"]
                del n.attribute[:]
                n.attribute.extend([*kept, onnx.helper.make_attribute("accuracy_level", level)])
    props = {_QUANT_PROP: label}
    if copied:  # so bits per weight counts the tied embedding's weights once
        props[_TIED_COPY_PROP] = copied
    onnx.helper.set_model_props(q.model.model, props)
    with _quiet():
        q.model.save_model_to_file(str(dst), (src.parent / f"{src.name}.data").exists())


class OnnxDecoder:
    """An ONNX folder of :func:`export_onnx` in onnxruntime: logits with the KV cache fed
    back, and greedy decoding. ``threads`` sets onnxruntime's intra-op threads."""

    def __init__(self, folder: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(Path(folder) / ONNX_FILE), opts, providers=["CPUExecutionProvider"]
        )
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        shape = inputs[self.past_names[0]].shape  # [batch, kv_heads, past, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])

    def empty_past(self, batch: int) -> dict[str, Any]:
        import numpy as np

        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        return dict.fromkeys(self.past_names, empty)

    def step(
        self, ids: Any, mask: Any, past: dict[str, Any], start: int
    ) -> tuple[Any, dict[str, Any]]:
        """Logits [batch, seq, vocab] of ``ids`` [batch, seq] at positions ``start...``
        after ``past``, and the cache to pass next (``mask`` covers past and ``ids``)."""
        import numpy as np

        batch, seq = ids.shape
        pos = np.broadcast_to(np.arange(start, start + seq, dtype=np.int64), (batch, seq))
        feeds = {
            "input_ids": ids.astype(np.int64),
            "attention_mask": mask.astype(np.int64),
            "position_ids": np.ascontiguousarray(pos),
            **past,
        }
        logits, *present = self.session.run(None, feeds)
        return logits, dict(zip(self.past_names, present, strict=True))

    def logits(self, ids: list[int]) -> Any:
        """Logits [len(ids), vocab] of one sequence, in one prefill step."""
        import numpy as np

        x = np.array([ids], dtype=np.int64)
        out, _ = self.step(x, np.ones_like(x), self.empty_past(1), 0)
        return out[0]

    def generate(
        self,
        ids: list[int],
        max_new_tokens: int,
        eos: int | None = None,
        *,
        on_token: Callable[[int], None] | None = None,
    ) -> list[int]:
        """Greedy continuation of ``ids``: a prefill, then one cached step a token;
        ``on_token`` is called with each token as it is chosen (to time the decode)."""
        import numpy as np

        x = np.array([ids], dtype=np.int64)
        logits, past = self.step(x, np.ones_like(x), self.empty_past(1), 0)
        out: list[int] = []
        n = len(ids)
        while len(out) < max_new_tokens:
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            if on_token is not None:
                on_token(nxt)
            if nxt == eos or len(out) == max_new_tokens:
                break
            logits, past = self.step(
                np.array([[nxt]], dtype=np.int64), np.ones((1, n + 1), dtype=np.int64), past, n
            )
            n += 1
        return out


def onnx_weight_bits(folder: Path) -> tuple[str, int, int]:
    """(quant, stored bits, weights) of the matrices of ``folder``'s graph, read from the
    initializers' shapes (no weights loaded): a ``MatMulNBits`` counts its packed weights,
    scales and zero points over its ``N x K`` weights; a float matrix that a ``MatMul``,
    ``Gemm``, ``Gather`` or ``Transpose`` reads counts once however many read it (tied
    embeddings); norm vectors and biases are not weights. ``quant`` is the ``--quant``
    recorded in the graph (``fp32`` when none is)."""
    import math

    import onnx
    from onnx import helper

    model = onnx.load(str(Path(folder) / ONNX_FILE), load_external_data=False)
    g = model.graph
    inits = {t.name: t for t in g.initializer}

    def nbytes(name: str) -> int:
        t = inits[name]
        return math.prod(t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize

    props = {p.key: p.value for p in model.metadata_props}
    copy = props.get(_TIED_COPY_PROP)
    bits = n = 0
    seen: set[str] = set()
    for node in g.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            bits += 8 * sum(nbytes(i) for i in node.input[1:4] if i in inits)
            if copy is None or node.name.removesuffix("_Q8") != copy:
                n += attrs["N"] * attrs["K"]
            continue
        slot = {"MatMul": 1, "Gemm": 1, "Gather": 0, "Transpose": 0}.get(node.op_type)
        if slot is None or len(node.input) <= slot:
            continue
        name = node.input[slot]
        t = inits.get(name)
        if t is None or name in seen or len(t.dims) != 2 or min(t.dims) < 2:
            continue
        seen.add(name)
        bits += 8 * nbytes(name)
        n += math.prod(t.dims)
    return props.get(_QUANT_PROP, "fp32"), bits, n


def _parity(model: Any, folder: Path, ids: list[int]) -> tuple[float, float]:
    """(max |logit| difference between onnxruntime and transformers, max |logit|) on
    ``ids``: a prefill of all but the last token, then the last through the cache, so both
    paths are checked."""
    import numpy as np
    import torch

    dec = OnnxDecoder(folder)
    x = np.array([ids], dtype=np.int64)
    first, past = dec.step(x[:, :-1], np.ones_like(x[:, :-1]), dec.empty_past(1), 0)
    last, _ = dec.step(x[:, -1:], np.ones_like(x), past, len(ids) - 1)
    got = np.concatenate([first, last], axis=1)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits.numpy()
    return float(np.abs(got - want).max()), float(np.abs(want).max())


def _probe_ids(folder: Path, vocab: int) -> list[int]:
    from lmops.models.loading import load_tokenizer

    ids = load_tokenizer(folder)("The quick brown fox jumps over the lazy dog.")["input_ids"]
    ids = [i for i in ids if i < vocab][:16]
    return ids if len(ids) >= 2 else [1, 2, 3, 4]


def write_onnx(
    folder: Path,
    out: Path,
    quant: str = "fp32",
    *,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, float]:
    """Write model folder ``folder`` as an ONNX decoder folder ``out`` (created; graph,
    config and tokenizer); returns (bytes of graph and weights, max |logit| difference from
    transformers). One-line errors for what cannot be written or does not match."""
    _check_quant(quant)
    _require_exporter()
    from lmops.core.modelfiles import check_model_folder
    from lmops.models.loading import load_tokenizer

    check_model_folder(folder)
    steps = 4 if quant != "fp32" else 3

    def step(done: int) -> None:
        if progress is not None:
            progress(done, steps)

    step(0)
    model = _load_fp32(folder)
    out.mkdir(parents=True, exist_ok=True)
    probe = _probe_ids(folder, int(model.config.vocab_size))
    # int8 is quantized from the checked fp32 graph, which is written beside, then dropped
    with temporary_owned_dir("lmops-onnx-fp32-") as scratch:
        raw = Path(scratch) if quant != "fp32" else out
        _export_graph(model, raw / ONNX_FILE)
        step(1)
        diff, max_logit = _parity(model, raw, probe)
        # the bound scales with the logits: fp32 sums in another order differ in their last
        # bits
        if diff > 1e-3 * max(1.0, max_logit):
            raise UserError(
                f"{folder}: the ONNX graph's logits differ from transformers' by {diff:.3g} "
                f"(max |logit| {max_logit:.3g}); not registered, please report the model type"
            )
        step(2)
        if quant != "fp32":
            _quantize_int8(raw / ONNX_FILE, out / ONNX_FILE, INT8_RECIPES[quant], quant)
            diff, _ = _parity(model, out, probe)
            step(3)
    model.config.save_pretrained(str(out))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(str(out))
    load_tokenizer(folder).save_pretrained(str(out))
    step(steps)
    size = sum(p.stat().st_size for p in out.glob(f"{ONNX_FILE}*"))
    return size, diff


def export_onnx(
    store: Any,
    model_ref: str,
    *,
    output: str,
    quant: str = "fp32",
    progress: Callable[[int, int], None] | None = None,
) -> OnnxExportResult:
    """Export model ``model_ref`` (asset ref or folder) to ONNX and register it as model
    ``output`` (metadata ``format: onnx``, ``quant``, ``opset``, ``max_abs_logit_diff``)
    with lineage to the source. Refused, before any work, when the exporter is not
    installed; nothing is registered when anything fails."""
    from lmops.deploy._source import check_output, source_inputs, source_model

    _check_quant(quant)
    check_output(store, output)  # before the exporter check: a name can be fixed at once
    _require_exporter()
    src, src_ref = source_model(
        model_ref, store, full_precision="export its source model to ONNX instead"
    )
    with store.runs.track(
        "onnx_export", config={"model": model_ref, "quant": quant, "output": output}
    ) as run:
        inputs = source_inputs(store, src, src_ref, run.id)
        tmp = owned_tempdir("lmops-onnx-")
        try:
            folder = tmp / output.replace("/", "_")
            size, diff = write_onnx(src, folder, quant, progress=progress)
            arch = json.loads((folder / "config.json").read_text()).get("model_type")
            v = store.assets.register(
                "model",
                output,
                folder,
                metadata={
                    "format": "onnx",
                    "quant": quant,
                    "opset": OPSET,
                    "kv_cache": True,
                    "max_abs_logit_diff": diff,
                    "architecture": arch,
                    "source": src_ref or str(src),
                },
                inputs=inputs,
                run_id=run.id,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        store.runs.log_metrics(run.id, {"size": size, "max_abs_logit_diff": diff}, 0)
    return OnnxExportResult(
        path=store.assets.path(v.ref),
        quant=quant,
        size=size,
        opset=OPSET,
        max_abs_logit_diff=diff,
        ref=v.ref,
    )
