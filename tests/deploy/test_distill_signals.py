"""Distillation reports the signal that stopped it (exit 128 + signum), as training does: a
second SIGTERM is SIGTERM (143), also when it lands while the first one's checkpoint is
being written (that save ran after the handlers were put back, so the second SIGTERM went
to the handler from before: by default the process ended with no line and no checkpoint),
and a third one during the save the second one retries stops that save at once (it went
to the handler from before as well), and an interrupt that carries its own signal (``core.signals``' stop-at-once exception of a
nested :class:`StopSignals`) is reported as that signal, not SIGINT."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lmops.deploy import distill as distill_mod
from lmops.deploy.distill import DistillInterrupted, DistillSpec, distill
from tests.deploy.test_distill import teacher, text  # noqa: F401  (fixtures)


def _sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # let the handler run before going on


@pytest.fixture
def before() -> Any:
    """A SIGTERM handler that records instead of ending pytest: the one a distillation
    must not hand its second signal to, and must put back when it ends."""
    got: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        got.append(signum)

    old = signal.signal(signal.SIGTERM, handler)
    yield got, handler
    signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("second", ["mid-step", "during the save", "during the save and again"])
def test_a_second_sigterm_is_reported_as_sigterm(
    cli: Any,
    store: Any,
    lmops_home: Path,
    teacher: Path,  # noqa: F811
    text: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    before: Any,
    second: str,
) -> None:
    got, handler = before
    real_lr, real_save = distill_mod.lr_factor, distill_mod._save_atomic

    def lr_factor(step: int, *a: Any) -> float:
        if step == 2:  # the third step (0-based), mid-way
            _sigterm()
            if second == "mid-step":
                _sigterm()
        return real_lr(step, *a)

    saves = [0]

    def save(*a: Any) -> None:
        saves[0] += 1
        if second == "during the save" and saves[0] == 1:  # the first signal's checkpoint
            _sigterm()
        if second == "during the save and again" and saves[0] <= 2:  # and its retry's
            _sigterm()
        real_save(*a)

    monkeypatch.setattr(distill_mod, "lr_factor", lr_factor)
    monkeypatch.setattr(distill_mod, "_save_atomic", save)
    r = cli("deploy", "distill", "--teacher", str(teacher), "--student", "layers:2",
            "--dataset", str(text), "-o", "twice", "--steps", "8", "--seq-len", "32",
            "--eval-blocks", "2", "--lr", "1e-3")  # fmt: skip
    assert r.code == 128 + signal.SIGTERM, (r.out, r.err)
    assert got == []  # both signals went to the distillation, none to the handler before
    assert signal.getsignal(signal.SIGTERM) is handler  # and that handler is back
    line = r.err.strip().splitlines()[-1]
    if second == "mid-step":  # stopped inside step 3: half a step is never saved
        assert line.startswith("interrupted after step 2 of 8, before any checkpoint"), line
    elif second == "during the save and again":  # a third stops the retried save at once
        assert line.startswith("interrupted after step 3 of 8, before any checkpoint"), line
        assert saves[0] == 2
        assert not list((lmops_home / "work" / "distill").rglob("*.tmp"))
    else:  # stopped inside the save of step 3, which the stop then finished
        assert line.startswith("interrupted after step 3 of 8; checkpoint saved: "), line
        ckpt = Path(line.split("checkpoint saved: ")[1].split(";")[0])
        assert torch.load(ckpt, weights_only=True)["step"] == 3


class _CarriedInterrupt(KeyboardInterrupt):
    """A stop at once that carries its signal, as core.signals' ``SignalInterrupt`` does."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum


def test_an_interrupt_carrying_its_signal_is_reported_as_that_signal(
    store: Any,
    teacher: Path,  # noqa: F811
    text: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Raised inside a step by a handler that is not distillation's own (its StopSignals saw
    no signal): the exception's signal is the one reported, where SIGINT was."""
    real = distill_mod.distill_loss
    calls = [0]

    def loss(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            raise _CarriedInterrupt(signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(distill_mod, "distill_loss", loss)
    spec = DistillSpec(teacher=str(teacher), student="layers:2", dataset=str(text),
                       output="carried", steps=4, seq_len=32, eval_blocks=2)  # fmt: skip
    with pytest.raises(DistillInterrupted) as e:
        distill(spec, store=store)
    assert (e.value.signum, e.value.step, e.value.saved) == (signal.SIGTERM, 1, False)


def test_a_checkpoint_write_stopped_midway_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal that stops the write of checkpoint.pt.tmp removes it: the checkpoint
    before is untouched and nothing half written is left beside it."""
    from lmops.core.signals import SignalInterrupt

    ckpt = tmp_path / "checkpoint.pt"
    distill_mod._save_atomic({"step": 1}, ckpt)

    def half(obj: Any, path: Path) -> None:
        Path(path).write_bytes(b"half")
        raise SignalInterrupt(signal.SIGTERM)

    monkeypatch.setattr(torch, "save", half)
    with pytest.raises(SignalInterrupt):
        distill_mod._save_atomic({"step": 2}, ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    monkeypatch.undo()
    assert torch.load(ckpt, weights_only=True)["step"] == 1
