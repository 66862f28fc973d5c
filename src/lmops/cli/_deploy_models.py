"""``lmops deploy export / quantize / report``: the commands over :mod:`lmops.deploy.gguf`,
:mod:`lmops.deploy.quantize` and :mod:`lmops.deploy.report` (model transforms)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from lmops.cli._output import console, human_size, interrupted, open_store, print_json
from lmops.cli.deploy import app
from lmops.core.errors import UserError
from lmops.core.signals import StopSignals

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


class _Bar:
    """A progress callback ``(done, total)`` over :class:`lmops.core.progress.Progress` that
    remembers how far the job got, for the line an interrupted command prints."""

    def __init__(self, label: str, unit: str, enabled: bool) -> None:
        self.label, self.unit, self.enabled = label, unit, enabled
        self.bar: Any = None
        self.done = self.total = 0

    def __call__(self, done: int, total: int) -> None:
        from lmops.core.progress import Progress

        if self.bar is None:
            self.bar = Progress(total=total, label=self.label, unit=self.unit, enabled=self.enabled)
            self.bar.__enter__()
            self.done = 0
        self.bar.advance(done - self.done)
        self.done, self.total = done, total
        if done >= total:
            self.close()

    def close(self, stopped: bool = False) -> None:
        """End the bar; ``stopped``: the job did not finish (the plain line says so)."""
        bar, self.bar = self.bar, None
        if bar is not None:
            why = (KeyboardInterrupt, KeyboardInterrupt(), None) if stopped else (None, None, None)
            bar.__exit__(*why)

    def where(self) -> str:
        """`` after 120 of 272 tensors``, or ``""`` before the first."""
        return f" after {self.done:,} of {self.total:,} {self.unit}" if self.total else ""


def _latest(name: str) -> str | None:
    """The ref of asset ``name``'s latest ready version, None while it has none."""
    from lmops.core.errors import NotFoundError

    try:
        return open_store().assets.resolve(name).ref
    except (NotFoundError, UserError):
        return None


@contextmanager
def _work(what: str, output: str, bar: _Bar) -> Iterator[None]:
    """Run a job that writes to a temporary place and registers ``output`` at its end. A
    Ctrl-C or SIGTERM (:class:`StopSignals`, stopping at once: the job has no step to finish)
    stops its bar and prints where it was and that nothing was kept (the temporary files are
    removed, nothing is registered, the run is recorded CANCELLED), exit 130 or 143; typer
    alone would exit 130 without a word, and the default SIGTERM ended the process without
    one, its temporary folder left behind and its run RUNNING. A signal that comes once the
    new version is registered (while temporary files are removed) says that version is kept.
    Once stopping, further signals are ignored until the line is printed (``once``): the job's
    cleanup and this report run whole instead of the process ending without a word."""
    before = _latest(output)
    with StopSignals(graceful=False, once=True) as stop:
        try:
            yield
        except KeyboardInterrupt as e:
            stop.hold()  # (held already if ours raised it; a Ctrl-C from elsewhere too)
            signum = getattr(e, "signum", None) or signal.SIGINT  # StopSignals' says which
            bar.close(stopped=True)
            after = _latest(output)
            if after is not None and after != before:
                interrupted(f"interrupted {what} after registering {after}; it is kept", signum)
            interrupted(
                f"interrupted {what}{bar.where()}; nothing was written ({output} not registered)",
                signum,
            )
        except BaseException:
            bar.close(stopped=True)
            raise


