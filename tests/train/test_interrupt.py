"""Training that respects the user's time: Ctrl-C / SIGTERM stop between steps with a checkpoint
and one line saying how to resume; a job that left a checkpoint needs --resume or --restart; the
logged loss is the mean over the logging interval (ours and TRL's)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.store import RunStatus, Store
from lmops.train.loop import Interrupted, IntervalMean
from lmops.train.run import run_training
from lmops.train.spec import TrainSpec
from lmops.train.tracking import StoreTracker
from tests.train.tiny import make_model, make_tokenizer, write_alpaca


@pytest.fixture
def base(store: Store, tmp_path: Path) -> Store:
    tok = make_tokenizer(tmp_path / "tok")
    store.assets.register("tokenizer", "tok", tok)
    store.assets.register("model", "tiny", make_model(tmp_path / "tiny", tok))
    store.assets.register("dataset", "adds", write_alpaca(tmp_path / "adds.jsonl", 64))
    return store


def job(**train: Any) -> dict[str, Any]:
    return {
        "stage": "sft",
        "method": "lora",
        "model": "tiny",
        "dataset": "adds",
        "output": "adder",
        "device": "cpu",
        "train": {
            "max_steps": 8,
            "batch_size": 4,
            "max_seq_len": 48,
            "save_steps": 2,
            "lr": 5e-3,
            "warmup_steps": 0,
            **train,
        },
        "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
    }


def spec(output: str = "adder", **train: Any) -> TrainSpec:
    return TrainSpec.model_validate({**job(**train), "output": output})


def _weights(store: Store, ref: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(store.assets.path(ref) / "adapter_model.safetensors"))


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, at: int, action: Any) -> None:
    real_log = StoreTracker.log

    def log(self: StoreTracker, step: int, metrics: dict[str, float]) -> None:
        real_log(self, step, metrics)
        if step == at:
            action()

    monkeypatch.setattr(StoreTracker, "log", log)


# Slows every forward pass so that a signal lands mid-run, then runs the real CLI entry point.
# Ctrl-C as at a terminal: a runner started in the background (`make test &`, nohup) leaves
# SIGINT ignored, which every child inherits and the loop rightly respects.
SLOW_CLI = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "import lmops.train.loop as loop\n"
    "forward = loop._loss_sum\n"
    "loop._loss_sum = lambda *a: (time.sleep(0.4), forward(*a))[1]\n"
    "from lmops.cli.main import main\n"
    "sys.argv[0] = 'lmops'\n"
    "main()\n"
)


def test_ctrl_c_saves_says_how_to_resume_and_resuming_gives_the_same_weights(
    base: Store, tmp_path: Path, lmops_home: Path
) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps(job(max_steps=16, save_steps=5)))
    env = {**os.environ, "LMOPS_HOME": str(lmops_home), "OMP_NUM_THREADS": "1"}
    lmops = [sys.executable, "-m", "lmops.cli.main"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, "train", "run", str(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # wait until it is training (a run with its metrics), then press Ctrl-C
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        runs = [r for r in Store().runs.list(kind="train") if r.name == "adder"]
        if runs and Store().runs.get(runs[0].id).metrics.get("loss"):
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]

    # off a terminal, the progress is plain lines, the last one saying where it stopped;
    # then one line: after which step, where the checkpoint is, and the command to resume
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("sft adder: 0/16 steps") and "stopped" in lines[-2], err
    line = lines[-1]
    assert line.startswith("interrupted after step ") and " of 16; checkpoint saved: " in line
    step = int(line.split("interrupted after step ")[1].split()[0])
    assert 1 <= step < 16
    run = next(r for r in Store().runs.list(kind="train") if r.name == "adder")
    assert run.status is RunStatus.CANCELLED
    ckpt = Path(Store().runs.dir(run.id)) / "checkpoints" / f"step-{step:06d}"
    assert f"checkpoint saved: {ckpt};" in line and (ckpt / "state.pt").is_file()
    command = line.split("; resume with: ")[1]
    assert shlex.split(command) == ["lmops", "train", "run", str(cfg), "--resume"]

    # the same command without --resume refuses to start over silently
    again = subprocess.run(
        [*lmops, "train", "run", str(cfg)], env=env, capture_output=True, text=True
    )
    assert again.returncode == 2
    assert f"a previous run of 'adder' (run {run.id}) stopped at step {step} of 16" in again.stderr
    assert "--resume to continue it, or --restart to start over" in again.stderr

    # the printed command continues it, to the weights of a run never interrupted
    resumed = subprocess.run(
        [*lmops, *shlex.split(command)[1:], "--json"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = json.loads(resumed.stdout)
    assert result["resumed_from"] == step and result["run_id"] == run.id
    straight = run_training(spec("straight", max_steps=16, save_steps=5), base, progress=False)
    a, b = _weights(base, str(straight.output)), _weights(base, result["output"])
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].allclose(b[k], rtol=0, atol=1e-6), k
    losses = [m.value for m in base.runs.get(run.id).metrics["loss"]]
    assert losses[-1] == pytest.approx(straight.final["loss"], rel=1e-5)


def test_sigterm_stops_after_the_step_with_a_checkpoint(
    base: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = signal.getsignal(signal.SIGTERM)  # (Ray, in an earlier test, installs one)
    _interrupt_at(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(Interrupted) as info:
        run_training(spec(log_steps=1), base, progress=False)
    e = info.value
    # the signal came while step 3 was being logged: the loop finishes step 4 and stops
    assert e.signum == signal.SIGTERM and e.step == 4 and e.saved
    assert e.checkpoint is not None and e.checkpoint.name == "step-000004"
    run = next(r for r in base.runs.list() if r.name == "adder")
    assert run.status is RunStatus.CANCELLED and "checkpoint at step 4" in str(run.error)
    # the handlers are put back: SIGTERM's is the one from before the run again
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.fixture
def terminal_ctrl_c() -> Iterator[None]:
    """SIGINT handled as at a terminal for the test (see SLOW_CLI), then as it was."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.usefixtures("terminal_ctrl_c")
