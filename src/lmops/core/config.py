"""Settings read from the environment.

``LMOPS_HOME``          state directory (default ``~/.lmops``)
``LMOPS_DATABASE_URL``  SQLAlchemy URL (default ``sqlite:///$LMOPS_HOME/lmops.db``)
``LMOPS_ARTIFACTS``     artifact root: a local path or an fsspec URL such as ``s3://bucket/x``
                        (default ``$LMOPS_HOME/artifacts``)
``LMOPS_SHARED_DATASETS`` where the shared public data sets live (optional)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "find_shared_datasets", "mask_url"]


def mask_url(url: str) -> str:
    """Hide the password in a database URL: ``postgresql://u:***@host/db``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    database_url: str
    artifacts: str
    shared_datasets: Path | None

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("LMOPS_HOME") or Path.home() / ".lmops").expanduser()
        db = os.environ.get("LMOPS_DATABASE_URL") or f"sqlite:///{home / 'lmops.db'}"
        artifacts = os.environ.get("LMOPS_ARTIFACTS") or str(home / "artifacts")
        shared = os.environ.get("LMOPS_SHARED_DATASETS")
        return cls(
            home=home,
            database_url=db,
            artifacts=artifacts,
            shared_datasets=Path(shared).expanduser() if shared else None,
        )

    @property
    def runs_dir(self) -> Path:
        """Run logs and run-local files (plots, checkpoints) live under here."""
        return self.home / "runs"


def find_shared_datasets(explicit: Path | None = None) -> Path | None:
    """The shared public data sets folder: ``explicit``, else ``$LMOPS_SHARED_DATASETS``,
    else ``../shared/datasets`` beside the current folder or beside this source checkout;
    ``None`` when none of them is a folder."""
    env = os.environ.get("LMOPS_SHARED_DATASETS")
    for cand in (
        explicit,
        Path(env).expanduser() if env else None,
        Path.cwd().parent / "shared" / "datasets",
        Path(__file__).resolve().parents[3].parent / "shared" / "datasets",
    ):
        if cand is not None and cand.is_dir():
            return cand.resolve()
    return None
