"""Signals that land while the trainer writes the checkpoint the first one asked for.

A second SIGTERM stops that save; the loop then writes the same checkpoint again (between
steps it is exact). A third SIGTERM during that retry stops it at once: the retried write must
not be left half done beside the good checkpoints (``.tmp-step-*``), the checkpoint it was
writing is absent (never a partial one that a ``--resume`` would read), the line names the
last complete checkpoint and the exit is 143, and the handler from before the run is back
without having seen any of the three signals."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lmops.store import RunStatus, Store
from tests.train.test_interrupt import _interrupt_at, base, job  # noqa: F401  (fixture)


def _sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # let the handler run before going on


@pytest.fixture
def before() -> Any:
    """A SIGTERM handler that records instead of ending pytest: the one training must not
    hand a signal to, and must put back when it ends."""
    got: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        got.append(signum)

    old = signal.signal(signal.SIGTERM, handler)
    yield got, handler
    signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("third", [False, True], ids=["second during the save", "and a third"])
def test_signals_during_the_interrupt_save(
    cli: Any,
    base: Store,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    before: Any,
    third: bool,
) -> None:
    got, handler = before
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps(job(log_steps=1)))  # 8 steps, a checkpoint every 2
    # the first SIGTERM while step 4 is logged: step 5 finishes, then its checkpoint is saved
    _interrupt_at(monkeypatch, 4, _sigterm)
    real_save, writes = torch.save, [0]

    def save(obj: Any, f: Any, *a: Any, **k: Any) -> None:
        if Path(f).name == "state.pt" and Path(f).parent.name == ".tmp-step-000005":
            writes[0] += 1
            Path(f).write_bytes(b"half")  # the signal lands mid-write
            if writes[0] == 1 or (third and writes[0] == 2):
                _sigterm()
        real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    r = cli("train", "run", str(cfg))
    assert r.code == 128 + signal.SIGTERM, r.err[-2000:]
    assert got == []  # every signal went to the trainer, none to the handler before
    assert signal.getsignal(signal.SIGTERM) is handler  # and that handler is back
    run = next(x for x in base.runs.list(kind="train") if x.name == "adder")
    assert run.status is RunStatus.CANCELLED
    ckpts = Path(base.runs.dir(run.id)) / "checkpoints"
    line = r.err.strip().splitlines()[-1]
    if not third:  # the retried save finished: step 5's checkpoint, complete
        assert writes[0] == 2
        assert sorted(p.name for p in ckpts.iterdir()) == ["step-000004", "step-000005"]
        assert line.startswith(f"interrupted after step 5 of 8; checkpoint saved: {ckpts}"), line
        assert torch.load(ckpts / "step-000005" / "state.pt", weights_only=True)["step"] == 5
    else:  # the retry was stopped: step 4's is the last, and nothing half written is left
        assert writes[0] == 2
        # (step 2's stays too: only a finished save prunes the older ones)
        assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002", "step-000004"]
        assert line.startswith(
            f"interrupted after step 5 of 8; last checkpoint: {ckpts / 'step-000004'} (step 4)"
        ), line
    assert line.endswith("--resume"), line


def _signals_in_rmtree(monkeypatch: pytest.MonkeyPatch, when: dict[str, int]) -> list[str]:
    """``shutil.rmtree`` in the loop sends a SIGTERM after removing a folder named in
    ``when`` (as many times as its count) once step 5's checkpoint is in place, so a signal
    lands at that point of a save (pruning, or a rewrite of step 5)."""
    import shutil

    import lmops.train.loop as loop

    real, seen = shutil.rmtree, []

    def rmtree(p: Any, *a: Any, **k: Any) -> None:
        name = Path(p).name
        seen.append(name)
        armed = (Path(p).parent / "step-000005" / "state.pt").exists()
        real(p, *a, **k)
        if when.get(name, 0) > 0 and armed:
            when[name] -= 1
            _sigterm()

    monkeypatch.setattr(loop.shutil, "rmtree", rmtree)
    return seen


def test_second_signal_after_the_checkpoint_is_in_place_then_a_third(
    cli: Any,
    base: Store,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    before: Any,
) -> None:
    """The second signal lands after the first one's save renamed step 5 into place, while it
    prunes step 4 (keep_checkpoints=1). Step 5 is complete: it must not be written again, for
    a rewrite replaced it and a third signal during that left no checkpoint at all (the older
    one already pruned)."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps(job(log_steps=1, keep_checkpoints=1)))
    _interrupt_at(monkeypatch, 4, _sigterm)  # the first: step 5 finishes and is saved
    # the second while step 4 is pruned; the third whenever step 5 would be replaced
    seen = _signals_in_rmtree(monkeypatch, {"step-000004": 1, "step-000005": 1})
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(src).name == "step-000005":
            _sigterm()
        real_rename(src, dst)

    import lmops.train.loop as loop

    monkeypatch.setattr(loop.os, "rename", rename)
    r = cli("train", "run", str(cfg))
    assert r.code == 128 + signal.SIGTERM, r.err[-2000:]
    assert before[0] == []
    run = next(x for x in base.runs.list(kind="train") if x.name == "adder")
    ckpts = Path(base.runs.dir(run.id)) / "checkpoints"
    assert torch.load(ckpts / "step-000005" / "state.pt", weights_only=True)["step"] == 5
    # the complete checkpoint was not removed to be rewritten, nor step 4 pruned twice
    assert seen.count("step-000004") == 1 and "step-000005" not in seen, seen
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")]
    line = r.err.strip().splitlines()[-1]
    assert line.startswith(f"interrupted after step 5 of 8; checkpoint saved: {ckpts}"), line


