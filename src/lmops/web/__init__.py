"""The web console: server-rendered pages under ``/ui`` on ``lmops serve`` (FastAPI,
Jinja2 templates, htmx served from the package). Log in with an API key; the key's role
decides what can be changed. See :mod:`lmops.web.app`."""

from __future__ import annotations

from lmops.web.app import mount_console

__all__ = ["mount_console"]
