"""Temp folders that hold whole models (merged adapters, quantized or exported models before
registration) are removed by their maker's cleanup, which a kill -9 or the OOM killer never
runs: the next folder of the same kind removes those whose process is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmops.core.proc import owned_tempdir, temporary_owned_dir


def test_a_dead_processs_folder_goes_and_a_live_ones_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = tmp_path / f"lmops-quant-{gone.stdout.strip()}-x1"
    live = tmp_path / f"lmops-quant-{os.getpid()}-x2"
    other = tmp_path / f"lmops-onnx-{gone.stdout.strip()}-x3"  # another kind: not this sweep's
    for d in (dead, live, other):
        (d / "weights").mkdir(parents=True)
    made = owned_tempdir("lmops-quant-")
    assert made.parent == tmp_path and made.name.startswith(f"lmops-quant-{os.getpid()}-")
    assert (made.stat().st_mode & 0o777) == 0o700
    assert not dead.exists() and live.exists() and other.exists()
    with temporary_owned_dir("lmops-onnx-") as scratch:
        assert Path(scratch).is_dir() and not other.exists()
    assert not Path(scratch).exists()
