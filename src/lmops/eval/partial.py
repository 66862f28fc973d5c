"""Partial results of an evaluation, so a killed or failed run keeps what it finished.

Each task (a group's subtask is a task: one MMLU-Redux subject) is written as it finishes,
to a temporary file then renamed, under ``$LMOPS_HOME/eval-partial/<run key>/``. The run
key hashes the model's identity (an asset version, a local folder's files, or an endpoint
and model name) with the run's settings; each file's key hashes the task's config, the
documents it scores and its few-shot pool, so an edited task, changed data or other
flags never reuse a result. The same command run again finds them and scores only the
rest; once the report is registered, the files are removed.

Like lm-eval's ``--use_cache``, the reuse is automatic; ``resume=False`` (``--no-resume``)
discards them first. A task whose endpoint requests failed is not kept, so a re-run
retries it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from lmops import __version__

__all__ = ["PartialResults", "fingerprint_folder"]


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint_folder(path: Path) -> str:
    """A local model folder's identity: its files' names, sizes and modification times
    (hashing gigabytes of weights to resume would cost more than it saves)."""
    rows = []
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            rows.append((str(f.relative_to(path)), st.st_size, st.st_mtime_ns))
    return _digest([str(path.resolve()), rows])[:16]


class PartialResults:
    """Finished tasks of one model and one set of run settings."""

    def __init__(self, root: Path, model_key: str, settings: dict[str, Any]) -> None:
        self.model_key = model_key
        self.dir = root / _digest([model_key, settings, __version__])[:16]
        self.written: list[Path] = []
        self.reused: list[str] = []

    def key(self, task: Any, docs: list[dict[str, Any]], settings: dict[str, Any]) -> str:
        """The task's key: its config, the documents scored, its few-shot pool, the
        settings."""
        k = settings.get("num_fewshot")
        shots = task.fewshot_docs() if (task.config.num_fewshot if k is None else k) else []
        return _digest(
            [self.model_key, task.config.model_dump(mode="json"), docs, shots, settings]
        )[:16]

    def _file(self, task_name: str, key: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", task_name)[:80]
        return self.dir / f"{safe}.{key}.json"

    def load(self, task_name: str, key: str) -> dict[str, Any] | None:
        f = self._file(task_name, key)
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("key") != key:
            return None
        self.reused.append(task_name)
        self.written.append(f)
        return dict(data["result"])

    def save(self, task_name: str, key: str, result: dict[str, Any]) -> None:
        """Write-to-temp then rename: a kill leaves the old state or the new, never half."""
        self.dir.mkdir(parents=True, exist_ok=True)
        f = self._file(task_name, key)
        tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps({"key": key, "task": task_name, "result": result}, ensure_ascii=False),
            encoding="utf-8",
        )
        os.replace(tmp, f)
        self.written.append(f)

    def finished(self) -> list[Path]:
        return sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []

    def clear(self) -> None:
        """Remove the files this run wrote or reused (and the folder once empty)."""
        for f in self.written:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def discard(self) -> None:
        """Remove every finished task of this model and these settings (``--no-resume``)."""
        self.written += self.finished()
        self.clear()
