"""Reward models and DPO / KTO / ORPO on a tiny Llama, on CPU.

The preference set is learnable in a few steps: the chosen answer carries a positive word
(good / great / nice), the rejected one a negative word, among the same filler words."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.train.models import load_base
from lmops.train.preference import (
    TrackerCallback,
    render_pairs,
    train_dpo,
    train_kto,
    train_orpo,
    train_reward,
    trl_classes,
    trl_config,
)
from lmops.train.tracking import MemoryTracker
from tests.train.conftest import logprob_margin, make_spec, sentiment_pairs

FAST = {"batch_size": 8, "max_seq_len": 64, "lr_scheduler": "constant", "log_steps": 1}


def _finite(tracker: MemoryTracker, key: str) -> list[float]:
    values = [v for _, v in tracker.history[key]]
    assert values and all(math.isfinite(v) for v in values), (key, values)
    return values


@pytest.mark.parametrize("stage", ["dpo", "kto", "orpo"])
def test_trl_config_is_cpu_safe_and_follows_the_spec(stage: str, tmp_path: Path) -> None:
    cls, _ = trl_classes(stage)
    spec = make_spec(
        tmp_path,
        stage,
        train={
            "max_steps": 7,
            "lr": 3e-4,
            "batch_size": 8,
            "micro_batch_size": 4,
            "max_seq_len": 96,
            "seed": 5,
        },
        preference={"beta": 0.25},
    )
    args = trl_config(cls, spec, tmp_path)
    # TRL's own defaults turn these on; on CPU they cost several times the run time.
    assert args.bf16 is False and args.fp16 is False
    assert args.gradient_checkpointing is False and args.activation_checkpointing is False
    assert args.use_cpu is True
    assert args.report_to == [] and args.dataloader_num_workers == 0
    # the Trainer's checkpoints go where the runner finds them to resume
    assert (args.save_strategy, args.save_steps, args.save_total_limit) == ("steps", 50, 2)
    assert args.output_dir == str(tmp_path / "checkpoints")
    assert (args.max_steps, args.learning_rate, args.seed, args.max_length) == (7, 3e-4, 5, 96)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 2)
    assert args.beta == 0.25


def test_tracker_callback_renames_trl_metrics(tmp_path: Path) -> None:
    tracker = MemoryTracker(tmp_path)
    state = type("State", (), {"global_step": 3})()
    logs = {
        "loss": 0.5,
        "rewards/chosen": 0.2,
        "rewards/rejected": -0.1,
        "rewards/margins": 0.3,
        "learning_rate": 1e-4,
        "eval_rewards/accuracies": 0.75,
        "epoch": 1.0,  # not ours: dropped
        "logits/chosen": float("nan"),
    }
    TrackerCallback(tracker).on_log(None, state, None, logs=logs)
    assert {k: v[0] for k, v in tracker.history.items()} == {
        "loss": (3, 0.5),
        "reward_chosen": (3, 0.2),
        "reward_rejected": (3, -0.1),
        "margin": (3, 0.3),
        "lr": (3, 1e-4),
        "eval_accuracy": (3, 0.75),
    }


def test_render_pairs_uses_the_chat_template_and_keeps_the_prompt_end(tiny_model_dir: Path) -> None:
    from lmops.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    as_string = {"prompt": "Tell me about the sea.", "chosen": "good sea", "rejected": "bad sea"}
    as_messages = {**as_string, "prompt": [{"role": "user", "content": "Tell me about the sea."}]}
    a, b = render_pairs([as_string, as_messages], tok, max_prompt_len=256)
    assert a == b
    assert a.prompt == "<|im_start|>user\nTell me about the sea.<|im_end|>\n<|im_start|>assistant\n"
    assert a.chosen == "good sea<|im_end|>\n" and a.rejected == "bad sea<|im_end|>\n"
    (short,) = render_pairs([as_string], tok, max_prompt_len=4)
    assert len(tok(short.prompt, add_special_tokens=False)["input_ids"]) <= 4
    assert a.prompt.endswith(short.prompt)


@pytest.mark.parametrize(("method", "lr"), [("lora", 5e-3), ("full", 1e-3)])
def test_dpo_raises_the_chosen_minus_rejected_margin(
    tiny_model_dir: Path, tmp_path: Path, method: str, lr: float
) -> None:
    rows = sentiment_pairs(16)
    spec = make_spec(tiny_model_dir, "dpo", method, train={**FAST, "max_steps": 15, "lr": lr})
    loaded = load_base(spec, None)
    before = logprob_margin(loaded.model, loaded.tokenizer, rows)
    tracker = MemoryTracker(tmp_path)
    model = train_dpo(spec, loaded, rows, tracker)
    after = logprob_margin(model, loaded.tokenizer, rows)
    print(f"DPO {method}: log-prob margin {before:.3f} -> {after:.3f}")
    assert after > before + 2.0
    margins = _finite(tracker, "margin")
    assert margins[-1] > margins[0]
    for key in ("loss", "reward_chosen", "reward_rejected", "lr"):
        _finite(tracker, key)
    assert not model.is_gradient_checkpointing  # the CPU default reached the trainer
    if method == "lora":
        assert list(model.peft_config) == ["default"]  # TRL's frozen "ref" copy is gone
    else:
        assert not hasattr(model, "peft_config")


def test_trl_logs_the_loss_averaged_over_the_logging_interval(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """TRL (through the Trainer) logs the mean over the steps since the last log, not the
    last step's value: logging every 2 steps gives the mean of two per-step logs."""
    rows = sentiment_pairs(16)
    logs = {}
    for n in (1, 2):
        spec = make_spec(
            tiny_model_dir, "dpo", "lora", train={**FAST, "max_steps": 4, "log_steps": n}
        )
        tracker = MemoryTracker(tmp_path / str(n))
        train_dpo(spec, load_base(spec, None), rows, tracker)
        logs[n] = tracker.history
    for key in ("loss", "margin", "reward_chosen"):
        one = [v for _, v in logs[1][key]]
        assert [s for s, _ in logs[2][key]] == [2, 4], key
        pairs = [(one[0] + one[1]) / 2, (one[2] + one[3]) / 2]
        assert [v for _, v in logs[2][key]] == pytest.approx(pairs, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize(("method", "lr"), [("full", 3e-3), ("lora", 1e-2)])
def test_reward_model_separates_held_out_pairs(
    tiny_model_dir: Path, tmp_path: Path, method: str, lr: float
) -> None:
    rows = sentiment_pairs(96, seed=1)
    train = {
        **FAST,
        "batch_size": 16,
        "max_steps": 30,
        "lr": lr,
        "eval_steps": 10,
        "warmup_steps": 2,
    }
    spec = make_spec(tiny_model_dir, "reward", method, train=train, eval_split=0.25)
    loaded = load_base(spec, None, for_reward=True)
    tracker = MemoryTracker(tmp_path)
    model = train_reward(spec, loaded, rows, tracker)
    eval_acc = _finite(tracker, "eval_accuracy")
    print(f"reward {method}: held-out accuracy {eval_acc}")
    assert [s for s, _ in tracker.history["eval_accuracy"]] == [10, 20, 30]
    assert eval_acc[-1] > 0.9
    assert _finite(tracker, "eval_margin")[-1] > 0
    loss = _finite(tracker, "loss")
    assert sum(loss[-5:]) < sum(loss[:5])
    _finite(tracker, "accuracy")
    assert not model.training


def test_kto_runs_on_unpaired_examples(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = sentiment_pairs(16)
    spec = make_spec(tiny_model_dir, "kto", "lora", train={**FAST, "max_steps": 6, "lr": 5e-3})
    loaded = load_base(spec, None)
    tracker = MemoryTracker(tmp_path)
    model = train_kto(spec, loaded, rows, tracker)
    assert len(_finite(tracker, "loss")) == 6
    for key in ("reward_chosen", "reward_rejected", "margin", "kl"):
        _finite(tracker, key)
    assert list(model.peft_config) == ["default"]


def test_kto_needs_two_examples_per_forward_pass(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(tiny_model_dir, "kto", "full", train={**FAST, "batch_size": 1, "max_steps": 1})
    with pytest.raises(UserError, match="at least 2 examples"):
        train_kto(spec, load_base(spec, None), sentiment_pairs(4), MemoryTracker(tmp_path))


def test_orpo_lowers_its_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = sentiment_pairs(16)
    spec = make_spec(tiny_model_dir, "orpo", "full", train={**FAST, "max_steps": 10, "lr": 2e-3})
    loaded = load_base(spec, None)
    tracker = MemoryTracker(tmp_path)
    train_orpo(spec, loaded, rows, tracker)
    loss = _finite(tracker, "loss")
    print(f"ORPO loss {loss[0]:.3f} -> {loss[-1]:.3f}")
    assert len(loss) == 10 and sum(loss[-3:]) < sum(loss[:3])
    for key in ("nll_loss", "log_odds_ratio", "margin"):
        _finite(tracker, key)


def test_the_spec_loss_type_reaches_the_trainer(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DPO and KTO get preference.loss_type (and DPO its label smoothing); left out, TRL's
    default. The trainers are built, not run."""
    import lmops.train.preference as preference

    args: dict[str, object] = {}

    def built(trainer: object) -> object:
        args[type(trainer).__name__] = trainer.args  # type: ignore[attr-defined]
        return trainer.model  # type: ignore[attr-defined]

    monkeypatch.setattr(preference, "_run", built)
    rows = sentiment_pairs(4)
    for stage, train, pref in [
        ("dpo", train_dpo, {"loss_type": "exo_pair", "label_smoothing": 0.001}),
        ("kto", train_kto, {"loss_type": "apo_zero_unpaired"}),
    ]:
        spec = make_spec(tiny_model_dir, stage, "lora", train={**FAST, "max_steps": 1},
                         preference=pref)  # fmt: skip
        train(spec, load_base(spec, None), rows, MemoryTracker(tmp_path))
    assert args["DPOTrainer"].loss_type == ["exo_pair"]  # type: ignore[attr-defined]
    assert args["DPOTrainer"].label_smoothing == 0.001  # type: ignore[attr-defined]
    assert args["KTOTrainer"].loss_type == "apo_zero_unpaired"  # type: ignore[attr-defined]
    spec = make_spec(tiny_model_dir, "dpo", "lora", train={**FAST, "max_steps": 1})
    train_dpo(spec, load_base(spec, None), rows, MemoryTracker(tmp_path))
    assert args["DPOTrainer"].loss_type == ["sigmoid"]  # type: ignore[attr-defined]


def _long_prompts(n: int) -> list[dict[str, str]]:
    """Preference rows whose prompts are longer than 64 tokens (85 with the tiny model's)."""
    import random

    from tests.train.conftest import WORDS

    rng = random.Random(3)
    rows = []
    for row in sentiment_pairs(n):
        story = " ".join(rng.choice(WORDS) for _ in range(60))
        rows.append({**row, "prompt": f"Read this: {story}. Tell me about it."})
    return rows


def test_orpo_with_prompts_longer_than_max_seq_len_trains_on_the_answers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """max_seq_len 64 and prompts of 80+ tokens: the default max_prompt_len (256) let
    every prompt fill the sequence, so ORPO trained on nothing and reported loss 0. The
    default is now half of max_seq_len: the prompt's end and the answer both fit."""
    from lmops.models.loading import load_tokenizer

    rows = _long_prompts(4)
    tok = load_tokenizer(tiny_model_dir)
    assert all(len(tok(r["prompt"])["input_ids"]) > 80 for r in rows)
    train = {**FAST, "max_steps": 2, "batch_size": 2, "lr": 1e-3}
    spec = make_spec(tiny_model_dir, "orpo", "lora", train=train)
    assert spec.prompt_len == 32
    tracker = MemoryTracker(tmp_path)
    train_orpo(spec, load_base(spec, None), rows, tracker)
    assert all(v > 0 for v in _finite(tracker, "loss")) and _finite(tracker, "grad_norm")
    assert all(v > 0 for v in _finite(tracker, "nll_loss"))


def test_a_run_where_every_answer_is_cut_away_fails_in_one_line(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # prompts of 15 tokens, a BOS before them (ORPO's): nothing is left of 16 for an answer
    train = {**FAST, "max_steps": 1, "batch_size": 2, "max_seq_len": 16}
    spec = make_spec(tiny_model_dir, "orpo", "lora", train=train, preference={"max_prompt_len": 15})
    with pytest.raises(UserError) as e:
        train_orpo(spec, load_base(spec, None), _long_prompts(4), MemoryTracker(tmp_path))
    assert str(e.value) == (
        "stage orpo: 4 of 4 preference rows keep no answer token: their prompts fill "
        "train.max_seq_len 16 (prompts keep their last 15 tokens); nothing would train: "
        "raise train.max_seq_len or lower preference.max_prompt_len"
    )


@pytest.mark.parametrize("stage", ["dpo", "reward"])
def test_the_stages_without_a_loop_of_ours_show_progress(
    stage: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    cli,  # type: ignore[no-untyped-def]
    lmops_home: Path,
) -> None:
    """Reward, DPO/KTO/ORPO and PPO printed nothing until they finished (a 10-step DPO of
    SmolLM2-135M on 2 CPU cores: 9 silent minutes); they now draw the bar SFT draws, and
    --json still prints only JSON."""
    import json

    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_pairs(8)))
    job = tmp_path / "job.yaml"
    train = {**FAST, "max_steps": 3, "batch_size": 4}
    job.write_text(
        json.dumps(
            {"stage": stage, "method": "lora", "model": str(tiny_model_dir),
             "dataset": str(data), "output": "prefs-out", "device": "cpu", "train": train}
        )
    )  # fmt: skip
    result = cli("train", "run", str(job))
    assert result.code == 0, result.err
    # off a terminal, plain lines on stderr (the last one at the end)
    bar = next((line for line in result.err.splitlines() if "3/3 steps" in line), "")
    assert bar.startswith(f"{stage} prefs-out: 3/3 steps") and "loss " in bar, (
        result.err,
        result.out,
    )
    quiet = cli("train", "run", str(job), "train.max_steps=2", "--json")
    assert quiet.code == 0, quiet.err
    assert json.loads(quiet.out)["steps"] == 2


def test_trl_logs_the_last_steps_when_log_steps_does_not_divide_max_steps(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The Trainer logs multiples of log_steps only: a 3-step run logging every 2 logged
    nothing of step 3, and one shorter than log_steps no training metric at all."""
    rows = sentiment_pairs(8)
    for max_steps, logged in ((3, [2, 3]), (1, [1])):
        train = {**FAST, "max_steps": max_steps, "log_steps": 2, "batch_size": 4}
        spec = make_spec(tiny_model_dir, "dpo", "lora", train=train)
        tracker = MemoryTracker(tmp_path / str(max_steps))
        train_dpo(spec, load_base(spec, None), rows, tracker)
        assert [s for s, _ in tracker.history["loss"]] == logged