@app.command("export")
def export_cmd(
    model: Annotated[str, typer.Argument(help="Model asset ref or local HF folder.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Name of the model asset.")],
    format_: Annotated[
        str,
        typer.Option(
            "--format", help="Output format: gguf, or onnx (pip install 'lmops\\[onnx]')."
        ),
    ] = "gguf",
    quant: Annotated[
        str | None,
        typer.Option(
            "--quant",
            help="gguf matrices: f16, q8_0 (default), q4_0 or q4_1 (4-bit keeps the token "
            "embeddings and output layer at q8_0, as llama.cpp does); onnx: fp32 (default) or "
            "int8 (onnxruntime MatMulNBits: 8-bit weights and activations in blocks of 64).",
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Write MODEL as a GGUF file (llama.cpp, transformers) or an ONNX decoder with its KV
    cache (onnxruntime) and register it as OUTPUT."""
    from lmops.deploy.gguf import export_gguf

    if format_ == "onnx":
        from lmops.deploy.onnx import export_onnx

        bar = _Bar("export", "steps", not json_)
        with _work(f"exporting {model} to onnx {quant or 'fp32'}", output, bar):
            onnx = export_onnx(
                open_store(), model, output=output, quant=quant or "fp32", progress=bar
            )
        if json_:
            print_json(onnx)
            return
        console.print(
            f"exported [bold]{onnx.ref}[/] (onnx {onnx.quant}, {human_size(onnx.size)}, "
            f"max |logit| diff {onnx.max_abs_logit_diff:.2g} vs transformers)"
        )
        return
    if format_ != "gguf":
        raise UserError(f"--format {format_!r}: this lmops exports gguf or onnx; pick one")
    quant = quant or "q8_0"
    bar = _Bar("export", "tensors", not json_)
    with _work(f"exporting {model} to gguf {quant}", output, bar):
        res = export_gguf(open_store(), model, quant=quant, output=output, progress=bar)
    if json_:
        print_json(res)
        return
    kept = f", {' and '.join(res.kept_q8_0)} at q8_0" if res.kept_q8_0 else ""
    console.print(
        f"exported [bold]{res.ref}[/] (gguf {res.quant}{kept}, {human_size(res.size)}, "
        f"{res.bits_per_weight:.2f} bits/weight)"
    )


@app.command("quantize")
def quantize_cmd(
    model: Annotated[str, typer.Argument(help="Model asset ref or local HF folder.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Name of the model asset.")],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="int8 (CPU engine, faster), gptq4 (calibrated), or bitsandbytes bnb-nf4 / "
            "bnb-int8 (CUDA, or its CPU back end; pip install 'lmops\\[gpu]').",
        ),
    ] = "int8",
    calibration: Annotated[
        str | None,
        typer.Option(
            "--calibration",
            help="Dataset asset or file of text/rows: gptq4 needs it; int8 with it chooses "
            "its codes by GPTQ and smooths the norms (+0.4 % perplexity on SmolLM2, not +4 %).",
        ),
    ] = None,
    calibration_samples: Annotated[
        int | None, typer.Option("--calibration-samples", min=1, help="Calibration sequences.")
    ] = None,
    seq_len: Annotated[
        int | None, typer.Option("--seq-len", min=16, help="Tokens per calibration sequence.")
    ] = None,
    group_size: Annotated[
        int | None, typer.Option("--group-size", help="gptq4: weights per scale (default 32).")
    ] = None,
    head_bits: Annotated[
        int | None,
        typer.Option("--head-bits", help="gptq4: bits of lm_head/embeddings, 4 or 8 (default 4)."),
    ] = None,
    int8_rounding: Annotated[
        str | None,
        typer.Option("--int8-rounding", help="int8 with calibration: gptq (default) or nearest."),
    ] = None,
    int8_two_pass: Annotated[
        str | None,
        typer.Option(
            "--int8-two-pass",
            help="int8: comma-separated layer names whose activations take two int8 passes "
            "(default down_proj,lm_head; '' for none).",
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Quantize MODEL for the built-in engine (lmops serve, lmops eval) as OUTPUT."""
    from pydantic import ValidationError

    from lmops.deploy.quantize import QuantizeConfig, quantize_model

    given = {
        "method": method,
        "calibration_samples": calibration_samples,
        "seq_len": seq_len,
        "group_size": group_size,
        "head_bits": head_bits,
        "int8_rounding": int8_rounding,
        "int8_two_pass": None
        if int8_two_pass is None
        else [n.strip() for n in int8_two_pass.split(",") if n.strip()],
    }
    try:  # options left out take the published defaults of QuantizeConfig
        cfg = QuantizeConfig.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        raise UserError(
            f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}"
            + (
                " (int8 or gptq4 on CPU; bnb-* need bitsandbytes)"
                if first["loc"][0] == "method"
                else ""
            )
        ) from None
    bar = _Bar("quantize", "layers", not json_)
    with _work(f"quantizing {model} ({cfg.method})", output, bar):
        res = quantize_model(
            open_store(), model, output=output, config=cfg, calibration=calibration, progress=bar
        )
    if json_:
        print_json(res)
        return
    console.print(
        f"quantized [bold]{res.ref}[/] ({res.method}, {res.layers} layers, "
        f"{res.bits_per_weight:.2f} bits/weight overall, "
        f"{res.quantized_bits_per_weight:.2f} in its {res.method} layers)"
    )


@app.command("report")
def report_cmd(
    models: Annotated[list[str], typer.Argument(help="Model variants: asset refs or folders.")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Name of the deploy_report asset.")
    ] = "deploy-report",
    text: Annotated[
        str | None,
        typer.Option(
            "--text",
            help="Reference text: dataset asset or file (default: a tinyshakespeare slice).",
        ),
    ] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=64, help="Reference tokens for perplexity.")
    ] = 4096,
    gen_tokens: Annotated[
        int, typer.Option("--gen-tokens", min=0, help="Tokens generated for tokens/s (0: skip).")
    ] = 64,
    json_: JsonOpt = False,
) -> None:
    """Size, bits/weight, perplexity and tokens/s of each variant: a table, a plot, an asset."""
    from lmops.deploy.report import ReportConfig, deploy_report

    bar = _Bar("report", "variants", not json_)
    with _work("measuring the variants", output, bar):
        res = deploy_report(
            open_store(),
            models,
            output=output,
            config=ReportConfig(text=text, max_tokens=max_tokens, gen_tokens=gen_tokens),
            progress=bar,
        )
    if json_:
        print_json(res)
        return
    from lmops.cli._output import table

    rows = [
        [
            r.model,
            r.format,
            human_size(r.size),
            f"{r.bits_per_weight:.2f}",
            f"{r.perplexity:.3f}" if r.perplexity is not None else "-",
            f"{r.ppl_delta_pct:+.2f}%" if r.ppl_delta_pct is not None else "-",
            f"{r.tokens_per_s:.1f}" if r.tokens_per_s is not None else "-",
        ]
        for r in res.rows
    ]
    table(None, ["model", "format", "size", "bits/w", "perplexity", "vs first", "tok/s"], rows)
    console.print(f"registered [bold]{res.ref}[/] (plot: report.png in it)")
