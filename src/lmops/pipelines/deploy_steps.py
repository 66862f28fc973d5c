"""The deploy stage's pipeline steps: ``prune``, ``distill``, ``quantize`` and ``export``
(GGUF or ONNX), each the same job as its ``lmops deploy`` command.

.. code-block:: yaml

    steps:
      small:
        type: prune
        model: my-chat@production
        method: channels
        keep_ratio: 0.66
        calibration: calib-text
        output: my-chat-pruned
      gguf:
        type: export
        model: ${steps.small.output}
        format: gguf
        quant: q8_0
        output: my-chat-gguf
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from lmops.deploy.distill import DistillSpec
from lmops.deploy.prune import PruneSpec
from lmops.pipelines.steps import Params, StepContext, StepOutput, step_type

__all__ = ["DistillParams", "ExportParams", "PruneParams", "QuantizeParams"]


# -- prune, distill (lmops.deploy) -----------------------------------------------------------
def _local_or_ref(ctx: StepContext, value: str) -> str:
    """A path relative to the pipeline's folder when it exists there, else the ref as is."""
    p = ctx.path(value)
    return str(p) if p.exists() else value


class PruneParams(PruneSpec, Params):
    """The step is a prune spec, the same job as ``lmops deploy prune``."""

    def inputs(self) -> list[str]:
        return [self.model, *([self.calibration] if self.calibration else [])]


@step_type("prune", PruneParams)
def _prune(ctx: StepContext, p: PruneParams) -> StepOutput:
    """Prune a model (wanda/magnitude sparsity, or drop layers/heads) and register it."""
    from lmops.deploy.prune import prune

    spec = PruneSpec.model_validate(p.model_dump())
    spec.model = _local_or_ref(ctx, spec.model)
    if spec.calibration:
        spec.calibration = _local_or_ref(ctx, spec.calibration)
    r = prune(spec, store=ctx.store)
    run_id = ctx.store.assets.resolve(r.ref).run_id
    summary = f"{r.ref}: {r.params_before:,} -> {r.params_after:,} parameters"
    return StepOutput({"output": r.ref}, r.model_dump(), summary, run_id)


class DistillParams(DistillSpec, Params):
    """The step is a distill spec, the same job as ``lmops deploy distill`` (it resumes
    from its last checkpoint when run again)."""

    def inputs(self) -> list[str]:
        student = [] if self.student.startswith("layers:") else [self.student]
        return [self.teacher, self.dataset, *student]


@step_type("distill", DistillParams)
def _distill(ctx: StepContext, p: DistillParams) -> StepOutput:
    """Distil a teacher into a smaller student on its logits and register the student."""
    from lmops.deploy.distill import distill

    spec = DistillSpec.model_validate(p.model_dump())
    spec.teacher, spec.dataset = _local_or_ref(ctx, spec.teacher), _local_or_ref(ctx, spec.dataset)
    if not spec.student.startswith("layers:"):
        spec.student = _local_or_ref(ctx, spec.student)
    r = distill(spec, store=ctx.store, show_progress=ctx.progress)
    run_id = ctx.store.assets.resolve(r.ref).run_id
    summary = (
        f"{r.ref}: perplexity {r.student_ppl_start:.2f} -> {r.student_ppl_end:.2f} "
        f"(teacher {r.teacher_ppl:.2f})"
    )
    return StepOutput({"output": r.ref}, r.model_dump(), summary, run_id)


# -- quantize, export (lmops.deploy) ---------------------------------------------------------
class QuantizeParams(Params):
    """``lmops deploy quantize``: int8 or gptq4 (calibration: a dataset or text file), or
    bitsandbytes' bnb-nf4 / bnb-int8 (``pip install 'lmops[gpu]'``)."""

    model: str
    output: str
    method: Literal["int8", "gptq4", "bnb-nf4", "bnb-int8"] = "int8"
    calibration: str | None = None

    def inputs(self) -> list[str]:
        return [self.model, *([self.calibration] if self.calibration else [])]


@step_type("quantize", QuantizeParams)
def _quantize(ctx: StepContext, p: QuantizeParams) -> StepOutput:
    """Quantize a model for the built-in engine (int8, gptq4, bnb-nf4, bnb-int8) and
    register it."""
    from lmops.deploy.quantize import QuantizeConfig, quantize_model

    cal = _local_or_ref(ctx, p.calibration) if p.calibration else None
    r = quantize_model(
        ctx.store, _local_or_ref(ctx, p.model), output=p.output,
        config=QuantizeConfig(method=p.method), calibration=cal,
    )  # fmt: skip
    run_id = ctx.store.assets.resolve(str(r.ref)).run_id
    summary = f"{r.ref}: {p.method}, {r.bits_per_weight:.2f} bits/weight"
    return StepOutput({"output": str(r.ref)}, r.model_dump(mode="json"), summary, run_id)


class ExportParams(Params):
    """``lmops deploy export --format gguf|onnx``."""

    model: str
    output: str
    format: Literal["gguf", "onnx"] = "gguf"
    quant: str | None = None  # gguf: f16, q8_0 (default), q4_0, q4_1; onnx: fp32 (default), int8

    @model_validator(mode="after")
    def _check_quant(self) -> ExportParams:
        # said when the pipeline loads, with the choices, not when its step is reached
        from lmops.deploy.gguf import GGUF_QUANTS
        from lmops.deploy.onnx import ONNX_QUANTS

        choices = GGUF_QUANTS if self.format == "gguf" else ONNX_QUANTS
        if self.quant is not None and self.quant not in choices:
            raise ValueError(f"quant {self.quant!r}: {self.format} does {', '.join(choices)}")
        return self

    def inputs(self) -> list[str]:
        return [self.model]


@step_type("export", ExportParams)
def _export(ctx: StepContext, p: ExportParams) -> StepOutput:
    """Export a model as a GGUF file (llama.cpp) or an ONNX decoder (onnxruntime) and
    register it."""
    model = _local_or_ref(ctx, p.model)
    if p.format == "onnx":
        from lmops.deploy.onnx import export_onnx

        o = export_onnx(ctx.store, model, output=p.output, quant=p.quant or "fp32")
        run_id = ctx.store.assets.resolve(str(o.ref)).run_id
        summary = f"{o.ref}: onnx {o.quant}, {o.size / 1e6:.1f} MB"
        return StepOutput({"output": str(o.ref)}, o.model_dump(mode="json"), summary, run_id)
    from lmops.deploy.gguf import export_gguf

    r = export_gguf(ctx.store, model, quant=p.quant or "q8_0", output=p.output)
    run_id = ctx.store.assets.resolve(str(r.ref)).run_id
    kept = f", {' and '.join(r.kept_q8_0)} at q8_0" if r.kept_q8_0 else ""  # 4-bit exports
    summary = f"{r.ref}: gguf {r.quant}{kept}, {r.size / 1e6:.1f} MB"
    return StepOutput({"output": str(r.ref)}, r.model_dump(mode="json"), summary, run_id)