def test_a_second_ctrl_c_stops_at_once_and_names_the_last_checkpoint(
    base: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def twice() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # let the handler run before the second
        os.kill(os.getpid(), signal.SIGINT)

    _interrupt_at(monkeypatch, 3, twice)
    with pytest.raises(Interrupted) as info:
        run_training(spec(log_steps=1), base, progress=False)
    # it stopped inside the logging of step 3, between steps: that state is saved
    assert info.value.step == 3 and info.value.checkpoint is not None
    assert info.value.checkpoint.name == "step-000003"


def test_restart_clears_the_checkpoints_and_a_changed_job_cannot_resume(
    base: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        _interrupt_at(m, 5, _ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            run_training(spec(), base, progress=False)
    old = next(r for r in base.runs.list() if r.name == "adder")
    ckpts = Path(base.runs.dir(old.id)) / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000004", "step-000005"]

    with pytest.raises(
        UserError, match="stopped at step 5 of 8 and left a checkpoint: add --resume"
    ):
        run_training(spec(), base, progress=False)
    with pytest.raises(UserError) as info:  # a different job must not continue its state
        run_training(spec(lr=1e-3), base, resume=True, progress=False)
    assert "this job differs (train.lr 0.005 -> 0.001): add --restart" in str(info.value)
    with pytest.raises(UserError, match="exclude each other"):
        run_training(spec(), base, resume=True, restart=True, progress=False)

    fresh = run_training(spec(), base, restart=True, progress=False)
    assert fresh.run_id != old.id and fresh.resumed_from is None
    assert not ckpts.exists()
    # nothing is left to resume, so the next run needs no flag
    assert run_training(spec(), base, progress=False).resumed_from is None


def test_logged_loss_is_the_mean_over_the_logging_interval(
    base: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = run_training(spec("every", log_steps=1), base, progress=False)
    per_step = [m.value for m in base.runs.get(every.run_id).metrics["loss"]]
    grad = [m.value for m in base.runs.get(every.run_id).metrics["grad_norm"]]
    assert len(per_step) == 8

    three = run_training(spec("three", log_steps=3), base, progress=False)
    logged = base.runs.get(three.run_id).metrics
    assert [m.step for m in logged["loss"]] == [3, 6, 8]
    expected = [sum(per_step[0:3]) / 3, sum(per_step[3:6]) / 3, sum(per_step[6:8]) / 2]
    assert [m.value for m in logged["loss"]] == pytest.approx(expected, rel=1e-6)
    assert logged["grad_norm"][0].value == pytest.approx(sum(grad[0:3]) / 3, rel=1e-6)
    assert three.final["loss"] == pytest.approx(expected[-1], rel=1e-6)

    # interrupted mid-interval (after step 5, logged at 3 and 6): the open interval's sums
    # travel in the checkpoint, so the resumed run logs exactly what the straight one did
    with monkeypatch.context() as m:
        real_add = IntervalMean.add
        calls = {"n": 0}

        def add(self: Any, metrics: dict[str, float]) -> None:
            real_add(self, metrics)
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt

        m.setattr(IntervalMean, "add", add)
        with pytest.raises(KeyboardInterrupt):
            run_training(spec("cut", log_steps=3), base, progress=False)
    resumed = run_training(spec("cut", log_steps=3), base, resume=True, progress=False)
    assert resumed.resumed_from == 5
    got = [(m.step, m.value) for m in base.runs.get(resumed.run_id).metrics["loss"]]
    assert [s for s, _ in got] == [3, 6, 8]
    assert [v for _, v in got] == pytest.approx(expected, rel=1e-6)


def test_reward_model_logs_interval_means(tiny_model_dir: Path, tmp_path: Path) -> None:
    from lmops.train.models import load_base
    from lmops.train.preference import train_reward
    from lmops.train.tracking import MemoryTracker
    from tests.train.conftest import make_spec, sentiment_pairs

    rows = sentiment_pairs(16)
    logs = {}
    for n in (1, 2):
        s = make_spec(
            tiny_model_dir,
            "reward",
            train={"max_steps": 4, "batch_size": 4, "lr": 1e-3, "log_steps": n, "max_seq_len": 64},
        )
        tracker = MemoryTracker(tmp_path / f"run{n}")  # each run its own (checkpoints)
        train_reward(s, load_base(s, None, for_reward=True), rows, tracker)
        logs[n] = tracker.history
    per_step = [v for _, v in logs[1]["loss"]]
    assert [s for s, _ in logs[2]["loss"]] == [2, 4]
    assert [v for _, v in logs[2]["loss"]] == pytest.approx(
        [(per_step[0] + per_step[1]) / 2, (per_step[2] + per_step[3]) / 2], rel=1e-5
    )


def test_an_adapter_on_lm_head_saves_it_without_a_warning(base: Store) -> None:
    import warnings

    lora = {"r": 4, "alpha": 8, "targets": ["q_proj", "lm_head"]}
    s = TrainSpec.model_validate({**job(max_steps=2), "lora": lora})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_training(s, base, progress=False)
    assert not [str(w.message) for w in caught if "save_embedding_layers" in str(w.message)]
    # saved as PEFT's "auto" saves it: with the targeted layer's own weights
    assert any(k.endswith("lm_head.base_layer.weight") for k in _weights(base, str(result.output)))


def _prefs(tmp_path: Path) -> Path:
    from tests.train.conftest import sentiment_pairs

    rows = tmp_path / "prefs.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in sentiment_pairs(8)))
    return rows


@pytest.mark.parametrize("stage", ["reward", "ppo"])
def test_reward_and_ppo_stop_with_a_checkpoint_and_resume_to_an_unbroken_runs_weights(
    stage: str, base: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reward and PPO, lmops's own loops, kept no checkpoint: a Ctrl-C threw the run away.
    They now save as they stop (and every save_steps), and --resume continues to the
    weights (value head, optimizer, RNG, batches) of a run never stopped."""
    rows = _prefs(tmp_path)

    def stage_spec(output: str) -> TrainSpec:
        data = {**job(max_steps=5, log_steps=1, save_steps=100), "stage": stage}
        if stage == "ppo":
            data["ppo"] = {"reward_fn": "tests.train.test_ppo:letter_a_share",
                           "rollout_batch": 2, "max_new_tokens": 4}  # fmt: skip
        return TrainSpec.model_validate({**data, "dataset": str(rows), "output": output})

    straight = run_training(stage_spec(f"{stage}-straight"), base, progress=False)
    with monkeypatch.context() as m:
        _interrupt_at(m, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(Interrupted) as info:
            run_training(stage_spec(stage), base, progress=False)
    e = info.value
    # the signal came while step 2 was logged: the loop saves after it and stops
    assert e.signum == signal.SIGTERM and (e.step, e.max_steps, e.saved) == (2, 5, True)
    assert e.checkpoint is not None and e.checkpoint.name == "step-000002"
    run = next(r for r in base.runs.list() if r.name == stage)
    assert run.status is RunStatus.CANCELLED and "checkpoint at step 2" in str(run.error)
    with pytest.raises(UserError, match="stopped at step 2 of 5 and left a checkpoint"):
        run_training(stage_spec(stage), base, progress=False)

    resumed = run_training(stage_spec(stage), base, resume=True, progress=False)
    assert (resumed.run_id, resumed.resumed_from, resumed.steps) == (run.id, 2, 5)
    key = "loss" if stage == "reward" else "reward"
    assert [m.step for m in base.runs.get(run.id).metrics[key]] == [1, 2, 3, 4, 5]
    got, want = _weights(base, str(resumed.output)), _weights(base, str(straight.output))
    assert got.keys() == want.keys()
    for k in want:
        assert torch_close(got[k], want[k]), k


@pytest.mark.parametrize("stage", ["reward", "ppo"])
def test_a_second_sigterm_in_reward_or_ppo_is_reported_as_sigterm(
    stage: str, base: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second signal stops reward and PPO at once, inside their own loop's handlers; the
    run reports the signal it was (SIGTERM: exit 143), as SFT's loop does, not SIGINT."""
    rows = _prefs(tmp_path)
    data = {**job(max_steps=5, log_steps=1, save_steps=100), "stage": stage}
    if stage == "ppo":
        data["ppo"] = {"reward_fn": "tests.train.test_ppo:letter_a_share",
                       "rollout_batch": 2, "max_new_tokens": 4}  # fmt: skip
    job_spec = TrainSpec.model_validate({**data, "dataset": str(rows), "output": stage})

    def twice() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # let the handler run before the second
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    _interrupt_at(monkeypatch, 2, twice)
    with pytest.raises(Interrupted) as info:
        run_training(job_spec, base, progress=False)
    assert info.value.signum == signal.SIGTERM
    run = next(r for r in base.runs.list() if r.name == stage)
    assert run.status is RunStatus.CANCELLED
    assert signal.getsignal(signal.SIGTERM) is before


def test_dpo_stops_with_a_checkpoint_and_resumes_to_the_weights_of_an_unbroken_run(
    base: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DPO/KTO/ORPO kept no checkpoint: Ctrl-C after 9 minutes of DPO threw all 9 away.
    The Trainer now saves as it stops (and every save_steps), and --resume continues."""
    rows = _prefs(tmp_path)

    def dpo(output: str = "dpo") -> TrainSpec:
        data = {**job(max_steps=6, log_steps=1, save_steps=100), "stage": "dpo"}
        return TrainSpec.model_validate({**data, "dataset": str(rows), "output": output})

    straight = run_training(dpo("dpo-straight"), base, progress=False)
    with monkeypatch.context() as m:
        _interrupt_at(m, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(Interrupted) as info:
            run_training(dpo(), base, progress=False)
    e = info.value
    # the signal came while step 2 was logged: the Trainer ends step 3, saves and stops
    assert e.signum == signal.SIGTERM and (e.step, e.max_steps, e.saved) == (3, 6, True)
    assert e.checkpoint is not None and e.checkpoint.name == "checkpoint-3"
    run = next(r for r in base.runs.list() if r.name == "dpo")
    assert run.status is RunStatus.CANCELLED and "checkpoint at step 3" in str(run.error)
    with pytest.raises(UserError, match="stopped at step 3 of 6 and left a checkpoint"):
        run_training(dpo(), base, progress=False)

    resumed = run_training(dpo(), base, resume=True, progress=False)
    assert (resumed.run_id, resumed.resumed_from, resumed.steps) == (run.id, 3, 6)
    assert [m.step for m in base.runs.get(run.id).metrics["loss"]] == [1, 2, 3, 4, 5, 6]
    got, want = _weights(base, str(resumed.output)), _weights(base, str(straight.output))
    assert got.keys() == want.keys()
    for k in want:
        assert torch_close(got[k], want[k]), k


def torch_close(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-6))
