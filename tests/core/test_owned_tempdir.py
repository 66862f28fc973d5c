"""Temp folders that hold whole models (merged adapters, quantized or exported models before
registration) are removed by their maker's cleanup, which a kill -9 or the OOM killer never
runs: the next folder of the same kind removes those no process holds."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lmops.core.proc import owned_tempdir, temporary_owned_dir

MAKE = """
import os, sys, time
from lmops.core.proc import owned_tempdir
print(owned_tempdir(sys.argv[1]), flush=True)
if sys.argv[2] == "hold":
    time.sleep(60)
else:
    os._exit(0)  # no cleanup runs, as after kill -9
"""


def _make(prefix: str, how: str, env: dict[str, str]) -> tuple[Path, subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", MAKE, prefix, how], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    return Path(proc.stdout.readline().strip()), proc


def test_a_folder_nobody_holds_goes_and_a_held_one_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    live, holder = _make("lmops-quant-", "hold", env)
    dead, p1 = _make("lmops-quant-", "exit", env)
    p1.wait(timeout=60)
    other_kind, p3 = _make("lmops-quant-big-", "exit", env)  # a prefix that extends this one
    p3.wait(timeout=60)
    old = tmp_path / "lmops-quant-12345-old"  # no .owner: being made, or an older lmops
    old.mkdir()
    try:
        for d in (dead, live, other_kind):
            (d / "weights").write_text("x")
        made = owned_tempdir("lmops-quant-")
        assert made.parent == tmp_path and made.name.startswith(f"lmops-quant-{os.getpid()}-")
        assert (made.stat().st_mode & 0o777) == 0o700
        assert not dead.exists() and live.exists() and other_kind.exists() and old.exists()
        # this process's own folder is held too: another sweep leaves it
        owned_tempdir("lmops-quant-")
        assert made.exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    owned_tempdir("lmops-quant-")  # its holder was killed: now it goes
    assert not live.exists()
    with temporary_owned_dir("lmops-quant-big-") as scratch:
        assert Path(scratch).is_dir() and not other_kind.exists()
    assert not Path(scratch).exists()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make another user's folder")
def test_another_users_folder_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    theirs = tmp_path / "lmops-quant-999999-abc"
    theirs.mkdir()
    (theirs / ".owner").write_text("")
    os.chown(theirs, 65534, 65534)
    owned_tempdir("lmops-quant-")
    assert theirs.exists()
