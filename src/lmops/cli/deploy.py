"""``lmops deploy``: take a model to where it runs (quantize, export, distill, prune, package).

The commands live in two modules that add themselves to :data:`app`: model transforms
(``_deploy_models``: GGUF export, quantization, report) and packages and compression
(``_deploy_packages``: sign/encrypt/verify/unpack, keygen, distill, prune).
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Deployment: quantize, export (GGUF), distill, prune, sign and encrypt packages.",
    no_args_is_help=True,
)


def _register() -> None:
    import importlib

    for name in ("_deploy_models", "_deploy_packages"):
        try:
            importlib.import_module(f"lmops.cli.{name}")
        except ModuleNotFoundError as exc:  # a module not written yet
            if exc.name != f"lmops.cli.{name}":
                raise


_register()
