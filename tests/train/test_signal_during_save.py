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
