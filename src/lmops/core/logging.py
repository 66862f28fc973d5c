"""Logging set-up: rich to stderr for people, plain records for files."""

from __future__ import annotations

import logging

__all__ = ["get_logger", "setup_logging"]


def setup_logging(debug: bool = False) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(message)s",
        # stderr: stdout carries results (``--json`` must stay parseable whatever a
        # library logs)
        handlers=[
            RichHandler(console=Console(stderr=True), show_path=debug, rich_tracebacks=debug)
        ],
        force=True,
    )
    # With lmops[gpu], every command that imports peft imports bitsandbytes, whose CPU back
    # end asks the `kernels` package for a faster 4-bit kernel from the Hub: offline, both
    # warn at import (a skipped trust check, a kernel not in the cache), a dozen lines of
    # noise on every command's stderr. Only those two loggers: kernels' signature checks
    # (kernels._internals.validate) warn about a kernel that fails one, which must show.
    # Shown with --debug.
    for name in ("kernels._internals.hf_hub", "bitsandbytes.backends.cpu.ops"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.ERROR)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
