"""``/api/deploy``: the deployment stage over HTTP, the same functions as ``lmops deploy``.

Model transforms (admin keys: they register assets): ``POST /api/deploy/export`` (GGUF or ONNX),
``POST /api/deploy/quantize`` (int8 / gptq4), ``POST /api/deploy/report``, and
``POST /api/deploy/import-gguf`` (a GGUF file on the server's disk as a model asset).
They run to completion in the request (a worker thread) and answer with what was
registered; bad input is the one-line error of the CLI, as HTTP 400.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from lmops.api.deps import Admin, ServerPath, Text
from lmops.deploy.gguf import ImportDtype
from lmops.deploy.quantize import QuantizeConfig
from lmops.deploy.report import ReportConfig

router = APIRouter(prefix="/api/deploy", tags=["deploy"])


class ExportRequest(BaseModel):
    model: ServerPath
    output: Text
    format: Text = "gguf"
    quant: Text | None = None  # gguf: q8_0, onnx: fp32


class QuantizeRequest(BaseModel):
    model: ServerPath
    output: Text
    calibration: ServerPath | None = None
    config: QuantizeConfig = Field(default_factory=QuantizeConfig)


class ReportRequest(BaseModel):
    models: list[ServerPath]
    output: Text = "deploy-report"
    config: ReportConfig = Field(default_factory=ReportConfig)


class ImportGgufRequest(BaseModel):
    file: ServerPath  # a path on the server
    name: Text
    description: Text = ""
    dtype: ImportDtype = "auto"  # auto: the file's precision (float16 for block quants)


@router.post("/export")
def export(body: ExportRequest, store: Admin) -> Any:
    from lmops.core.errors import UserError
    from lmops.deploy.gguf import export_gguf

    if body.format == "onnx":
        from lmops.deploy.onnx import export_onnx

        return export_onnx(store, body.model, output=body.output, quant=body.quant or "fp32")
    if body.format != "gguf":
        raise UserError(f"format {body.format!r}: this lmops exports gguf or onnx")
    return export_gguf(store, body.model, quant=body.quant or "q8_0", output=body.output)


@router.post("/quantize")
def quantize(body: QuantizeRequest, store: Admin) -> Any:
    from lmops.deploy.quantize import quantize_model

    return quantize_model(
        store, body.model, output=body.output, config=body.config, calibration=body.calibration
    )


@router.post("/report")
def report(body: ReportRequest, store: Admin) -> Any:
    from lmops.deploy.report import deploy_report

    return deploy_report(store, body.models, output=body.output, config=body.config)


@router.post("/import-gguf")
def import_gguf(body: ImportGgufRequest, store: Admin) -> Any:
    from lmops.deploy.gguf import import_gguf as do_import

    return do_import(
        store, Path(body.file), name=body.name, description=body.description, dtype=body.dtype
    )


# -- packages and compression (lmops.deploy.package / prune / distill) -------------------------
class PackageRequest(BaseModel):
    model: ServerPath
    output: Text
    sign: ServerPath | None = None  # a key file on the server (lmops deploy keygen)
    encrypt: bool = False
    kek_file: ServerPath | None = None  # else the server's $LMOPS_KEK
    chunk_mib: int = 4


class VerifyRequest(BaseModel):
    package: ServerPath  # a package asset ref or a file on the server
    pubkey: ServerPath | None = None
    key_file: ServerPath | None = None
    allow_unsigned: bool = False


@router.post("/package")
def package(body: PackageRequest, store: Admin) -> Any:
    from lmops.deploy.package import package_model

    return package_model(
        body.model,
        output=body.output,
        sign=Path(body.sign) if body.sign else None,
        encrypt=body.encrypt,
        kek_file=Path(body.kek_file) if body.kek_file else None,
        chunk_mib=body.chunk_mib,
        store=store,
    )


@router.post("/verify")
def verify(body: VerifyRequest, store: Admin) -> Any:
    from lmops.deploy.package import verify_package

    return verify_package(
        body.package,
        pubkey=Path(body.pubkey) if body.pubkey else None,
        key_file=Path(body.key_file) if body.key_file else None,
        allow_unsigned=body.allow_unsigned,
        store=store,
    )


@router.post("/prune")
def prune(body: dict[str, Any], store: Admin) -> Any:
    """The body is a :class:`~lmops.deploy.prune.PruneSpec` (the CLI's options)."""
    from lmops.core.yamlcfg import validate_config
    from lmops.deploy.prune import PruneSpec
    from lmops.deploy.prune import prune as run_prune

    return run_prune(validate_config(body, PruneSpec, source="request body"), store=store)


@router.post("/distill")
def distill(body: dict[str, Any], store: Admin) -> Any:
    """The body is a :class:`~lmops.deploy.distill.DistillSpec`; a repeated request with
    the same body resumes from the last checkpoint."""
    from lmops.core.yamlcfg import validate_config
    from lmops.deploy.distill import DistillSpec
    from lmops.deploy.distill import distill as run_distill

    return run_distill(validate_config(body, DistillSpec, source="request body"), store=store)
