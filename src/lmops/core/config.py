"""Settings read from the environment.

``LMOPS_HOME``          state directory (default ``~/.lmops``)
``LMOPS_DATABASE_URL``  SQLAlchemy URL (default ``sqlite:///$LMOPS_HOME/lmops.db``)
``LMOPS_ARTIFACTS``     artifact root: a local path or an fsspec URL such as ``s3://bucket/x``
                        (default ``$LMOPS_HOME/artifacts``)
``LMOPS_SHARED_DATASETS`` where the shared public data sets live (optional)
``LMOPS_COPY_INPUTS``   ``1``: jobs store a copy of the local files and folders they read
                        (default: they record path, size and sha256 only)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lmops.core.errors import UserError

__all__ = ["Settings", "find_shared_datasets", "mask_url"]


# A URL inside other text: scheme "://", then everything up to the LAST "@" before the next
# whitespace is credentials (passwords may hold an unencoded "@", ":" or "/"); an empty
# authority ("sqlite:///path") has none.
_URL_IN_TEXT = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@][^\s]*@")
_URL = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.\-]*://")


def mask_url(text: str) -> str:
    """Hide the credentials of every URL in ``text``: ``postgresql://***@host/db``.

    Everything between ``scheme://`` and the last ``@`` is replaced, so a password with an
    unencoded ``@`` (``postgresql://u:p@ss@host/db``) is hidden whole, and so is the user
    name (an S3 access key in ``s3://key:secret@bucket``). ``text`` may be a URL (the last
    ``@`` of the whole string ends its credentials, whatever characters they hold: text that
    starts with ``scheme://`` is read as one URL) or a message with URLs in it (where a URL
    ends at whitespace). The one helper for every URL that
    is shown or put in a message: ``lmops info``, ``/api/info``, store and gateway errors.
    """
    if _URL.match(text):
        scheme, _, rest = text.partition("://")
        if "@" in rest and not rest.startswith("/"):
            return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return text
    return _URL_IN_TEXT.sub(r"\1***@", text)


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    database_url: str
    artifacts: str
    shared_datasets: Path | None
    copy_inputs: bool = False  # store the bytes of local inputs, not only their digests

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
            copy_inputs=_flag("LMOPS_COPY_INPUTS"),
        )

    def __repr__(self) -> str:  # never show credentials in logs or tracebacks
        return (
            f"Settings(home={str(self.home)!r}, database_url={mask_url(self.database_url)!r}, "
            f"artifacts={mask_url(self.artifacts)!r}, shared_datasets={self.shared_datasets!r})"
        )

    @property
    def runs_dir(self) -> Path:
        """Run logs and run-local files (plots, checkpoints) live under here."""
        return self.home / "runs"


def _flag(name: str) -> bool:
    raw = (os.environ.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise UserError(f"{name}={raw!r}: expected 1 or 0")


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
