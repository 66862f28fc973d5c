"""The HTTP API: ``/healthz``, ``/readyz`` and ``/api/...`` over the same store functions as
the CLI. Later stages mount ``/v1`` (OpenAI-compatible serving) and the console here."""

from lmops.api.app import create_app

__all__ = ["create_app"]