def test_third_signal_after_the_retry_renamed_its_checkpoint(
    cli: Any,
    base: Store,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    before: Any,
) -> None:
    """The second signal stops the first save mid-write, the retry renames step 5 into place
    and a third signal lands while it prunes step 4: step 5 is complete, so the line says it
    was saved (not that step 5's is merely the last one)."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps(job(log_steps=1, keep_checkpoints=1)))
    _interrupt_at(monkeypatch, 4, _sigterm)
    real_save, writes = torch.save, [0]

    def save(obj: Any, f: Any, *a: Any, **k: Any) -> None:
        if Path(f).name == "state.pt" and Path(f).parent.name == ".tmp-step-000005":
            writes[0] += 1
            if writes[0] == 1:
                _sigterm()  # the second, mid-write of the first save
        real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    _signals_in_rmtree(monkeypatch, {"step-000004": 1})  # the third, pruning in the retry
    r = cli("train", "run", str(cfg))
    assert r.code == 128 + signal.SIGTERM, r.err[-2000:]
    assert writes[0] == 2
    run = next(x for x in base.runs.list(kind="train") if x.name == "adder")
    ckpts = Path(base.runs.dir(run.id)) / "checkpoints"
    assert torch.load(ckpts / "step-000005" / "state.pt", weights_only=True)["step"] == 5
    line = r.err.strip().splitlines()[-1]
    assert line.startswith(f"interrupted after step 5 of 8; checkpoint saved: {ckpts}"), line


def test_replacing_a_checkpoint_keeps_the_old_one_until_the_new_one_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint written again for the same step, stopped (Ctrl-C) between its write and
    its rename: the one it was replacing is still there, whole, and no temporary folder."""
    import lmops.train.loop as loop

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)

    def save(tokens: int) -> Path:
        return loop._save_checkpoint(tmp_path, 5, model, opt, sched, 1, tokens, loop.IntervalMean())

    save(tokens=111)
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(src).name.startswith(".tmp-"):
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(loop.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        save(tokens=222)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005"]
    assert torch.load(tmp_path / "step-000005" / "state.pt", weights_only=True)["tokens"] == 111
    monkeypatch.setattr(loop.os, "rename", real_rename)
    save(tokens=333)  # and an uninterrupted replace replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005"]
    assert torch.load(tmp_path / "step-000005" / "state.pt", weights_only=True)["tokens"] == 333


def test_a_signal_while_the_stop_is_recorded_is_ignored(
    cli: Any,
    base: Store,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    before: Any,
) -> None:
    """Another SIGTERM while the stopped run is recorded CANCELLED went to the handler from
    before the run (the default one ends the process there: the run left RUNNING, no line).
    Now nothing sees it: the run is recorded, the line printed, exit 143."""
    from lmops.store.runs import RunTracker

    got, _ = before
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps(job(log_steps=1)))
    _interrupt_at(monkeypatch, 4, _sigterm)
    real_finish = RunTracker.finish

    def finish(self: RunTracker, run_id: str, status: Any = RunStatus.SUCCEEDED, *a: Any) -> Any:
        if status is RunStatus.CANCELLED:
            _sigterm()
        return real_finish(self, run_id, status, *a)

    monkeypatch.setattr(RunTracker, "finish", finish)
    r = cli("train", "run", str(cfg))
    assert r.code == 128 + signal.SIGTERM, r.err[-2000:]
    assert got == []
    run = next(x for x in base.runs.list(kind="train") if x.name == "adder")
    assert run.status is RunStatus.CANCELLED
    ckpts = Path(base.runs.dir(run.id)) / "checkpoints"
    line = r.err.strip().splitlines()[-1]
    assert line.startswith(f"interrupted after step 5 of 8; checkpoint saved: {ckpts}"), line
