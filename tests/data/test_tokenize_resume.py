"""``lmops data tokenize`` killed with SIGKILL mid-shard resumes: the next run keeps the
finished shards, skips their documents, deletes the half-written one, and registers a
dataset byte-identical to an uninterrupted run's; nothing is left in its work folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lmops.data import shards as shards_module
from lmops.store import Store
from tests.data.test_jobs import corpus

TEXTS = [
    f"Document {i}: the quick brown fox jumps over the lazy dog {i % 7} times. 数据清洗第{i}步。"
    for i in range(400)
]
ARGS = ["data", "tokenize", "text", "--tokenizer", "tok", "--shard-tokens", "1024"]

# The real command in a child process that stops, to be killed, once two shards are finished
# and recorded and the third is half written (a test hook in the child, not in lmops).
CHILD = """\
import sys, time
from pathlib import Path
from lmops.data import shards
from lmops.cli.main import main

marker = Path(sys.argv[1])
real_add = shards._ShardWriter.add

def add(self, ids):
    real_add(self, ids)
    if len(self.shards) == 2 and self._n > 0:
        self._file.flush()
        marker.write_text("two shards done, the third half written")
        time.sleep(3600)

shards._ShardWriter.add = add
sys.argv = ["lmops", *sys.argv[2:]]
main()
"""


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_killed_tokenize_resumes_to_the_same_bytes(
    cli, tmp_path: Path, lmops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    src = corpus(tmp_path, texts=TEXTS)
    assert cli("assets", "register", "dataset", "text", str(src)).code == 0
    r = cli("data", "tokenizer", "train", "text", "--name", "tok", "--vocab-size", "300")
    assert r.code == 0, r.err

    marker = tmp_path / "stopped"
    env = {**os.environ, "LMOPS_HOME": str(lmops_home)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), *ARGS, "--output", "text-tokens"],
        cwd=tmp_path,  # whatever the child writes lands in the test's own folder
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120  # a liveness bound, not a timing
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), child.stderr.read() if child.poll() is not None else "hung"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(60)
    assert child.returncode == -signal.SIGKILL

    work = lmops_home / "work" / "tokenize" / "text-tokens"
    left = sorted(p.name for p in (work / "shards").iterdir())
    assert ".shard-00002.bin.tmp" in left and "shard-00001.bin" in left, left
    recorded = json.loads((work / "progress.json").read_text())["shards"]
    assert [s["name"] for s in recorded] == ["shard-00000.bin", "shard-00001.bin"]
    resumed_from = sum(s["num_docs"] for s in recorded)

    # the re-run tokenizes only the documents after the finished shards
    tokenized: list[int] = []
    real_batches = shards_module._batches

    def counting(docs: Iterable[Any], size: int, skip: int = 0) -> Iterator[list[str]]:
        for batch in real_batches(docs, size, skip):
            tokenized.append(len(batch))
            yield batch

    monkeypatch.setattr(shards_module, "_batches", counting)
    r = cli(*ARGS, "--output", "text-tokens", "--json")
    assert r.code == 0, r.err
    assert sum(tokenized) == len(TEXTS) - resumed_from and 0 < resumed_from < len(TEXTS)
    assert not work.exists() and not list((lmops_home / "work").rglob("*.tmp"))

    # the same bytes as a run never interrupted
    r = cli(*ARGS, "--output", "clean-tokens", "--json")
    assert r.code == 0, r.err
    store = Store()
    resumed, clean = (Path(store.assets.path(n)) for n in ("text-tokens", "clean-tokens"))
    got, want = _files(resumed), _files(clean)
    assert len([n for n in want if n.endswith(".bin")]) >= 4
    assert got == want
    assert json.loads(got["meta.json"])["num_docs"] == len(TEXTS)


def test_a_changed_setting_starts_over(cli, tmp_path: Path, lmops_home: Path) -> None:  # type: ignore[no-untyped-def]
    """The work of a run with other settings is not resumed: deleted, then written anew."""
    src = corpus(tmp_path, texts=TEXTS)
    assert cli("assets", "register", "dataset", "text", str(src)).code == 0
    assert (
        cli("data", "tokenizer", "train", "text", "--name", "tok", "--vocab-size", "300").code == 0
    )
    work = lmops_home / "work" / "tokenize" / "text-tokens"
    (work / "shards").mkdir(parents=True)
    (work / "fingerprint").write_text("a run with --shard-tokens 4096")
    (work / "shards" / "shard-00000.bin").write_bytes(b"\0" * 64)
    (work / "shards" / ".shard-00001.bin.tmp").write_bytes(b"\0" * 8)
    r = cli(*ARGS, "--output", "text-tokens", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["metadata"]["num_docs"] == len(TEXTS)
    assert not work.exists()


def test_a_second_tokenize_of_the_same_output_is_refused(
    cli, tmp_path: Path, lmops_home: Path
) -> None:  # type: ignore[no-untyped-def]
    import fcntl

    src = corpus(tmp_path, texts=TEXTS[:10])
    assert cli("assets", "register", "dataset", "text", str(src)).code == 0
    assert (
        cli("data", "tokenizer", "train", "text", "--name", "tok", "--vocab-size", "300").code == 0
    )
    work = lmops_home / "work" / "tokenize" / "text-tokens"
    work.mkdir(parents=True)
    fd = os.open(work / "run.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())  # a live holder
        r = cli(*ARGS, "--output", "text-tokens")
    finally:
        os.close(fd)
    assert r.code != 0
    assert f"another lmops data tokenize (pid {os.getpid()}) is using the work folder" in r.err
