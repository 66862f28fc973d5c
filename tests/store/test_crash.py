"""A registering process killed mid-copy never leaves a READY version with missing bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmops.core.errors import NotFoundError
from lmops.store import Store, VersionStatus

# The child stores a directory and stalls after the first file is staged, so the parent
# can kill it with SIGKILL at a known point mid-copy.
CHILD = r"""
import sys, time
from pathlib import Path
from lmops.store import Store
from lmops.store import artifacts

real = artifacts.ArtifactStore.publish
def slow(self, staged):
    real(self, staged)
    Path(sys.argv[2]).write_text("one file stored")
    time.sleep(60)
artifacts.ArtifactStore.publish = slow
Store().assets.register("model", "big", Path(sys.argv[1]))
"""


def test_kill_during_registration(lmops_home: Path, tmp_path: Path) -> None:
    src = tmp_path / "model"
    src.mkdir()
    for i in range(3):
        (src / f"shard-{i}.bin").write_bytes(os.urandom(1000) + bytes([i]))
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(src), str(marker)],
        env={**os.environ, "LMOPS_HOME": str(lmops_home)},
    )
    deadline = time.time() + 60
    while not marker.exists():
        assert proc.poll() is None, "child exited before the kill point"
        assert time.time() < deadline, "child never reached the kill point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    store = Store()
    v1 = store.assets.get("big:1")
    assert v1.status is VersionStatus.PENDING  # never READY
    with pytest.raises(NotFoundError):
        store.assets.resolve("big")
    # The next registration notices the dead writer, fails the abandoned version,
    # and succeeds with the next number.
    v2 = store.assets.register("model", "big", src)
    assert v2.version == 2 and v2.status is VersionStatus.READY and v2.files == 3
    assert store.assets.get("big:1").status is VersionStatus.FAILED
    assert "abandoned" in (store.assets.get("big:1").error or "")
    assert store.assets.verify("big") == {"big:2": []}
    # gc keeps v2's bytes and can clear what the dead writer left behind
    store.gc(grace_s=0)
    assert store.assets.verify("big") == {"big:2": []}
    assert not any(store.artifacts.staging.iterdir())
