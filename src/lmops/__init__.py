"""lmops: a self-hosted LMOps platform.

Stages (``data``, ``train``, ``eval``, ``prompts``, ``serve``, ``deploy``, ``security``,
``monitor``, ``pipelines``) sit over ``store`` (metadata database, content-addressed
artifacts, assets, versions, aliases, lineage, runs, audit) and ``core`` (config, paths,
errors, logging). ``cli``, ``api`` and ``web`` are thin skins over the same functions.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
